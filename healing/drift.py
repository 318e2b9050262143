"""Schema mappings and drift records, shared by the fleet through the store (DESIGN s5b).

Spaces of fleet state:

- ``mappings``: one document per :class:`SchemaMapping` (key: its ``mapping_id``), per
  (connector, operation), with its renames, envelope, evidence, candidates and status:
  ``proposed`` (waits for a human), ``active`` (applied before validation on every worker),
  ``rejected`` (never applied) or ``pinned`` (a human's choice; automatic adaptation never
  replaces it; a human's newer approval supersedes it). ``revision`` counts the mappings of
  one operation; the newest active one wins.
- ``drift``: one :class:`DriftRecord` per change (added, removed, renamed, retyped,
  envelope) per operation, with paths and JSON types, never values; first and last seen and
  a count.

A third space, ``mapping_active``, holds one document per operation: its last revision and
a copy of the mapping applied. :class:`DriftBook` reads only that document per call, through a
cache of about a second (``cache_s``), so a call's cost never grows with the number of
mappings. A worker without a store uses :class:`~healing.store.memory.MemoryFleetState` (one
process). Store failures never fail a call whose response is here: a drift record that cannot
be written is logged and dropped; a confident mapping that cannot be stored still adapts the
response; a proposal that cannot be stored escalates as SCHEMA_MISMATCH (never retried).

The drift policy per operation (catalog ``schema_drift``): ``adapt`` applies confident
mappings by itself, ``review`` heals a call only with a human's approval, ``pause`` applies
only mappings a human approved (pinned, or accepted) and holds any other drift for a human,
its proposal stored and offered as ``accept_mapping``. Reads default to ``adapt`` (the
response is all a read does; a wrong guess is never applied since only evidence applies),
writes to ``review`` (the side effect has happened: a human confirms how its confirmation is
read before the workflow acts on it; the held response is used, the write is never re-sent).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from healing.adaptation import Adaptation, Candidate, Change, Envelope, KnownMapping, adapt
from healing.errors import SchemaMismatch
from healing.names import DRIFT_REVIEW_KEY
from healing.store.base import FleetState, StateEntry

logger = logging.getLogger("healing")

DriftPolicy = Literal["adapt", "review", "pause"]
MappingStatus = Literal["proposed", "active", "rejected", "pinned"]
MAPPING_ID = re.compile(r"m-[0-9a-f]{10}")
"""The form of a :func:`mapping_id`."""
MAPPINGS_SPACE = "mappings"
ACTIVE_SPACE = "mapping_active"
"""One document per operation: its last revision and the mapping applied (a copy)."""
_LIST_LIMIT = 100_000
DRIFT_SPACE = "drift"
_CAS_TRIES = 5
_LAST_SEEN_S = 1.0
"""A drift record's ``last_seen`` is rewritten at most this often (its count every time)."""


def default_policy(idempotent: bool) -> DriftPolicy:
    """``adapt`` for reads, ``review`` for writes (see the module docstring)."""
    return "adapt" if idempotent else "review"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class CandidateInfo(_Model):
    """A key considered for a missing field (names only), and why it was or was not chosen."""

    expected: str
    observed: str
    evidence: str
    chosen: bool
    why: str

    @classmethod
    def of(cls, c: Candidate) -> CandidateInfo:
        return cls(
            expected=c.expected,
            observed=c.observed,
            evidence=c.evidence,
            chosen=c.chosen,
            why=c.why,
        )


class SchemaMapping(_Model):
    """How to read one operation's drifted responses: renames and an envelope."""

    mapping_id: str
    connector: str
    operation: str
    renames: dict[str, str] = Field(default_factory=dict)
    """Observed path -> expected path."""
    envelope: Envelope | None = None
    status: MappingStatus = "proposed"
    confidence: float = 0.0
    evidence: list[str] = Field(default_factory=list)
    candidates: list[CandidateInfo] = Field(default_factory=list)
    revision: int = 1
    created_at: float = 0.0
    decided_at: float | None = None
    decided_by: str | None = None
    version: int = 0
    """The store's version of the document (0: not stored yet)."""

    @property
    def known(self) -> KnownMapping:
        return KnownMapping(self.renames, self.envelope)

    @property
    def by_human(self) -> bool:
        """Pinned, or approved by a human (not applied by healing's own evidence)."""
        return self.status == "pinned" or (
            self.status == "active" and self.decided_by not in (None, "healing")
        )

    def describe(self) -> str:
        parts = [f"{a} -> {b}" for a, b in sorted(self.renames.items())]
        if self.envelope:
            parts.insert(0, f"unwrap {self.envelope!r}")
        return ", ".join(parts) or "no change"


