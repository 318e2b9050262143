"""Marking activities as integration calls, and what healing tells them while they run.

``@healing.integration(connector=..., operation=...)`` (stacked with ``@activity.defn``) marks an
activity whose failures the interceptor classifies and heals. While a marked activity runs,
``current_call()`` returns the healing context of this attempt: the connector to use (a reroute
may have changed it), a schema mapping to apply, and the failures seen on earlier attempts.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import temporalio.converter
from pydantic import BaseModel, ConfigDict, Field
from temporalio.api.common.v1 import Payload

from healing.names import HINTS_HEADER

F = TypeVar("F", bound=Callable[..., Any])

_SPEC_ATTR = "__healing_integration__"


@dataclass(frozen=True)
class IntegrationSpec:
    connector: str | None = None
    operation: str | None = None
    response_model: type[BaseModel] | None = None


class CallHints(BaseModel):
    """What the workflow side asks of the next attempt; travels in an activity header."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    connector: str | None = None
    """Reroute target replacing the call's own connector."""
    rerouted: list[str] = Field(default_factory=list)
    """Every connector the workflow side has rerouted this call to so far."""
    schema_mapping: dict[str, str] = Field(default_factory=dict)
    """Renames (observed -> expected) to apply to the response before validating it."""
    round: int = 0
    """How many times the workflow side has restarted this call."""
    edits: int = 0
    """How many times a human edited the input; a changed request needs a new idempotency key."""
    budget_s: float | None = None
    """Healing time left for this call, when the workflow side has spent some already."""
    drift_reviews: bool = False
    """The workflow side holds a drifted response for a human (``accept_mapping``). Without
    it (an older workflow worker in a rolling deploy would take the held review for a
    success) the activity raises SCHEMA_MISMATCH instead."""


@dataclass
class CallContext:
    """The healing context of one running attempt of an integration activity."""

    connector: str | None
    operation: str | None
    hints: CallHints
    attempt: int
    counts_by_type: dict[str, int] = field(default_factory=dict)
    token_version: int | None = None
    """Version of the credential this attempt sent: a refresh after a 401 rotates only if
    nobody has rotated past it already."""
    drift: Any = None
    """The worker's ``healing.drift.DriftBook`` (schema mappings over its store), if any."""
    slot_at: float | None = None
    """The rate-limit slot (epoch seconds) an earlier attempt reserved and waited for on the
    server: this attempt sends at it instead of taking a new one."""
    slot_gen: int = 0
    """The rate window's generation that slot belongs to."""
    gate: Callable[[], Awaitable[None]] | None = None
    """Asks the circuit breaker again; an activity that waited for a rate-limit slot awaits it
    right before sending (it raises when the circuit opened meanwhile)."""

    @property
    def healing_attempts(self) -> int:
        return sum(self.counts_by_type.values())


_CURRENT: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "healing_call", default=None
)


def integration(
    *,
    connector: str | None = None,
    operation: str | None = None,
    response_model: type[BaseModel] | None = None,
) -> Callable[[F], F]:
    """Mark an activity as an integration call that heals.

    Args:
        connector: Connector name (catalog key). When None, the interceptor takes it from the
            first argument's ``connector`` attribute or key.
        operation: Operation name, for classification rules and learning.
        response_model: A pydantic model a dict result must fit. A drifted result is
            adapted in the same attempt where value evidence allows (``healing.drift.
            fit_result``; the activity then returns the model's JSON), else SCHEMA_MISMATCH
            naming the fields.
    """

    def mark(fn: F) -> F:
        setattr(fn, _SPEC_ATTR, IntegrationSpec(connector, operation, response_model))
        return fn

    return mark


def integration_spec(fn: Callable[..., Any]) -> IntegrationSpec | None:
    spec = getattr(fn, _SPEC_ATTR, None)
    if spec is None:
        # Bound methods of activity classes carry the mark on the function.
        spec = getattr(getattr(fn, "__func__", None), _SPEC_ATTR, None)
    return spec if isinstance(spec, IntegrationSpec) else None


def current_call() -> CallContext | None:
    """The healing context of the running integration attempt, or None outside one."""
    return _CURRENT.get()


def _set_current(ctx: CallContext | None) -> contextvars.Token[CallContext | None]:
    return _CURRENT.set(ctx)


def _reset_current(token: contextvars.Token[CallContext | None]) -> None:
    _CURRENT.reset(token)


_CONVERTER = temporalio.converter.PayloadConverter.default


def read_hints(headers: Mapping[str, Payload]) -> CallHints:
    payload = headers.get(HINTS_HEADER)
    if payload is None:
        return CallHints()
    try:
        return CallHints.model_validate(_CONVERTER.from_payloads([payload])[0])
    except Exception:  # a foreign or corrupt header must not break the call
        logging.getLogger("healing").warning("ignoring unreadable %s header", HINTS_HEADER)
        return CallHints()


def encode_hints(hints: CallHints) -> Payload:
    return _CONVERTER.to_payloads([hints.model_dump(mode="json")])[0]
