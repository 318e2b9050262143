"""Self-healing integration calls on Temporal.

Register ``HealingPlugin(HealingConfig())`` on a worker; mark integration activities with
``@healing.integration(...)``. Failures are classified, healed where possible, and escalated
to a human otherwise.
"""

from healing.activities import HealingActivities, healing_activities
from healing.classify import Failure, classify_error, detect_error
from healing.config import (
    BackoffPolicy,
    BreakerPolicy,
    HealingConfig,
    LearningPolicy,
    RateLimitPolicy,
    RetryBudgetPolicy,
)
from healing.errors import (
    ConfigError,
    CredentialError,
    DecisionError,
    GrantRevoked,
    HealingError,
    IntegrationFailure,
    RequestRefused,
    ResponseTooLarge,
    SchemaMismatch,
    TokenEndpointUnavailable,
)
from healing.integration import CallContext, CallHints, current_call, integration
from healing.interceptor import SelfHealingInterceptor
from healing.plugin import HealingPlugin
from healing.types import (
    CircuitBreakerState,
    Classification,
    ErrorPattern,
    ErrorType,
    Escalation,
    EscalationDecision,
    EscalationOption,
    FailureReport,
    HealingAttempt,
    HealingEvent,
    HealingResult,
    HealingStatus,
    HealingStrategy,
)

__all__ = [
    "BackoffPolicy",
    "BreakerPolicy",
    "CallContext",
    "CallHints",
    "CircuitBreakerState",
    "Classification",
    "ConfigError",
    "CredentialError",
    "DecisionError",
    "ErrorPattern",
    "ErrorType",
    "Escalation",
    "EscalationDecision",
    "EscalationOption",
    "Failure",
    "FailureReport",
    "GrantRevoked",
    "HealingActivities",
    "HealingAttempt",
    "HealingConfig",
    "HealingError",
    "HealingEvent",
    "HealingPlugin",
    "HealingResult",
    "HealingStatus",
    "HealingStrategy",
    "IntegrationFailure",
    "LearningPolicy",
    "RateLimitPolicy",
    "RequestRefused",
    "ResponseTooLarge",
    "RetryBudgetPolicy",
    "SchemaMismatch",
    "SelfHealingInterceptor",
    "TokenEndpointUnavailable",
    "classify_error",
    "current_call",
    "detect_error",
    "healing_activities",
    "integration",
]