class DriftRecord(_Model):
    """One change of one operation's responses, counted (names and types, never values)."""

    connector: str
    operation: str
    change: str
    path: str
    to_path: str | None = None
    from_type: str | None = None
    to_type: str | None = None
    first_seen: float
    last_seen: float
    count: int = 1

    @property
    def key(self) -> str:
        return drift_key(self.connector, self.operation, self.change, self.path)

    def describe(self) -> str:
        return Change(
            self.change,  # type: ignore[arg-type]
            self.path,
            self.to_path,
            self.from_type,
            self.to_type,
        ).describe()


class DriftReview(_Model):
    """A drifted response held for a human: what ``call_integration`` returns (under
    ``healing.names.DRIFT_REVIEW_KEY``) instead of a result when the mapping needs approval.
    ``accept_mapping`` reads ``body`` with the mapping; the request is never sent again."""

    proposal: dict[str, Any]
    """The proposed :class:`SchemaMapping` (names only)."""
    body: Any
    """The response as received (bounded by ``max_response_bytes``)."""
    model: str
    """Import path of the operation's ``response_model``."""
    explanation: str
    drift: list[str] = Field(default_factory=list)
    resend_safe: bool = True
    """The operation is idempotent: the options may run it again (a write's never are)."""

    @property
    def mapping(self) -> SchemaMapping:
        return SchemaMapping.model_validate(self.proposal)


def review_of(result: Any) -> DriftReview | None:
    """The held review in an activity result, if it is one."""
    if not isinstance(result, dict) or not isinstance(result.get(DRIFT_REVIEW_KEY), dict):
        return None
    try:
        return DriftReview.model_validate(result[DRIFT_REVIEW_KEY])
    except ValueError:
        return None


def _counter(key: str) -> str:
    return f"drift:{key}"


def op_key(connector: str, operation: str) -> str:
    return f"{connector}.{operation}"


def drift_key(connector: str, operation: str, change: str, path: str) -> str:
    return f"{connector}.{operation}:{change}:{path}"


def mapping_id(
    connector: str, operation: str, renames: dict[str, str], envelope: str | None
) -> str:
    """Same mapping, same id, on every worker: two workers proposing it share one document."""
    raw = json.dumps([connector, operation, sorted(renames.items()), envelope])
    return "m-" + hashlib.sha256(raw.encode()).hexdigest()[:10]


def evidence_lines(adaptation: Adaptation) -> list[str]:
    """Why each part of the mapping was chosen, one line each."""
    lines = [
        f"{c.observed} -> {c.expected}: {c.evidence}" for c in adaptation.candidates if c.chosen
    ]
    if adaptation.envelope:
        lines.append(f"unwrap {adaptation.envelope!r}: the inner object fits the model")
    return lines


