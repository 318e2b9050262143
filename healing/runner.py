"""Build and run the integration worker: shared by ``worker.py``, ``healing worker`` and the demo.

``healing/`` depends on nothing in ``activities/`` or ``workflows/`` at import time: the worker
needs both, so :func:`build_worker` imports them inside the function. ``worker.py`` at the repo
root is a thin wrapper around :func:`run_worker`; the logic lives here because the installed
``healing`` console script cannot import a file from the repository root.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.worker import Worker

from healing.catalog import ConnectorCatalog, load_catalog
from healing.config import HealingConfig
from healing.credentials import (
    FileCredentialStore,
    FleetCredentialStore,
    OAuthClient,
    secret_key_of,
)
from healing.errors import ConfigError, CredentialError, HealingError
from healing.metrics import bind_address, prometheus_runtime
from healing.oauth import TokenRefresher
from healing.plugin import HealingPlugin
from healing.store import connect_store
from healing.store.base import ANY_VERSION, FleetState

if TYPE_CHECKING:
    import httpx

DEFAULT_ADDRESS = "localhost:7233"
DEFAULT_NAMESPACE = "default"
CREDENTIALS_FILE_ENV = "HEALING_CREDENTIALS_FILE"
DEFAULT_CREDENTIALS_FILE = ".healing/credentials.enc"
IMPORTS_SPACE = "credential_imports"
"""Fleet-state space recording which legacy credential files were imported (by content hash)."""


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
    """Where a legacy encrypted credential file lives (``HEALING_CREDENTIALS_FILE``); the
    worker imports it into the store at start-up."""
    return Path(environ.get(CREDENTIALS_FILE_ENV) or DEFAULT_CREDENTIALS_FILE)


def secret_key(config: HealingConfig) -> str:
    """``HEALING_SECRET_KEY``, or a ConfigError saying how to make one."""
    return secret_key_of(config.secret_key)


def has_secret_key(config: HealingConfig) -> bool:
    """Whether ``HEALING_SECRET_KEY`` is set (not empty)."""
    return config.secret_key is not None and bool(config.secret_key.get_secret_value())


def credential_store(config: HealingConfig, store: FleetState) -> FleetCredentialStore:
    """The credentials in the healing store, sealed with ``HEALING_SECRET_KEY``."""
    return FleetCredentialStore(store, secret_key(config))


async def import_credential_file(
    creds: FleetCredentialStore, config: HealingConfig, path: Path, *, once: bool = False
) -> int:
    """Copy the credentials of a legacy file into the store (those not stored there yet);
    returns how many were copied. Any key of ``HEALING_SECRET_KEY`` ("NEW,OLD") opens it.

    Each import is recorded in the store by the file's content hash; with ``once`` (the
    worker's start-up) a file already imported is skipped, so a credential deleted from the
    store does not come back with a stale (perhaps rotated-away) refresh token.

    Raises:
        CredentialError: No key of ``HEALING_SECRET_KEY`` opens the file.
    """
    try:
        blob = await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        return 0
    digest = hashlib.sha256(blob).hexdigest()
    if once and await creds.fleet.state_get(IMPORTS_SPACE, digest) is not None:
        return 0
    legacy = FileCredentialStore(path, secret_key(config))
    copied = 0
    for cred in await legacy.items():
        if await creds.get(cred.connector, cred.connection) is None:
            copied += await creds.put(cred, expected_version=None)
    await creds.fleet.state_put(
        IMPORTS_SPACE,
        digest,
        {"path": str(path), "copied": copied},
        expected_version=ANY_VERSION,
        now=time.time(),
    )
    return copied


def oauth_clients(
    catalog: ConnectorCatalog, environ: Mapping[str, str] = os.environ
) -> dict[str, OAuthClient]:
    """The OAuth client settings of the catalog's oauth2 connectors (secrets from env)."""
    clients: dict[str, OAuthClient] = {}
    for name, spec in catalog.connectors.items():
        auth = spec.auth
        if auth.kind != "oauth2" or auth.token_url is None or auth.client_id is None:
            continue
        values: dict[str, str | None] = {}
        for field, var, what in (
            ("client_secret", auth.client_secret_env, "its OAuth client secret"),
            ("private_key", auth.private_key_env, "its private_key_jwt signing key, PEM"),
        ):
            values[field] = None
            if var:
                values[field] = environ.get(var)
                if not values[field]:
                    raise ConfigError(
                        f"connector '{name}': environment variable {var} ({what}) is not set"
                    )
        clients[name] = OAuthClient(
            token_url=auth.token_url,
            client_id=auth.client_id,
            client_secret=values["client_secret"],
            private_key=values["private_key"],
            grant=auth.grant,
            scope=auth.scope or (" ".join(auth.scopes) if auth.scopes else None),
            auth_method=auth.auth_method,
            authorize_url=auth.authorize_url,
            timeout_s=auth.token_timeout_s,
        )
    return clients


