"""The generic ``call_integration`` activity against real HTTP servers on 127.0.0.1.

Two servers: ``ChaosAPI`` (the project's vendor-faithful CRM) for vendor shapes, idempotency
and reroutes, and a tiny recording server defined here that shows exactly what was sent (path,
query, body, headers, TCP connections) and can answer anything, such as a cut JSON body.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, SecretStr
from temporalio.testing import ActivityEnvironment

from activities import CallRequest, IntegrationActivities, call_integration, idempotency_key
from healing.activities import HealingActivities
from healing.catalog import ConnectorCatalog
from healing.classify import classify_error, detect_error
from healing.config import HealingConfig
from healing.credentials import Credential
from healing.errors import (
    IntegrationFailure,
    PacingWait,
    RequestRefused,
    ResponseTooLarge,
)
from healing.integration import (
    CallContext,
    CallHints,
    _reset_current,
    _set_current,
    integration_spec,
)
from healing.testing import BodyFault, FaultPlan, FaultRule, SchemaRenameFault, StatusFault
from healing.testing.chaos import ChaosAPI
from healing.types import Classification, ErrorType

TOKEN = "tok-SECRET-4f1b2c"


class Contact(BaseModel):
    id: str
    email: str
    name: str


# --- a recording HTTP server --------------------------------------------------------------


@dataclasses.dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    peer_port: int

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


Reply = tuple[int, dict[str, str], bytes]


def _ok(seen: Seen) -> Reply:
    return 200, {"Content-Type": "application/json"}, b'{"ok": true, "id": "1"}'


class RecordingServer:
    """HTTP/1.1 with keep-alive; records every request and answers with ``reply``."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.reply: Callable[[Seen], Reply] = _ok
        self.url = ""
        self._server: asyncio.Server | None = None

    @property
    def connections(self) -> int:
        return len({seen.peer_port for seen in self.seen})

    async def __aenter__(self) -> RecordingServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[1]
        try:
            while line := await reader.readline():
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = raw.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                path, _, query = target.partition("?")
                seen = Seen(method, path, query, headers, body, peer)
                self.seen.append(seen)
                status, extra, payload = self.reply(seen)
                head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(payload)}\r\n"
                head += "".join(f"{k}: {v}\r\n" for k, v in extra.items()) + "\r\n"
                writer.write(head.encode("latin-1") + payload)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


# --- fixtures -----------------------------------------------------------------------------


class StaticTokens:
    def __init__(self, token: str) -> None:
        self.token = token
        self.asked: list[str] = []

    async def access_token(self, connector: str) -> str:
        self.asked.append(connector)
        return self.token


def make_catalog(echo: str, crm: str, crm_eu: str) -> ConnectorCatalog:
    oauth = 'kind = "oauth2"\ntoken_url = "{}/oauth/token"\nclient_id = "demo"'
    return ConnectorCatalog.from_toml(f"""
[connectors.echo]
base_url = "{echo}/api"
[connectors.echo.auth]
kind = "api_key"
api_key_env = "ECHO_KEY"
header = "X-Api-Key"
scheme = "Token"
[connectors.echo.operations.get_thing]
path = "/things/{{id}}"
[connectors.echo.operations.delete_thing]
method = "DELETE"
path = "/things/{{id}}"
[connectors.echo.operations.create_thing]
method = "POST"
path = "/things/{{kind}}"
[connectors.echo.operations.put_thing]
method = "PUT"
path = "/things/{{id}}"

[connectors.crm]
base_url = "{crm}"
alternatives = ["crm_eu"]
[connectors.crm.auth]
{oauth.format(crm)}
[connectors.crm.operations.get_contact]
path = "/contacts/{{id}}"
[connectors.crm.operations.get_checked_contact]
path = "/contacts/{{id}}"
response_model = "{__name__}:Contact"
[connectors.crm.operations.create_contact]
method = "POST"
path = "/contacts"
[connectors.crm.operations.only_on_crm]
path = "/contacts/{{id}}"

[connectors.crm_eu]
base_url = "{crm_eu}"
[connectors.crm_eu.auth]
{oauth.format(crm_eu)}
[connectors.crm_eu.operations.get_contact]
path = "/contacts/{{id}}"
[connectors.crm_eu.operations.create_contact]
method = "POST"
path = "/contacts"
""")