class DriftBook:
    """Mappings and drift records over fleet state.

    Args:
        state: The store (or a ``MemoryFleetState``).
        clock: Wall-clock epoch seconds (first/last seen, decisions).
        monotonic: Seconds for the read cache.
        cache_s: How long a worker trusts its last read of the mappings.
    """

    def __init__(
        self,
        state: FleetState,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        cache_s: float = 1.0,
    ) -> None:
        self.state = state
        self._clock = clock
        self._monotonic = monotonic
        self._cache_s = cache_s
        self._cached: dict[str, tuple[float, SchemaMapping | None]] = {}

    async def mappings(self, *, fresh: bool = True) -> list[SchemaMapping]:
        """Every mapping (for ``healing drift`` and exports, not the hot path). A document
        that does not decode is logged and skipped: it never hides the others."""
        del fresh  # always read: only the per-operation pointer (``active``) is cached
        found = []
        for entry in await self.state.state_list(MAPPINGS_SPACE, limit=_LIST_LIMIT):
            try:
                found.append(_mapping(entry))
            except ValueError as exc:
                logger.warning("schema mapping %s unreadable, skipped: %s", entry.key, exc)
        return found

    async def active(self, connector: str, operation: str) -> SchemaMapping | None:
        """The mapping applied before validation: pinned first, else the newest active one.

        One document per operation (space ``mapping_active``) says which, read at most once
        per ``cache_s``: the cost of a call never grows with the number of mappings.
        """
        key = op_key(connector, operation)
        cached = self._cached.get(key)
        if cached is not None and self._monotonic() - cached[0] < self._cache_s:
            return cached[1]
        try:
            pointer = await self._pointer(connector, operation)
        except Exception as exc:  # the store is down: validate as if there were no mapping
            logger.warning("schema mappings unavailable (%s): validating without", exc)
            return None
        chosen = pointer[0]
        self._cached[key] = (self._monotonic(), chosen)
        return chosen

    async def _pointer(
        self, connector: str, operation: str
    ) -> tuple[SchemaMapping | None, int, StateEntry | None]:
        """(the operation's chosen mapping, its last revision, the pointer document)."""
        entry = await self.state.state_get(ACTIVE_SPACE, op_key(connector, operation))
        if entry is None:
            return None, 0, None
        revision = entry.value.get("revision")
        raw = entry.value.get("mapping")
        try:
            chosen = SchemaMapping.model_validate(raw) if isinstance(raw, dict) else None
        except ValueError as exc:
            logger.warning("schema mapping pointer of %s unreadable: %s", entry.key, exc)
            chosen = None
        return chosen, revision if isinstance(revision, int) else 0, entry

    async def _bump(
        self, connector: str, operation: str, chosen: SchemaMapping | None, *, human: bool
    ) -> int:
        """Take the operation's next revision; with ``chosen``, make it the applied mapping
        (automatic adaptation never replaces a pinned one, a human's decision does)."""
        for _ in range(_CAS_TRIES):
            current, revision, entry = await self._pointer(connector, operation)
            revision += 1
            keep = chosen is None or (
                not human and current is not None and current.status == "pinned"
            )
            applied = current if keep or chosen is None else chosen
            if applied is not None and applied is chosen:
                applied = applied.model_copy(update={"revision": revision})
            value = {
                "revision": revision,
                "mapping": applied.model_dump(mode="json") if applied else None,
            }
            version = await self.state.state_put(
                ACTIVE_SPACE,
                op_key(connector, operation),
                value,
                expected_version=entry.version if entry is not None else None,
                now=self._clock(),
            )
            if version is not None:
                self._cached.pop(op_key(connector, operation), None)
                return revision
        raise RuntimeError(f"the mappings of {connector}.{operation} kept changing")

    async def _repoint(self, connector: str, operation: str, dropped: str) -> None:
        """``dropped`` was rejected: apply the best remaining pinned or active mapping."""
        for _ in range(_CAS_TRIES):
            current, revision, entry = await self._pointer(connector, operation)
            if entry is None or current is None or current.mapping_id != dropped:
                return
            mine = [
                m
                for m in await self.mappings()
                if (m.connector, m.operation) == (connector, operation)
                and m.mapping_id != dropped
                and m.status in ("pinned", "active")
            ]
            best = max(
                mine,
                key=lambda m: (m.status == "pinned", m.revision, m.created_at, m.mapping_id),
                default=None,
            )
            value = {
                "revision": revision,
                "mapping": best.model_dump(mode="json") if best else None,
            }
            version = await self.state.state_put(
                ACTIVE_SPACE, entry.key, value, expected_version=entry.version, now=self._clock()
            )
            if version is not None:
                self._cached.pop(entry.key, None)
                return

    async def get(self, mapping_id: str) -> SchemaMapping | None:
        entry = await self.state.state_get(MAPPINGS_SPACE, mapping_id)
        return _mapping(entry) if entry is not None else None

    async def learn(
        self,
        connector: str,
        operation: str,
        adaptation: Adaptation,
        *,
        status: MappingStatus,
        decided_by: str | None = None,
    ) -> SchemaMapping:
        """Store the mapping ``adaptation`` found as ``proposed`` or ``active``.

        The same mapping found by several workers is one document; a proposal found again
        stays as a human left it (rejected stays rejected).
        """
        ident = mapping_id(connector, operation, adaptation.renames, adaptation.envelope)
        now = self._clock()
        for _ in range(_CAS_TRIES):
            entry = await self.state.state_get(MAPPINGS_SPACE, ident)
            if entry is not None:
                stored = _mapping(entry)
                if stored.status != "proposed" or status == "proposed":
                    return stored
                new = stored.model_copy(
                    update={"status": status, "decided_at": now, "decided_by": decided_by}
                )
                upcoming = new.model_copy(update={"version": entry.version + 1})
                revision = await self._bump(connector, operation, upcoming, human=False)
                new = new.model_copy(update={"revision": revision})
            else:
                new = SchemaMapping(
                    mapping_id=ident,
                    connector=connector,
                    operation=operation,
                    renames=adaptation.renames,
                    envelope=adaptation.envelope,
                    status=status,
                    confidence=adaptation.confidence,
                    evidence=evidence_lines(adaptation),
                    candidates=[CandidateInfo.of(c) for c in adaptation.candidates],
                    created_at=now,
                    decided_at=now if status != "proposed" else None,
                    decided_by=decided_by if status != "proposed" else None,
                )
                # The pointer's copy carries the version the document is about to have.
                chosen = new.model_copy(update={"version": 1}) if status == "active" else None
                revision = await self._bump(connector, operation, chosen, human=False)
                new = new.model_copy(update={"revision": revision})
            version = await self._put(new, entry)
            if version is not None:
                return new.model_copy(update={"version": version})
        raise RuntimeError(f"mapping {ident} kept changing under this writer")

    async def decide(
        self, mapping_id: str, status: MappingStatus, *, decided_by: str = "unknown"
    ) -> SchemaMapping:
        """Approve (``active`` or ``pinned``) or reject a mapping; approving makes it the
        operation's newest.

        Raises:
            KeyError: No mapping has this id.
        """
        for _ in range(_CAS_TRIES):
            entry = await self.state.state_get(MAPPINGS_SPACE, mapping_id)
            if entry is None:
                raise KeyError(mapping_id)
            stored = _mapping(entry)
            update: dict[str, Any] = {
                "status": status,
                "decided_at": self._clock(),
                "decided_by": decided_by,
            }
            conn, op = stored.connector, stored.operation
            if status in ("active", "pinned"):
                chosen = stored.model_copy(update={**update, "version": entry.version + 1})
                update["revision"] = await self._bump(conn, op, chosen, human=True)
            version = await self._put(stored.model_copy(update=update), entry)
            if version is not None:
                if status in ("active", "pinned"):
                    await self._unpin_others(stored)
                else:
                    await self._repoint(conn, op, mapping_id)
                return stored.model_copy(update={**update, "version": version})
        raise RuntimeError(f"mapping {mapping_id} kept changing under this writer")

    async def _unpin_others(self, chosen: SchemaMapping) -> None:
        """A human's newer approval supersedes an older pin of the same operation (a pin
        wins over every active mapping, so it would hide the approved one)."""
        for m in await self.mappings(fresh=True):
            same = (m.connector, m.operation) == (chosen.connector, chosen.operation)
            if not same or m.status != "pinned" or m.mapping_id == chosen.mapping_id:
                continue
            entry = await self.state.state_get(MAPPINGS_SPACE, m.mapping_id)
            if entry is not None:
                await self._put(_mapping(entry).model_copy(update={"status": "active"}), entry)

    async def record(self, connector: str, operation: str, changes: Sequence[Change]) -> None:
        """Count each change (first/last seen); never raises: drift must not fail a call."""
        for change in dict.fromkeys(changes):
            try:
                await self._count(connector, operation, change)
            except Exception as exc:
                logger.warning("drift record %s not written: %s", change.describe(), exc)

    async def records(self) -> list[DriftRecord]:
        """Every drift record, with its exact count (from the fleet counter)."""
        found = []
        for entry in await self.state.state_list(DRIFT_SPACE, limit=_LIST_LIMIT):
            try:
                found.append(DriftRecord.model_validate(entry.value))
            except ValueError as exc:
                logger.warning("drift record %s unreadable, skipped: %s", entry.key, exc)
        counts = await self.state.counter_sums([_counter(r.key) for r in found], since_bucket=0)
        return [
            r.model_copy(update={"count": counts.get(_counter(r.key)) or r.count}) for r in found
        ]

    async def _count(self, connector: str, operation: str, change: Change) -> None:
        # The count is an atomic fleet counter (no increment is lost to a lost CAS); the
        # document (types, first/last seen) is written when new and at most once a second.
        key = drift_key(connector, operation, change.kind, change.path)
        total = await self.state.counter_add(_counter(key), 0, 1, keep_from=0)
        now = self._clock()
        entry = await self.state.state_get(DRIFT_SPACE, key)
        if entry is None:
            record = DriftRecord(
                connector=connector,
                operation=operation,
                change=change.kind,
                path=change.path,
                to_path=change.to_path,
                from_type=change.from_type,
                to_type=change.to_type,
                first_seen=now,
                last_seen=now,
                count=total,
            )
        else:
            old = DriftRecord.model_validate(entry.value)
            if now - old.last_seen < _LAST_SEEN_S:
                return
            record = old.model_copy(update={"last_seen": now, "count": total})
        expected = entry.version if entry is not None else None
        # A lost race means another worker just wrote it: nothing to add.
        await self.state.state_put(
            DRIFT_SPACE, key, record.model_dump(mode="json"), expected_version=expected, now=now
        )

    async def _put(self, mapping: SchemaMapping, entry: StateEntry | None) -> int | None:
        value = mapping.model_dump(mode="json", exclude={"version"})
        return await self.state.state_put(
            MAPPINGS_SPACE,
            mapping.mapping_id,
            value,
            expected_version=entry.version if entry is not None else None,
            now=self._clock(),
        )


