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
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator
from temporalio import activity

from healing import metrics
from healing.adaptation import Adaptation, adapt
from healing.backoff import parse_retry_after
from healing.catalog import ConnectorCatalog, ConnectorSpec, OperationSpec, resolve_model
from healing.config import RateLimitPolicy
from healing.credentials import check_connection
from healing.drift import DriftBook, DriftReview, SchemaMapping, evidence_lines, mapping_id
from healing.errors import (
    ConfigError,
    CredentialError,
    IntegrationFailure,
    PacingWait,
    RequestRefused,
    ResponseTooLarge,
    SchemaMismatch,
)
from healing.integration import current_call, integration
from healing.names import CALL_INTEGRATION_ACTIVITY, DRIFT_REVIEW_KEY
from healing.ratelimit import FleetPacer, parse_rate_limit_headers
from healing.redact import is_secret_header, scrub
from healing.store.base import FleetState
from healing.store.fallback import FallbackFleetState
from healing.store.memory import MemoryFleetState

logger = logging.getLogger("healing")

CALL_INTEGRATION = CALL_INTEGRATION_ACTIVITY
"""Activity type name of the generic integration call."""
MAX_ERROR_TEXT = 4096
"""A non-JSON error body is cut to this many characters."""
MAX_PACING_WAIT_S = 2.0
"""Longer client-side rate-limit waits are handed to the server as a 429 with Retry-After."""

_QUERY_METHODS = frozenset({"GET", "DELETE", "HEAD", "OPTIONS"})


