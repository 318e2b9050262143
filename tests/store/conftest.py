"""Store fixtures: every backend behind one ``store`` fixture, and a real PostgreSQL server.

PostgreSQL (``pg_server``, ``pg_url``, in ``tests/conftest.py`` since the chaos tests use it too)
is a private throwaway cluster started from the machine's binaries (see ``pgcluster.py``), or
the server ``HEALING_TEST_POSTGRES_URL`` points at (it needs the right to create databases).
The Supabase backend runs against ``FakePostgREST``: a recording stand-in for Supabase's REST
API that executes the requests on that PostgreSQL, as the service_role.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from healing.store import PostgresStore, SQLiteStore, Store, SupabaseStore
from tests.conftest import EXTERNAL_ENV, PgServer  # the server fixtures live there (shared)
from tests.store.postgrest_fake import SERVICE_KEY, FakePostgREST

__all__ = ["EXTERNAL_ENV", "PgServer"]
REPO = Path(__file__).resolve().parents[2]
SUPABASE_MIGRATIONS = sorted((REPO / "supabase" / "migrations").glob("*.sql"))
"""One file per version of healing/store/migrations/, oldest first."""
BACKENDS = ["sqlite", "postgres", "supabase"]


def apply_supabase_migration(url: str) -> None:
    """What ``supabase db push`` does with our file."""
    with psycopg.connect(url, autocommit=True) as conn:
        for path in SUPABASE_MIGRATIONS:
            conn.execute(path.read_bytes())


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