@pytest.fixture
async def echo() -> AsyncIterator[RecordingServer]:
    async with RecordingServer() as server:
        yield server


@pytest.fixture
async def crm() -> AsyncIterator[ChaosAPI]:
    async with ChaosAPI() as api:
        yield api


@pytest.fixture
async def crm_eu() -> AsyncIterator[ChaosAPI]:
    async with ChaosAPI() as api:
        yield api


@pytest.fixture
def tokens() -> StaticTokens:
    return StaticTokens(TOKEN)


@pytest.fixture
async def acts(
    echo: RecordingServer, crm: ChaosAPI, crm_eu: ChaosAPI, tokens: StaticTokens
) -> AsyncIterator[IntegrationActivities]:
    catalog = make_catalog(echo.url, crm.url, crm_eu.url)
    activities = IntegrationActivities(catalog, tokens=tokens, environ={"ECHO_KEY": "k-123"})
    yield activities
    await activities.aclose()


async def run(
    acts: IntegrationActivities,
    req: CallRequest,
    *,
    activity_id: str = "act-1",
    attempt: int = 1,
    workflow_id: str = "wf-1",
    hints: CallHints | None = None,
) -> dict[str, Any]:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info,
        activity_id=activity_id,
        activity_type="call_integration",
        attempt=attempt,
        workflow_id=workflow_id,
    )
    token = None
    if hints is not None:
        ctx = CallContext(req.connector, req.operation, hints, attempt, {"SERVICE_DOWN": 1})
        token = _set_current(ctx)
    try:
        result: dict[str, Any] = await env.run(acts.call_integration, req)
        return result
    finally:
        if token is not None:
            _reset_current(token)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- request building ---------------------------------------------------------------------


def test_activity_is_registered_under_the_generic_name_and_heals() -> None:
    assert call_integration.__temporal_activity_definition.name == "call_integration"  # type: ignore[attr-defined]
    assert integration_spec(call_integration) is not None


async def test_path_placeholders_are_quoted_and_other_params_go_to_the_query(
    acts: IntegrationActivities, echo: RecordingServer
) -> None:
    req = CallRequest(
        connector="echo",
        operation="get_thing",
        params={"id": "a b/c?", "expand": "owner", "limit": 5},
    )
    out = await run(acts, req)
    seen = echo.seen[-1]
    assert (seen.method, seen.path) == ("GET", "/api/things/a%20b%2Fc%3F")
    assert seen.query == "expand=owner&limit=5"
    assert seen.body == b""
    assert seen.headers["x-api-key"] == "Token k-123"
    assert "idempotency-key" not in seen.headers  # GET is idempotent
    assert out == {
        "result": {"ok": True, "id": "1"},
        "status": 200,
        "connector": "echo",
        "healing": {"attempt": 1, "counts_by_type": {}},
    }


async def test_delete_sends_params_as_query_and_put_as_json_body(
    acts: IntegrationActivities, echo: RecordingServer
) -> None:
    await run(
        acts, CallRequest(connector="echo", operation="delete_thing", params={"id": 7, "hard": "1"})
    )
    await run(
        acts, CallRequest(connector="echo", operation="put_thing", params={"id": 7, "name": "n"})
    )
    delete, put = echo.seen[-2:]
    assert (delete.method, delete.path, delete.query, delete.body) == (
        "DELETE",
        "/api/things/7",
        "hard=1",
        b"",
    )
    assert (put.method, put.path, put.query) == ("PUT", "/api/things/7", "")
    assert put.json() == {"name": "n"}
    assert "idempotency-key" not in put.headers  # PUT is idempotent by default


async def test_post_params_become_the_json_body_with_an_idempotency_key(
    acts: IntegrationActivities, echo: RecordingServer
) -> None:
    req = CallRequest(
        connector="echo",
        operation="create_thing",
        params={"kind": "lead", "name": "Ada", "tags": ["x"]},
        headers={"X-Request-Source": "tests"},
    )
    await run(acts, req, workflow_id="wf-9", activity_id="7")
    seen = echo.seen[-1]
    assert (seen.method, seen.path, seen.query) == ("POST", "/api/things/lead", "")
    assert seen.json() == {"name": "Ada", "tags": ["x"]}
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["x-request-source"] == "tests"
    assert seen.headers["idempotency-key"] == sha("wf-9:7")


