"""``healing serve``: healing, live in a browser (an ASGI app run by uvicorn).

Endpoints (all JSON unless said otherwise):

- ``GET /api/escalations``: paused workflows, from visibility alone (the ``HealingStatus``
  search attribute and the ``healing`` memo, an :class:`~healing.types.EscalationBrief`), so it
  answers with no worker running.
- ``GET /api/workflows/{id}/status``: the ``healing_status`` query (bounded by a short
  timeout); when no worker answers, what ``describe()`` and the memo hold, saying so.
- ``POST /api/workflows/{id}/decision``: an :class:`~healing.types.EscalationDecision` body,
  sent through the ``decide_escalation`` update. It needs ``Authorization: Bearer <token>``
  where the token is ``HEALING_API_TOKEN``: a missing or wrong token gets 401 and changes
  nothing, and with no token configured every decision is refused (403): never anonymous.
  A decision the workflow's validator rejects gets 400 with its message; a closed workflow
  409; with no worker answering the status query first, 503 and nothing is sent (an update
  sent then would wait for a worker, and could apply long after the user gave up).
- ``GET /api/workflows/{id}/events``: a Server-Sent Events stream of the workflow's healing
  history, in order, live: each new :class:`~healing.types.HealingAttempt` is an
  ``event: healing`` whose ``id:`` is ``<index>.<digest>``, so a reconnect with
  ``Last-Event-ID`` (or ``?last_id=``) resumes after the last entry received (the digest
  finds that entry again when the workflow's bounded history has moved on). ``event: status``
  reports run status, healing state and whether a worker answers; ``event: end`` closes the
  stream once the workflow has closed.
- ``GET /``: the escalations inbox page; ``/static/healing-hooks.js`` is the React hooks
  module (``useSelfHealing``, ``useHealingProgress``).

Why not ``temporalio.contrib.workflow_streams``: its stream is a log the *workflow* appends
to; a ``WorkflowStream`` must be constructed in the workflow's own ``@workflow.init`` (it
checks the caller's frame) and registers its own signal, update and queries. The healing
layer lives in interceptors around workflows it does not own, so it cannot construct one
there, and user workflows that already use a stream would clash with a second. Its subscriber
also long-polls an update, which needs a live worker per subscriber poll. The healing history
the ``healing_status`` query returns is already ordered and bounded, so this module polls
that query (about every 0.75 s) and turns new entries into SSE events; nothing is written to
the workflow's history for observers.

The API token is compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.common import SearchAttributeKey
from temporalio.service import RPCError, RPCStatusCode

from healing.client import DecisionUnconfirmed, send_decision
from healing.errors import DecisionError, HealingError, WorkflowClosed, validation_problems
from healing.names import ERROR_TYPE_ATTRIBUTE, MEMO_KEY, STATUS_ATTRIBUTE
from healing.names import STATUS_QUERY as QUERY
from healing.types import EscalationBrief, EscalationDecision, HealingStatus

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "TOKEN_ENV", "ServeOptions", "create_app", "main"]

logger = logging.getLogger("healing.serve")

TOKEN_ENV = "HEALING_API_TOKEN"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
AWAITING = f'{STATUS_ATTRIBUTE} = "awaiting_decision" AND ExecutionStatus = "Running"'
WEB_DIR = Path(__file__).resolve().parent / "web"
MAX_BODY = 64 * 1024
_ERROR_TYPE = SearchAttributeKey.for_keyword(ERROR_TYPE_ATTRIBUTE)
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class ServeOptions:
    """How the app behaves; ``token`` None refuses every decision."""

    token: str | None = None
    poll_s: float = 0.75
    """How often an SSE stream polls the ``healing_status`` query."""
    query_timeout_s: float = 3.0
    update_timeout_s: float = 10.0
    keepalive_s: float = 15.0
    allowed_hosts: Sequence[str] | None = None
    """Host headers accepted (DNS-rebinding guard); None accepts any."""
    cors_origins: Sequence[str] = field(default_factory=tuple)
    """Origins of other apps (a React app using the hooks) allowed to call the API."""

    def __repr__(self) -> str:  # never show the token
        shown = "set" if self.token else None
        return f"ServeOptions(token={shown!r}, poll_s={self.poll_s})"


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _run_status(desc: WorkflowExecutionDescription) -> str:
    return desc.status.name if desc.status else "UNKNOWN"


def _running(desc: WorkflowExecutionDescription) -> bool:
    return desc.status in (None, WorkflowExecutionStatus.RUNNING)


def _brief(memo: Mapping[str, Any]) -> EscalationBrief | None:
    raw = memo.get(MEMO_KEY)
    if not raw:
        return None
    try:
        return EscalationBrief.model_validate(raw)
    except ValidationError:
        return None


def _canonical(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"))


def _digest(canonical: str) -> str:
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


class HistoryCursor:
    """Turns successive snapshots of a bounded, append-only history into new entries.

    The workflow keeps its last N healing attempts; when it has more, the oldest fall off the
    front. ``advance`` aligns a snapshot with the previous one (the longest suffix of the old
    window that starts the new one) and returns only what was appended, with absolute indexes.
    """

    def __init__(self, last_id: str | None = None) -> None:
        self.window: list[str] = []
        self.next_index = 0
        self._resume = _parse_id(last_id)

    def advance(self, snapshot: Sequence[str]) -> list[tuple[int, str]]:
        entries = list(snapshot)
        if self._resume is not None:
            start = self._resume_at(entries)
            self._resume = None
        else:
            start = self._overlap(entries)
        new = [(self.next_index + i, e) for i, e in enumerate(entries[start:])]
        self.next_index += len(new)
        self.window = entries
        return new

    def _overlap(self, entries: list[str]) -> int:
        old = self.window
        if len(entries) >= len(old) and entries[: len(old)] == old:
            return len(old)  # nothing fell off: the usual case
        for k in range(min(len(old), len(entries)), 0, -1):
            if old[-k:] == entries[:k]:
                return k
        return 0  # everything we knew fell off between two polls

    def _resume_at(self, entries: list[str]) -> int:
        assert self._resume is not None
        index, digest = self._resume
        self.next_index = index + 1
        if digest is None:  # a bare index: right while nothing fell off the front
            return min(index + 1, len(entries))
        if index < len(entries) and _digest(entries[index]) == digest:
            return index + 1
        for pos in range(len(entries) - 1, -1, -1):
            if _digest(entries[pos]) == digest:
                return pos + 1
        return 0  # the entry fell off: send all we have, numbered on from the client's id


def _parse_id(last_id: str | None) -> tuple[int, str | None] | None:
    if not last_id:
        return None
    index, _, digest = last_id.strip().partition(".")
    if not index.isascii() or not index.isdigit():
        return None
    return int(index), (digest or None)


def _sse(event: str, data: Any, *, event_id: str | None = None) -> str:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"data: {json.dumps(data, separators=(',', ':'))}")
    return "\n".join(lines) + "\n\n"


class HealingApi:
    """The endpoints, over one Temporal client (which must use the pydantic converter, as a
    client with the HealingPlugin does)."""

    def __init__(self, client: Client, options: ServeOptions) -> None:
        self.client = client
        self.options = options
        self._token = options.token.encode() if options.token else None

    # --- reading -----------------------------------------------------------------------------

    async def query_status(
        self, handle: WorkflowHandle[Any, Any]
    ) -> tuple[HealingStatus | None, str | None]:
        """The healing_status query, or None and why it failed (no worker, a timeout)."""
        timeout = self.options.query_timeout_s
        try:
            raw = await handle.query(QUERY, rpc_timeout=timedelta(seconds=timeout))
            return HealingStatus.model_validate(raw), None
        except RPCError as exc:
            if exc.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
                return None, f"no worker answered the {QUERY} query within {timeout:g}s"
            return None, f"the {QUERY} query failed: {exc.status.name}: {exc.message}"
        except ValidationError:
            return None, f"the {QUERY} query answered something that is not a HealingStatus"
        except Exception as exc:  # query rejected or failed inside the workflow
            return None, f"the {QUERY} query failed: {exc}"

    async def escalations(self, request: Request) -> Response:
        try:
            limit = max(1, min(int(request.query_params.get("limit", "100")), 1000))
        except ValueError:
            return _error(400, "limit must be a whole number")
        found: list[dict[str, Any]] = []
        async for wf in self.client.list_workflows(AWAITING, limit=limit):
            brief = _brief(await wf.memo())
            error_type = wf.typed_search_attributes.get(_ERROR_TYPE)
            found.append(
                {
                    "workflow_id": wf.id,
                    "run_id": wf.run_id,
                    "workflow_type": wf.workflow_type,
                    "task_queue": wf.task_queue,
                    "start_time": _iso(wf.start_time),
                    "error_type": error_type,
                    "escalation": brief.model_dump(mode="json") if brief else None,
                }
            )
        return JSONResponse({"count": len(found), "escalations": found})

    async def status(self, request: Request) -> Response:
        workflow_id = request.path_params["workflow_id"]
        handle = self.client.get_workflow_handle(workflow_id)
        desc = await handle.describe()
        healing, problem = await self.query_status(handle)
        brief = _brief(await desc.memo())
        return JSONResponse(
            {
                "workflow_id": workflow_id,
                "run_id": desc.run_id,
                "run_status": _run_status(desc),
                "task_queue": desc.task_queue,
                "source": "query" if healing is not None else "memo",
                "healing": healing.model_dump(mode="json") if healing else None,
                "escalation": brief.model_dump(mode="json") if brief else None,
                "problem": problem,
            }
        )

    # --- deciding ----------------------------------------------------------------------------

    def _authorized(self, request: Request) -> Response | None:
        """None when the request carries the API token; the refusal otherwise."""
        if self._token is None:
            return _error(
                403, f"decisions are disabled: start `healing serve` with {TOKEN_ENV} set"
            )
        scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
        given = supplied.strip().encode()
        # Constant time whatever was supplied (compare_digest takes bytes of any length).
        ok = hmac.compare_digest(given, self._token)
        if scheme.lower() != "bearer" or not ok:
            return _error(
                401,
                "a decision needs Authorization: Bearer <HEALING_API_TOKEN>",
                **{"WWW-Authenticate": 'Bearer realm="healing"'},
            )
        return None

    async def decision(self, request: Request) -> Response:
        refused = self._authorized(request)
        if refused is not None:
            return refused
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return _error(413, f"the decision body is over {MAX_BODY} bytes")
        try:
            body = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the body is not JSON: send an EscalationDecision object")
        if not isinstance(body, dict):
            return _error(400, 'the body must be a JSON object like {"option": "skip"}')
        if not body.get("decided_by"):
            body["decided_by"] = "web"
        try:
            decision = EscalationDecision.model_validate(body)
        except ValidationError as exc:
            return _error(400, f"invalid decision ({validation_problems(exc, root='decision')})")

        workflow_id = request.path_params["workflow_id"]
        handle = self.client.get_workflow_handle(workflow_id)
        desc = await handle.describe()
        if not _running(desc):
            return _error(409, f"{workflow_id} already completed ({_run_status(desc)})")
        # The server lists a poller for minutes after its worker stopped, and an update sent
        # with no worker waits for one (and may apply long after the user gave up): a worker
        # must answer the status query first. Nothing is sent otherwise.
        healing, problem = await self.query_status(handle)
        if healing is None:
            return _error(
                503,
                f"{problem}: no worker is serving task queue {desc.task_queue!r}, so the "
                "decision would wait for one; nothing was sent",
            )
        timeout = self.options.update_timeout_s
        try:
            result = await send_decision(self.client, workflow_id, decision, "update", timeout)
        except WorkflowClosed as exc:
            return _error(409, str(exc))
        except DecisionUnconfirmed:
            return _error(
                504,
                f"no worker accepted the decision within {timeout:g}s; the server may still "
                "deliver it when a worker picks the workflow up (see its status)",
            )
        except DecisionError as exc:  # the workflow's validator refused it
            return _error(400, str(exc))
        logger.info("decision %s for %s by %s", decision.option, workflow_id, decision.decided_by)
        return JSONResponse(
            {
                "workflow_id": workflow_id,
                "option": decision.option,
                "decided_by": decision.decided_by,
                "result": result,
            }
        )

    # --- live events -------------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        workflow_id = request.path_params["workflow_id"]
        handle = self.client.get_workflow_handle(workflow_id)
        await handle.describe()  # 404 before the stream starts
        last_id = request.headers.get("last-event-id") or request.query_params.get("last_id")
        return StreamingResponse(
            self.stream(handle, last_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def stream(
        self, handle: WorkflowHandle[Any, Any], last_id: str | None
    ) -> AsyncIterator[str]:
        """The SSE stream: new history entries, status changes, then ``end``."""
        cursor = HistoryCursor(last_id)
        loop = asyncio.get_running_loop()
        last_status: dict[str, Any] | None = None
        last_sent = loop.time()
        yield "retry: 2000\n\n"
        while True:
            try:
                desc = await handle.describe()  # before the query: a closed run's is final
            except RPCError as exc:
                yield _sse("error", {"error": f"{exc.status.name}: {exc.message}"})
                return
            healing, problem = await self.query_status(handle)
            if healing is not None:
                entries = [h.model_dump(mode="json") for h in healing.history]
                for index, text in cursor.advance([_canonical(e) for e in entries]):
                    data = {"index": index, "workflow_id": handle.id, **json.loads(text)}
                    yield _sse("healing", data, event_id=f"{index}.{_digest(text)}")
                    last_sent = loop.time()
            status = {
                "run_status": _run_status(desc),
                "state": healing.state if healing else None,
                "worker": healing is not None,
                "problem": problem,
            }
            if status != last_status:
                yield _sse("status", status)
                last_status, last_sent = status, loop.time()
            if not _running(desc):
                yield _sse("end", {"run_status": _run_status(desc), "events": cursor.next_index})
                return
            if loop.time() - last_sent >= self.options.keepalive_s:
                yield ": keep-alive\n\n"
                last_sent = loop.time()
            await asyncio.sleep(self.options.poll_s)

    # --- the page ----------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        headers = {**_SECURITY_HEADERS, "Content-Security-Policy": _PAGE_CSP}
        return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=headers)

    async def rpc_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RPCError)
        if exc.status == RPCStatusCode.NOT_FOUND and "workflow_id" in request.path_params:
            wf = request.path_params["workflow_id"]
            return _error(404, f"workflow {wf!r} not found in namespace {self.client.namespace}")
        return _error(502, f"Temporal answered {exc.status.name}: {exc.message}")


def create_app(client: Client, options: ServeOptions | None = None) -> Starlette:
    """The ASGI app over ``client`` (one with the HealingPlugin, for the pydantic converter)."""
    opts = options or ServeOptions()
    api = HealingApi(client, opts)
    middleware = []
    if opts.allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(opts.allowed_hosts)))
    if opts.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(opts.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            )
        )
    routes = [
        Route("/", api.index, methods=["GET"]),
        Route("/api/escalations", api.escalations, methods=["GET"]),
        Route("/api/workflows/{workflow_id:str}/status", api.status, methods=["GET"]),
        Route("/api/workflows/{workflow_id:str}/decision", api.decision, methods=["POST"]),
        Route("/api/workflows/{workflow_id:str}/events", api.events, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=WEB_DIR), name="static"),
    ]
    return Starlette(
        routes=routes, middleware=middleware, exception_handlers={RPCError: api.rpc_error}
    )


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket; HealingError (one line) when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise HealingError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def options_from(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> ServeOptions:
    env = os.environ if environ is None else environ
    host: str = args.host
    loopback = host in _LOOPBACK_HOSTS
    return ServeOptions(
        token=env.get(TOKEN_ENV) or None,
        allowed_hosts=_LOOPBACK_HOSTS if loopback else None,
        cors_origins=tuple(getattr(args, "cors_origin", None) or ()),
    )


class _Server(uvicorn.Server):
    """uvicorn's server, stopped by SIGINT/SIGTERM through the loop (exit 0, like ``healing
    dev``) instead of re-raising the signal after shutdown; a second Ctrl-C forces it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _stop(self) -> None:
        self.force_exit = self.should_exit
        self.should_exit = True


async def main(args: argparse.Namespace, client: Client) -> int:
    """Run ``healing serve`` until Ctrl-C or SIGTERM (``args``: address, namespace, host, port,
    cors_origin). ``client`` is connected by the CLI (the tool layer: this module stays below
    it) and must carry the HealingPlugin."""
    options = options_from(args)
    sock = listen(args.host, args.port)
    try:
        app = create_app(client, options)
        config = uvicorn.Config(
            app, log_level="info", timeout_graceful_shutdown=3, lifespan="off", proxy_headers=False
        )
        host = f"[{args.host}]" if ":" in args.host and not args.host.startswith("[") else args.host
        port = sock.getsockname()[1]
        decisions = (
            "decisions need the bearer token in HEALING_API_TOKEN"
            if options.token
            else f"decisions are disabled ({TOKEN_ENV} is not set)"
        )
        print(
            f"healing serve: inbox http://{host}:{port}/ for namespace {args.namespace} at "
            f"{args.address}; {decisions}; Ctrl-C stops",
            flush=True,
        )
        await _Server(config).serve(sockets=[sock])
    finally:
        sock.close()
    return 0
