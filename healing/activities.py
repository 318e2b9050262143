"""The healing activities the workflow side runs: refresh credentials, adapt a schema.

Activities take plain dicts (not models) so they work under any data converter; their names
(:mod:`healing.names`) start with ``healing_`` so the interceptor never heals them recursively.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Protocol

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from healing.adaptation import adapt
from healing.catalog import resolve_model
from healing.config import HealingConfig
from healing.drift import MAPPING_ID, MAPPINGS_SPACE, DriftBook, DriftReview
from healing.errors import (
    ConfigError,
    CredentialError,
    GrantRevoked,
    SecretKeyMismatch,
    TokenEndpointUnavailable,
)
from healing.eventlog import EventLog
from healing.metrics import notification as count_notification
from healing.names import (
    ADAPT_ACTIVITY,
    CREDENTIAL_ERROR_TYPE,
    GRANT_REVOKED_TYPE,
    MATCH_ACTIVITY,
    NOTIFY_ACTIVITY,
    NOTIFY_FAILED_TYPE,
    NOTIFY_REJECTED_TYPE,
    RECORD_ACTIVITY,
    REFRESH_ACTIVITY,
    TOKEN_ENDPOINT_TYPE,
)
from healing.notify import Notification, NotifyError, deliver, describe_target, notify_format
from healing.patterns import PatternCache
from healing.store.base import Store
from healing.store.memory import MemoryFleetState
from healing.types import ErrorPattern, ErrorType, HealingEvent

logger = logging.getLogger("healing")


class Refresher(Protocol):
    async def refresh(
        self,
        connector: str,
        connection: str = "default",
        *,
        seen_version: int | None = None,
        reason: str = "",
    ) -> Any: ...


class LearningSide(Protocol):
    """What the learning activities need of the worker's healing state (the interceptor's
    event log and pattern cache, read live: the plugin gives each worker run a fresh log)."""

    config: HealingConfig
    store: Store | None
    events: EventLog
    patterns: PatternCache

    @property
    def learning(self) -> bool: ...


class HealingActivities:
    """Holds what the healing activities need; one instance per worker."""

    def __init__(
        self,
        config: HealingConfig,
        *,
        tokens: Refresher | None = None,
        interceptor: LearningSide | None = None,
    ) -> None:
        self.config = config
        self.tokens = tokens
        self.interceptor = interceptor
        self.schema_mappings: dict[tuple[str, str], dict[str, str]] = {}
        self._drift = DriftBook(MemoryFleetState())

    @activity.defn(name=MATCH_ACTIVITY)
    async def match_pattern(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The learned hint for a failure pattern (run as a local activity: history keeps it)."""
        root = self.interceptor
        if root is None or not root.learning:
            return None
        error_type = ErrorType(str(request["error_type"]))
        hint = await root.patterns.hint(
            str(request["fingerprint"]),
            root.config.row(error_type),
            backoff=root.config.backoff,
            budget_s=root.config.healing_budget_s,
        )
        return hint.model_dump(mode="json") if hint is not None else None

    @activity.defn(name=RECORD_ACTIVITY)
    async def record(self, request: dict[str, Any]) -> int:
        """Queue the workflow side's events and outcomes for the store (never blocks)."""
        root = self.interceptor
        if root is None or root.store is None:
            return 0
        root.events.start()
        events = [HealingEvent.model_validate(e) for e in request.get("events", [])]
        for event in events:
            root.events.emit(event)
        for item in request.get("outcomes", []):
            root.events.record_outcome(
                ErrorPattern.model_validate(item["pattern"]),
                str(item["strategy"]),
                healed=bool(item["healed"]),
                heal_s=item.get("heal_s"),
            )
        return len(events)

    @activity.defn(name=REFRESH_ACTIVITY)
    async def refresh_credentials(self, request: dict[str, Any]) -> dict[str, Any]:
        """Refresh the (connector, connection) credential past ``seen_version``, once for the
        fleet (``healing.oauth.TokenRefresher``). A dead grant fails non-retryable
        (GrantRevoked), a token-endpoint failure retryable (TokenEndpointUnavailable)."""
        connector = str(request.get("connector") or "")
        connection = str(request.get("connection") or "default")
        if self.tokens is None:
            raise ApplicationError(
                f"no credential refresher is configured for connector {connector!r}",
                type=GRANT_REVOKED_TYPE,
                non_retryable=True,
            )
        try:
            seen = request.get("seen_version")
            account = () if connection == "default" else (connection,)  # older refreshers
            cred = await self.tokens.refresh(
                connector,
                *account,
                seen_version=int(seen) if seen is not None else None,
                reason=str(request.get("reason", "")),
            )
        except GrantRevoked as exc:
            # Expected outcomes, told to a human by the escalation: no SDK traceback per call.
            raise ApplicationError(
                str(exc),
                type=GRANT_REVOKED_TYPE,
                non_retryable=True,
                category=ApplicationErrorCategory.BENIGN,
            ) from None
        except TokenEndpointUnavailable as exc:
            raise ApplicationError(
                str(exc), type=TOKEN_ENDPOINT_TYPE, category=ApplicationErrorCategory.BENIGN
            ) from None
        except CredentialError as exc:
            raise ApplicationError(str(exc), type=CREDENTIAL_ERROR_TYPE) from None
        except SecretKeyMismatch as exc:  # a setup error: retrying with this key cannot help
            raise ApplicationError(
                str(exc), type=CREDENTIAL_ERROR_TYPE, non_retryable=True
            ) from None
        # Only the version leaves the activity: tokens never enter history.
        out: dict[str, Any] = {"connector": connector, "version": getattr(cred, "version", None)}
        if connection != "default":
            out["connection"] = connection
        return out

    @activity.defn(name=ADAPT_ACTIVITY)
    async def adapt_schema(self, request: dict[str, Any]) -> dict[str, Any]:
        """Apply a schema mapping.

        With ``review`` (a held ``DriftReview``): a human accepted the mapping ``mapping_id``
        (default: the proposal); it becomes active for the fleet and the response already
        received is read with it; returns ``{"result", "extra", "healing"}``. Nothing is sent
        upstream. Without: the mapping a user activity's SchemaMismatch proposed is returned
        for the next attempt (names only).
        """
        if request.get("review") is not None:
            return await self._accept(request)
        mapping = request.get("mapping")
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
        ):
            raise ApplicationError(
                "schema mapping must map field names to field names", non_retryable=True
            )
        key = (str(request.get("connector")), str(request.get("operation")))
        self.schema_mappings[key] = {**self.schema_mappings.get(key, {}), **mapping}
        logger.info("schema of %s.%s adapted: %s", key[0], key[1], mapping)
        return {"mapping": self.schema_mappings[key]}

    @property
    def drift(self) -> DriftBook:
        """The interceptor's mappings (over its store), else this worker's own."""
        book = getattr(self.interceptor, "drift", None)
        return book if isinstance(book, DriftBook) else self._drift

    async def _accept(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            review = DriftReview.model_validate(request["review"])
            model = resolve_model(review.model)
        except (ValueError, ConfigError) as exc:
            raise ApplicationError(
                f"cannot read the held response: {exc}", non_retryable=True
            ) from None
        proposal = review.mapping
        wanted = str(request.get("mapping_id") or proposal.mapping_id)
        decided_by = str(request.get("decided_by") or "unknown")
        if not MAPPING_ID.fullmatch(wanted):
            raise ApplicationError(
                f"{wanted!r} is not a schema mapping id (m- and 10 hex digits)", non_retryable=True
            )
        # Checked before anything is decided: a foreign, rejected or unfitting mapping must
        # never become active for the fleet.
        stored = await self.drift.get(wanted)
        if stored is None and wanted != proposal.mapping_id:
            raise ApplicationError(f"no schema mapping has id {wanted!r}", non_retryable=True)
        candidate = stored or proposal
        if (candidate.connector, candidate.operation) != (proposal.connector, proposal.operation):
            raise ApplicationError(
                f"mapping {wanted} is for {candidate.connector}.{candidate.operation}, not "
                f"{proposal.connector}.{proposal.operation}",
                non_retryable=True,
            )
        if candidate.status == "rejected":
            raise ApplicationError(
                f"mapping {wanted} was rejected by {candidate.decided_by}; approve it first "
                f"(`healing drift approve {wanted}`) or choose another option",
                non_retryable=True,
            )
        found = adapt(model, review.body, known=candidate.known)
        if not (found.ok and found.known):
            raise ApplicationError(
                f"mapping {wanted} ({candidate.describe()}) does not make the response fit "
                f"{model.__name__}: {found.explain()}",
                non_retryable=True,
            )
        if stored is None:  # a store-less worker restarted since the proposal: store it again
            await self.drift.state.state_put(
                MAPPINGS_SPACE, wanted, proposal.model_dump(mode="json", exclude={"version"}),
                expected_version=None, now=time.time(),
            )  # fmt: skip
        if candidate.status == "pinned":  # already a human's choice: keep it pinned
            mapping = candidate
        else:
            mapping = await self.drift.decide(wanted, "active", decided_by=decided_by)
        logger.info(
            "schema mapping %s of %s.%s accepted by %s: %s",
            wanted, mapping.connector, mapping.operation, decided_by, mapping.describe(),
        )  # fmt: skip
        schema = {
            "adapted": True,
            "mapping_id": wanted,
            "mapping": mapping.describe(),
            "by": decided_by,
        }
        return {
            "result": found.data,
            "extra": found.extra,
            "healing": {"drift": review.drift, "schema": schema},
        }

    @activity.defn(name=NOTIFY_ACTIVITY)
    async def notify(self, request: dict[str, Any]) -> dict[str, Any]:
        """Tell a human that a workflow paused (``healing.notify``): a log line, or a signed
        webhook / Slack POST. A receiver's 5xx or timeout fails the attempt (the workflow's
        RetryPolicy tries again); a 4xx is not retried. Never logs the URL or the secret."""
        cfg = self.config
        notice = Notification.model_validate(request)
        url = cfg.notify_webhook.get_secret_value() if cfg.notify_webhook else None
        secret = cfg.notify_secret.get_secret_value() if cfg.notify_secret else None
        fmt = notify_format(url, cfg.notify_format)
        try:
            done = await deliver(
                notice, url=url, secret=secret, fmt=fmt, timeout_s=cfg.notify_timeout_s
            )
        except NotifyError as exc:
            attempt = activity.info().attempt
            count_notification(fmt, "failed" if exc.retryable else "rejected")
            logger.warning(
                "notifying %s of the pause of %s failed (attempt %d%s): %s",
                describe_target(url or ""),
                notice.workflow_id,
                attempt,
                "; retrying" if exc.retryable else "; not retried",
                exc,
            )
            delay = timedelta(seconds=exc.retry_after_s) if exc.retry_after_s else None
            raise ApplicationError(
                str(exc),
                type=NOTIFY_FAILED_TYPE if exc.retryable else NOTIFY_REJECTED_TYPE,
                non_retryable=not exc.retryable,
                next_retry_delay=delay,
            ) from None
        count_notification(fmt, "sent")
        if done["format"] != "log":
            logger.info(
                "notified %s of the pause of %s (%s, HTTP %s)",
                done["target"],
                notice.workflow_id,
                done["format"],
                done["status"],
            )
        return done


def healing_activities(
    config: HealingConfig | None = None,
    *,
    tokens: Refresher | None = None,
    interceptor: LearningSide | None = None,
) -> Sequence[Callable[..., Any]]:
    """The healing activities to register beside the bare ``SelfHealingInterceptor``
    (pass the same interceptor so learning and the event log reach its store)."""
    acts = HealingActivities(config or HealingConfig(), tokens=tokens, interceptor=interceptor)
    return [
        acts.refresh_credentials,
        acts.adapt_schema,
        acts.match_pattern,
        acts.record,
        acts.notify,
    ]