def _mapping(entry: StateEntry) -> SchemaMapping:
    return SchemaMapping.model_validate({**entry.value, "version": entry.version})


def export_model_change(
    mappings: Sequence[SchemaMapping], records: Sequence[DriftRecord]
) -> dict[str, Any]:
    """The proposed ``response_model`` change per operation, for a catalog update.

    Per ``connector.operation``: ``rename`` (expected field -> the key responses now use, from
    active or pinned mappings), ``unwrap`` (envelope), ``add`` (new keys with their JSON type),
    ``retype`` (field -> new JSON type), ``removed`` (required fields no longer sent).
    """
    out: dict[str, dict[str, Any]] = {}
    for m in mappings:
        if m.status not in ("active", "pinned"):
            continue
        op = out.setdefault(f"{m.connector}.{m.operation}", {})
        op.setdefault("rename", {}).update({exp: obs for obs, exp in m.renames.items()})
        if m.envelope:
            op["unwrap"] = m.envelope
    for r in records:
        op = out.setdefault(f"{r.connector}.{r.operation}", {})
        if r.change == "added":
            op.setdefault("add", {})[r.path] = r.to_type
        elif r.change == "retyped":
            op.setdefault("retype", {})[r.path] = r.to_type
        elif r.change == "removed" and r.path not in op.get("rename", {}):
            op.setdefault("removed", []).append(r.path)
    return out


