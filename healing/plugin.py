"""HealingPlugin: registers the interceptor, the healing activities, the pydantic data
converter and the sandbox passthrough on a client or worker in one line."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import temporalio.client
import temporalio.converter
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.plugin import SimplePlugin
from temporalio.worker import Worker, WorkerConfig, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from healing import logs
from healing.activities import Refresher, healing_activities
from healing.config import HealingConfig
from healing.interceptor import SelfHealingInterceptor
from healing.store import Store

logger = logging.getLogger("healing")


def _passthrough(runner: WorkflowRunner | None) -> WorkflowRunner:
    # Interceptor and workflow code must see the same healing classes.
    if runner is None:
        runner = SandboxedWorkflowRunner()
    if isinstance(runner, SandboxedWorkflowRunner):
        return dataclasses.replace(
            runner, restrictions=runner.restrictions.with_passthrough_modules("healing", "pydantic")
        )
    return runner


def _pydantic(
    existing: temporalio.converter.DataConverter | None,
) -> temporalio.converter.DataConverter:
    # Keep a user's own converter (codec, failure converter); replace only the default.
    if existing is None or existing is temporalio.converter.DataConverter.default:
        return pydantic_data_converter
    return existing


class HealingPlugin(SimplePlugin):
    """Everything the healing layer needs on a client or worker.

    Example:
        ``Worker(client, task_queue="integrations", workflows=[...], activities=[...],
        plugins=[HealingPlugin(HealingConfig())])``

    Args:
        config: Healing knobs; defaults follow the spec.
        alternatives: Reroute targets per connector (``catalog.alternatives()``).
        tokens: Credential refresher used by the refresh activity.
        store: Where events and learned patterns go (``await healing.store.connect_store(url)``
            opens and migrates one before the worker is built, so a bad ``HEALING_STORE``
            fails first); None heals from the matrix alone.
        clock: Monotonic seconds for breakers and budgets (tests pass the server's time).
        wall_clock: Aware "now" for HTTP dates and outage times.
    """

    def __init__(
        self,
        config: HealingConfig | None = None,
        *,
        alternatives: dict[str, list[str]] | None = None,
        tokens: Refresher | None = None,
        store: Store | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config or HealingConfig()
        logs.install()  # one line per healing step instead of a traceback (idempotent)
        self.interceptor = SelfHealingInterceptor(
            self.config,
            alternatives=alternatives,
            store=store,
            clock=clock,
            wall_clock=wall_clock,
        )
        self.tokens = tokens
        acts = healing_activities(self.config, tokens=tokens, interceptor=self.interceptor)
        super().__init__(
            "healing.HealingPlugin",
            data_converter=_pydantic,
            interceptors=[self.interceptor],
            activities=list(acts),
            workflow_runner=_passthrough,
        )

    def configure_worker(self, config: WorkerConfig) -> WorkerConfig:
        config = super().configure_worker(config)
        client = config.get("client")
        if client is not None:
            current = client.config().get("data_converter")
            wanted = _pydantic(current)
            if wanted is not current:
                # The worker uses its client's converter; give it one that speaks pydantic.
                settings: Any = {**client.config(), "data_converter": wanted}
                config["client"] = temporalio.client.Client(**settings)
        return config

    async def run_worker(self, worker: Worker, next: Callable[[Worker], Awaitable[None]]) -> None:
        check = getattr(self.tokens, "check", None)
        if check is not None:  # a wrong HEALING_SECRET_KEY fails here, not at the first call
            await check()
        await self.interceptor.check_search_attributes(worker.client)
        self.interceptor.events.start()
        try:
            await super().run_worker(worker, next)
        finally:
            # Writes what the event log still holds; the store itself belongs to the caller.
            await self.interceptor.events.aclose()
            self.interceptor.attach_store(self.interceptor.store)  # fresh log for a next run
