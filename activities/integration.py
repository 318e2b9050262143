"""The generic integration activity: one HTTP call, described by the connector catalog.

``IntegrationActivities(catalog, tokens=...)`` holds one ``httpx.AsyncClient`` per connector
(reused across calls, closed by ``aclose()``) and exposes the ``call_integration`` activity.
Upstream failures are raised with what the upstream said (``IntegrationFailure``: status,
response headers, body) or as the transport's own exception (``httpx.ConnectError``,
``json.JSONDecodeError`` for a broken body, ...); the healing interceptor classifies and heals
them. A call that cannot be sent as asked raises ``RequestRefused`` (BAD_REQUEST: escalated, a
human can edit and retry it). Bodies are streamed and read up to the connector's
``max_response_bytes`` (``ResponseTooLarge`` past it). Request headers, and so credentials,
never go into an error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator
from temporalio import activity

from healing.backoff import parse_retry_after
from healing.catalog import ConnectorCatalog, ConnectorSpec, OperationSpec, resolve_model
from healing.errors import (
    ConfigError,
    CredentialError,
    IntegrationFailure,
    RequestRefused,
    ResponseTooLarge,
)
from healing.integration import current_call, integration
from healing.ratelimit import RateLimiter, parse_rate_limit_headers
from healing.redact import is_secret_header, scrub
from healing.schema import validate_response

CALL_INTEGRATION = "call_integration"
"""Activity type name of the generic integration call."""
MAX_ERROR_TEXT = 4096
"""A non-JSON error body is cut to this many characters."""
MAX_PACING_WAIT_S = 2.0
"""Longer client-side rate-limit waits are handed to the server as a 429 with Retry-After."""

_QUERY_METHODS = frozenset({"GET", "DELETE", "HEAD", "OPTIONS"})


class TokenSource(Protocol):
    """Gives the current access token of a connector (``healing.credentials.TokenRefresher``)."""

    async def access_token(self, connector: str) -> str: ...


class CallRequest(BaseModel):
    """One call of a catalog operation; this is what workflow history records, so no secrets.

    ``params`` fill the path's ``{placeholders}``; the rest go to the query string (GET, DELETE,
    HEAD, OPTIONS, or when ``body`` is given) or become the JSON body's fields.
    """

    model_config = ConfigDict(extra="forbid")

    connector: str
    operation: str
    params: dict[str, Any] = Field(default_factory=dict)
    body: Any = None
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra, non-secret request headers (credentials come from the connector's auth)."""

    @field_validator("headers")
    @classmethod
    def _no_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if is_secret_header(name):
                raise ValueError(
                    f"header {name!r} would put a secret into workflow history; "
                    "configure the connector's [auth] instead"
                )
        return value


def idempotency_key(info: activity.Info, edits: int = 0) -> str:
    """Same for every attempt of one activity (the attempt number is deliberately left out);
    a human's edit of the input starts a new key, since the request is a different one."""
    scope = info.workflow_id or info.activity_run_id or ""
    suffix = f":edit{edits}" if edits else ""
    return hashlib.sha256(f"{scope}:{info.activity_id}{suffix}".encode()).hexdigest()


