"""Integration activities: the generic catalog-driven HTTP call and example connectors.

Register on a worker::

    acts = IntegrationActivities(load_catalog("connectors.toml"), tokens=refresher)
    Worker(client, task_queue="integrations", activities=[acts.call_integration], ...)
"""

from activities.integration import (
    CALL_INTEGRATION,
    CallRequest,
    IntegrationActivities,
    TokenSource,
    idempotency_key,
)

call_integration = IntegrationActivities.call_integration
"""The generic activity (type name ``call_integration``); register a bound instance's method."""

__all__ = [
    "CALL_INTEGRATION",
    "CallRequest",
    "IntegrationActivities",
    "TokenSource",
    "call_integration",
    "idempotency_key",
]
