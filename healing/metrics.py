"""Healing metrics: what the healing layer counts, through the Temporal SDK's metric meters.

``HEALING_METRICS=127.0.0.1:9464`` makes the worker build a Temporal ``Runtime`` with a
Prometheus endpoint (:func:`prometheus_runtime`); its client and worker then export the SDK's
own ``temporal_*`` metrics and these ``healing_*`` ones on ``http://127.0.0.1:9464/metrics``.

The activity side records through ``activity.metric_meter()`` (labels ``namespace``,
``task_queue``, ``activity_type`` added by the SDK), the workflow side through
``workflow.metric_meter()`` (``namespace``, ``task_queue``, ``workflow_type``), which is replay
safe: a workflow replayed after a cache eviction or a worker restart counts nothing twice.
Without a metrics runtime both meters are no-ops. Recording never raises into healing: a
metric that cannot be recorded is dropped with a debug log line.

Each metric sits where the event log (``healing.eventlog``) records the same step, so the
endpoint's counters and the store's events agree:

=================================  ==========================================================
metric (labels)                    counted when, event-log twin
=================================  ==========================================================
``healing_failures``               a call attempt failed and was classified (``classified``)
(error_type, connector)
``healing_attempts``               a healing step and how it ended: ``retry`` (another attempt
(strategy, outcome, error_type)    scheduled, ``attempt``), ``held`` (a wait of our own
                                   choosing: a rate slot, the retry budget, a parked quota;
                                   ``attempt``), ``gave_up`` (the activity side handed over,
                                   ``gave_up``), ``healed`` / ``resolved``
                                   (``healed``; ``resolved`` after a human), ``refreshed``,
                                   ``adapted``, ``rerouted``, ``failed``, ``escalated``
``healing_time_to_heal_seconds``   first failure to success, per heal (``healed``);
(strategy, healed_by)              healed_by = ``retries`` | ``workflow`` | ``human``
``healing_escalations_opened``     a workflow paused for a decision (``escalated``)
(error_type, connector)
``healing_escalations_closed``     the pause ended (``decided``; ``cancelled`` has no twin);
(error_type, connector, option)    open escalations = opened - closed
``healing_token_refreshes``        a credential refresh ran (``refreshed`` when ok)
(connector, outcome)
``healing_schema_drift``           a response no longer fit its model as it came (drift)
(connector, operation)
``healing_schema_adaptations``     a schema mapping was applied (``adapted`` when ok)
(connector, operation, outcome)
``healing_breaker_transitions``    a connector's circuit changed state (per worker)
(connector, from_state, to_state)
``healing_breaker_state``          gauge: 0 closed, 1 half open, 2 open (per worker)
(connector)
``healing_notifications``          a pause notification was sent, failed or was rejected
(format, outcome)
=================================  ==========================================================

Counters carry no ``_total`` suffix, like the SDK's own metrics on the same endpoint (the
runtime is built with ``counters_total_suffix=False``, the SDK default).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping, Sequence
from typing import Final

from temporalio import activity, workflow
from temporalio.common import MetricMeter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from healing.breaker import BreakerTransition
from healing.errors import ConfigError
from healing.names import GRANT_REVOKED_TYPE

__all__ = [
    "ATTEMPTS",
    "BREAKER_STATE",
    "BREAKER_TRANSITIONS",
    "ESCALATIONS_CLOSED",
    "ESCALATIONS_OPENED",
    "FAILURES",
    "HEAL_BUCKETS_S",
    "METRIC_NAMES",
    "NOTIFICATIONS",
    "SCHEMA_ADAPTATIONS",
    "SCHEMA_DRIFT",
    "TIME_TO_HEAL",
    "TOKEN_REFRESHES",
    "activity_attempt",
    "activity_failure",
    "activity_healed",
    "activity_schema_drift",
    "bind_address",
    "breaker_changed",
    "heal_strategy",
    "notification",
    "prometheus_runtime",
    "refresh_outcome",
    "workflow_attempt",
    "workflow_escalation_closed",
    "workflow_escalation_opened",
    "workflow_healed",
    "workflow_schema_adapted",
    "workflow_token_refresh",
]

_LOG = logging.getLogger(__name__)

FAILURES: Final = "healing_failures"
ATTEMPTS: Final = "healing_attempts"
TIME_TO_HEAL: Final = "healing_time_to_heal_seconds"
ESCALATIONS_OPENED: Final = "healing_escalations_opened"
ESCALATIONS_CLOSED: Final = "healing_escalations_closed"
TOKEN_REFRESHES: Final = "healing_token_refreshes"
SCHEMA_DRIFT: Final = "healing_schema_drift"
SCHEMA_ADAPTATIONS: Final = "healing_schema_adaptations"
BREAKER_TRANSITIONS: Final = "healing_breaker_transitions"
BREAKER_STATE: Final = "healing_breaker_state"
NOTIFICATIONS: Final = "healing_notifications"
METRIC_NAMES: Final = (
    FAILURES,
    ATTEMPTS,
    TIME_TO_HEAL,
    ESCALATIONS_OPENED,
    ESCALATIONS_CLOSED,
    TOKEN_REFRESHES,
    SCHEMA_DRIFT,
    SCHEMA_ADAPTATIONS,
    BREAKER_TRANSITIONS,
    BREAKER_STATE,
    NOTIFICATIONS,
)

HEAL_BUCKETS_S: Final = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 86400.0)
"""Time-to-heal histogram buckets: sub-second retries up to a human answering within a day."""

_BREAKER_LEVEL: Final = {"closed": 0, "half_open": 1, "open": 2}
_DESCRIPTIONS: Final = {
    FAILURES: "Failed integration call attempts, classified by error type",
    ATTEMPTS: "Healing steps by strategy and outcome",
    TIME_TO_HEAL: "Seconds from a call's first failure to its success",
    ESCALATIONS_OPENED: "Workflows paused for a human decision",
    ESCALATIONS_CLOSED: "Pauses ended (decision, timeout default or cancellation)",
    TOKEN_REFRESHES: "Credential refreshes run by the workflow side",
    SCHEMA_DRIFT: "Responses that no longer fit their response model",
    SCHEMA_ADAPTATIONS: "Schema mappings applied to drifted responses",
    BREAKER_TRANSITIONS: "Circuit breaker state changes per connector (per worker)",
    BREAKER_STATE: "Circuit breaker state per connector: 0 closed, 1 half open, 2 open",
    NOTIFICATIONS: "Pause notifications by format and outcome",
}

Labels = Mapping[str, str | int | float | bool]


def _label(value: object) -> str:
    text = getattr(value, "value", value)
    return "none" if text is None or text == "" else str(text)


def _labels(**values: object) -> dict[str, str | int | float | bool]:
    return {k: _label(v) for k, v in values.items()}


# --- recording, never raising -------------------------------------------------------------


def _activity_meter() -> MetricMeter | None:
    try:
        return activity.metric_meter()
    except RuntimeError:  # not in an activity, or a multiprocess sync activity
        return None


def _workflow_meter() -> MetricMeter | None:
    try:
        return workflow.metric_meter()
    except Exception:  # not in a workflow (a unit test of the loop, say)
        return None


def _add(meter: MetricMeter | None, name: str, labels: Labels, value: int = 1) -> None:
    if meter is None:
        return
    try:
        meter.create_counter(name, _DESCRIPTIONS[name]).add(value, labels)
    except Exception as exc:  # metrics are best effort: never break a call over them
        _LOG.debug("metric %s not recorded: %s", name, exc)


def _observe(meter: MetricMeter | None, name: str, labels: Labels, value: float) -> None:
    if meter is None:
        return
    try:
        meter.create_histogram_float(name, _DESCRIPTIONS[name], "s").record(max(value, 0.0), labels)
    except Exception as exc:
        _LOG.debug("metric %s not recorded: %s", name, exc)


def _set(meter: MetricMeter | None, name: str, labels: Labels, value: int) -> None:
    if meter is None:
        return
    try:
        meter.create_gauge(name, _DESCRIPTIONS[name]).set(value, labels)
    except Exception as exc:
        _LOG.debug("metric %s not recorded: %s", name, exc)


# --- activity side --------------------------------------------------------------------------


def activity_failure(error_type: object, connector: str | None, operation: str | None) -> None:
    """A call attempt failed and was classified (also a schema drift for SCHEMA_MISMATCH)."""
    meter = _activity_meter()
    _add(meter, FAILURES, _labels(error_type=error_type, connector=connector))
    if _label(error_type) == "SCHEMA_MISMATCH":
        _add(meter, SCHEMA_DRIFT, _labels(connector=connector, operation=operation))


def activity_schema_drift(connector: str | None, operation: str | None) -> None:
    """A response drifted from its model and was read anyway (adapted, or held for review)."""
    _add(_activity_meter(), SCHEMA_DRIFT, _labels(connector=connector, operation=operation))


def activity_attempt(strategy: object, outcome: str, error_type: object) -> None:
    """The activity side's verdict on a call: ``retry``, ``held`` or ``gave_up``."""
    labels = _labels(strategy=strategy, outcome=outcome, error_type=error_type)
    _add(_activity_meter(), ATTEMPTS, labels)


