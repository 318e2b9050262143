"""Errors raised by the healing library.

    HealingError
    ├── ConfigError            broken config, catalog, store URL or environment variable
    │   └── SecretKeyMismatch  HEALING_SECRET_KEY cannot decrypt a stored credential
    ├── DecisionError          an escalation decision that cannot be applied
    │   └── WorkflowClosed     the workflow has already completed, failed, ended...
    ├── CredentialError        a credential is missing or its refresh failed
    │   ├── GrantRevoked       the refresh grant is dead (invalid_grant after re-reading the store)
    │   └── TokenEndpointUnavailable  the token endpoint failed (5xx, 429, timeout, bad answer)
    ├── StoreError             the healing store failed
    │   └── StoreUnavailable   the database cannot be reached (healing goes on from the matrix)
    ├── RequestRefused         a call not sent: missing path parameter, unknown operation, ...
    ├── PacingWait             a call not sent yet: its rate-limit slot is later (not a failure)
    └── IntegrationFailure     an integration call failed; carries status, headers and body
        ├── SchemaMismatch     a response did not fit the operation's response model
        └── ResponseTooLarge   a response body over the connector's max_response_bytes

Foreign exceptions (httpx, pydantic) are translated once, where they are caught; the Temporal
boundary (the interceptor) turns all of them into ``ApplicationError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError


class HealingError(Exception):
    """Base of every error this library raises."""


class ConfigError(HealingError):
    """Configuration that cannot be used; the message names the setting."""


class SecretKeyMismatch(ConfigError):
    """``HEALING_SECRET_KEY`` cannot decrypt a stored credential: a setup error, which no
    reauthorization fixes (classified INTERNAL_ERROR, not an auth error)."""

    def __init__(self, message: str, *, connector: str | None = None) -> None:
        super().__init__(message)
        self.connector = connector


class DecisionError(HealingError):
    """An escalation decision that is invalid for the open escalation."""


class WorkflowClosed(DecisionError):
    """A decision for a workflow that is no longer running; ``status`` is e.g. ``COMPLETED``."""

    def __init__(self, workflow_id: str, status: str) -> None:
        super().__init__(f"workflow {workflow_id} already completed ({status})")
        self.workflow_id = workflow_id
        self.status = status


class CredentialError(HealingError):
    """A credential is missing or could not be refreshed."""

    def __init__(self, message: str, *, connector: str | None = None) -> None:
        super().__init__(message)
        self.connector = connector


class GrantRevoked(CredentialError):
    """The refresh grant is dead: a human must reauthorize the connector."""


class TokenEndpointUnavailable(CredentialError):
    """The token endpoint could not give a token now (5xx, 429, timeout, non-JSON answer, no
    ``access_token``): transient, healed like an outage, never a dead grant."""


class StoreError(HealingError):
    """The healing store failed; the message names the store (never its password)."""


class StoreUnavailable(StoreError):
    """The store's database cannot be reached."""


class RequestRefused(HealingError):
    """A call the activity will not send as asked: a path parameter is missing, the connector
    or operation is unknown, or the connector is set up wrong. Classified BAD_REQUEST, so the
    workflow escalates and a human can ``edit_and_retry`` (or fix the setup and ``retry``).
    The message names what is missing or unknown, never a value."""

    def __init__(
        self, message: str, *, connector: str | None = None, operation: str | None = None
    ) -> None:
        super().__init__(message)
        self.connector = connector
        self.operation = operation


class IntegrationFailure(HealingError):
    """A failed integration call, with what the upstream answered."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        connector: str | None = None,
        operation: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.body = body
        self.connector = connector
        self.operation = operation


class SchemaMismatch(IntegrationFailure):
    """A response that does not fit the expected model.

    ``missing`` and ``unexpected`` are field names; ``mapping`` proposes renames
    (observed -> expected) inferred from names and values.
    """

    def __init__(
        self,
        message: str,
        *,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        mapping: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.missing = missing or []
        self.unexpected = unexpected or []
        self.mapping = mapping or {}


class ResponseTooLarge(IntegrationFailure):
    """A response body over the connector's ``max_response_bytes``; reading stopped there.

    ``limit`` is the connector's limit; ``size`` the Content-Length announced, or None when
    the body had none (chunked) and was cut off once past the limit.
    """

    def __init__(self, message: str, *, limit: int, size: int | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.limit = limit
        self.size = size


def validation_problems(
    exc: ValidationError, *, root: str = "value", show_input: bool = True
) -> str:
    """One line naming each invalid field (and, for short scalars, the value given)."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or root
        given = err.get("input")
        shown = show_input and isinstance(given, str | int | float | bool) and len(str(given)) <= 40
        parts.append(f"{where}: {err['msg']}" + (f" (got {given!r})" if shown else ""))
    return "; ".join(parts)


class PacingWait(HealingError):
    """A call held back before sending: its fleet rate-limit slot starts at ``slot_at``.

    Not a failure: the interceptor hands the wait to the server (``next_retry_delay``) without
    counting an attempt, and the next attempt sends at the same slot.
    """

    def __init__(
        self,
        message: str,
        *,
        connector: str,
        slot_at: float,
        wait_s: float,
        quota: bool = False,
        gen: int = 0,
    ) -> None:
        super().__init__(message)
        self.connector = connector
        self.slot_at = slot_at
        self.gen = gen
        self.wait_s = wait_s
        self.quota = quota