def token_refresher(
    config: HealingConfig,
    catalog: ConnectorCatalog,
    store: FleetState,
    environ: Mapping[str, str] = os.environ,
) -> TokenRefresher | None:
    """A refresher for the catalog's oauth2 connectors over the healing store, or None when
    there are none."""
    clients = oauth_clients(catalog, environ)
    if not clients:
        return None
    if not has_secret_key(config):
        raise ConfigError(
            f"connectors {', '.join(sorted(clients))} use oauth2, so their tokens live in the "
            "healing store, encrypted: set HEALING_SECRET_KEY"
        )
    return TokenRefresher(
        credential_store(config, store),
        clients,
        leeway_s=config.token_leeway_s,
        leeway_fraction=config.token_leeway_fraction,
    )


async def prepare_credentials(
    config: HealingConfig, tokens: TokenRefresher | None, store: FleetState
) -> None:
    """Start-up: check that ``HEALING_SECRET_KEY`` opens every stored credential (a wrong key
    fails here, not at call time), then import a legacy credential file once. A file the key
    cannot open is a warning, not a stop: the store is where workers read credentials."""
    if not has_secret_key(config):
        return
    creds = credential_store(config, store)
    if tokens is not None:
        await tokens.check()  # remembered, so the plugin does not check again
    else:
        await creds.check_key()
    path = credentials_path()
    logger = logging.getLogger("healing")
    try:
        copied = await import_credential_file(creds, config, path, once=True)
    except CredentialError as exc:
        logger.warning("not importing the legacy credential file: %s", exc)
        return
    if copied:
        logger.info("imported %d credential(s) from %s into the healing store", copied, path)


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
    fleet: FleetState | None = None,
    **worker_options: Any,
) -> tuple[Worker, Any]:
    """The integration worker for ``client`` (which must carry the HealingPlugin).

    ``fleet`` (the worker's store) holds the rate-limit windows every worker paces by;
    None keeps them in this process.

    Returns the worker and its ``IntegrationActivities`` (close them with ``aclose()``).
    """
    from activities import IntegrationActivities  # lazily: healing/ must not need them
    from workflows import IntegrationWorkflow

    acts = IntegrationActivities(
        catalog, tokens=tokens, transport=transport, fleet=fleet, rate_limit=config.rate_limit
    )
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
    oauth_clients(catalog)  # a missing client secret fails before the store is opened
    # HEALING_METRICS: SDK and healing_* metrics on a Prometheus endpoint (healing.metrics).
    runtime = prometheus_runtime(config.metrics) if config.metrics else None
    # Opened before the worker exists: a bad HEALING_STORE fails here, naming the variable.
    store = await connect_store(config.store)
    try:
        tokens = token_refresher(config, catalog, store)
        await prepare_credentials(config, tokens, store)
    except BaseException:
        await store.close()
        raise
    plugin = HealingPlugin(config, alternatives=catalog.alternatives(), tokens=tokens, store=store)
    client = await connect(address, namespace, plugin, runtime=runtime)
    worker, acts = build_worker(client, config, catalog, tokens=tokens, fleet=store, **tuning)
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
