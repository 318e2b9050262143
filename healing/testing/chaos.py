"""ChaosAPI: a real HTTP/1.1 server on 127.0.0.1 that plays a CRM and fails like real vendors.

    async with ChaosAPI(FaultPlan.random(seed=7, rate=0.3)) as chaos:
        async with httpx.AsyncClient(base_url=chaos.url) as client:
            await client.get("/contacts/42")
        chaos.stats().calls_to("GET", "/contacts/42")

Endpoints (CRM): `GET /contacts/{id}`, `POST /contacts` (Stripe-style `Idempotency-Key`),
`GET /deals/{id}`, `GET /hubspot/contacts/{id}`, `POST /oauth/token` (refresh_token with
rotation, optional reuse detection and reuse interval; client_credentials; authorization_code
with PKCE), `GET /oauth/authorize` (approves at once and redirects with a code; `login_hint`
names the account, i.e. the grant). Control (never faulted, never counted): `GET
/__chaos/stats`, `POST /__chaos/reset`, `GET|PUT /__chaos/plan`, `GET|POST /__chaos/tokens
[?grant=G]`, `POST /__chaos/expire-tokens`, `POST /__chaos/revoke-grant[?grant=G]`, `PUT
/__chaos/refresh-policy` (`{"reuse_detection": true, "reuse_interval_s": 5}`), `GET
/__chaos/rates` (calls and 429s of the plan's `rate_limits`, by header form).

Which request fails how is decided by the `FaultPlan` (see `healing.testing.plan`). Methods of
`ChaosAPI` must be called on the server's event loop; `start_in_thread()` returns a
`ChaosThread` whose methods are safe from any thread.

Command line: `python -m healing.testing.chaos --port 0 [--plan plan.json] [--seed N]
[--rate 0.3] [--require-token]` prints `CHAOS_URL=http://127.0.0.1:PORT` first, then serves
until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import re
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from pydantic import ValidationError

from healing.testing._http import (
    HTTPParseError,
    Request,
    Response,
    encode_head,
    json_response,
    read_request,
    write_response,
)
from healing.testing.drift import drift_body, hubspot_renamed
from healing.testing.plan import (
    BodyFault,
    FaultPlan,
    LatencyFault,
    ResetFault,
    SchemaDriftFault,
    SchemaRenameFault,
    StatusFault,
    TimeoutFault,
    TruncatedFault,
    Vendor,
)
from healing.testing.ratelimits import RateBook, RateStats
from healing.testing.state import ChaosState, ChaosStats, TokenSet
from healing.testing.vendors import status_response

if TYPE_CHECKING:
    from healing.testing.thread import ChaosThread

__all__ = ["ChaosAPI", "main"]

log = logging.getLogger(__name__)

_CONTACT = re.compile(r"/contacts/([^/]+)")
_DEAL = re.compile(r"/deals/([^/]+)")
_HUBSPOT_CONTACT = re.compile(r"/hubspot/contacts/([^/]+)")
_PERSON = re.compile(r"/people/([^/]+)")


def _check_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"ChaosAPI binds loopback addresses only, not {host!r}")


def _error(status: int) -> Response:
    return status_response(StatusFault(status=status))


def _renamed(payload: Any) -> Any:
    """The schema drift of VENDOR-FAULTS #10 (see ``hubspot_renamed``)."""
    return hubspot_renamed(payload) if isinstance(payload, dict) else payload