async def test_explicit_body_is_sent_as_is_and_params_go_to_the_query(
    acts: IntegrationActivities, echo: RecordingServer
) -> None:
    req = CallRequest(
        connector="echo",
        operation="create_thing",
        params={"kind": "lead", "dry_run": "true"},
        body=[{"name": "Ada"}],
    )
    await run(acts, req)
    seen = echo.seen[-1]
    assert (seen.path, seen.query) == ("/api/things/lead", "dry_run=true")
    assert seen.json() == [{"name": "Ada"}]


def classified(exc: BaseException) -> Classification:
    failure = detect_error(exc)
    assert failure is not None
    return classify_error(failure)


async def test_missing_path_param_is_refused_as_a_bad_request_to_escalate(
    acts: IntegrationActivities, echo: RecordingServer
) -> None:
    # A library exception, not the activity's own ApplicationError: healing classifies it,
    # so the workflow escalates (edit_and_retry can add the param) instead of failing.
    with pytest.raises(RequestRefused) as info:
        await run(acts, CallRequest(connector="echo", operation="get_thing", params={"x": 1}))
    assert "needs params id for path /things/{id}" in str(info.value)
    assert (info.value.connector, info.value.operation) == ("echo", "get_thing")
    cls = classified(info.value)
    assert (cls.error_type, cls.retryable) == (ErrorType.BAD_REQUEST, False)
    assert "needs params id" in cls.message
    assert echo.seen == []


@pytest.mark.parametrize(
    ("connector", "operation", "named"),
    [
        ("echo", "nope", "connector 'echo' has no operation 'nope'"),
        ("nope", "get_thing", "unknown connector 'nope'"),
    ],
)
async def test_unknown_operation_or_connector_is_refused_as_a_bad_request(
    acts: IntegrationActivities, connector: str, operation: str, named: str
) -> None:
    with pytest.raises(RequestRefused) as info:
        await run(acts, CallRequest(connector=connector, operation=operation))
    assert named in str(info.value)
    cls = classified(info.value)
    assert (cls.error_type, cls.retryable) == (ErrorType.BAD_REQUEST, False)
    assert named in cls.message


async def test_oauth2_without_tokens_is_refused_to_escalate(crm: ChaosAPI) -> None:
    catalog = make_catalog("http://127.0.0.1:9", crm.url, crm.url)
    async with IntegrationActivities(catalog) as acts:
        with pytest.raises(RequestRefused, match="built without tokens="):
            await run(acts, CallRequest(connector="crm", operation="get_contact", params={"id": 1}))
    assert crm.stats().total_calls == 0


@pytest.mark.parametrize(
    "name", ["Authorization", "Proxy-Authorization", "X-Password", "X-Session-Id", "Private-Token"]
)
def test_secret_headers_are_refused_in_the_request(name: str) -> None:
    # The one list (healing.redact.is_secret_header): the same names the catalog refuses.
    with pytest.raises(ValueError, match="secret"):
        CallRequest(connector="crm", operation="x", headers={name: "v"})


async def test_one_client_per_connector_is_reused_across_calls(
    acts: IntegrationActivities, echo: RecordingServer
) -> None:
    req = CallRequest(connector="echo", operation="get_thing", params={"id": "1"})
    await run(acts, req)
    client = acts.client("echo")
    await run(acts, req, activity_id="act-2")
    await run(acts, req, activity_id="act-3")
    assert acts.client("echo") is client
    assert acts.client("crm") is not client
    assert len(echo.seen) == 3
    assert echo.connections == 1  # keep-alive: one TCP connection for three calls

    await acts.aclose()
    assert client.is_closed
    await run(acts, req)
    assert acts.client("echo") is not client
    assert echo.connections == 2


# --- auth, idempotency, failures ----------------------------------------------------------


async def test_oauth2_sends_the_bearer_token_of_the_connector(
    acts: IntegrationActivities, crm: ChaosAPI, tokens: StaticTokens
) -> None:
    crm.require_token = True
    tokens.token = crm.issue_tokens().access_token
    out = await run(
        acts, CallRequest(connector="crm", operation="get_contact", params={"id": "42"})
    )
    assert out["result"]["id"] == "42"
    assert tokens.asked == ["crm"]

    tokens.token = "stale"
    with pytest.raises(IntegrationFailure) as info:
        await run(acts, CallRequest(connector="crm", operation="get_contact", params={"id": "42"}))
    assert info.value.status_code == 401