class TokenSource(Protocol):
    """Gives the current access token of a connector (``healing.oauth.TokenRefresher``; one
    with ``credential(connector, connection)`` also serves a step's ``connection``)."""

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
    connection: str = Field(default="default", min_length=1)
    """The account/tenant whose stored credential the call uses (DESIGN s3)."""

    # Checked here too: the name goes into store keys and the commands escalations print.
    _connection = field_validator("connection")(check_connection)

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
        clock: Monotonic seconds for client-side pacing (kept for callers; pacing runs on
            ``wall_clock``).
        fleet: The store's fleet state, so rate-limit windows are the fleet's (every worker on
            the same store paces by one window); default: this process only.
        wall_clock: Epoch seconds for the fleet's rate-limit slots.
        drift: Schema mappings and drift records when no healing interceptor runs the call
            (the interceptor's own, over its store, otherwise); default: this process only.
    """

    def __init__(
        self,
        catalog: ConnectorCatalog,
        *,
        tokens: TokenSource | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        drift: DriftBook | None = None,
        fleet: FleetState | None = None,
        wall_clock: Callable[[], float] = time.time,
        rate_limit: RateLimitPolicy | None = None,
    ) -> None:
        self.catalog = catalog
        shared = MemoryFleetState() if fleet is None else FallbackFleetState(fleet)
        self.pacer = FleetPacer(shared, rate_limit)
        self._wall = wall_clock
        self._drift = drift or DriftBook(MemoryFleetState())
        self._tokens = tokens
        self._transport = transport
        self._environ = os.environ if environ is None else environ
        self._clock = clock
        self._clients: dict[tuple[str, str, float], httpx.AsyncClient] = {}

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
        auth = await self._auth_headers(connector, spec, req.connection)
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
            await self._observe(connector, response)
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
        healing: dict[str, Any] = {
            "attempt": activity.info().attempt,
            "counts_by_type": dict(ctx.counts_by_type) if ctx else {},
        }
        out: dict[str, Any] = {
            "result": payload,
            "status": response.status_code,
            "connector": connector,
            "healing": healing,
        }
        if model is not None:
            # The body already received is adapted here: the request is never sent again.
            fit = await self._fit(model, payload, connector, req, op)
            healing.update(fit.pop("healing", {}))
            out.update(fit)
        return out

    async def _fit(
        self,
        model: type[BaseModel],
        payload: Any,
        connector: str,
        req: CallRequest,
        op: OperationSpec,
    ) -> dict[str, Any]:
        """Validate ``payload``, adapting it to drift by the operation's ``schema_drift``.

        Returns what joins the result: ``result`` (the validated model), ``extra`` (keys the
        model does not know), and ``healing.drift`` / ``healing.schema``; or, for a review, a
        ``DRIFT_REVIEW_KEY`` entry holding the response for a human's ``accept_mapping``.

        Raises:
            SchemaMismatch: no mapping fits, or a proposal the workflow side cannot hold
                (no healing interceptor, or an older one), or a store failure while
                storing a proposal: the message names the fields. Never retried.
        """
        ctx = current_call()
        book = ctx.drift if ctx is not None and ctx.drift is not None else self._drift
        policy = op.drift_policy
        known = await book.active(connector, req.operation)
        if policy == "pause" and known is not None and not known.by_human:
            known = None  # pause: only a mapping a human approved applies
        legacy = ctx.hints.schema_mapping if ctx else {}
        if known is None and legacy:  # a workflow started before mappings lived in the store
            known = SchemaMapping(
                mapping_id="hint", connector=connector, operation=req.operation, renames=legacy
            )
        found = adapt(
            model,
            payload,
            known=known.known if known is not None else None,
            request=req.body if req.body is not None else req.params,
        )
        await book.record(connector, req.operation, found.changes)
        if found.changes or not found.ok:
            metrics.activity_schema_drift(connector, req.operation)
        drift = [c.describe() for c in found.changes]
        where = f"{connector}.{req.operation}"
        if found.ok and found.known:
            schema = (
                {"mapping_id": known.mapping_id}
                if known is not None and found.needs_mapping
                else {}
            )
            healing = {"drift": drift, **({"schema": schema} if schema else {})}
            return {"result": found.data, "extra": found.extra, "healing": healing}
        if not found.ok:
            why = f'schema_drift = "pause" for {where}' if policy == "pause" else ""
            raise _mismatch(where, model, found, why)
        # A pinned mapping is a human's: automatic adaptation never replaces it.
        pinned = known is not None and known.status == "pinned"
        auto = found.automatic and policy == "adapt" and not pinned
        try:
            learned = await book.learn(
                connector,
                req.operation,
                found,
                status="active" if auto else "proposed",
                decided_by="healing" if auto else None,
            )
        except Exception as exc:  # the store failed; the response is already here
            if not auto:  # nothing to hold a proposal in: a human fixes it (never re-sent)
                why = f"the proposed mapping could not be stored ({type(exc).__name__})"
                raise _mismatch(where, model, found, why) from None
            logger.warning("schema mapping of %s not stored (%s): adapted anyway", where, exc)
            learned = SchemaMapping(
                mapping_id=mapping_id(connector, req.operation, found.renames, found.envelope),
                connector=connector,
                operation=req.operation,
                renames=found.renames,
                envelope=found.envelope,
                status="active",
                evidence=evidence_lines(found),
            )
        if learned.status == "rejected":
            why = (
                f"mapping {learned.mapping_id} ({learned.describe()}) was rejected by "
                f"{learned.decided_by}; fix the response model, or `healing drift approve "
                f"{learned.mapping_id}`"
            )
            raise _mismatch(where, model, found, why)
        applies = learned.status in ("active", "pinned")  # learned now, or approved meanwhile
        if applies and (policy != "pause" or learned.by_human):
            schema = {
                "adapted": True,
                "operation": req.operation,
                "mapping_id": learned.mapping_id,
                "mapping": learned.describe(),
                "renames": learned.renames,
                "envelope": learned.envelope,
                "confidence": found.confidence,
                "evidence": learned.evidence,
            }
            return {
                "result": found.data,
                "extra": found.extra,
                "healing": {"drift": drift, "schema": schema},
            }
        if ctx is None or not ctx.hints.drift_reviews:  # nobody to hold the response for
            why = f"proposed mapping {learned.mapping_id} ({learned.describe()}) needs approval"
            raise _mismatch(where, model, found, why)
        review = DriftReview(
            proposal=learned.model_dump(mode="json"),
            body=payload,
            model=op.response_model or "",
            explanation=_review_text(where, policy, found, learned.describe()),
            drift=drift,
            resend_safe=op.is_idempotent,
        )
        return {
            "result": None,
            DRIFT_REVIEW_KEY: review.model_dump(mode="json"),
            "healing": {"drift": drift},
        }

    async def _auth_headers(
        self, connector: str, spec: ConnectorSpec, connection: str = "default"
    ) -> dict[str, str]:
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
            # A one-argument credential() (older token sources) serves the default account.
            cred = await (
                credential(connector)
                if connection == "default"
                else credential(connector, connection)
            )
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
        """Wait for this call's fleet rate-limit slot; long waits go back to the server as a
        ``PacingWait`` (the interceptor makes it a server-side wait, not a failed attempt).

        Right before sending, the window is read afresh: a slot taken before the pace changed
        or a 429 blocked the connector is taken again, so queued calls never send into a
        spent window."""
        ctx = current_call()
        policy = self.pacer.policy
        info = activity.info()
        limit = spec.rate_limit
        configured = (limit.requests, limit.per_s) if limit is not None else None
        holder = f"{info.workflow_id}:{info.activity_id}:{info.attempt}"
        start = ctx.slot_at if ctx is not None else None
        gen = ctx.slot_gen if ctx is not None else 0
        quota = False
        queued = start is not None  # a slot an earlier attempt waited for on the server
        discovered = False  # waited for a new connector's first answer
        for _ in range(8):  # each pass follows a newer generation; a few always suffice
            if start is None:
                asked = self._wall()
                waited = 0.0
                while True:
                    reservation = await self.pacer.reserve(
                        connector, now=self._wall(), holder=holder, configured=configured
                    )
                    if reservation.start is not None or waited >= max(policy.inline_wait_s, 0.1):
                        break
                    # The connector's first answer is out: it tells how to pace the rest.
                    activity.heartbeat(*info.heartbeat_details)
                    await asyncio.sleep(reservation.retry_in_s)
                    waited += reservation.retry_in_s
                    discovered = True
                start = reservation.start if reservation.start is not None else self._wall() + 1
                gen, quota = reservation.gen, reservation.quota
                queued = start > asked + 0.001
            wait = start - self._wall()
            if wait > policy.inline_wait_s:
                what = "quota" if quota else "rate limit"
                raise PacingWait(
                    f"{connector}.{operation}: fleet {what} slot in {wait:.1f}s",
                    connector=connector,
                    slot_at=start,
                    wait_s=wait,
                    quota=quota,
                    gen=gen,
                )
            while wait > 0:
                # Keep the interceptor's ledger in the heartbeat details: it survives retries.
                activity.heartbeat(*info.heartbeat_details)
                await asyncio.sleep(min(wait, 0.5))
                wait = start - self._wall()
            if not queued or await self.pacer.still_valid(connector, gen, now=self._wall()):
                break
            start = None
        if (queued or discovered) and ctx is not None and ctx.gate is not None:
            await ctx.gate()  # the circuit may have opened while this call waited

    async def _observe(self, connector: str, response: httpx.Response) -> None:
        """Teach the fleet's window what this answer's rate-limit headers say (every answer)."""
        now = self._wall()
        info = parse_rate_limit_headers(response.headers, now_epoch=now)
        throttled = response.status_code == 429
        retry_after = parse_retry_after(
            response.headers.get("retry-after"), now=datetime.fromtimestamp(now, UTC)
        )
        if info is None and not throttled and not self.pacer.policy.slow_start:
            return
        configured = self.catalog.connector(connector).rate_limit is not None
        await self.pacer.observe(
            connector,
            info,
            now=now,
            throttled=throttled,
            retry_after_s=retry_after,
            configured=configured,
        )


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


def _mismatch(where: str, model: type[BaseModel], found: Adaptation, why: str) -> SchemaMismatch:
    """The field-level SCHEMA_MISMATCH for a response no mapping fits (names, never values)."""
    head = f"{where}: the response does not fit {model.__name__}"
    detail = "; ".join(p for p in (why, found.explain()) if p)
    unexpected = [c.path for c in found.changes if c.kind == "added"]
    unexpected += [c.observed for c in found.candidates]
    return SchemaMismatch(
        f"{head}: {detail}",
        missing=found.missing,
        unexpected=sorted(set(unexpected)),
        mapping={},  # nothing to retry with: the workflow side must not re-send the request
        connector=where.split(".")[0],
        operation=where.split(".", 1)[-1],
    )


def _review_text(where: str, policy: str, found: Adaptation, mapping: str) -> str:
    rules = {
        "review": f' (schema_drift = "review" for {where}: every new mapping needs a human)',
        "pause": f' (schema_drift = "pause" for {where}: no mapping applies without a human)',
    }
    missing = ", ".join(sorted(found.renames.values())) or "none"
    return (
        f"The response of {where} drifted; missing fields: {missing}; proposed mapping: "
        f"{mapping}{rules.get(policy, '')}. {found.explain()}"
    )
