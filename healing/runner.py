"""Build and run the integration worker: shared by ``worker.py``, ``healing worker`` and the demo.

``healing/`` depends on nothing in ``activities/`` or ``workflows/`` at import time: the worker
needs both, so :func:`build_worker` imports them inside the function. ``worker.py`` at the repo
root is a thin wrapper around :func:`run_worker`; the logic lives here because the installed
``healing`` console script cannot import a file from the repository root.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.worker import Worker

from healing.catalog import ConnectorCatalog, load_catalog
from healing.config import HealingConfig
from healing.credentials import FileCredentialStore, OAuthClient
from healing.errors import ConfigError, HealingError
from healing.metrics import bind_address, prometheus_runtime
from healing.oauth import TokenRefresher
from healing.plugin import HealingPlugin
from healing.store import connect_store

if TYPE_CHECKING:
    import httpx

DEFAULT_ADDRESS = "localhost:7233"
DEFAULT_NAMESPACE = "default"
CREDENTIALS_FILE_ENV = "HEALING_CREDENTIALS_FILE"
DEFAULT_CREDENTIALS_FILE = ".healing/credentials.enc"


# Worker cache size and concurrency: env variable -> (temporalio Worker option, least value).
WORKER_TUNING_ENV = {
    "HEALING_MAX_CACHED_WORKFLOWS": ("max_cached_workflows", 0),
    "HEALING_MAX_CONCURRENT_ACTIVITIES": ("max_concurrent_activities", 1),
    "HEALING_MAX_CONCURRENT_WORKFLOW_TASKS": ("max_concurrent_workflow_tasks", 1),
}


class ConnectError(HealingError):
    """The Temporal server cannot be reached."""


class WorkerTuning(TypedDict, total=False):
    max_cached_workflows: int
    max_concurrent_activities: int
    max_concurrent_workflow_tasks: int


def worker_tuning(environ: Mapping[str, str] = os.environ) -> WorkerTuning:
    """Worker options from ``WORKER_TUNING_ENV``; unset ones keep the SDK's defaults."""
    options: WorkerTuning = {}
    for var, (option, least) in WORKER_TUNING_ENV.items():
        raw = environ.get(var, "").strip()
        if not raw:
            continue
        if not (raw.isascii() and raw.isdigit()) or int(raw) < least:
            raise ConfigError(f"{var}={raw!r} is not a whole number of at least {least}")
        options[option] = int(raw)  # type: ignore[literal-required]
    # The SDK needs two workflow task slots when the sticky cache is on (it is by default).
    if (
        options.get("max_concurrent_workflow_tasks") == 1
        and options.get("max_cached_workflows") != 0
    ):
        raise ConfigError(
            "HEALING_MAX_CONCURRENT_WORKFLOW_TASKS=1 needs HEALING_MAX_CACHED_WORKFLOWS=0 "
            "(a worker with a workflow cache needs at least 2 workflow task slots)"
        )
    return options


def load_config(**overrides: Any) -> HealingConfig:
    """``HealingConfig`` from the ``HEALING_*`` environment; one ConfigError if it is broken."""
    return HealingConfig.load(**overrides)


def load_connectors(config: HealingConfig) -> ConnectorCatalog:
    """The connector catalog at ``HEALING_CONNECTORS`` (``config.connectors``)."""
    try:
        return load_catalog(config.connectors)
    except ConfigError as exc:
        if "HEALING_CONNECTORS" in str(exc):
            raise
        raise ConfigError(f"{exc} (catalog path from HEALING_CONNECTORS)") from None


def credentials_path(environ: Mapping[str, str] = os.environ) -> Path:
    """Where the encrypted credential file lives (``HEALING_CREDENTIALS_FILE``)."""
    return Path(environ.get(CREDENTIALS_FILE_ENV) or DEFAULT_CREDENTIALS_FILE)


def credential_store(
    config: HealingConfig, environ: Mapping[str, str] = os.environ
) -> FileCredentialStore:
    """The encrypted credential store; needs ``HEALING_SECRET_KEY``."""
    if config.secret_key is None or not config.secret_key.get_secret_value():
        raise ConfigError(
            "HEALING_SECRET_KEY is not set: credentials are stored encrypted with it (make a key"
            ' with: python -c "import healing.credentials as c; print(c.generate_secret_key())")'
        )
    return FileCredentialStore(credentials_path(environ), config.secret_key.get_secret_value())


