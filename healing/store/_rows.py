"""Rows <-> models, shared by every backend so they read and write the same values."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from healing.store.base import EventFilter, PatternStats, StrategyStats
from healing.types import ErrorPattern, HealingEvent

EVENT_COLUMNS = (
    "at",
    "kind",
    "workflow_id",
    "connector",
    "operation",
    "error_type",
    "fingerprint",
    "strategy",
    "outcome",
    "duration_s",
)
PATTERN_COLUMNS = (
    "fingerprint",
    "connector",
    "operation",
    "error_type",
    "status_code",
    "vendor_code",
    "template",
    "seen",
    "first_seen",
    "last_seen",
)
OUTCOME_COLUMNS = ("fingerprint", "strategy", "tries", "successes", "total_heal_s")
MEDIAN_WINDOW = 100
"""StrategyStats.median_heal_s is the median of this many most recent healed events."""


def utc(at: datetime) -> datetime:
    """``at`` in UTC; a naive datetime is taken to be UTC already."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def iso(at: datetime) -> str:
    """Fixed-width ISO-8601 in UTC, so that text order is time order (SQLite, JSON)."""
    return utc(at).isoformat(timespec="microseconds")


def parse_time(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    return utc(value if isinstance(value, datetime) else datetime.fromisoformat(value))


def event_values(event: HealingEvent) -> dict[str, Any]:
    """An event as JSON-ready column values (the shape ``healing_record_events`` reads)."""
    return {
        "at": iso(event.at),
        "kind": event.kind,
        "workflow_id": event.workflow_id,
        "connector": event.connector,
        "operation": event.operation,
        "error_type": None if event.error_type is None else str(event.error_type),
        "fingerprint": event.fingerprint,
        "strategy": None if event.strategy is None else str(event.strategy),
        "outcome": event.outcome,
        "duration_s": event.duration_s,
    }


def event_from_row(row: Mapping[str, Any]) -> HealingEvent:
    values = {column: row[column] for column in EVENT_COLUMNS if row.get(column) is not None}
    values["at"] = parse_time(row["at"])
    return HealingEvent.model_validate(values)


def outcome_args(
    pattern: ErrorPattern, strategy: str, healed: bool, heal_s: float | None
) -> dict[str, Any]:
    """The named arguments of ``healing_record_outcome``."""
    return {
        "p_fingerprint": pattern.fingerprint,
        "p_connector": pattern.connector,
        "p_operation": pattern.operation,
        "p_error_type": str(pattern.error_type),
        "p_status_code": pattern.status_code,
        "p_vendor_code": pattern.vendor_code,
        "p_template": pattern.template,
        "p_strategy": strategy,
        "p_healed": healed,
        "p_heal_s": heal_s,
    }


def medians(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], float]:
    """Median heal time per (fingerprint, strategy) of healed-event rows, newest first.

    Rows beyond the newest ``MEDIAN_WINDOW`` of a pair are ignored.
    """
    samples: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        if row.get("strategy") is None or row.get("duration_s") is None:
            continue
        key = (row["fingerprint"], row["strategy"])
        if len(samples[key]) < MEDIAN_WINDOW:
            samples[key].append(float(row["duration_s"]))
    return {key: statistics.median(values) for key, values in samples.items()}


def pattern_stats(
    pattern_rows: Iterable[Mapping[str, Any]],
    outcome_rows: Iterable[Mapping[str, Any]],
    healed_rows: Iterable[Mapping[str, Any]],
) -> list[PatternStats]:
    """Assemble PatternStats in the order of ``pattern_rows``."""
    median_of = medians(healed_rows)
    by_pattern: dict[str, list[StrategyStats]] = defaultdict(list)
    for row in outcome_rows:
        fingerprint, strategy = row["fingerprint"], row["strategy"]
        by_pattern[fingerprint].append(
            StrategyStats(
                strategy=strategy,
                tries=int(row["tries"]),
                successes=int(row["successes"]),
                total_heal_s=float(row["total_heal_s"]),
                median_heal_s=median_of.get((fingerprint, strategy)),
            )
        )
    result = []
    for row in pattern_rows:
        strategies = sorted(by_pattern[row["fingerprint"]], key=lambda s: (-s.tries, s.strategy))
        pattern = ErrorPattern(
            fingerprint=row["fingerprint"],
            connector=row["connector"],
            operation=row["operation"],
            error_type=row["error_type"],
            status_code=row["status_code"],
            vendor_code=row["vendor_code"],
            template=row["template"] or "",
        )
        result.append(
            PatternStats(
                pattern=pattern,
                seen=int(row["seen"]),
                first_seen=parse_time(row["first_seen"]),
                last_seen=parse_time(row["last_seen"]),
                strategies=strategies,
            )
        )
    return result


def events_query(
    f: EventFilter, placeholder: str, when: Callable[[datetime], Any]
) -> tuple[str, list[Any]]:
    """SQL and arguments for ``recent_events`` (``placeholder``: ``%s`` or ``?``)."""
    where: list[str] = []
    args: list[Any] = []
    for column in ("workflow_id", "connector", "error_type", "kind", "fingerprint"):
        value = getattr(f, column)
        if value is not None:
            where.append(f"{column} = {placeholder}")
            args.append(str(value))
    if f.since is not None:
        where.append(f"at >= {placeholder}")
        args.append(when(f.since))
    sql = f"select {', '.join(EVENT_COLUMNS)} from healing_events"
    if where:
        sql += " where " + " and ".join(where)
    sql += f" order by at desc, id desc limit {placeholder}"
    args.append(f.limit)
    return sql, args