async def test_idempotency_key_is_stable_across_attempts_and_unique_per_activity(
    acts: IntegrationActivities, crm: ChaosAPI
) -> None:
    crm.set_plan(
        FaultPlan(
            rules=[FaultRule(method="POST", path="/contacts", faults=[StatusFault(status=503)])]
        )
    )
    req = CallRequest(connector="crm", operation="create_contact", params={"name": "Ada"})

    with pytest.raises(IntegrationFailure):
        await run(acts, req, workflow_id="wf-1", activity_id="5", attempt=1)
    created = await run(acts, req, workflow_id="wf-1", activity_id="5", attempt=2)
    replayed = await run(acts, req, workflow_id="wf-1", activity_id="5", attempt=3)
    assert created["status"] == 201
    assert replayed["result"] == created["result"]
    assert created["healing"]["attempt"] == 2

    with pytest.raises(IntegrationFailure):  # a new key: the plan's first attempt fails again
        await run(acts, req, workflow_id="wf-1", activity_id="6", attempt=1)

    stats = crm.stats()
    assert stats.idempotency_keys == {sha("wf-1:5"): 3, sha("wf-1:6"): 1}
    assert (stats.creations, stats.idempotent_replays) == (1, 1)
    info = dataclasses.replace(
        ActivityEnvironment.default_info(), workflow_id="wf-1", activity_id="5"
    )
    assert idempotency_key(info) == sha("wf-1:5")


async def test_non_2xx_raises_integration_failure_with_the_answer_but_no_credentials(
    acts: IntegrationActivities, crm: ChaosAPI, tokens: StaticTokens
) -> None:
    crm.set_plan(
        FaultPlan(
            rules=[
                FaultRule(
                    path="/contacts/*",
                    always=StatusFault(status=429, vendor="slack", retry_after=7),
                )
            ]
        )
    )
    with pytest.raises(IntegrationFailure) as info:
        await run(acts, CallRequest(connector="crm", operation="get_contact", params={"id": "1"}))
    failure = info.value
    assert str(failure) == "crm.get_contact answered 429"
    assert failure.status_code == 429
    assert failure.headers["retry-after"] == "7"
    assert failure.body == {"ok": False, "error": "ratelimited"}
    assert (failure.connector, failure.operation) == ("crm", "get_contact")
    assert tokens.asked == ["crm"]  # the token was sent...
    everything = repr((str(failure), failure.headers, failure.body, vars(failure)))
    assert TOKEN not in everything  # ...and is nowhere in the failure
    assert "authorization" not in everything.lower()


async def test_non_json_error_body_is_kept_as_text_cut_to_4_kib(
    acts: IntegrationActivities, echo: RecordingServer
) -> None:
    echo.reply = lambda seen: (
        502,
        {"Content-Type": "text/html"},
        b"<h1>Bad gateway</h1>" + b"x" * 9000,
    )
    with pytest.raises(IntegrationFailure) as info:
        await run(acts, CallRequest(connector="echo", operation="get_thing", params={"id": "1"}))
    assert info.value.status_code == 502
    assert isinstance(info.value.body, str)
    assert info.value.body.startswith("<h1>Bad gateway</h1>")
    assert len(info.value.body) == 4096
    assert "k-123" not in repr(vars(info.value))


async def test_slack_ok_false_in_a_200_is_a_failure(
    acts: IntegrationActivities, crm: ChaosAPI
) -> None:
    fault = StatusFault(status=200, vendor="slack", slack_error="token_expired")
    crm.set_plan(FaultPlan(rules=[FaultRule(path="/contacts/*", always=fault)]))
    with pytest.raises(IntegrationFailure) as info:
        await run(acts, CallRequest(connector="crm", operation="get_contact", params={"id": "1"}))
    assert info.value.status_code == 200
    assert info.value.body == {"ok": False, "error": "token_expired"}
    assert "token_expired" in str(info.value)


