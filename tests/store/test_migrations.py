"""Migrations: the runner, later versions dropped in as files, and the Supabase copy."""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from healing.errors import StoreError
from healing.store import PostgresStore, SQLiteStore, Store
from healing.store.migrate import MIGRATIONS_DIR, load_migrations, sqlite_statements
from healing.types import ErrorPattern, ErrorType
from tests.store.conftest import SUPABASE_MIGRATIONS, apply_supabase_migration

POSTGRES_SQL = sorted(p for p in MIGRATIONS_DIR.glob("*.sql") if ".sqlite." not in p.name)
SHIPPED = [1, 2]
TABLES = [
    "healing_schema_version",
    "healing_events",
    "healing_patterns",
    "healing_pattern_outcomes",
    "healing_state",
    "healing_leases",
    "healing_counters",
    "healing_slots",
]
FUNCTIONS = [
    "healing_record_outcome",
    "healing_record_events",
    "healing_state_put",
    "healing_state_delete",
    "healing_lease_take",
    "healing_lease_drop",
    "healing_counter_add",
    "healing_slot_take",
]
PATTERN = ErrorPattern(
    fingerprint="fp", connector="crm", operation="get", error_type=ErrorType.TIMEOUT
)


def _with_later(tmp_path: Path, *, sqlite_variant: bool) -> Path:
    """The shipped migrations plus a later feature's tables, as a 0003 file would add them."""
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    (folder / "0003_breaker_state.sql").write_text(
        "create table if not exists healing_breaker_state (\n"
        "    connector text primary key,\n"
        "    version bigint generated always as identity,\n"  # PostgreSQL-only syntax
        "    state text not null\n);\n"
    )
    if sqlite_variant:
        (folder / "0003_breaker_state.sqlite.sql").write_text(
            "create table if not exists healing_breaker_state (\n"
            "    connector text primary key, version integer, state text not null);\n"
            "create trigger if not exists healing_breaker_bump\n"
            "    after update on healing_breaker_state\n"
            "begin update healing_breaker_state set version = coalesce(version, 0) + 1\n"
            "    where connector = new.connector and new.version is old.version; end;\n"
        )
    return folder