class ChaosAPI:
    """A CRM on 127.0.0.1 that injects the faults of a `FaultPlan`.

    Args:
        plan: what to fail; an empty plan (no faults) by default.
        host: a loopback address ("127.0.0.1", "::1" or "localhost"); anything else is refused.
        port: 0 picks a free port (see `url` after start).
        require_token: CRM endpoints then need `Authorization: Bearer <access token>`.
        auth_vendor: whose shape a rejected token gets (Salesforce 401 by default; Slack
            answers `200 {"ok": false, "error": "token_expired" | "invalid_auth"}`).
        token_ttl_s: `expires_in` of issued access tokens, on `clock`.
        clock: seconds, monotonic; drives outage windows and token expiry.
        idempotency_capacity: idempotency keys remembered (least recently used are dropped).
    """

    def __init__(
        self,
        plan: FaultPlan | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        require_token: bool = False,
        auth_vendor: Vendor = "salesforce",
        token_ttl_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        idempotency_capacity: int = 100_000,
    ) -> None:
        _check_loopback(host)
        self.host = host
        self.require_token = require_token
        self.auth_vendor: Vendor = auth_vendor
        self._requested_port = port
        self._clock = clock
        self._state = ChaosState(
            plan or FaultPlan(), clock=clock, token_ttl_s=token_ttl_s, capacity=idempotency_capacity
        )
        self._rates = RateBook()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._port: int | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> ChaosAPI:
        if self._server is not None:
            raise RuntimeError("ChaosAPI is already running")
        self._stopping = False
        self._server = await asyncio.start_server(self._accept, self.host, self._requested_port)
        self._port = int(self._server.sockets[0].getsockname()[1])
        self._state.restart_epoch()
        return self

    async def stop(self) -> None:
        """Stop listening, cut every open connection (hung ones included) and wait for them."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        server.close()
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)
        await server.wait_closed()

    async def __aenter__(self) -> ChaosAPI:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def start_in_thread(self, *, timeout_s: float = 10.0) -> ChaosThread:
        """Run the server on its own event loop in a daemon thread, for synchronous callers."""
        from healing.testing.thread import ChaosThread

        return ChaosThread(self, timeout_s=timeout_s)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("ChaosAPI is not started")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- control --------------------------------------------------------------------------

    @property
    def plan(self) -> FaultPlan:
        return self._state.plan

    def set_plan(self, plan: FaultPlan) -> None:
        """Replace the plan; attempt numbers and outage windows start again from now."""
        self._state.set_plan(plan)
        self._rates.reset()

    def reset(self) -> None:
        """Clear stats, attempt numbers and idempotency keys; outage windows start again."""
        self._state.reset()
        self._rates.reset()

    def stats(self) -> ChaosStats:
        return self._state.snapshot()

    def rate_stats(self) -> RateStats:
        """Calls on rate-limited paths and how many got the throttling answer (by form)."""
        return self._rates.stats

    def issue_tokens(self, grant: str = "default") -> TokenSet:
        """A fresh grant for account `grant` (as after a human re-authorizes): new access and
        refresh tokens; the account's old refresh tokens die."""
        return self._state.tokens.issue_grant(grant)

    @property
    def access_token(self) -> str | None:
        return self._state.tokens.latest_access

    @property
    def refresh_token(self) -> str | None:
        return self._state.tokens.refresh_token

    def tokens_of(self, grant: str) -> tuple[str | None, str | None]:
        """(latest access token, current refresh token) of account `grant`."""
        held = self._state.tokens.grants.get(grant)
        return self._state.tokens.latest_access_of(grant), held.refresh_token if held else None

    def minted_tokens(self) -> list[str]:
        """Every access and refresh token issued lately (the last 20,000): what a secret scan
        looks for."""
        return list(self._state.tokens.minted)

    def accepted_call_times(self) -> list[float]:
        """When the latest API calls a valid access token got through happened (20,000), on
        the server's ``clock`` (monotonic by default)."""
        return list(self._state.tokens.accepted_at)

    def pkce_secrets(self) -> list[str]:
        """Every authorization code and PKCE verifier presented at the token endpoint (a
        secret scan looks for them too)."""
        return list(self._state.tokens.pkce_secrets)

    def expire_tokens(self) -> None:
        """Expire every access token now, so the next call takes the 401 path."""
        self._state.tokens.expire_all()

    def revoke_grant(self, grant: str | None = None) -> None:
        """Revoke a grant (every grant when None): refreshes get invalid_grant and its access
        tokens stop working."""
        self._state.tokens.revoke(grant)

    def set_refresh_policy(
        self,
        *,
        reuse_detection: bool | None = None,
        reuse_interval_s: float | None = None,
        token_ttl_s: float | None = None,
    ) -> None:
        """Refresh-token reuse detection (a reused rotated token revokes the grant), the
        reuse interval after a rotation during which the previous token still works, and the
        lifetime of access tokens issued from now on."""
        if token_ttl_s is not None:
            self._state.tokens.ttl_s = token_ttl_s
        if reuse_detection is not None:
            self._state.tokens.reuse_detection = reuse_detection
        if reuse_interval_s is not None:
            self._state.tokens.reuse_interval_s = reuse_interval_s

    # -- connections ----------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, not a coroutine: the connection tasks are ours to track and cancel.
        if self._stopping:
            writer.close()
            return
        self._state.connections += 1
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while not self._stopping:
                try:
                    request = await read_request(reader)
                except HTTPParseError as exc:
                    await write_response(
                        writer, json_response(400, {"error": str(exc)}), close=True
                    )
                    break
                if request is None or not await self._exchange(request, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("chaos server: unexpected error on a connection")
        finally:
            writer.close()

    async def _exchange(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False when the connection must not be reused."""
        keep = request.keep_alive
        if request.path.startswith("/__chaos/"):
            await write_response(writer, self._control(request), close=not keep)
            return keep
        key = request.header("idempotency-key") if request.method == "POST" else None
        fault = self._state.begin_call(request.method, request.path, key)
        extra: tuple[tuple[str, str], ...] = ()
        if self.plan.rate_limits:
            elapsed = self._clock() - self._state.epoch
            extra, throttled = self._rates.admit(
                self.plan.rate_limits,
                request.path,
                request.header,
                elapsed_s=elapsed,
                now_epoch=time.time(),
            )
            if throttled is not None:
                await write_response(writer, throttled, close=not keep)
                return keep
        if isinstance(fault, ResetFault):
            _reset(writer)
            return False
        if isinstance(fault, TimeoutFault):
            await _hang(reader, fault.hang_s)
            return False
        if isinstance(fault, StatusFault):
            await write_response(writer, status_response(fault), close=not keep)
            return keep
        if isinstance(fault, BodyFault):
            await self._hostile_body(fault, writer)
            return False
        delay_s = fault.delay_ms / 1000 if isinstance(fault, LatencyFault) else 0.0
        response = await self._answer(request, key, delay_s)
        if extra:
            response = Response(response.status, response.body, (*response.headers, *extra))
        if isinstance(fault, SchemaRenameFault) and response.status < 300:
            body = json.dumps(_renamed(json.loads(response.body))).encode()
            response = Response(response.status, body, response.headers)
        if isinstance(fault, SchemaDriftFault) and response.status < 300:
            body = json.dumps(drift_body(fault.change, json.loads(response.body))).encode()
            response = Response(response.status, body, response.headers)
        if isinstance(fault, TruncatedFault):
            cut = int(len(response.body) * fault.keep_fraction)
            writer.write(encode_head(response, content_length=len(response.body), close=True))
            writer.write(response.body[:cut])
            await writer.drain()
            return False
        await write_response(writer, response, close=not keep)
        return keep

    async def _hostile_body(self, fault: BodyFault, writer: asyncio.StreamWriter) -> None:
        """Send a `BodyFault` answer, counting the body bytes the client takes."""
        json_type = (("Content-Type", "application/json"),)
        if fault.shape == "nested":
            body = b"[" * fault.depth + b"]" * fault.depth
        elif fault.shape == "non_utf8":
            body = b'{"message": "caf\xe9 \xff\xfe not utf-8", "code": "\xc3\x28"}'
        else:
            body = b""
        chunked = fault.shape == "huge" and not fault.content_length
        length = None if chunked else (fault.size_bytes if fault.shape == "huge" else len(body))
        head = Response(fault.status, b"", json_type)
        with contextlib.suppress(ConnectionError):
            writer.write(encode_head(head, content_length=length, close=True))
            for piece in _huge_pieces(fault.size_bytes) if fault.shape == "huge" else [body]:
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                await writer.drain()  # backpressure: count only what the client took
                self._state.body_bytes_sent += len(piece)
            if chunked:
                writer.write(b"0\r\n\r\n")
                await writer.drain()

    # -- the CRM --------------------------------------------------------------------------

    async def _answer(self, request: Request, key: str | None, delay_s: float) -> Response:
        if request.path == "/oauth/token":
            await asyncio.sleep(delay_s)
            if request.method != "POST":
                return _error(405)
            form = {k: v[-1] for k, v in parse_qs(request.body.decode("latin-1")).items()}
            return self._state.tokens.token_endpoint(form)
        if request.path == "/oauth/authorize":
            await asyncio.sleep(delay_s)
            if request.method != "GET":
                return _error(405)
            query = {k: v[-1] for k, v in parse_qs(request.query).items()}
            return self._state.tokens.authorize(query)
        if self.require_token:
            rejection = self._state.tokens.check(request.header("authorization"), self.auth_vendor)
            if rejection is not None:
                return rejection
        if request.path == "/contacts":
            if request.method != "POST":
                return _error(405)
            return await self._state.create_contact(request.body, key, delay_s)
        await asyncio.sleep(delay_s)
        for pattern, render in (
            (_CONTACT, _contact),
            (_DEAL, _deal),
            (_HUBSPOT_CONTACT, _hubspot_contact),
            (_PERSON, _person),
        ):
            match = pattern.fullmatch(request.path)
            if match:
                if request.method != "GET":
                    return _error(405)
                return json_response(200, render(match.group(1)))
        return _error(404)

    def _control(self, request: Request) -> Response:
        route = (request.method, request.path.removeprefix("/__chaos"))
        if route == ("GET", "/rates"):
            return json_response(200, dataclasses.asdict(self._rates.stats))
        if route == ("GET", "/stats"):
            return json_response(200, self.stats().model_dump(mode="json"))
        if route == ("POST", "/reset"):
            self.reset()
            return json_response(200, {"ok": True})
        if route == ("GET", "/plan"):
            return json_response(200, self.plan.model_dump(mode="json"))
        if route == ("PUT", "/plan"):
            try:
                plan = FaultPlan.model_validate_json(request.body)
            except ValidationError as exc:
                errors = json.loads(exc.json(include_url=False, include_input=False))
                return json_response(400, {"error": "invalid_plan", "detail": errors})
            self.set_plan(plan)
            return json_response(200, {"ok": True})
        if route == ("GET", "/tokens"):
            current = {"access_token": self.access_token, "refresh_token": self.refresh_token}
            return json_response(200, current)
        grant = {k: v[-1] for k, v in parse_qs(request.query).items()}.get("grant")
        if route == ("POST", "/tokens"):
            return json_response(200, self.issue_tokens(grant or "default").model_dump())
        if route == ("POST", "/expire-tokens"):
            self.expire_tokens()
            return json_response(200, {"ok": True})
        if route == ("POST", "/revoke-grant"):
            self.revoke_grant(grant)
            return json_response(200, {"ok": True})
        if route == ("PUT", "/refresh-policy"):
            try:
                body = request.json()
                self.set_refresh_policy(
                    reuse_detection=body.get("reuse_detection"),
                    reuse_interval_s=body.get("reuse_interval_s"),
                    token_ttl_s=body.get("token_ttl_s"),
                )
            except (ValueError, AttributeError, TypeError):
                return json_response(400, {"error": "expected {reuse_detection, reuse_interval_s}"})
            return json_response(200, {"ok": True})
        return _error(404)


def _contact(ident: str) -> dict[str, Any]:
    return {
        "id": ident,
        "email": f"c{ident}@example.com",
        "name": f"Contact {ident}",
        "amount": "1000.50",
    }


def _deal(ident: str) -> dict[str, Any]:
    return {"id": ident, "name": f"Deal {ident}", "amount": "1000.50", "stage": "closedwon"}


def _hubspot_contact(ident: str) -> dict[str, Any]:
    return {"id": ident, "properties": {"email": f"c{ident}@example.com", "amount": "1000.50"}}


def _person(ident: str) -> dict[str, Any]:
    return {
        "id": ident,
        "first_name": "Ada",
        "last_name": f"Lovelace{ident}",
        "email": f"p{ident}@example.com",
        "amount": "1000.50",
    }


def _huge_pieces(size: int, piece: int = 64 * 1024) -> Iterator[bytes]:
    """A JSON array of zeros of exactly `size` bytes (a space pads an even size), lazily."""
    items = (size - 3) // 2  # "[" + "0," * items + "0" + pad + "]"
    yield b"["
    for start in range(0, 2 * items, piece):
        yield b"0," * (min(piece, 2 * items - start) // 2)
    yield b"0" + b" " * ((size - 3) % 2) + b"]"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _hang(reader: asyncio.StreamReader, hang_s: float) -> None:
    """Say nothing for hang_s, or until the client gives up and closes the connection."""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(hang_s):
            while await reader.read(65536):
                pass


# -- command line -------------------------------------------------------------------------


def _plan_from_args(args: argparse.Namespace) -> FaultPlan:
    plan = FaultPlan.model_validate_json(Path(args.plan).read_text()) if args.plan else FaultPlan()
    data = plan.model_dump()
    if args.seed is not None:
        data["seed"] = args.seed
    if args.rate is not None:
        data["rate"] = args.rate
    return FaultPlan.model_validate(data)


async def _serve_until_signal(api: ChaosAPI) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with api:
        print(f"CHAOS_URL={api.url}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m healing.testing.chaos", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--plan", help="FaultPlan as a JSON file")
    parser.add_argument("--seed", type=int, help="overrides the plan's seed")
    parser.add_argument("--rate", type=float, help="random transient fault rate, 0..1")
    parser.add_argument("--require-token", action="store_true", help="CRM needs Bearer tokens")
    args = parser.parse_args(argv)
    try:
        api = ChaosAPI(
            _plan_from_args(args), host=args.host, port=args.port, require_token=args.require_token
        )
    except (ValueError, OSError) as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve_until_signal(api))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
