"""The classification matrix: for each error type, whether and how it heals.

The matrix is configuration (``HealingConfig.matrix``); these are the spec's defaults.
``max_attempts`` counts healing retries of that type, not the first call: TIMEOUT's 3 means
one call plus up to three retries.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from healing.types import ErrorType, HealingStrategy


class MatrixRow(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    transient: bool | None
    retryable: bool
    strategy: HealingStrategy
    max_attempts: int = Field(ge=0, le=100)


S = HealingStrategy
DEFAULT_MATRIX: dict[ErrorType, MatrixRow] = {
    ErrorType.TIMEOUT: MatrixRow(
        transient=True, retryable=True, strategy=S.RETRY_BACKOFF, max_attempts=3
    ),
    ErrorType.RATE_LIMITED: MatrixRow(
        transient=True, retryable=True, strategy=S.WAIT_RETRY_AFTER, max_attempts=3
    ),
    ErrorType.SERVICE_DOWN: MatrixRow(
        transient=True, retryable=True, strategy=S.RETRY_THEN_REROUTE, max_attempts=3
    ),
    ErrorType.AUTH_EXPIRED: MatrixRow(
        transient=False, retryable=True, strategy=S.REFRESH_TOKEN, max_attempts=2
    ),
    ErrorType.AUTH_INVALID: MatrixRow(
        transient=False, retryable=False, strategy=S.ESCALATE, max_attempts=0
    ),
    ErrorType.SCHEMA_MISMATCH: MatrixRow(
        transient=False, retryable=True, strategy=S.SCHEMA_ADAPT, max_attempts=2
    ),
    ErrorType.NETWORK_ERROR: MatrixRow(
        transient=True, retryable=True, strategy=S.RETRY_BACKOFF, max_attempts=3
    ),
    ErrorType.PERMISSION_DENIED: MatrixRow(
        transient=False, retryable=False, strategy=S.ESCALATE, max_attempts=0
    ),
    ErrorType.NOT_FOUND: MatrixRow(
        transient=False, retryable=False, strategy=S.ESCALATE, max_attempts=0
    ),
    ErrorType.INTERNAL_ERROR: MatrixRow(
        transient=None, retryable=True, strategy=S.RETRY, max_attempts=2
    ),
    ErrorType.BAD_REQUEST: MatrixRow(
        transient=False, retryable=False, strategy=S.ESCALATE, max_attempts=0
    ),
    ErrorType.CIRCUIT_OPEN: MatrixRow(
        transient=True, retryable=True, strategy=S.WAIT_CIRCUIT, max_attempts=3
    ),
    ErrorType.QUOTA_EXHAUSTED: MatrixRow(
        transient=False, retryable=False, strategy=S.ESCALATE, max_attempts=0
    ),
    ErrorType.CONFLICT: MatrixRow(
        transient=True, retryable=True, strategy=S.RETRY_BACKOFF, max_attempts=3
    ),
    # The same request gets the same body: only a bigger limit or a narrower request helps.
    ErrorType.RESPONSE_TOO_LARGE: MatrixRow(
        transient=False, retryable=False, strategy=S.ESCALATE, max_attempts=0
    ),
}
del S