def activity_healed(strategy: object, error_type: object, heal_s: float) -> None:
    """Server-paced retries healed the call."""
    meter = _activity_meter()
    _add(meter, ATTEMPTS, _labels(strategy=strategy, outcome="healed", error_type=error_type))
    _observe(meter, TIME_TO_HEAL, _labels(strategy=strategy, healed_by="retries"), heal_s)


def breaker_changed(change: BreakerTransition) -> None:
    """A connector's circuit changed state (called in activity context)."""
    meter = _activity_meter()
    labels = _labels(
        connector=change.connector, from_state=change.from_state, to_state=change.to_state
    )
    _add(meter, BREAKER_TRANSITIONS, labels)
    level = _BREAKER_LEVEL.get(str(change.to_state), 0)
    _set(meter, BREAKER_STATE, _labels(connector=change.connector), level)


def notification(fmt: str, outcome: str) -> None:
    """A notification was sent (``sent``), failed (``failed``) or was refused (``rejected``):
    by the notify activity, or by workflow code for the log line."""
    meter = _activity_meter() or _workflow_meter()
    _add(meter, NOTIFICATIONS, _labels(format=fmt, outcome=outcome))


# --- workflow side (replay safe) ------------------------------------------------------------

_WORKFLOW_STRATEGIES: Final = ("refresh_token", "schema_adapt", "reroute")


