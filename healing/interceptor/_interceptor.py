"""SelfHealingInterceptor: the one public interceptor; what a worker's healing shares.

It holds the worker's healing state (config, breakers, event log, learned patterns, clocks)
and hands each hook what it needs: ``_activity_inbound`` runs and classifies attempts,
``_workflow_inbound`` registers the handlers, ``_workflow_outbound`` heals a handed-over call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import (
    ActivityInboundInterceptor,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from healing.breaker import FleetBreakers
from healing.classify import Failure, classify_error, load_rules
from healing.config import HealingConfig
from healing.drift import DriftBook
from healing.eventlog import EventLog
from healing.interceptor._activity_inbound import ActivityInbound
from healing.interceptor._workflow_inbound import make_workflow_inbound
from healing.names import SEARCH_ATTRIBUTES
from healing.patterns import PatternCache
from healing.ratelimit import FleetPacer
from healing.retrybudget import RetryBudget
from healing.store.base import FleetState, Store
from healing.store.fallback import FallbackFleetState
from healing.store.memory import MemoryFleetState
from healing.types import Classification

logger = logging.getLogger("healing")


class SelfHealingInterceptor(Interceptor):
    """Makes every integration activity heal; register once on a worker.

    Args:
        config: All knobs; defaults follow the spec's matrix.
        alternatives: Reroute targets per connector (from the connector catalog).
        clock: Monotonic seconds for the circuit breakers and budgets (injected in tests).
        wall_clock: Aware "now" for classification (HTTP-date Retry-After) and outage times.
        store: Where events and learned error patterns go; None heals from the matrix alone.
    """

    def __init__(
        self,
        config: HealingConfig | None = None,
        *,
        alternatives: Mapping[str, list[str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        store: Store | None = None,
    ) -> None:
        self.config = config or HealingConfig()
        self.alternatives = {k: list(v) for k, v in (alternatives or {}).items()}
        self.clock = clock
        self.wall_clock = wall_clock
        self._use_fleet(store if store is not None else MemoryFleetState())
        # Off until check_search_attributes has seen them registered: an upsert of an unknown
        # attribute would fail every workflow task.
        self.search_attributes_enabled = False
        self.rules = load_rules(self.config)  # validated once: a bad rule fails at start-up
        self.outages: dict[str, tuple[str, Classification]] = {}
        """Per connector: since when it fails (ISO time) and its latest unhealthy answer."""
        self.drift = DriftBook(self.fleet)
        """Schema mappings and drift records (a store-less worker keeps them in memory)."""
        self.attach_store(store)

    def attach_store(self, store: Store | None) -> None:
        """Use ``store`` for the event log and learned patterns (None: matrix only)."""
        if store is not None and store is not getattr(self, "store", None):
            self.drift = DriftBook(store)
            self._use_fleet(store)
        self.store = store
        self.events = EventLog(store, clock=self.clock)
        self.patterns = PatternCache(
            store, self.config.learning, clock=self.clock, wall_clock=self.wall_clock
        )

    def _use_fleet(self, fleet: FleetState) -> None:
        """Breakers, rate windows and the retry budget over ``fleet`` (DESIGN s5b): shared by
        every worker on the same store; a store-less worker keeps them in its memory, and so
        does any worker while its store is away (``FallbackFleetState``)."""
        if not isinstance(fleet, MemoryFleetState | FallbackFleetState):
            fleet = FallbackFleetState(fleet)
        self.fleet = fleet
        self.breakers = FleetBreakers(fleet, self.config.breaker)
        self.pacer = FleetPacer(fleet, self.config.rate_limit)
        self.retry_budget = RetryBudget(fleet, self.config.retry_budget)

    @property
    def has_store(self) -> bool:
        return self.store is not None

    @property
    def learning(self) -> bool:
        return self.store is not None and self.config.learning.enabled

    async def check_search_attributes(self, client: Client) -> bool:
        """Enable HealingStatus/HealingErrorType upserts if the namespace has them."""
        if not self.config.search_attributes:
            self.search_attributes_enabled = False
            return False
        try:
            resp = await client.operator_service.list_search_attributes(
                ListSearchAttributesRequest(namespace=client.namespace)
            )
        except RPCError as exc:
            if exc.status == RPCStatusCode.UNIMPLEMENTED:
                # The time-skipping test server cannot list; its users register up front.
                logger.info("server cannot list search attributes; assuming they are registered")
                self.search_attributes_enabled = True
                return True
            logger.warning("cannot list search attributes (%s); HealingStatus upserts off", exc)
            self.search_attributes_enabled = False
            return False
        missing = sorted(set(SEARCH_ATTRIBUTES) - set(resp.custom_attributes))
        if missing:
            logger.warning(
                "search attributes %s are not registered in namespace %s; upserts off "
                "(run `healing setup` to register them)",
                ", ".join(missing),
                client.namespace,
            )
        self.search_attributes_enabled = not missing
        return not missing

    def note_outage(self, connector: str, cls: Classification) -> None:
        known = self.outages.get(connector)
        since = known[0] if known else self.wall_clock().isoformat(timespec="seconds")
        self.outages[connector] = (since, cls)

    def classify(self, failure: Failure) -> Classification:
        return classify_error(failure, config=self.config, now=self.wall_clock(), rules=self.rules)

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return ActivityInbound(next, self)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        return make_workflow_inbound(self)
