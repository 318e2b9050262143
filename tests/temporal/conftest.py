"""Harness fixtures over the time-skipping server (``ts_env``, in ``tests/conftest.py``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.temporal.harness import Harness


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