async def test_truncated_json_body_raises_json_decode_error(
    acts: IntegrationActivities, echo: RecordingServer
) -> None:
    echo.reply = lambda seen: (200, {"Content-Type": "application/json"}, b'{"id": "1", "na')
    with pytest.raises(json.JSONDecodeError) as info:
        await run(acts, CallRequest(connector="echo", operation="get_thing", params={"id": "1"}))
    assert "echo.get_thing" in str(info.value)
    assert not isinstance(info.value, IntegrationFailure)


async def test_empty_and_non_json_success_bodies(
    acts: IntegrationActivities, echo: RecordingServer
) -> None:
    req = CallRequest(connector="echo", operation="delete_thing", params={"id": "1"})
    echo.reply = lambda seen: (204, {}, b"")
    assert (await run(acts, req))["result"] is None
    echo.reply = lambda seen: (200, {"Content-Type": "text/plain"}, b"done")
    assert (await run(acts, req))["result"] == "done"


# --- bounded and hostile bodies -------------------------------------------------------------

MIB = 1024 * 1024


def bodies_catalog(crm: str, limit: int | None = None) -> ConnectorCatalog:
    extra = f"max_response_bytes = {limit}" if limit is not None else ""
    return ConnectorCatalog.from_toml(f"""
[connectors.crm]
base_url = "{crm}"
{extra}
[connectors.crm.operations.get_contact]
path = "/contacts/{{id}}"
""")


def always(fault: BodyFault) -> FaultPlan:
    return FaultPlan(rules=[FaultRule(path="/contacts/*", always=fault)])


GET_1 = CallRequest(connector="crm", operation="get_contact", params={"id": "1"})


@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "chunked"])
async def test_a_50_mb_answer_stops_at_max_response_bytes(
    crm: ChaosAPI, content_length: bool
) -> None:
    crm.set_plan(
        always(BodyFault(shape="huge", size_bytes=50 * MIB, content_length=content_length))
    )
    async with IntegrationActivities(bodies_catalog(crm.url)) as acts:
        with pytest.raises(ResponseTooLarge) as info:
            await run(acts, GET_1)
    exc = info.value
    assert (exc.limit, exc.status_code) == (MIB, 200)
    assert exc.size == (50 * MIB if content_length else None)
    assert "raise max_response_bytes for connector 'crm'" in str(exc)
    cls = classified(exc)
    assert (cls.error_type, cls.retryable) == (ErrorType.RESPONSE_TOO_LARGE, False)
    assert "edit_and_retry" in cls.message
    # Memory stayed bounded: the client hung up near the limit (socket buffers hold a few MB).
    await asyncio.sleep(0.2)  # let the server notice the hang-up and stop counting
    assert crm.stats().body_bytes_sent < 16 * MIB


class CountingStream(httpx.AsyncByteStream):
    """A 50 MB body that counts how much of it the client pulled."""

    def __init__(self, size: int = 50 * MIB, piece: int = 64 * 1024) -> None:
        self.size, self.piece, self.pulled = size, piece, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled < self.size:
            self.pulled += self.piece
            yield b" " * self.piece


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "chunked"])
async def test_the_client_pulls_at_most_the_limit_plus_one_chunk(announced: bool) -> None:
    stream = CountingStream()
    headers = {"content-type": "application/json"}
    if announced:
        headers["content-length"] = str(stream.size)

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=headers, stream=stream)

    catalog = bodies_catalog("http://crm.invalid")
    async with IntegrationActivities(catalog, transport=httpx.MockTransport(answer)) as acts:
        with pytest.raises(ResponseTooLarge):
            await run(acts, GET_1)
    # Content-Length said too much: nothing read. Chunked: stopped one piece past the limit.
    assert stream.pulled == (0 if announced else MIB + stream.piece)


async def test_a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_not(
    crm: ChaosAPI,
) -> None:
    async with IntegrationActivities(bodies_catalog(crm.url, limit=1000)) as acts:
        crm.set_plan(always(BodyFault(shape="huge", size_bytes=1000)))
        assert (await run(acts, GET_1))["result"] == [0] * 499
        crm.set_plan(always(BodyFault(shape="huge", size_bytes=1001)))
        with pytest.raises(ResponseTooLarge, match="max_response_bytes = 1000"):
            await run(acts, GET_1)


