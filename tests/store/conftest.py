"""Store fixtures: every backend behind one ``store`` fixture, and a real PostgreSQL server.

PostgreSQL is a private throwaway cluster started from the machine's binaries (see
``pgcluster.py``), or the server ``HEALING_TEST_POSTGRES_URL`` points at (it needs the right to
create databases). The Supabase backend runs against ``FakePostgREST``: a recording stand-in
for Supabase's REST API that executes the requests on that PostgreSQL, as the service_role.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from healing.store import PostgresStore, SQLiteStore, Store, SupabaseStore
from tests.conftest import require_service
from tests.store.pgcluster import SUPABASE_ROLES, PgCluster, find_bin_dir
from tests.store.postgrest_fake import SERVICE_KEY, FakePostgREST

EXTERNAL_ENV = "HEALING_TEST_POSTGRES_URL"
REPO = Path(__file__).resolve().parents[2]
SUPABASE_MIGRATION = REPO / "supabase" / "migrations" / "20261128000000_healing_init.sql"
BACKENDS = ["sqlite", "postgres", "supabase"]


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


def apply_supabase_migration(url: str) -> None:
    """What ``supabase db push`` does with our file."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SUPABASE_MIGRATION.read_bytes())


@pytest.fixture
def supabase_api(pg_url: str) -> Iterator[FakePostgREST]:
    """A Supabase REST stand-in over a database set up from supabase/migrations/."""
    apply_supabase_migration(pg_url)
    with FakePostgREST(pg_url) as fake:
        yield fake


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


StoreFactory = Callable[..., Store]


@pytest.fixture
async def make_store(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[StoreFactory]:
    """Build stores of ``backend``, all on one database, closed at the end of the test."""
    target = (
        request.getfixturevalue("supabase_api")
        if backend == "supabase"
        else request.getfixturevalue("pg_url")
        if backend == "postgres"
        else tmp_path / "state" / "healing.db"
    )
    made: list[Store] = []

    def make(*, migrations_dir: Path | None = None) -> Store:
        store: Store
        if backend == "sqlite":
            store = SQLiteStore(target, migrations_dir=migrations_dir)
        elif backend == "postgres":
            store = PostgresStore(str(target), timeout=5, migrations_dir=migrations_dir)
        else:
            store = SupabaseStore(target.url, SERVICE_KEY, migrations_dir=migrations_dir)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> Store:
    """A migrated store of each backend."""
    made = make_store()
    await made.migrate()
    return made