async def fit_result(
    book: DriftBook | None,
    model: type[BaseModel],
    result: Any,
    connector: str | None,
    operation: str | None,
) -> Any:
    """An ``@healing.integration(response_model=...)`` activity's result, adapted to its
    model in the same attempt (policy ``adapt``: only value evidence applies alone).

    A model instance is returned as it is; a mapping is validated, adapted with the active
    or a confident new mapping, and returned as the model's JSON (keys it does not know are
    recorded as drift). Raises SchemaMismatch naming the fields when no confident mapping
    fits (a proposal is stored for ``healing drift approve``).
    """
    if isinstance(result, BaseModel) or result is None:
        return result
    conn, op = connector or "activity", operation or model.__name__
    known = await book.active(conn, op) if book is not None else None
    found = adapt(model, result, known=known.known if known is not None else None)
    if book is not None:
        await book.record(conn, op, found.changes)
    if found.ok and found.known:
        return found.data
    hint = ""
    if found.ok and book is not None:
        pinned = known is not None and known.status == "pinned"
        auto = found.automatic and not pinned
        try:
            learned = await book.learn(
                conn, op, found, status="active" if auto else "proposed", decided_by="healing"
            )
        except Exception as exc:  # the store failed: the result is already here
            if auto:
                logger.warning("schema mapping of %s.%s not stored (%s)", conn, op, exc)
                return found.data
            hint = f" (the proposed mapping could not be stored: {type(exc).__name__})"
        else:
            if learned.status in ("active", "pinned"):
                return found.data
            hint = f" (mapping {learned.mapping_id} is {learned.status}"
            if learned.status == "proposed":
                # Retrying runs the user's activity again, and with it its request: a human
                # decides whether that is safe; later calls use the mapping once approved.
                hint += (
                    f"; `healing drift approve {learned.mapping_id}` makes later calls use "
                    "it; retrying this step runs the activity, and its request, again)"
                )
            else:
                hint += ")"
    raise SchemaMismatch(
        f"{conn}.{op}: the result does not fit {model.__name__}: {found.explain()}{hint}",
        missing=found.missing,
        unexpected=sorted({c.path for c in found.changes if c.kind == "added"}),
        mapping={},
        connector=conn,
        operation=op,
    )