async def test_an_error_body_over_the_limit_is_cut_and_keeps_its_status(
    echo: RecordingServer,
) -> None:
    echo.reply = lambda seen: (503, {"Content-Type": "text/plain"}, b"down " * 400_000)
    catalog = make_catalog(echo.url, echo.url, echo.url)
    limited = catalog.model_copy(
        update={
            "connectors": {
                **catalog.connectors,
                "echo": catalog.connectors["echo"].model_copy(
                    update={"max_response_bytes": 10_000}
                ),
            }
        }
    )
    async with IntegrationActivities(limited, environ={"ECHO_KEY": "k-123"}) as acts:
        with pytest.raises(IntegrationFailure) as info:
            await run(acts, CallRequest(connector="echo", operation="get_thing", params={"id": 1}))
    assert not isinstance(info.value, ResponseTooLarge)
    assert info.value.status_code == 503
    assert isinstance(info.value.body, str) and len(info.value.body) == 4096
    assert classified(info.value).error_type is ErrorType.SERVICE_DOWN


@pytest.mark.parametrize("shape", ["nested", "non_utf8"])
async def test_an_unreadable_error_body_keeps_its_404(crm: ChaosAPI, shape: str) -> None:
    crm.set_plan(always(BodyFault(shape=shape, status=404)))
    async with IntegrationActivities(bodies_catalog(crm.url)) as acts:
        with pytest.raises(IntegrationFailure) as info:
            await run(acts, GET_1)
    assert info.value.status_code == 404
    if shape == "nested":  # kept as text, cut short
        assert isinstance(info.value.body, str) and len(info.value.body) == 4096
    else:  # decoded with replacement characters, then read as JSON
        assert info.value.body["message"].startswith("caf\ufffd")
    cls = classified(info.value)
    assert (cls.error_type, cls.status_code) == (ErrorType.NOT_FOUND, 404)


@pytest.mark.parametrize("shape", ["nested", "non_utf8"])
async def test_an_unreadable_2xx_body_is_a_json_decode_error(crm: ChaosAPI, shape: str) -> None:
    crm.set_plan(always(BodyFault(shape=shape, status=200)))
    async with IntegrationActivities(bodies_catalog(crm.url)) as acts:
        with pytest.raises(json.JSONDecodeError, match=r"crm\.get_contact: unreadable JSON"):
            await run(acts, GET_1)


# --- healing hints ------------------------------------------------------------------------


async def test_reroute_hint_switches_connector_base_url_and_token(
    acts: IntegrationActivities, crm: ChaosAPI, crm_eu: ChaosAPI, tokens: StaticTokens
) -> None:
    req = CallRequest(connector="crm", operation="create_contact", params={"name": "Ada"})
    out = await run(acts, req, activity_id="9", attempt=4, hints=CallHints(connector="crm_eu"))
    assert out["connector"] == "crm_eu"
    assert out["healing"] == {"attempt": 4, "counts_by_type": {"SERVICE_DOWN": 1}}
    assert crm.stats().total_calls == 0
    assert crm_eu.stats().calls_to("POST", "/contacts") == 1
    assert crm_eu.stats().idempotency_keys == {sha("wf-1:9"): 1}  # same key as on crm
    assert tokens.asked == ["crm_eu"]


async def test_reroute_to_an_alternative_without_the_operation_fails_for_good(
    acts: IntegrationActivities, crm: ChaosAPI
) -> None:
    req = CallRequest(connector="crm", operation="only_on_crm", params={"id": "1"})
    with pytest.raises(RequestRefused, match="'crm_eu' has no operation 'only_on_crm'"):
        await run(acts, req, hints=CallHints(connector="crm_eu"))
    assert crm.stats().total_calls == 0


async def test_response_model_drift_is_adapted_in_the_same_attempt_and_remembered(
    acts: IntegrationActivities, crm: ChaosAPI
) -> None:
    crm.set_plan(FaultPlan(rules=[FaultRule(path="/contacts/*", always=SchemaRenameFault())]))
    req = CallRequest(connector="crm", operation="get_checked_contact", params={"id": "3"})
    out = await run(acts, req)
    # The body already received was adapted: one upstream call, no SCHEMA_MISMATCH.
    assert crm.stats().calls_to("GET", "/contacts/3") == 1
    assert out["result"] == {"id": "3", "email": "c3@example.com", "name": "Contact 3"}
    assert out["healing"]["schema"]["renames"] == {"email_address": "email"}
    assert "renamed email -> email_address" in out["healing"]["drift"]

    again = await run(acts, req)
    assert again["result"] == out["result"]
    assert again["healing"]["schema"] == {"mapping_id": out["healing"]["schema"]["mapping_id"]}
    assert crm.stats().calls_to("GET", "/contacts/3") == 2