def _tables(backend: str, target: str) -> set[str]:
    if backend == "sqlite":
        with sqlite3.connect(target) as conn:
            return {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    with psycopg.connect(target) as conn:
        rows = conn.execute("select tablename from pg_tables where schemaname = 'public'")
        return {r[0] for r in rows}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_later_migration_is_just_a_file(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    target = str(tmp_path / "h.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    folder = _with_later(tmp_path, sqlite_variant=True)

    def make(migrations_dir: Path | None = None) -> Store:
        if backend == "sqlite":
            return SQLiteStore(target, migrations_dir=migrations_dir)
        return PostgresStore(target, migrations_dir=migrations_dir)

    for migrations_dir, expected in ((None, SHIPPED), (folder, [3]), (folder, []), (None, [])):
        store = make(migrations_dir)
        try:
            assert await store.migrate() == expected
        finally:
            await store.close()
    assert "healing_breaker_state" in _tables(backend, target)
    assert set(TABLES) <= _tables(backend, target)


async def test_a_failed_migration_leaves_no_trace(tmp_path: Path) -> None:
    folder = _with_later(tmp_path, sqlite_variant=True)
    (folder / "0004_broken.sql").write_text("create table healing_ok (x integer);\nnot sql;\n")
    store = SQLiteStore(tmp_path / "h.db", migrations_dir=folder)
    with pytest.raises(StoreError, match="syntax error"):
        await store.migrate()
    await store.close()
    assert _tables("sqlite", str(tmp_path / "h.db")) == set()  # all or nothing
    store = SQLiteStore(tmp_path / "h.db")
    assert await store.migrate() == SHIPPED
    await store.close()


def test_dialect_variants_are_chosen(tmp_path: Path) -> None:
    folder = _with_later(tmp_path, sqlite_variant=True)
    pg, lite = load_migrations("postgres", folder), load_migrations("sqlite", folder)
    assert [m.version for m in pg] == [m.version for m in lite] == [*SHIPPED, 3]
    assert "generated always as identity" in pg[-1].sql
    assert "create trigger" in lite[-1].sql
    for shipped in range(len(SHIPPED)):
        assert "create or replace function" in pg[shipped].sql
        assert "create or replace function" not in lite[shipped].sql
    statements = list(sqlite_statements(lite[-1].sql))
    assert len(statements) == 2 and statements[1].endswith("end;")  # the trigger stays whole


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("0001_again.sql", "share version 1"),
        ("0009_orphan.sqlite.sql", "no PostgreSQL source"),
        ("2_bad-name.sql", "not named"),
    ],
)
def test_bad_migration_folders(tmp_path: Path, name: str, problem: str) -> None:
    folder = _with_later(tmp_path, sqlite_variant=False)
    (folder / name).write_text("select 1;")
    with pytest.raises(StoreError, match=problem):
        load_migrations("postgres", folder)


def _normalized(sql: str) -> str:
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    return " ".join(" ".join(lines).split())


def test_supabase_files_are_the_postgres_migrations_plus_lockdown() -> None:
    assert len(SUPABASE_MIGRATIONS) == len(POSTGRES_SQL) == len(SHIPPED)
    created, defined = [], []
    for version, pg_file, supa_file in zip(SHIPPED, POSTGRES_SQL, SUPABASE_MIGRATIONS, strict=True):
        source, supa = _normalized(pg_file.read_text()), _normalized(supa_file.read_text())
        assert source in supa  # the same DDL, verbatim
        tables = re.findall(r"create table if not exists (\w+)", source)
        functions = re.findall(r"create or replace function (\w+)", source)
        for table in tables:
            assert f"alter table {table} enable row level security;" in supa
            assert re.search(rf"revoke all on table {table} from anon\b", supa)
        for function in functions:
            assert re.search(rf"revoke all on function {function}\(.*?\) from public, anon", supa)
            assert re.search(
                rf"grant execute on function {function}\([^;]*\) to service_role;", supa
            )
        assert "create policy" not in supa.lower()
        assert not re.search(r"grant [^;]* to [^;]*\banon\b", supa)
        assert f"insert into healing_schema_version (version) values ({version})" in supa
        created += tables
        defined += functions
    assert sorted(created) == sorted(TABLES)
    assert sorted(defined) == sorted(FUNCTIONS)


def _as_role(url: str, role: str, statement: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute(f"set local role {role}")  # type: ignore[arg-type]
        conn.execute(statement)  # type: ignore[arg-type]


RECORD = (
    "select healing_record_outcome("
    "'fp', 'crm', 'get', 'TIMEOUT', null, null, '', 'retry', true, 1.5)"
)
EVENTS = (
    "select healing_record_events("
    """'[{"at": "2026-01-01T00:00:00Z", "kind": "attempt", "workflow_id": "w"}]')"""
)


@pytest.mark.parametrize("setup", ["supabase_file", "postgres_store"])
async def test_supabase_roles_are_locked_out(pg_url: str, setup: str) -> None:
    """anon and authenticated get nothing; service_role (RLS bypass) works. Both ways of
    setting up a Supabase database: its CLI with our file, or PostgresStore on its URL."""
    with psycopg.connect(pg_url) as conn:
        roles = conn.execute(
            "select count(*) from pg_roles where rolname = any(%s)",
            (["anon", "authenticated", "service_role"],),
        ).fetchone()
    if roles != (3,):  # the private test cluster has them; an external server may not
        pytest.skip(
            "the PostgreSQL server has no Supabase roles (anon, authenticated, service_role)"
        )
    if setup == "supabase_file":
        apply_supabase_migration(pg_url)
    else:
        store = PostgresStore(pg_url)
        assert await store.migrate() == SHIPPED
        await store.close()
    for role in ("anon", "authenticated"):
        for statement in [f"select * from {t}" for t in TABLES] + [RECORD, EVENTS]:
            with pytest.raises(errors.InsufficientPrivilege):
                _as_role(pg_url, role, statement)
    if setup == "supabase_file":
        _as_role(pg_url, "service_role", RECORD)
        _as_role(
            pg_url,
            "service_role",
            EVENTS,
        )
    with psycopg.connect(pg_url) as conn:
        secured = conn.execute(
            "select relname from pg_class where relname like 'healing\\_%' and relkind = 'r'"
            " and relrowsecurity"
        ).fetchall()
        assert sorted(r[0] for r in secured) == sorted(TABLES)
        assert conn.execute("select count(*) from pg_policies").fetchone() == (0,)
    store = PostgresStore(pg_url)
    assert await store.migrate() == []  # the runner sees the version the file recorded
    if setup == "supabase_file":
        stats = await store.pattern_stats("fp")
        assert stats is not None and stats.strategies[0].total_heal_s == 1.5
        assert len(await store.recent_events()) == 1
    await store.close()


async def test_the_sql_functions_directly(pg_url: str) -> None:
    """The functions Supabase's rpc calls, run as plain SQL (as PostgREST would)."""
    store = PostgresStore(pg_url)
    await store.migrate()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for healed in (True, True, False):
            conn.execute(RECORD.replace("true", "true" if healed else "false"))
        conn.execute(
            "select healing_record_events(%s::jsonb)",
            ('[{"at": "2026-01-01T00:00:01Z", "kind": "healed", "workflow_id": "w", '
             '"fingerprint": "fp", "strategy": "retry", "duration_s": 2.5}, '
             '{"at": "2026-01-01T00:00:00Z", "kind": "classified", "workflow_id": "w"}]',),
        )  # fmt: skip
    stats = await store.pattern_stats("fp")
    assert stats is not None and stats.seen == 3
    (retry,) = stats.strategies
    assert (retry.tries, retry.successes, retry.total_heal_s, retry.median_heal_s) == (
        3,
        2,
        3.0,
        2.5,
    )
    assert [e.kind for e in await store.recent_events()] == ["healed", "classified"]
    await store.close()