def heal_strategy(strategies: Sequence[object], *, human: bool) -> str:
    """The label of a workflow-side heal: ``decision`` after a human, else the latest
    workflow-side strategy of the call (``retry`` when there was none)."""
    if human:
        return "decision"
    for strategy in reversed(strategies):
        if _label(strategy) in _WORKFLOW_STRATEGIES:
            return _label(strategy)
    return "retry"


def refresh_outcome(problem: tuple[str, str | None] | None) -> str:
    """``ok``, ``revoked`` (the grant is dead) or ``failed``, from a healing activity's result."""
    if problem is None:
        return "ok"
    return "revoked" if problem[1] == GRANT_REVOKED_TYPE else "failed"


def workflow_attempt(strategy: object, outcome: str, error_type: object) -> None:
    """A workflow-side healing step: refreshed, adapted, rerouted, failed, escalated."""
    labels = _labels(strategy=strategy, outcome=outcome, error_type=error_type)
    _add(_workflow_meter(), ATTEMPTS, labels)


def workflow_healed(strategy: object, error_type: object, heal_s: float, *, human: bool) -> None:
    """A call that the workflow side had to heal succeeded (``resolved`` after a human)."""
    meter = _workflow_meter()
    outcome = "resolved" if human else "healed"
    _add(meter, ATTEMPTS, _labels(strategy=strategy, outcome=outcome, error_type=error_type))
    by = "human" if human else "workflow"
    _observe(meter, TIME_TO_HEAL, _labels(strategy=strategy, healed_by=by), heal_s)


def workflow_token_refresh(connector: str | None, outcome: str) -> None:
    """A credential refresh: ``ok``, ``failed`` or ``revoked``."""
    _add(_workflow_meter(), TOKEN_REFRESHES, _labels(connector=connector, outcome=outcome))


def workflow_schema_adapted(connector: str | None, operation: str | None, outcome: str) -> None:
    """A schema mapping was applied (``ok``) or refused (``failed``)."""
    labels = _labels(connector=connector, operation=operation, outcome=outcome)
    _add(_workflow_meter(), SCHEMA_ADAPTATIONS, labels)


def workflow_escalation_opened(error_type: object, connector: str | None) -> None:
    _add(_workflow_meter(), ESCALATIONS_OPENED, _labels(error_type=error_type, connector=connector))


def workflow_escalation_closed(error_type: object, connector: str | None, option: str) -> None:
    """The pause ended: the decided ``option`` (a timeout's default too) or ``cancelled``."""
    labels = _labels(error_type=error_type, connector=connector, option=option)
    _add(_workflow_meter(), ESCALATIONS_CLOSED, labels)


# --- the worker's Prometheus runtime --------------------------------------------------------


def bind_address(raw: str) -> str:
    """``HEALING_METRICS`` as the ``ip:port`` the SDK binds (``localhost`` is 127.0.0.1).

    Raises:
        ConfigError: Not ``host:port`` with an IP address (or localhost) and a port 1-65535.
    """
    value = raw.strip()
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        ip, number = None, 0
    if not sep or ip is None or not 0 < number < 65536:
        raise ConfigError(
            f"HEALING_METRICS={raw!r} is not an address to serve metrics on: give ip:port, "
            "e.g. 127.0.0.1:9464 (0.0.0.0:9464 for every interface)"
        )
    return f"[{ip}]:{number}" if ip.version == 6 else f"{ip}:{number}"


def prometheus_runtime(raw_address: str) -> Runtime:
    """A Temporal runtime exporting SDK and healing metrics on ``http://ADDRESS/metrics``.

    Connect the worker's client with it (``Client.connect(..., runtime=runtime)``).

    Raises:
        ConfigError: The address is malformed or cannot be bound (in use, say).
    """
    address = bind_address(raw_address)
    try:
        return Runtime(
            telemetry=TelemetryConfig(
                metrics=PrometheusConfig(
                    bind_address=address,
                    histogram_bucket_overrides={TIME_TO_HEAL: list(HEAL_BUCKETS_S)},
                )
            )
        )
    except ValueError as exc:
        raise ConfigError(f"HEALING_METRICS={raw_address!r}: cannot serve metrics: {exc}") from None