# --- client-side pacing -------------------------------------------------------------------


def _paced(echo: RecordingServer, per_s: float) -> IntegrationActivities:
    text = f"""
[connectors.echo]
base_url = "{echo.url}"
rate_limit = {{ requests = 1, per_s = {per_s} }}
[connectors.echo.operations.get_thing]
path = "/things/{{id}}"
"""
    return IntegrationActivities(ConnectorCatalog.from_toml(text), clock=lambda: 100.0)


async def test_long_client_side_wait_is_handed_to_the_server_as_a_pacing_wait(
    echo: RecordingServer,
) -> None:
    acts = _paced(echo, per_s=60)
    req = CallRequest(connector="echo", operation="get_thing", params={"id": "1"})
    try:
        await run(acts, req)
        with pytest.raises(PacingWait) as info:
            await run(acts, req)
    finally:
        await acts.aclose()
    # Not a 429: a wait for its own slot (60 s per call, at 98% of the limit), never a failure.
    assert info.value.wait_s == pytest.approx(60 / 0.98, abs=1.0)
    assert not info.value.quota
    assert len(echo.seen) == 1  # the second call was never sent


async def test_short_client_side_wait_sleeps_with_heartbeats(echo: RecordingServer) -> None:
    acts = _paced(echo, per_s=0.3)
    req = CallRequest(connector="echo", operation="get_thing", params={"id": "1"})
    beats: list[tuple[Any, ...]] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        await env.run(acts.call_integration, req)
        await env.run(acts.call_integration, req)
        waited = loop.time() - started
    finally:
        await acts.aclose()
    assert len(echo.seen) == 2
    assert waited >= 0.3  # the second start slot is 0.3 s / 0.98 after the first
    assert beats


async def test_a_credential_echoed_back_never_reaches_the_failure(
    acts: IntegrationActivities, echo: RecordingServer
) -> None:
    # The key is short: pattern-based redaction alone would let it through.
    echo.reply = lambda seen: (
        401,
        {"Content-Type": "application/json", "X-Echo": "k-123"},
        b'{"message": "The API key \'k-123\' is invalid", "detail": ["Token k-123"]}',
    )
    with pytest.raises(IntegrationFailure) as info:
        await run(acts, CallRequest(connector="echo", operation="get_thing", params={"id": "1"}))
    failure = info.value
    dumped = json.dumps([str(failure), failure.body, failure.headers])
    assert "k-123" not in dumped
    assert "[REDACTED]" in failure.body["message"]
    assert failure.status_code == 401


class VersionedTokens(StaticTokens):
    async def credential(self, connector: str) -> Credential:
        self.asked.append(connector)
        return Credential(connector=connector, access_token=SecretStr(self.token), version=7)


async def test_the_credential_version_sent_is_known_to_healing(crm: ChaosAPI) -> None:
    catalog = make_catalog("http://127.0.0.1:9", crm.url, crm.url)
    async with IntegrationActivities(catalog, tokens=VersionedTokens(TOKEN)) as acts:
        hints = CallHints()
        ctx = CallContext("crm", "get_contact", hints, 1, {})
        token = _set_current(ctx)
        try:
            env = ActivityEnvironment()
            req = CallRequest(connector="crm", operation="get_contact", params={"id": "1"})
            await env.run(acts.call_integration, req)
        finally:
            _reset_current(token)
    # A refresh after a 401 on this attempt rotates only past version 7.
    assert ctx.token_version == 7


async def test_the_refresh_activity_passes_the_version_seen() -> None:
    seen: list[int | None] = []

    class Refresher:
        async def refresh(
            self, connector: str, *, seen_version: int | None = None, reason: str = ""
        ) -> Credential:
            seen.append(seen_version)
            return Credential(connector=connector, access_token=SecretStr("t"), version=8)

    acts = HealingActivities(HealingConfig(), tokens=Refresher())
    out = await ActivityEnvironment().run(
        acts.refresh_credentials, {"connector": "crm", "reason": "401", "seen_version": 7}
    )
    assert seen == [7] and out == {"connector": "crm", "version": 8}
