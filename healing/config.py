"""HealingConfig: every knob of the library, with the spec's defaults.

Loaded from keyword arguments, environment variables ``HEALING_*`` (nested with ``__``, e.g.
``HEALING_BACKOFF__MAX_S=10``) and a TOML file (``HealingConfig.from_toml``). Frozen, so one
instance can be shared by every workflow and activity of a worker.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from healing.errors import ConfigError, validation_problems
from healing.matrix import DEFAULT_MATRIX, MatrixRow
from healing.types import DecisionOptionName, ErrorType


class BackoffPolicy(BaseModel):
    """Exponential backoff with symmetric jitter: initial * multiplier**n, capped, +-jitter."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    initial_s: float = Field(default=1.0, gt=0)
    multiplier: float = Field(default=2.0, ge=1)
    max_s: float = Field(default=30.0, gt=0)
    jitter: float = Field(default=0.2, ge=0, lt=1)
    max_retries: int = Field(default=3, ge=0)


class BreakerPolicy(BaseModel):
    """Opens after ``failure_threshold`` failures in ``window_s`` that are also at least
    ``min_failure_ratio`` of the window's calls; half-opens after ``open_s`` with one probe.

    "At least half" is judged with a one-sided Wilson bound at ``ratio_confidence``: five
    failures out of five calls open it, but a burst whose first answers happen to be half
    failures (a flaky, working connector) does not. ``ratio_confidence=0.5`` is the plain ratio.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    failure_threshold: int = Field(default=5, ge=1)
    window_s: float = Field(default=60.0, gt=0)
    min_failure_ratio: float = Field(default=0.5, ge=0, le=1)
    open_s: float = Field(default=30.0, gt=0)
    ratio_confidence: float = Field(default=0.9, ge=0.5, lt=1)
    first_open_s: float = Field(default=5.0, gt=0)
    """How long the circuit stays open the first time (capped at ``open_s``): a short outage
    heals after this, a long one pays one more probe and then waits ``open_s`` per probe."""
    trial_ttl_s: float = Field(default=5.0, gt=0)
    """While the window's failures are at least ``min_failure_ratio`` of its calls, calls go
    one at a time (a fleet lease of this length), so an outage costs its threshold, not a burst."""


class RateLimitPolicy(BaseModel):
    """Client-side pacing of every connector, shared by the fleet (``healing.ratelimit``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    headroom: float = Field(default=0.98, gt=0, le=1)
    """Pace at this share of the known limit: jitter rarely lands a call in a spent window
    (and a response that says the window is spent blocks the fleet until its reset)."""
    inline_wait_s: float = Field(default=2.0, ge=0)
    """Waits for a slot up to this long happen inside the activity (heartbeating); longer
    ones go back to the server (``next_retry_delay``), never as a failed attempt."""
    slow_start: bool = True
    """A connector with no known limit sends its first call alone, then ramps up from
    ``start_spacing_s``, halving it per ``start_step`` successes, until a limit is known."""
    start_spacing_s: float = Field(default=0.1, gt=0)
    start_step: int = Field(default=20, ge=1)
    discover_ttl_s: float = Field(default=5.0, gt=0)
    """How long the first call of an unknown connector holds the others back at most."""
    cache_s: float = Field(default=1.0, ge=0)
    """How long a worker reuses a learned window before reading the store again."""
    max_paced_window_s: float = Field(default=60.0, gt=0)
    """Learned windows up to this long are paced evenly (a burst limit); longer ones (hourly,
    daily and org quotas) are spent freely and block the connector only once exhausted."""
    park_after_s: float = Field(default=120.0, gt=0)
    """A spent daily or org quota that comes back later than this parks the call in the
    workflow (a durable timer, in ``healing_status.parked`` and Current Details, no human)
    instead of waiting on the server; one that resets past ``max_wait_s``, or is still spent
    after three resets, asks a human."""


class RetryBudgetPolicy(BaseModel):
    """Retries per connector across the fleet stay under a share of its recent calls (AWS SDK
    retry quotas, Finagle retry budgets): an outage never multiplies the upstream's load.
    First attempts are never refused; a refused retry waits (it is not sent, not counted)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    ratio: float = Field(default=0.2, ge=0)
    """Retries allowed per first attempt in the window."""
    min_per_s: float = Field(default=10.0, ge=0)
    """Retries always allowed per second, so a quiet connector can still retry."""
    window_s: float = Field(default=10.0, gt=0)


class LearningPolicy(BaseModel):
    """When learned error patterns may change how a call heals (``healing.learning``).

    Every bound is a one-sided Wilson bound at ``min_confidence``. Retries are skipped when
    ``min_confidence`` says they heal the pattern less than ``never_heals_below`` of the time
    (by default that takes 32 straight failures); a learned wait needs the retries to heal the
    pattern at least half the time at that confidence. The matrix stays the bound: learning
    never retries a non-retryable error nor adds attempts. ``enabled=False`` switches it off.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    min_observations: int = Field(default=8, ge=1)
    """Tries of a strategy on a pattern before any hint is drawn from them."""
    min_confidence: float = Field(default=0.9, gt=0.5, lt=1)
    """One-sided confidence level of the Wilson bounds behind every hint."""
    never_heals_below: float = Field(default=0.05, ge=0, le=1)
    """Skip retries when the upper bound of their success rate is below this (0: never skip)."""
    learned_wait: bool = True
    """Wait the learned recovery time (median heal time) instead of the fixed backoff."""
    cache_ttl_s: float = Field(default=30.0, gt=0)
    """How long a worker reuses a pattern's stats before reading the store again."""
    explore_rate: float = Field(default=0.05, ge=0, le=1)
    """Share of calls that still retry a pattern learned as hopeless, so evidence can change."""
    evidence_ttl_s: float = Field(default=3600.0, gt=0)
    """Evidence ages: a pattern not seen failing for this long gives no hint (an outage's
    hopeless verdict must not send a later one-off failure straight to a human)."""


class HealingConfig(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix="HEALING_",
        env_nested_delimiter="__",
        case_sensitive=False,
    )

    matrix: dict[ErrorType, MatrixRow] = Field(default_factory=lambda: dict(DEFAULT_MATRIX))
    backoff: BackoffPolicy = BackoffPolicy()
    breaker: BreakerPolicy = BreakerPolicy()
    learning: LearningPolicy = LearningPolicy()
    rate_limit: RateLimitPolicy = RateLimitPolicy()
    retry_budget: RetryBudgetPolicy = RetryBudgetPolicy()
    healing_budget_s: float = Field(default=120.0, gt=0)
    """Time one call may spend healing (retries, waits) before it escalates."""
    max_retry_after_s: float = Field(default=120.0, gt=0)
    """A Retry-After longer than this (or than the budget left) escalates instead of waiting."""
    max_wait_s: float = Field(default=24 * 3600.0, gt=0)
    """The longest a ``wait`` decision or a spent quota parks a call, whatever the human or the
    service asked."""
    default_wait_s: float = Field(default=60.0, gt=0)
    """A ``wait`` decision's length when neither the human nor the service named one."""
    escalation_timeout_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    escalation_default: DecisionOptionName = "abort"
    heal_all_activities: bool = False
    search_attributes: bool = True
    rules: list[dict[str, Any]] = Field(default_factory=list)
    """Extra classification rules (see ``healing.classify.Rule``), tried before the built-ins."""
    healing_activity_timeout_s: float = Field(default=30.0, gt=0)

    # Deployment settings, read by worker.py and the CLI.
    task_queue: str = "integrations"
    connectors: str = "connectors.toml"
    store: str = "sqlite:///.healing/healing.db"
    secret_key: SecretStr | None = None
    """``HEALING_SECRET_KEY``: Fernet key sealing stored tokens; ``"NEW,OLD"`` while rotating."""
    token_leeway_fraction: float = Field(default=0.1, ge=0, lt=1)
    """An OAuth token is refreshed this share of its lifetime before it expires..."""
    token_leeway_s: float = Field(default=60.0, ge=0)
    """...but at most this many seconds before (a 30 s token refreshes 3 s early)."""

    # Telling a human (healing.notify) and metrics (healing.metrics), read by the worker.
    notify_webhook: SecretStr | None = None
    """``HEALING_NOTIFY_WEBHOOK``: URL POSTed when a workflow pauses (unset: a log line only).
    A secret: a Slack incoming-webhook URL is a credential, so it is never logged."""
    notify_secret: SecretStr | None = None
    """``HEALING_NOTIFY_SECRET``: HMAC-SHA256 key of ``X-Healing-Signature`` (unset: unsigned)."""
    notify_format: Literal["auto", "json", "slack"] = "auto"
    """``HEALING_NOTIFY_FORMAT``: ``auto`` sends Slack messages to hooks.slack.com, else JSON."""
    notify_timeout_s: float = Field(default=10.0, gt=0)
    """How long one webhook POST may take; a timeout is retried like a 5xx."""
    web_ui_url: str = "http://localhost:8233"
    """``HEALING_WEB_UI_URL``: the Temporal Web UI that notifications link to."""
    metrics: str | None = None
    """``HEALING_METRICS``: bind address of the worker's Prometheus endpoint
    (``127.0.0.1:9464``; unset: off)."""

    @field_validator("matrix", mode="after")
    @classmethod
    def _complete_matrix(cls, value: dict[ErrorType, MatrixRow]) -> dict[ErrorType, MatrixRow]:
        merged = dict(DEFAULT_MATRIX)
        merged.update(value)
        return merged

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> HealingConfig:
        """Load ``[healing]`` (or the top level) of a TOML file; keyword arguments win."""
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"healing config file {p} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"healing config file {p} is not valid TOML: {exc}") from exc
        section = data.get("healing", data)
        return cls.load(**{**section, **overrides})

    @classmethod
    def load(cls, **values: Any) -> HealingConfig:
        """Build a config, turning validation errors into one ConfigError that names the fields."""
        try:
            return cls(**values)
        except SettingsError as exc:  # e.g. HEALING_MATRIX holding invalid JSON
            raise ConfigError(f"invalid healing config in the environment: {exc}") from None
        except ValidationError as exc:
            raise ConfigError(
                f"invalid healing config ({validation_problems(exc, root='config')})"
            ) from None

    def row(self, error_type: ErrorType) -> MatrixRow:
        return self.matrix[error_type]


StoreKind = Literal["sqlite", "postgresql", "supabase", "memory"]
