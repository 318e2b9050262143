"""PostgreSQL backend (psycopg 3 with an async pool); works as-is on a Supabase Postgres URL.

Writes go through the SQL functions of the schema (``healing_record_outcome``,
``healing_record_events``): the same ones the Supabase backend calls over REST, so both count
with the same atomic upserts.

The pool checks each connection before handing it out and keeps re-connecting in the
background. While the server is away every call raises ``StoreUnavailable`` after at most
``timeout`` seconds; once it is back, calls succeed again on the same store (a reconnect
attempt that gave up after ``reconnect_timeout`` is started afresh by the next call).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from healing.errors import ConfigError, StoreError, StoreUnavailable
from healing.store import _rows
from healing.store.base import EventFilter, PatternStats, StateEntry
from healing.store.migrate import PG_LOCK_KEY, VERSION_TABLE, load_migrations, pending
from healing.store.url import mask_url, scrub
from healing.types import ErrorPattern, HealingEvent

_RECORD_OUTCOME = (
    "select healing_record_outcome("
    + ", ".join(
        f"{name} => %({name})s::{kind}"
        for name, kind in (
            ("p_fingerprint", "text"),
            ("p_connector", "text"),
            ("p_operation", "text"),
            ("p_error_type", "text"),
            ("p_status_code", "integer"),
            ("p_vendor_code", "text"),
            ("p_template", "text"),
            ("p_strategy", "text"),
            ("p_healed", "boolean"),
            ("p_heal_s", "double precision"),
        )
    )
    + ")"
)
_PATTERN_SELECT = f"select {', '.join(_rows.PATTERN_COLUMNS)} from healing_patterns"
_OUTCOME_SELECT = (
    f"select {', '.join(_rows.OUTCOME_COLUMNS)} from healing_pattern_outcomes "
    "where fingerprint = any(%s)"
)
_STATE_SELECT = "select space, key, version, value, updated_at from healing_state"
_HEALED = f"""
select fingerprint, strategy, duration_s from (
    select fingerprint, strategy, duration_s, at, id, row_number() over (
        partition by fingerprint, strategy order by at desc, id desc) as n
    from healing_events
    where kind = 'healed' and duration_s is not null and strategy is not null
      and fingerprint = any(%s)
) recent where n <= {_rows.MEDIAN_WINDOW} order by at desc, id desc
"""


class PostgresStore:
    """The healing store in PostgreSQL.

    Args:
        url: a libpq URL (``postgresql://user:password@host:5432/dbname?sslmode=require``).
        min_size: connections kept open.
        max_size: most connections open at once.
        timeout: how long a call waits for a working connection before ``StoreUnavailable``.
        connect_timeout: libpq's per-attempt connect timeout, unless the URL sets one.
        reconnect_timeout: how long one background reconnect attempt keeps trying.
        migrations_dir: where the migrations live (tests add their own).
    """

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        timeout: float = 5.0,
        connect_timeout: int = 5,
        reconnect_timeout: float = 10.0,
        migrations_dir: Path | None = None,
    ) -> None:
        self.url_for_display = mask_url(url)
        self._url = url
        self._timeout = timeout
        self._migrations_dir = migrations_dir
        self._kwargs: dict[str, Any] = {
            "autocommit": True,
            # No server-side prepared statements: Supabase's and other transaction poolers
            # (port 6543, pgbouncer) hand each transaction to a different server connection.
            "prepare_threshold": None,
            "row_factory": dict_row,
        }
        try:
            given = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            problem = scrub(" ".join(str(exc).split()), url)
            raise ConfigError(f"{self.url_for_display}: {problem}") from None
        if "connect_timeout" not in given:
            self._kwargs["connect_timeout"] = max(2, connect_timeout)
        self._pool = AsyncConnectionPool[psycopg.AsyncConnection[DictRow]](
            url,
            connection_class=psycopg.AsyncConnection[DictRow],
            min_size=min_size,
            max_size=max_size,
            kwargs=self._kwargs,
            open=False,
            timeout=timeout,
            reconnect_timeout=reconnect_timeout,
            check=AsyncConnectionPool.check_connection,
            name="healing-store",
        )
        self._opened = False
        self._open_lock = asyncio.Lock()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[DictRow]]:
        if not self._opened:
            async with self._open_lock:
                if not self._opened:
                    await self._pool.open(wait=False)
                    self._opened = True
        try:
            async with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            reason = await self._why_not() or f"no connection free within {self._timeout:g} s"
            raise StoreUnavailable(f"{self.url_for_display}: cannot connect ({reason})") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StoreUnavailable(f"{self.url_for_display}: {self._clean(exc)}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"{self.url_for_display}: {self._clean(exc)}") from exc

    async def _why_not(self) -> str | None:
        """Why no connection can be made (one direct attempt), or None if one can."""
        timeout = self._kwargs.get("connect_timeout", 5)
        try:
            conn = await psycopg.AsyncConnection.connect(self._url, connect_timeout=timeout)
        except psycopg.Error as exc:
            return self._clean(exc)
        await conn.close()
        return None

    def _clean(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__
        return scrub(text, self._url)

    # -- Store -------------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        migrations = load_migrations("postgres", self._migrations_dir)
        async with self._connection() as conn, conn.transaction():
            await conn.execute("select pg_advisory_xact_lock(%s)", (PG_LOCK_KEY,))
            cur = await conn.execute("select to_regclass(%s) is not null as ok", (VERSION_TABLE,))
            row = await cur.fetchone()
            applied: list[int] = []
            if row and row["ok"]:
                cur = await conn.execute(f"select version from {VERSION_TABLE}")
                applied = [r["version"] for r in await cur.fetchall()]
            done = []
            for migration in pending(migrations, applied):
                await conn.execute(migration.sql)  # several statements, no parameters
                await conn.execute(
                    f"insert into {VERSION_TABLE} (version) values (%s)", (migration.version,)
                )
                done.append(migration.version)
            return done

    async def ping(self) -> None:
        """Connect once directly (fails at once, with the server's reason), then via the pool."""
        reason = await self._why_not()
        if reason is not None:
            raise StoreUnavailable(f"{self.url_for_display}: cannot connect ({reason})")
        async with self._connection() as conn:
            await conn.execute("select 1")

    async def close(self) -> None:
        if self._opened:
            self._opened = False
            await self._pool.close()

    async def record_events(self, events: Sequence[HealingEvent]) -> None:
        if events:
            payload = Jsonb([_rows.event_values(event) for event in events])
            async with self._connection() as conn:
                await conn.execute("select healing_record_events(%s)", (payload,))

    async def recent_events(self, filter: EventFilter | None = None) -> list[HealingEvent]:
        sql, args = _rows.events_query(filter or EventFilter(), "%s", _rows.utc)
        async with self._connection() as conn:
            cur = await conn.execute(sql, args)
            return [_rows.event_from_row(row) for row in await cur.fetchall()]

    async def record_outcome(
        self, pattern: ErrorPattern, strategy: str, *, healed: bool, heal_s: float | None = None
    ) -> None:
        args = _rows.outcome_args(pattern, strategy, healed, heal_s)
        async with self._connection() as conn:
            await conn.execute(_RECORD_OUTCOME, args)

    async def pattern_stats(self, fingerprint: str) -> PatternStats | None:
        found = await self._stats(f"{_PATTERN_SELECT} where fingerprint = %s", (fingerprint,))
        return found[0] if found else None

    async def patterns(self, *, limit: int = 100) -> list[PatternStats]:
        sql = f"{_PATTERN_SELECT} order by seen desc, last_seen desc, fingerprint limit %s"
        return await self._stats(sql, (limit,))

    async def _stats(self, pattern_sql: str, args: tuple[Any, ...]) -> list[PatternStats]:
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(pattern_sql, args)
            found = await cur.fetchall()
            keys = [row["fingerprint"] for row in found]
            cur = await conn.execute(_OUTCOME_SELECT, (keys,))
            outcomes = await cur.fetchall()
            cur = await conn.execute(_HEALED, (keys,))
            healed = await cur.fetchall()
        return _rows.pattern_stats(found, outcomes, healed)

    # -- fleet state: the schema's functions, the same ones Supabase calls over REST ---------

    async def _scalar(self, sql: str, args: tuple[Any, ...]) -> Any:
        async with self._connection() as conn:
            cur = await conn.execute(sql, args)
            row = await cur.fetchone()
        return None if row is None else next(iter(row.values()))

    async def state_get(self, space: str, key: str) -> StateEntry | None:
        async with self._connection() as conn:
            cur = await conn.execute(f"{_STATE_SELECT} where space = %s and key = %s", (space, key))
            row = await cur.fetchone()
        return None if row is None else StateEntry.model_validate(row)

    async def state_list(self, space: str, *, limit: int = 1000) -> list[StateEntry]:
        async with self._connection() as conn:
            cur = await conn.execute(
                f"{_STATE_SELECT} where space = %s order by key limit %s", (space, limit)
            )
            return [StateEntry.model_validate(row) for row in await cur.fetchall()]

    async def state_put(
        self,
        space: str,
        key: str,
        value: Mapping[str, Any],
        *,
        expected_version: int | None,
        now: float,
    ) -> int | None:
        version = await self._scalar(
            "select healing_state_put(%s, %s, %s, %s, %s)",
            (space, key, Jsonb(dict(value)), expected_version, now),
        )
        return None if version is None else int(version)

    async def state_delete(
        self, space: str, key: str, *, expected_version: int | None = None
    ) -> bool:
        sql = "select healing_state_delete(%s, %s, %s)"
        return bool(await self._scalar(sql, (space, key, expected_version)))

    async def lease_take(self, name: str, holder: str, *, ttl_s: float, now: float) -> bool:
        sql = "select healing_lease_take(%s, %s, %s, %s)"
        return bool(await self._scalar(sql, (name, holder, ttl_s, now)))

    async def lease_drop(self, name: str, holder: str) -> bool:
        return bool(await self._scalar("select healing_lease_drop(%s, %s)", (name, holder)))

    async def counter_add(self, key: str, bucket: int, n: int = 1, *, keep_from: int) -> int:
        sql = "select healing_counter_add(%s, %s, %s, %s)"
        return int(await self._scalar(sql, (key, bucket, n, keep_from)) or 0)

    async def counter_sums(self, keys: Sequence[str], *, since_bucket: int) -> dict[str, int]:
        totals = dict.fromkeys(keys, 0)
        async with self._connection() as conn:
            cur = await conn.execute(
                "select key, sum(n)::bigint as n from healing_counters "
                "where key = any(%s) and bucket >= %s group by key",
                (list(keys), since_bucket),
            )
            for row in await cur.fetchall():
                totals[row["key"]] = int(row["n"])
        return totals

    async def slot_take(
        self, key: str, *, spacing_s: float, now: float, not_before: float | None = None
    ) -> float:
        sql = "select healing_slot_take(%s, %s, %s, %s)"
        return float(await self._scalar(sql, (key, spacing_s, now, not_before)))
