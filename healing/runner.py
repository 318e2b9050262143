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
from typing import TYPE_CHECKING, Any

from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.worker import Worker

from healing.catalog import ConnectorCatalog, load_catalog
from healing.config import HealingConfig
from healing.credentials import FileCredentialStore, OAuthClient
from healing.errors import ConfigError, HealingError
from healing.oauth import TokenRefresher
from healing.plugin import HealingPlugin
from healing.store import connect_store

if TYPE_CHECKING:
    import httpx

DEFAULT_ADDRESS = "localhost:7233"
DEFAULT_NAMESPACE = "default"
CREDENTIALS_FILE_ENV = "HEALING_CREDENTIALS_FILE"
DEFAULT_CREDENTIALS_FILE = ".healing/credentials.enc"


class ConnectError(HealingError):
    """The Temporal server cannot be reached."""


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
    catalog = load_connectors(config)
    tokens = token_refresher(config, catalog)
    # Opened before the worker exists: a bad HEALING_STORE fails here, naming the variable.
    store = await connect_store(config.store)
    plugin = HealingPlugin(config, alternatives=catalog.alternatives(), tokens=tokens, store=store)
    client = await connect(address, namespace, plugin)
    worker, acts = build_worker(client, config, catalog, tokens=tokens)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    print(
        f"healing worker: task queue {worker.task_queue!r} on {address} "
        f"(namespace {namespace}), connectors: {', '.join(sorted(catalog.connectors)) or 'none'}"
        "; Ctrl-C stops",
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
