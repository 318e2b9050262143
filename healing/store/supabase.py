"""Supabase backend over REST (PostgREST), with the ``supabase`` package's client.

Writes call the schema's SQL functions through ``rpc`` (``POST /rest/v1/rpc/<name>``), the
same functions the PostgreSQL backend calls, so counters stay atomic; reads are filtered
``GET /rest/v1/<table>`` requests. The schema is not migrated over REST: apply
``supabase/migrations/`` with ``supabase db push`` (or paste it in the SQL editor), and use the
project's service_role key (the tables have row-level security on and no policies, so the
public anon key reads and writes nothing).

Install with ``pip install 'temporal-healing[supabase]'``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from healing.errors import ConfigError, StoreError, StoreUnavailable
from healing.store import _rows
from healing.store.base import EventFilter, PatternStats, StateEntry
from healing.store.migrate import VERSION_TABLE, load_migrations
from healing.store.url import mask_url
from healing.types import ErrorPattern, HealingEvent

if TYPE_CHECKING:
    from postgrest import AsyncRPCFilterRequestBuilder

    from supabase import AsyncClient

_UNAVAILABLE_CODES = {"502", "503", "504", "520", "522", "544", "PGRST000", "PGRST001", "PGRST002"}
_SCHEMA_CODES = {"42P01", "42883", "PGRST202", "PGRST205"}
_KEY_CODES = {"401", "403", "42501", "PGRST301", "PGRST302"}
_SCHEMA_HINT = (
    "the healing schema is not installed: run `supabase db push` with the migration from "
    "temporal-healing's supabase/migrations/ (or paste its SQL into the SQL editor)"
)
_KEY_HINT = "SUPABASE_KEY must be the project's service_role key"
_MAX_ROWS = 1000  # Supabase's default cap on rows per request


class SupabaseStore:
    """The healing store in a Supabase project, over its REST API.

    Args:
        url: the project URL, ``https://<ref>.supabase.co`` (SUPABASE_URL).
        key: the service_role key (SUPABASE_KEY); never shown in messages.
        timeout: seconds per HTTP request.
        migrations_dir: the migrations the project's schema must include.
    """

    def __init__(
        self, url: str, key: str, *, timeout: float = 10.0, migrations_dir: Path | None = None
    ) -> None:
        try:
            from supabase import AsyncClient, AsyncClientOptions
        except ImportError as exc:
            raise ConfigError(
                "the Supabase store needs the 'supabase' package: "
                "pip install 'temporal-healing[supabase]'"
            ) from exc
        if not url.startswith(("https://", "http://")):
            raise ConfigError(f"SUPABASE_URL={mask_url(url)!r} is not an http(s):// URL")
        if not key:
            raise ConfigError("SUPABASE_KEY is empty")
        self.url_for_display = f"supabase:// ({mask_url(url.rstrip('/'))})"
        self._migrations_dir = migrations_dir
        self._http = httpx.AsyncClient(timeout=timeout)
        options = AsyncClientOptions(
            auto_refresh_token=False,
            persist_session=False,
            httpx_client=self._http,
            postgrest_client_retry=False,  # the store reports outages; callers decide to retry
        )
        self._client: AsyncClient = AsyncClient(url, key, options)

    async def _execute(self, request: Any) -> Any:
        """Send a built request; translate transport and PostgREST errors."""
        from postgrest import APIError

        try:
            response = await request.execute()
        except httpx.TransportError as exc:
            problem = str(exc) or type(exc).__name__
            raise StoreUnavailable(f"{self.url_for_display}: cannot reach ({problem})") from exc
        except APIError as exc:
            code = str(exc.code or "")
            problem = f"{code} {exc.message or ''}".strip()
            if code in _UNAVAILABLE_CODES:
                raise StoreUnavailable(f"{self.url_for_display}: {problem}") from exc
            hint = (
                _SCHEMA_HINT if code in _SCHEMA_CODES else _KEY_HINT if code in _KEY_CODES else ""
            )
            raise StoreError(
                f"{self.url_for_display}: {problem}" + (f"; {hint}" if hint else "")
            ) from exc
        return response.data

    def _rpc(self, name: str, params: dict[str, Any]) -> AsyncRPCFilterRequestBuilder:
        return self._client.rpc(name, params)

    # -- Store -------------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Check that the project's schema has every migration; apply none (REST cannot)."""
        rows = await self._execute(self._client.table(VERSION_TABLE).select("version"))
        have = {int(row["version"]) for row in rows}
        missing = [
            m.version
            for m in load_migrations("postgres", self._migrations_dir)
            if m.version not in have
        ]
        if missing:
            raise StoreError(
                f"{self.url_for_display}: schema version(s) {missing} missing; {_SCHEMA_HINT}"
            )
        return []

    async def ping(self) -> None:
        await self._execute(self._client.table(VERSION_TABLE).select("version").limit(1))

    async def close(self) -> None:
        await self._http.aclose()

    async def record_events(self, events: Sequence[HealingEvent]) -> None:
        if events:
            rows = [_rows.event_values(event) for event in events]
            await self._execute(self._rpc("healing_record_events", {"p_events": rows}))

    async def recent_events(self, filter: EventFilter | None = None) -> list[HealingEvent]:
        f = filter or EventFilter()
        query = self._client.table("healing_events").select(*_rows.EVENT_COLUMNS)
        for column in ("workflow_id", "connector", "error_type", "kind", "fingerprint"):
            value = getattr(f, column)
            if value is not None:
                query = query.eq(column, str(value))
        if f.since is not None:
            query = query.gte("at", _rows.iso(f.since))
        query = query.order("at", desc=True).order("id", desc=True).limit(f.limit)
        return [_rows.event_from_row(row) for row in await self._execute(query)]

    async def record_outcome(
        self, pattern: ErrorPattern, strategy: str, *, healed: bool, heal_s: float | None = None
    ) -> None:
        args = _rows.outcome_args(pattern, strategy, healed, heal_s)
        await self._execute(self._rpc("healing_record_outcome", args))

    async def pattern_stats(self, fingerprint: str) -> PatternStats | None:
        query = self._patterns().eq("fingerprint", fingerprint).limit(1)
        found = await self._stats(await self._execute(query))
        return found[0] if found else None

    async def patterns(self, *, limit: int = 100) -> list[PatternStats]:
        query = self._patterns().order("seen", desc=True).order("last_seen", desc=True)
        query = query.order("fingerprint").limit(limit)
        return await self._stats(await self._execute(query))

    def _patterns(self) -> Any:
        return self._client.table("healing_patterns").select(*_rows.PATTERN_COLUMNS)

    async def _stats(self, found: list[dict[str, Any]]) -> list[PatternStats]:
        """Outcomes and recent heal times of ``found`` patterns (two more requests).

        Heal-time medians come from the newest healed events of these patterns, at most
        ``_MAX_ROWS`` in all (a server-side window per strategy, as SQL backends use, has no
        REST equivalent without another SQL function).
        """
        if not found:
            return []
        keys = [row["fingerprint"] for row in found]
        outcomes = await self._execute(
            self._client.table("healing_pattern_outcomes")
            .select(*_rows.OUTCOME_COLUMNS)
            .in_("fingerprint", keys)
        )
        healed = await self._execute(
            self._client.table("healing_events")
            .select("fingerprint", "strategy", "duration_s")
            .eq("kind", "healed")
            .in_("fingerprint", keys)
            .order("at", desc=True)
            .order("id", desc=True)
            .limit(min(_MAX_ROWS, _rows.MEDIAN_WINDOW * max(1, len(outcomes))))
        )
        return _rows.pattern_stats(found, outcomes, healed)

    # -- fleet state: writes through the schema's functions, reads as filtered GETs ----------

    def _state(self) -> Any:
        return self._client.table("healing_state").select(
            "space", "key", "version", "value", "updated_at"
        )

    async def state_get(self, space: str, key: str) -> StateEntry | None:
        rows = await self._execute(self._state().eq("space", space).eq("key", key).limit(1))
        return StateEntry.model_validate(rows[0]) if rows else None

    async def state_list(self, space: str, *, limit: int = 1000) -> list[StateEntry]:
        query = self._state().eq("space", space).order("key").limit(min(limit, _MAX_ROWS))
        return [StateEntry.model_validate(row) for row in await self._execute(query)]

    async def state_put(
        self,
        space: str,
        key: str,
        value: Mapping[str, Any],
        *,
        expected_version: int | None,
        now: float,
    ) -> int | None:
        args = {
            "p_space": space,
            "p_key": key,
            "p_value": dict(value),
            "p_expected": expected_version,
            "p_now": now,
        }
        version = await self._execute(self._rpc("healing_state_put", args))
        return None if version is None else int(version)

    async def state_delete(
        self, space: str, key: str, *, expected_version: int | None = None
    ) -> bool:
        args = {"p_space": space, "p_key": key, "p_expected": expected_version}
        return bool(await self._execute(self._rpc("healing_state_delete", args)))

    async def lease_take(self, name: str, holder: str, *, ttl_s: float, now: float) -> bool:
        args = {"p_name": name, "p_holder": holder, "p_ttl_s": ttl_s, "p_now": now}
        return bool(await self._execute(self._rpc("healing_lease_take", args)))

    async def lease_drop(self, name: str, holder: str) -> bool:
        args = {"p_name": name, "p_holder": holder}
        return bool(await self._execute(self._rpc("healing_lease_drop", args)))

    async def counter_add(self, key: str, bucket: int, n: int = 1, *, keep_from: int) -> int:
        args = {"p_key": key, "p_bucket": bucket, "p_n": n, "p_keep_from": keep_from}
        return int(await self._execute(self._rpc("healing_counter_add", args)) or 0)

    async def counter_sums(self, keys: Sequence[str], *, since_bucket: int) -> dict[str, int]:
        totals = dict.fromkeys(keys, 0)
        if keys:
            query = (
                self._client.table("healing_counters")
                .select("key", "n")
                .in_("key", list(keys))
                .gte("bucket", since_bucket)
                .limit(_MAX_ROWS)
            )
            for row in await self._execute(query):
                totals[row["key"]] += int(row["n"])
        return totals

    async def slot_take(
        self, key: str, *, spacing_s: float, now: float, not_before: float | None = None
    ) -> float:
        args = {"p_key": key, "p_spacing_s": spacing_s, "p_now": now, "p_not_before": not_before}
        return float(await self._execute(self._rpc("healing_slot_take", args)))