def token_refresher(
    config: HealingConfig, catalog: ConnectorCatalog, environ: Mapping[str, str] = os.environ
) -> TokenRefresher | None:
    """A refresher for the catalog's oauth2 connectors, or None when there are none."""
    clients: dict[str, OAuthClient] = {}
    for name, spec in catalog.connectors.items():
        auth = spec.auth
        if auth.kind != "oauth2" or auth.token_url is None or auth.client_id is None:
            continue
        secret = None
        if auth.client_secret_env:
            secret = environ.get(auth.client_secret_env)
            if not secret:
                raise ConfigError(
                    f"connector '{name}': environment variable {auth.client_secret_env} "
                    "(its OAuth client secret) is not set"
                )
        clients[name] = OAuthClient(
            token_url=auth.token_url,
            client_id=auth.client_id,
            client_secret=secret,
            grant=auth.grant,
            scope=auth.scope,
            auth_method=auth.auth_method,
        )
    if not clients:
        return None
    if config.secret_key is None:
        raise ConfigError(
            f"connectors {', '.join(sorted(clients))} use oauth2, so their tokens live in the "
            "encrypted credential store: set HEALING_SECRET_KEY"
        )
    return TokenRefresher(credential_store(config, environ), clients)


async def connect(
    address: str,
    namespace: str,
    plugin: HealingPlugin | None = None,
    *,
    runtime: Runtime | None = None,
) -> Client:
    """A client with the healing plugin (so the pydantic converter is used)."""
    try:
        return await Client.connect(
            address,
            namespace=namespace,
            plugins=[plugin or HealingPlugin(load_config())],
            runtime=runtime,
        )
    except RuntimeError as exc:
        raise ConnectError(
            f"cannot connect to Temporal at {address} (namespace {namespace}): {exc}; is the "
            "server running? (`healing dev` starts one; set --address or TEMPORAL_ADDRESS)"
        ) from None


def build_worker(
    client: Client,
    config: HealingConfig,
    catalog: ConnectorCatalog,
    *,
    tokens: TokenRefresher | None = None,
    task_queue: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    **worker_options: Any,
) -> tuple[Worker, Any]:
    """The integration worker for ``client`` (which must carry the HealingPlugin).

    Returns the worker and its ``IntegrationActivities`` (close them with ``aclose()``).
    """
    from activities import IntegrationActivities  # lazily: healing/ must not need them
    from workflows import IntegrationWorkflow

    acts = IntegrationActivities(catalog, tokens=tokens, transport=transport)
    worker = Worker(
        client,
        task_queue=task_queue or config.task_queue,
        workflows=[IntegrationWorkflow],
        activities=[acts.call_integration],
        **worker_options,
    )
    return worker, acts


async def run_worker(address: str, namespace: str, *, stop: asyncio.Event | None = None) -> None:
    """Run the production worker until ``stop`` is set, SIGINT or SIGTERM.

    Raises:
        ConfigError: Broken ``HEALING_*`` settings, catalog or credentials.
        ConnectError: The server cannot be reached.
    """
    config = load_config()
    tuning = worker_tuning()
    catalog = load_connectors(config)
    tokens = token_refresher(config, catalog)
    # HEALING_METRICS: SDK and healing_* metrics on a Prometheus endpoint (healing.metrics).
    runtime = prometheus_runtime(config.metrics) if config.metrics else None
    # Opened before the worker exists: a bad HEALING_STORE fails here, naming the variable.
    store = await connect_store(config.store)
    plugin = HealingPlugin(config, alternatives=catalog.alternatives(), tokens=tokens, store=store)
    client = await connect(address, namespace, plugin, runtime=runtime)
    worker, acts = build_worker(client, config, catalog, tokens=tokens, **tuning)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    in_use = worker.config(active_config=True)  # shows what the Worker took, not the env
    metrics_note = ""
    if config.metrics:
        metrics_note = f", metrics on http://{bind_address(config.metrics)}/metrics"
    print(
        f"healing worker: task queue {worker.task_queue!r} on {address} "
        f"(namespace {namespace}), connectors: {', '.join(sorted(catalog.connectors)) or 'none'}"
        f"{''.join(f', {k}={in_use.get(k)}' for k in tuning)}"
        f"{metrics_note}; Ctrl-C stops",
        flush=True,
    )
    try:
        async with worker:
            await stop.wait()
    finally:
        await acts.aclose()
        if tokens is not None:
            await tokens.aclose()
        await store.close()
