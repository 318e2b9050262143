"""The fault plan: which request gets which fault, decided deterministically.

A `FaultPlan` answers one question, `fault_for(method, path, attempt)`: the fault (or None) for
the n-th request to a path. It is a pure function of the plan, so a test can compute in-process
what the chaos server will do, and how many attempts each path needs (`attempts_needed`), before
sending a single request.

Rules come first, in order; the first one that matches the method and path glob decides:

- `faults=[...]`: attempts 1..n get those faults, later attempts succeed;
- `always=fault`: every attempt gets it (a permanent fault);
- `outage=Outage(...)`: a time window (seconds since the plan was installed) during which every
  matching request gets a status fault; outside the window the rule is skipped.

Paths no rule decides get random transient faults when `rate > 0`: each attempt draws
independently from a hash of (seed, method, path, idempotency key, attempt) - not from a shared
RNG stream, so the order concurrent requests arrive in changes nothing. A drawn fault is dropped
when the `max_consecutive` attempts before it all drew one, so no path fails more than
`max_consecutive` times in a row.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable, Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from healing.testing.drift import DriftKind
from healing.testing.ratelimits import RateWindow

Vendor = Literal["generic", "salesforce", "hubspot", "slack", "github", "google", "graph"]
FaultKind = Literal[
    "latency", "timeout", "reset", "truncated", "status", "schema_rename", "schema_drift", "body"
]

_POLICIES: dict[str, frozenset[str]] = {
    "hubspot": frozenset({"TEN_SECONDLY_ROLLING", "DAILY"}),
    "github": frozenset({"secondary", "primary", "permission"}),
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LatencyFault(_Frozen):
    """Answer normally, `delay_ms` late."""

    kind: Literal["latency"] = "latency"
    delay_ms: float = Field(default=200.0, ge=0)


class TimeoutFault(_Frozen):
    """Read the request, then say nothing for `hang_s` seconds and close the connection."""

    kind: Literal["timeout"] = "timeout"
    hang_s: float = Field(default=60.0, gt=0)


class ResetFault(_Frozen):
    """Read the request, then close the socket with SO_LINGER 0 (the peer sees a TCP RST).

    The request is not processed.
    """

    kind: Literal["reset"] = "reset"


class TruncatedFault(_Frozen):
    """Process the request, send its headers with the full Content-Length, cut the body, close.

    The request IS processed (a POST creates its resource): the response is what gets lost,
    which is exactly the case idempotency keys exist for.
    """

    kind: Literal["truncated"] = "truncated"
    keep_fraction: float = Field(default=0.5, ge=0, lt=1)


class StatusFault(_Frozen):
    """An error response in the shape a given vendor really sends (see VENDOR-FAULTS.md).

    `retry_after` (seconds) sets Retry-After where the vendor sends one; when None, vendors that
    always send it use their documented value (Slack 30, Graph 41, GitHub 60). `policy` picks
    HubSpot's `TEN_SECONDLY_ROLLING` / `DAILY` or GitHub's `secondary` / `primary` /
    `permission`; `slack_error` is the `error` of a Slack `200 {"ok": false}`.
    """

    kind: Literal["status"] = "status"
    status: int = Field(default=503, ge=200, le=599)
    vendor: Vendor = "generic"
    retry_after: int | None = Field(default=None, ge=0)
    policy: str | None = None
    slack_error: str | None = None

    @model_validator(mode="after")
    def _check(self) -> StatusFault:
        if self.status < 400 and not (self.vendor == "slack" and self.status == 200):
            raise ValueError("status must be 4xx/5xx (or 200 with vendor='slack')")
        if self.policy is not None and self.policy not in _POLICIES.get(self.vendor, ()):
            allowed = sorted(_POLICIES.get(self.vendor, ()))
            raise ValueError(f"policy {self.policy!r} is not valid for {self.vendor}: {allowed}")
        if self.slack_error is not None and self.vendor != "slack":
            raise ValueError("slack_error is only valid with vendor='slack'")
        return self


class SchemaRenameFault(_Frozen):
    """Answer 200, but `email` is renamed `email_address` and `amount` becomes a number."""

    kind: Literal["schema_rename"] = "schema_rename"


class SchemaDriftFault(_Frozen):
    """Answer 200, drifted as ``change`` says (``healing.testing.drift``: ``hubspot``,
    ``rename``, ``merge_name``, ``home_currency``, ``ambiguous``, ``remove``, and the envelopes
    ``data``, ``results``, ``items``, ``list``). Works on POST answers too."""

    kind: Literal["schema_drift"] = "schema_drift"
    change: DriftKind = "hubspot"


class BodyFault(_Frozen):
    """Answer `status` with a body a client must not trust, then close the connection.

    `shape="huge"`: `size_bytes` of a JSON array of zeros, chunked (no Content-Length) unless
    `content_length`; `"nested"`: JSON nested `depth` deep (`[[[...]]]`); `"non_utf8"`: a JSON
    content type over bytes that are not UTF-8. The server counts the body bytes the client
    took (`ChaosStats.body_bytes_sent`), so a test sees whether it stopped reading.
    """

    kind: Literal["body"] = "body"
    shape: Literal["huge", "nested", "non_utf8"] = "huge"
    status: int = Field(default=200, ge=200, le=599)
    size_bytes: int = Field(default=50 * 1024 * 1024, ge=3)
    depth: int = Field(default=100_000, ge=1)
    content_length: bool = False


Fault = Annotated[
    LatencyFault
    | TimeoutFault
    | ResetFault
    | TruncatedFault
    | StatusFault
    | SchemaRenameFault
    | SchemaDriftFault
    | BodyFault,
    Field(discriminator="kind"),
]

# Faults whose response is still a 200 the client can read: the attempt succeeds.
SUCCESS_KINDS: frozenset[str] = frozenset({"latency", "schema_rename", "schema_drift"})


class Outage(_Frozen):
    """A window [start_s, start_s + duration_s) in which matching requests get a status fault.

    Seconds count from when the plan was installed on the server (server start, plan change or
    reset), on the server's injectable clock.
    """

    start_s: float = Field(default=0.0, ge=0)
    duration_s: float = Field(gt=0)
    status: int = Field(default=503, ge=400, le=599)
    vendor: Vendor = "salesforce"
    retry_after: int | None = Field(default=None, ge=0)

    def active(self, elapsed_s: float) -> bool:
        return self.start_s <= elapsed_s < self.start_s + self.duration_s

    def fault(self) -> StatusFault:
        return StatusFault(status=self.status, vendor=self.vendor, retry_after=self.retry_after)


class FaultRule(_Frozen):
    """Faults for requests whose method and path match (`path` is an fnmatch glob)."""

    method: str = "*"
    path: str = "*"
    faults: tuple[Fault, ...] = ()
    always: Fault | None = None
    outage: Outage | None = None

    @field_validator("method")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @model_validator(mode="after")
    def _one_action(self) -> FaultRule:
        given = sum((bool(self.faults), self.always is not None, self.outage is not None))
        if given != 1:
            raise ValueError("a rule needs exactly one of faults=[...], always=..., outage=...")
        return self

    def matches(self, method: str, path: str) -> bool:
        method_ok = self.method == "*" or self.method == method.upper()
        return method_ok and fnmatch.fnmatchcase(path, self.path)


def _default_kinds() -> tuple[Fault, ...]:
    return (
        StatusFault(status=503, retry_after=1),
        StatusFault(status=502),
        StatusFault(status=429, retry_after=1),
        ResetFault(),
        TruncatedFault(),
    )


DEFAULT_RANDOM_KINDS: tuple[Fault, ...] = _default_kinds()
DEFAULT_PATHS_PREFIX: tuple[str, ...] = ("/contacts", "/deals", "/hubspot")


class FaultPlan(_Frozen):
    """Rules plus optional random transient faults, all decided from `seed`."""

    seed: int = 0
    rules: tuple[FaultRule, ...] = ()
    rate: float = Field(default=0.0, ge=0, le=1)
    kinds: tuple[Fault, ...] = Field(default_factory=_default_kinds)
    rate_limits: tuple[RateWindow, ...] = ()
    """Per-client rate windows and quotas in vendor header forms (`healing.testing.ratelimits`)."""
    max_consecutive: int | None = Field(default=2, ge=1)
    paths_prefix: tuple[str, ...] = DEFAULT_PATHS_PREFIX

    @model_validator(mode="after")
    def _check(self) -> FaultPlan:
        if self.rate > 0 and not self.kinds:
            raise ValueError("random faults (rate > 0) need at least one fault in kinds")
        if self.rate >= 1 and self.max_consecutive is None:
            raise ValueError("rate=1 without max_consecutive would never let a request succeed")
        return self

    @classmethod
    def random(
        cls,
        seed: int,
        *,
        rate: float = 0.3,
        kinds: Sequence[Fault] | None = None,
        max_consecutive: int | None = 2,
        paths_prefix: str | Iterable[str] = DEFAULT_PATHS_PREFIX,
        rules: Sequence[FaultRule] = (),
    ) -> FaultPlan:
        """Independent transient faults at `rate` on paths starting with `paths_prefix`."""
        prefixes = (paths_prefix,) if isinstance(paths_prefix, str) else tuple(paths_prefix)
        return cls(
            seed=seed,
            rules=tuple(rules),
            rate=rate,
            kinds=_default_kinds() if kinds is None else tuple(kinds),
            max_consecutive=max_consecutive,
            paths_prefix=prefixes,
        )

    # -- decisions ------------------------------------------------------------------------

    def fault_for(
        self,
        method: str,
        path: str,
        attempt: int,
        *,
        idempotency_key: str | None = None,
        elapsed_s: float | None = None,
    ) -> Fault | None:
        """The fault for the `attempt`-th (1-based) request to `method path`, or None.

        Attempts count per method and path, or per Idempotency-Key for requests carrying one.
        Outage rules apply only when `elapsed_s` (seconds since the plan was installed) is given.
        """
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        method = method.upper()
        for rule in self.rules:
            if not rule.matches(method, path):
                continue
            if rule.outage is not None:
                if elapsed_s is not None and rule.outage.active(elapsed_s):
                    return rule.outage.fault()
                continue
            if rule.always is not None:
                return rule.always
            return rule.faults[attempt - 1] if attempt <= len(rule.faults) else None
        if not self._random_applies(path):
            return None
        key = _draw_key(method, path, idempotency_key)
        if not self._drawn(key, attempt):
            return None
        if self.max_consecutive is not None and attempt > self.max_consecutive:
            previous = range(attempt - self.max_consecutive, attempt)
            if all(self._drawn(key, n) for n in previous):
                return None
        return self.kinds[int(self._unit(key, attempt, "kind") * len(self.kinds))]

    def attempts_needed(
        self, method: str, path: str, *, idempotency_key: str | None = None
    ) -> int | None:
        """How many attempts `method path` takes to succeed; None if it never does.

        Outage rules are time windows, not attempt counts, and are skipped here. Latency and
        schema renames answer 200 and count as success.
        """
        for attempt in range(1, self._attempt_horizon(method, path) + 1):
            fault = self.fault_for(method, path, attempt, idempotency_key=idempotency_key)
            if fault is None or fault.kind in SUCCESS_KINDS:
                return attempt
        return None

    # -- internals ------------------------------------------------------------------------

    def _random_applies(self, path: str) -> bool:
        return self.rate > 0 and path.startswith(self.paths_prefix)

    def _attempt_horizon(self, method: str, path: str) -> int:
        for rule in self.rules:
            if rule.matches(method, path) and rule.outage is None:
                return len(rule.faults) + 1
        if not self._random_applies(path):
            return 1
        if self.max_consecutive is not None:
            return self.max_consecutive + 1
        return 10_000  # rate < 1 here, so a success comes long before this

    def _drawn(self, key: str, attempt: int) -> bool:
        return self._unit(key, attempt, "fault") < self.rate

    def _unit(self, key: str, attempt: int, purpose: str) -> float:
        raw = f"{self.seed}\x00{purpose}\x00{key}\x00{attempt}".encode()
        digest = hashlib.blake2b(raw, digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2.0**64


def _draw_key(method: str, path: str, idempotency_key: str | None) -> str:
    base = f"{method} {path}"
    return base if idempotency_key is None else f"{base} key={idempotency_key}"
