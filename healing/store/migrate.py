"""Versioned schema migrations, shared by the SQL backends.

A migration is a file ``NNNN_name.sql`` in ``healing/store/migrations/`` (or another directory
given to a store, as tests do). The plain ``.sql`` file is PostgreSQL, the source of the
schema; ``NNNN_name.sqlite.sql``, when present, is the same version in SQLite's dialect.
Adding a feature's tables (credentials, schema mappings, breaker state) is adding
``0002_credentials.sql`` (and its ``.sqlite.sql`` twin where the syntax differs).

Each backend applies the pending versions inside one transaction that holds a lock (a
PostgreSQL advisory lock, SQLite's ``BEGIN IMMEDIATE``), re-reading ``healing_schema_version``
under the lock, so several workers starting at once apply each version exactly once.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from healing.errors import StoreError

Dialect = Literal["postgres", "sqlite"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "healing_schema_version"
PG_LOCK_KEY = 0x6865616C696E67  # "healing": the advisory lock held while migrating

_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+?)(?:\.(?P<dialect>sqlite))?\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(dialect: Dialect, directory: Path | None = None) -> list[Migration]:
    """The migrations of ``directory`` for ``dialect``, oldest first.

    Raises:
        StoreError: two different migrations claim one version, or a file name is malformed.
    """
    root = directory or MIGRATIONS_DIR
    chosen: dict[int, tuple[str, Path]] = {}
    variants: dict[int, Path] = {}
    for path in sorted(root.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise StoreError(f"migration file {path} is not named NNNN_name[.sqlite].sql")
        version, name = int(match["version"]), match["name"]
        if match["dialect"]:
            variants[version] = path
            continue
        if version in chosen:
            raise StoreError(f"migrations {chosen[version][1]} and {path} share version {version}")
        chosen[version] = (name, path)
    for version, path in variants.items():
        if version not in chosen:
            raise StoreError(f"{path} has no PostgreSQL source {path.name[:5]}*.sql next to it")
    migrations = []
    for version, (name, path) in sorted(chosen.items()):
        if dialect == "sqlite" and version in variants:
            path = variants[version]
        migrations.append(Migration(version, name, path.read_text(encoding="utf-8")))
    return migrations


def pending(migrations: Iterable[Migration], applied: Iterable[int]) -> list[Migration]:
    done = set(applied)
    return [m for m in migrations if m.version not in done]


def sqlite_statements(sql: str) -> Iterator[str]:
    """Split an SQLite script into complete statements (triggers' ``BEGIN ... END`` included).

    ``sqlite3.Connection.executescript`` would commit the migration transaction first; running
    statement by statement keeps the whole migration inside ``BEGIN IMMEDIATE``.
    """
    buffer: list[str] = []
    for line in sql.splitlines(keepends=True):
        if not buffer and (not line.strip() or line.lstrip().startswith("--")):
            continue
        buffer.append(line)
        statement = "".join(buffer)
        if sqlite3.complete_statement(statement):
            yield statement.strip()
            buffer.clear()
    rest = "".join(buffer).strip()
    if rest:
        raise StoreError(f"incomplete SQL statement at the end of a migration: {rest[:80]!r}")