class IntegrationActivities:
    """The generic integration activity and the HTTP clients it reuses.

    Args:
        catalog: The connector catalog.
        tokens: Source of OAuth2 access tokens, needed by connectors with ``kind = "oauth2"``.
        transport: httpx transport for every client (tests, proxies); default is httpx's.
        environ: Where ``api_key_env`` variables are read; ``os.environ`` by default.
        clock: Monotonic seconds for client-side pacing.
    """

    def __init__(
        self,
        catalog: ConnectorCatalog,
        *,
        tokens: TokenSource | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.catalog = catalog
        self._tokens = tokens
        self._transport = transport
        self._environ = os.environ if environ is None else environ
        self._clock = clock
        self._clients: dict[tuple[str, str, float], httpx.AsyncClient] = {}
        self._limiters: dict[str, RateLimiter] = {}

    def client(self, connector: str) -> httpx.AsyncClient:
        """The connector's client, created on first use and reused afterwards."""
        spec = self.catalog.connector(connector)
        key = (connector, spec.base_url, spec.timeout_s)
        client = self._clients.get(key)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(
                base_url=spec.base_url,
                # No pool timeout: waiting for a local connection slot is congestion here,
                # not an upstream timeout (the attempt's own deadline still bounds it).
                timeout=httpx.Timeout(spec.timeout_s, pool=None),
                headers=spec.headers,
                transport=self._transport,
            )
            self._clients[key] = client
        return client

    async def aclose(self) -> None:
        """Close every client (call when the worker shuts down)."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    async def __aenter__(self) -> IntegrationActivities:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @activity.defn(name=CALL_INTEGRATION)
    @integration()
    async def call_integration(self, req: CallRequest) -> dict[str, Any]:
        """Call ``req.operation`` on ``req.connector`` (or on the reroute target healing chose).

        Returns:
            ``{"result": body, "status": code, "connector": used, "healing": {...}}``.
        """
        ctx = current_call()
        connector = (ctx.hints.connector if ctx else None) or req.connector
        try:
            spec = self.catalog.connector(connector)
            op = self.catalog.operation(connector, req.operation)
            model = resolve_model(op.response_model) if op.response_model else None
        except ConfigError as exc:
            raise RequestRefused(str(exc), connector=connector, operation=req.operation) from exc
        path, query, body = _request_parts(op, req)
        await self._pace(connector, spec, req.operation)
        auth = await self._auth_headers(connector, spec)
        headers = {**req.headers, **auth}
        if not op.is_idempotent:
            headers["Idempotency-Key"] = idempotency_key(
                activity.info(), ctx.hints.edits if ctx else 0
            )
        async with self.client(connector).stream(
            op.method,
            path,
            params=query,
            json=body,
            headers=headers,
            timeout=op.timeout_s if op.timeout_s is not None else httpx.USE_CLIENT_DEFAULT,
        ) as response:
            self._observe(connector, response)
            try:
                content = await _read_body(
                    response, spec.max_response_bytes, connector, req.operation
                )
                payload = _payload(response, content, connector, req.operation)
            except IntegrationFailure as exc:
                # An API that echoes the credential back must not carry it into history:
                # pattern-based redaction misses short keys, so remove the exact values sent.
                sent = [part for value in auth.values() for part in (value, value.split()[-1])]
                exc.body = scrub(exc.body, sent)
                exc.headers = scrub(exc.headers, sent)
                exc.args = scrub(exc.args, sent)
                raise
        if model is not None:
            mapping = ctx.hints.schema_mapping if ctx else {}
            payload = validate_response(model, payload, mapping).model_dump(mode="json")
        return {
            "result": payload,
            "status": response.status_code,
            "connector": connector,
            "healing": {
                "attempt": activity.info().attempt,
                "counts_by_type": dict(ctx.counts_by_type) if ctx else {},
            },
        }

    async def _auth_headers(self, connector: str, spec: ConnectorSpec) -> dict[str, str]:
        auth = spec.auth
        if auth.kind == "oauth2":
            if self._tokens is None:
                raise RequestRefused(
                    f"connector '{connector}' uses oauth2 but IntegrationActivities was "
                    "built without tokens= (fix the worker's setup, then retry)",
                    connector=connector,
                )
            credential = getattr(self._tokens, "credential", None)
            if credential is None:
                return {auth.header: f"Bearer {await self._tokens.access_token(connector)}"}
            cred = await credential(connector)
            ctx = current_call()
            if ctx is not None:
                ctx.token_version = cred.version
            return {auth.header: f"Bearer {cred.access_token.get_secret_value()}"}
        if auth.kind == "api_key":
            key = self._environ.get(auth.api_key_env or "")
            if not key:
                raise CredentialError(
                    f"environment variable {auth.api_key_env} (API key of connector "
                    f"'{connector}') is not set",
                    connector=connector,
                )
            return {auth.header: f"{auth.scheme} {key}" if auth.scheme else key}
        return {}

    async def _pace(self, connector: str, spec: ConnectorSpec, operation: str) -> None:
        """Wait for a client-side rate-limit slot; long waits go back to the server."""
        limiter = self._limiters.get(connector)
        if limiter is None and spec.rate_limit is not None:
            limit = spec.rate_limit
            limiter = RateLimiter(limit.requests, limit.per_s, now=self._clock())
            self._limiters[connector] = limiter
        if limiter is None:
            return
        wait = limiter.reserve(self._clock(), max_wait_s=MAX_PACING_WAIT_S)
        if wait > MAX_PACING_WAIT_S:
            raise IntegrationFailure(
                f"{connector}.{operation}: client-side rate limit, next slot in {wait:.1f}s",
                status_code=429,
                headers={"retry-after": str(math.ceil(wait))},
                connector=connector,
                operation=operation,
            )
        while wait > 0:
            # Keep the interceptor's ledger in the heartbeat details: it survives retries.
            activity.heartbeat(*activity.info().heartbeat_details)
            step = min(wait, 0.5)
            await asyncio.sleep(step)
            wait -= step

    def _observe(self, connector: str, response: httpx.Response) -> None:
        """Refine pacing from the vendor's rate-limit headers."""
        info = parse_rate_limit_headers(response.headers, now_epoch=time.time())
        if info is None:
            return
        retry_after = parse_retry_after(response.headers.get("retry-after"), now=datetime.now(UTC))
        if retry_after is not None and info.exhausted:
            # The server's own Retry-After is the better reset than a whole window.
            info = dataclasses.replace(info, reset_after_s=retry_after)
        limiter = self._limiters.get(connector)
        if limiter is None:
            created = RateLimiter.from_info(info, now=self._clock())
            if created is not None:
                self._limiters[connector] = created
        else:
            limiter.observe(info, self._clock())


def _request_parts(op: OperationSpec, req: CallRequest) -> tuple[str, dict[str, Any], Any]:
    """Path with placeholders filled, query parameters, JSON body."""
    names = op.placeholders
    missing = [name for name in names if req.params.get(name) is None]
    if missing:
        raise RequestRefused(
            f"{req.connector}.{req.operation} needs params {', '.join(missing)} for path "
            f'{op.path} (edit_and_retry with input_patch {{"params": {{...}}}})',
            connector=req.connector,
            operation=req.operation,
        )
    path = op.path.format_map({name: quote(str(req.params[name]), safe="") for name in names})
    rest = {key: value for key, value in req.params.items() if key not in names}
    if req.body is not None:
        return path, rest, req.body
    if op.method in _QUERY_METHODS:
        return path, rest, None
    return path, {}, rest or None


async def _read_body(response: httpx.Response, limit: int, connector: str, operation: str) -> bytes:
    """At most ``limit`` bytes of the body, so memory stays bounded whatever the upstream sends.

    A 2xx body past the limit raises ``ResponseTooLarge`` (announced by Content-Length: nothing
    is read; chunked: reading stops there). An error body is cut at the limit instead: its
    status is what counts.
    """
    ok = 200 <= response.status_code < 300
    declared = _content_length(response)
    if ok and declared is not None and declared > limit:
        raise _too_large(response, limit, declared, connector, operation)
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():
        room = limit - total
        if len(chunk) > room:
            if ok:
                raise _too_large(response, limit, declared, connector, operation)
            chunks.append(chunk[:room])
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _content_length(response: httpx.Response) -> int | None:
    if response.request.method == "HEAD":  # describes the body a GET would get
        return None
    try:
        return int(response.headers["content-length"])
    except (KeyError, ValueError):
        return None


def _too_large(
    response: httpx.Response, limit: int, declared: int | None, connector: str, operation: str
) -> ResponseTooLarge:
    size = f"{declared} bytes" if declared is not None else "more, read stopped there"
    return ResponseTooLarge(
        f"{connector}.{operation} answered {response.status_code} with a body over "
        f"max_response_bytes = {limit} ({size}): raise max_response_bytes for connector "
        f"'{connector}', or narrow or paginate the request (edit_and_retry)",
        limit=limit,
        size=declared,
        status_code=response.status_code,
        headers=dict(response.headers),
        connector=connector,
        operation=operation,
    )


def _payload(response: httpx.Response, content: bytes, connector: str, operation: str) -> Any:
    """The parsed body of a 2xx answer; anything else raises what the upstream said."""
    status = response.status_code
    if not 200 <= status < 300:
        raise IntegrationFailure(
            f"{connector}.{operation} answered {status}",
            status_code=status,
            headers=dict(response.headers),
            body=_error_body(content, response),
            connector=connector,
            operation=operation,
        )
    if not content:
        return None
    if "json" not in response.headers.get("content-type", "json"):
        return _text(content, response)
    try:
        payload = json.loads(content)
    except json.JSONDecodeError as exc:
        raise json.JSONDecodeError(
            f"{connector}.{operation}: invalid or truncated JSON in a {status} answer: {exc.msg}",
            exc.doc,
            exc.pos,
        ) from exc
    except (ValueError, RecursionError) as exc:  # not UTF-8, nested past the parser's depth
        raise json.JSONDecodeError(
            f"{connector}.{operation}: unreadable JSON in a {status} answer ({type(exc).__name__})",
            "",
            0,
        ) from exc
    if isinstance(payload, dict) and payload.get("ok") is False:
        # Slack and friends: the error rides in a 200.
        raise IntegrationFailure(
            f"{connector}.{operation} answered {status} with ok=false: {payload.get('error')}",
            status_code=status,
            headers=dict(response.headers),
            body=payload,
            connector=connector,
            operation=operation,
        )
    return payload


def _text(content: bytes, response: httpx.Response) -> str:
    try:
        return content.decode(response.charset_encoding or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return content.decode("utf-8", errors="replace")


def _error_body(content: bytes, response: httpx.Response) -> Any:
    """The error answer's JSON, else its text cut to MAX_ERROR_TEXT. Never raises: whatever
    the body (deeply nested, not UTF-8, ...), the status must reach classification."""
    text = _text(content, response)
    try:
        return json.loads(text)
    except Exception:  # ValueError, RecursionError, MemoryError: all mean "not readable JSON"
        return text[:MAX_ERROR_TEXT]
