"""SQLite backend: the embedded default, safe for several worker processes on one host.

The stdlib driver is blocking, so each store owns one connection used from one worker thread
(a single-thread executor); the event loop never waits on the disk. Several processes share
the file through WAL mode; every write is a ``BEGIN IMMEDIATE`` transaction, which takes the
write lock up front (waiting up to ``busy_timeout_s``) so that no transaction has to be
retried halfway. Counters are incremented in SQL (``seen = seen + 1``), never in Python.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from healing.errors import StoreError, StoreUnavailable
from healing.store import _rows
from healing.store.base import ANY_VERSION, EventFilter, PatternStats, StateEntry
from healing.store.migrate import VERSION_TABLE, load_migrations, pending, sqlite_statements
from healing.types import ErrorPattern, HealingEvent

T = TypeVar("T")
MEMORY = ":memory:"
_UNAVAILABLE = ("locked", "busy", "unable to open", "disk i/o", "readonly", "no space")

_UPSERT_PATTERN = """
insert into healing_patterns as p (fingerprint, connector, operation, error_type, status_code,
    vendor_code, template, seen, first_seen, last_seen)
values (:p_fingerprint, :p_connector, :p_operation, :p_error_type, :p_status_code,
    :p_vendor_code, coalesce(:p_template, ''), 1, :now, :now)
on conflict (fingerprint) do update
    set seen = p.seen + 1, last_seen = max(p.last_seen, excluded.last_seen)
"""
_UPSERT_OUTCOME = """
insert into healing_pattern_outcomes as o (fingerprint, strategy, tries, successes, total_heal_s)
values (:p_fingerprint, :p_strategy, 1, :p_healed,
    case when :p_healed then coalesce(:p_heal_s, 0) else 0 end)
on conflict (fingerprint, strategy) do update
    set tries = o.tries + 1,
        successes = o.successes + excluded.successes,
        total_heal_s = o.total_heal_s + excluded.total_heal_s
"""
_INSERT_EVENT = (
    f"insert into healing_events ({', '.join(_rows.EVENT_COLUMNS)}) "
    f"values ({', '.join(':' + c for c in _rows.EVENT_COLUMNS)})"
)
_HEALED = f"""
select fingerprint, strategy, duration_s from (
    select fingerprint, strategy, duration_s, at, id, row_number() over (
        partition by fingerprint, strategy order by at desc, id desc) as n
    from healing_events
    where kind = 'healed' and duration_s is not null and strategy is not null
      and fingerprint in (select value from json_each(?))
) where n <= {_rows.MEDIAN_WINDOW} order by at desc, id desc
"""
_STATE_SELECT = "select space, key, version, value, updated_at from healing_state"
_PATTERN_SELECT = f"select {', '.join(_rows.PATTERN_COLUMNS)} from healing_patterns"
_OUTCOME_SELECT = (
    f"select {', '.join(_rows.OUTCOME_COLUMNS)} from healing_pattern_outcomes "
    "where fingerprint in (select value from json_each(?))"
)


class SQLiteStore:
    """The healing store in one SQLite file (or in memory, for tests).

    Args:
        path: the database file (its directory is created), or ``":memory:"``.
        busy_timeout_s: how long a write waits for another process's write lock.
        migrations_dir: where the migrations live (tests add their own).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_s: float = 10.0,
        migrations_dir: Path | None = None,
    ) -> None:
        self.path = str(path)
        self.url_for_display = f"sqlite:///{self.path}"
        self._busy_timeout_s = busy_timeout_s
        self._migrations_dir = migrations_dir
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="healing-sqlite")

    # -- plumbing: everything below runs in the store's one thread ---------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreError(f"{self.url_for_display}: the store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._connection())
        except sqlite3.Error as exc:
            problem = str(exc)
            if isinstance(exc, sqlite3.OperationalError) and any(
                word in problem.lower() for word in _UNAVAILABLE
            ):
                raise StoreUnavailable(f"{self.url_for_display}: {problem}") from exc
            raise StoreError(f"{self.url_for_display}: {problem}") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            if self.path != MEMORY:
                try:
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreUnavailable(
                        f"{self.url_for_display}: cannot create its directory ({exc})"
                    ) from exc
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
            conn.row_factory = sqlite3.Row
            try:
                conn.execute(f"pragma busy_timeout = {int(self._busy_timeout_s * 1000)}")
                conn.execute("pragma journal_mode = wal")
                conn.execute("pragma synchronous = normal")
            except sqlite3.Error:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    @staticmethod
    def _write(conn: sqlite3.Connection, body: Callable[[], T]) -> T:
        conn.execute("begin immediate")
        try:
            result = body()
        except BaseException:
            conn.execute("rollback")
            raise
        conn.execute("commit")
        return result

    @staticmethod
    def _read(conn: sqlite3.Connection, body: Callable[[], T]) -> T:
        conn.execute("begin")  # one snapshot for the several selects of a read
        try:
            return body()
        finally:
            conn.execute("commit")

    # -- Store -------------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        migrations = load_migrations("sqlite", self._migrations_dir)

        def run(conn: sqlite3.Connection) -> list[int]:
            def body() -> list[int]:
                exists = conn.execute(
                    "select 1 from sqlite_master where type = 'table' and name = ?",
                    (VERSION_TABLE,),
                ).fetchone()
                applied = (
                    [row[0] for row in conn.execute(f"select version from {VERSION_TABLE}")]
                    if exists
                    else []
                )
                done = []
                for migration in pending(migrations, applied):
                    for statement in sqlite_statements(migration.sql):
                        conn.execute(statement)
                    conn.execute(
                        f"insert into {VERSION_TABLE} (version) values (?)", (migration.version,)
                    )
                    done.append(migration.version)
                return done

            return self._write(conn, body)

        return await self._run(run)

    async def ping(self) -> None:
        await self._run(lambda conn: conn.execute("select 1").fetchone())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)

    async def record_events(self, events: Sequence[HealingEvent]) -> None:
        rows = [_rows.event_values(event) for event in events]
        if rows:
            await self._run(
                lambda conn: self._write(conn, lambda: conn.executemany(_INSERT_EVENT, rows))
            )

    async def recent_events(self, filter: EventFilter | None = None) -> list[HealingEvent]:
        sql, args = _rows.events_query(filter or EventFilter(), "?", _rows.iso)

        def run(conn: sqlite3.Connection) -> list[HealingEvent]:
            return [_rows.event_from_row(dict(row)) for row in conn.execute(sql, args)]

        return await self._run(run)

    async def record_outcome(
        self, pattern: ErrorPattern, strategy: str, *, healed: bool, heal_s: float | None = None
    ) -> None:
        args = _rows.outcome_args(pattern, strategy, healed, heal_s)
        args["now"] = _rows.iso(datetime.now(UTC))

        def body(conn: sqlite3.Connection) -> None:
            conn.execute(_UPSERT_PATTERN, args)
            conn.execute(_UPSERT_OUTCOME, args)

        await self._run(lambda conn: self._write(conn, lambda: body(conn)))

    async def pattern_stats(self, fingerprint: str) -> PatternStats | None:
        found = await self._stats(f"{_PATTERN_SELECT} where fingerprint = ?", (fingerprint,))
        return found[0] if found else None

    async def patterns(self, *, limit: int = 100) -> list[PatternStats]:
        sql = f"{_PATTERN_SELECT} order by seen desc, last_seen desc, fingerprint limit ?"
        return await self._stats(sql, (limit,))

    async def _stats(self, pattern_sql: str, args: tuple[Any, ...]) -> list[PatternStats]:
        def run(conn: sqlite3.Connection) -> list[PatternStats]:
            def body() -> list[PatternStats]:
                found = [dict(row) for row in conn.execute(pattern_sql, args)]
                keys = json.dumps([row["fingerprint"] for row in found])
                outcomes = [dict(row) for row in conn.execute(_OUTCOME_SELECT, (keys,))]
                healed = [dict(row) for row in conn.execute(_HEALED, (keys,))]
                return _rows.pattern_stats(found, outcomes, healed)

            return self._read(conn, body)

        return await self._run(run)

    # -- fleet state: the logic of 0002_fleet.sql's functions, each in one write transaction --

    async def _write_fn(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(lambda conn: self._write(conn, lambda: fn(conn)))

    @staticmethod
    def _entry(row: sqlite3.Row) -> StateEntry:
        values = dict(row)
        values["value"] = json.loads(values["value"])
        return StateEntry.model_validate(values)

    async def state_get(self, space: str, key: str) -> StateEntry | None:
        def run(conn: sqlite3.Connection) -> StateEntry | None:
            sql = f"{_STATE_SELECT} where space = ? and key = ?"
            row = conn.execute(sql, (space, key)).fetchone()
            return None if row is None else self._entry(row)

        return await self._run(run)

    async def state_list(self, space: str, *, limit: int = 1000) -> list[StateEntry]:
        def run(conn: sqlite3.Connection) -> list[StateEntry]:
            sql = f"{_STATE_SELECT} where space = ? order by key limit ?"
            return [self._entry(row) for row in conn.execute(sql, (space, limit))]

        return await self._run(run)

    async def state_put(
        self,
        space: str,
        key: str,
        value: Mapping[str, Any],
        *,
        expected_version: int | None,
        now: float,
    ) -> int | None:
        text = json.dumps(dict(value), separators=(",", ":"))

        def run(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(
                "select version from healing_state where space = ? and key = ?", (space, key)
            ).fetchone()
            current = None if row is None else int(row[0])
            if expected_version != ANY_VERSION and current != expected_version:
                return None
            version = 1 if current is None else current + 1
            conn.execute(
                "insert into healing_state (space, key, version, value, updated_at) "
                "values (?, ?, ?, ?, ?) on conflict (space, key) do update set "
                "version = excluded.version, value = excluded.value, "
                "updated_at = excluded.updated_at",
                (space, key, version, text, now),
            )
            return version

        return await self._write_fn(run)

    async def state_delete(
        self, space: str, key: str, *, expected_version: int | None = None
    ) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "delete from healing_state where space = ? and key = ? "
                "and (? is null or version = ?)",
                (space, key, expected_version, expected_version),
            )
            return cur.rowcount > 0

        return await self._write_fn(run)

    async def lease_take(self, name: str, holder: str, *, ttl_s: float, now: float) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "insert into healing_leases as l (name, holder, expires_at) values (?, ?, ?) "
                "on conflict (name) do update set holder = excluded.holder, "
                "expires_at = excluded.expires_at "
                "where l.expires_at <= ? or l.holder = excluded.holder",
                (name, holder, now + ttl_s, now),
            )
            return cur.rowcount > 0

        return await self._write_fn(run)

    async def lease_drop(self, name: str, holder: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            sql = "delete from healing_leases where name = ? and holder = ?"
            return conn.execute(sql, (name, holder)).rowcount > 0

        return await self._write_fn(run)

    async def counter_add(self, key: str, bucket: int, n: int = 1, *, keep_from: int) -> int:
        def run(conn: sqlite3.Connection) -> int:
            conn.execute(
                "delete from healing_counters where key = ? and bucket < ?", (key, keep_from)
            )
            conn.execute(
                "insert into healing_counters as c (key, bucket, n) values (?, ?, ?) "
                "on conflict (key, bucket) do update set n = c.n + excluded.n",
                (key, bucket, n),
            )
            row = conn.execute(
                "select coalesce(sum(n), 0) from healing_counters where key = ? and bucket >= ?",
                (key, keep_from),
            ).fetchone()
            return int(row[0])

        return await self._write_fn(run)

    async def counter_sums(self, keys: Sequence[str], *, since_bucket: int) -> dict[str, int]:
        def run(conn: sqlite3.Connection) -> dict[str, int]:
            totals = dict.fromkeys(keys, 0)
            rows = conn.execute(
                "select key, sum(n) from healing_counters where bucket >= ? "
                "and key in (select value from json_each(?)) group by key",
                (since_bucket, json.dumps(list(keys))),
            )
            for key, n in rows:
                totals[key] = int(n)
            return totals

        return await self._run(run)

    async def slot_take(
        self, key: str, *, spacing_s: float, now: float, not_before: float | None = None
    ) -> float:
        floor = now if not_before is None else max(now, not_before)

        def run(conn: sqlite3.Connection) -> float:
            row = conn.execute("select tat from healing_slots where key = ?", (key,)).fetchone()
            start = floor if row is None else max(float(row[0]), floor)
            conn.execute(
                "insert into healing_slots (key, tat) values (?, ?) "
                "on conflict (key) do update set tat = excluded.tat",
                (key, start + spacing_s),
            )
            return start

        return await self._write_fn(run)
