"""The chaos server, exercised over real sockets with real httpx clients on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

import healing.testing
from healing.testing import (
    ChaosAPI,
    Fault,
    FaultPlan,
    FaultRule,
    LatencyFault,
    Outage,
    ResetFault,
    SchemaRenameFault,
    StatusFault,
    TimeoutFault,
    TruncatedFault,
)

ROOT = Path(__file__).resolve().parents[2]
# Errors a client sees when the connection dies under it (never a timeout).
BROKEN_CONNECTION = (httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rule(path: str, *faults: Fault, method: str = "*") -> FaultRule:
    return FaultRule(method=method, path=path, faults=faults)


@pytest.fixture
async def chaos() -> AsyncIterator[ChaosAPI]:
    async with ChaosAPI() as api:
        yield api


@pytest.fixture
async def client(chaos: ChaosAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=chaos.url, timeout=5) as c:
        yield c


# -- the CRM ------------------------------------------------------------------------------


async def test_crm_endpoints_answer_their_documented_shapes(client: httpx.AsyncClient) -> None:
    contact = await client.get("/contacts/42")
    assert contact.status_code == 200
    assert contact.json() == {
        "id": "42",
        "email": "c42@example.com",
        "name": "Contact 42",
        "amount": "1000.50",
    }
    deal = await client.get("/deals/7")
    assert deal.json()["id"] == "7" and deal.json()["amount"] == "1000.50"
    hubspot = await client.get("/hubspot/contacts/9")
    assert hubspot.json() == {
        "id": "9",
        "properties": {"email": "c9@example.com", "amount": "1000.50"},
    }
    assert (await client.get("/nowhere")).status_code == 404
    assert (await client.delete("/contacts/1")).status_code == 405


async def test_keep_alive_reuses_one_connection_and_close_is_honoured(
    chaos: ChaosAPI, client: httpx.AsyncClient
) -> None:
    for ident in range(5):
        assert (await client.get(f"/contacts/{ident}")).status_code == 200
    assert chaos.stats().connections == 1
    closing = await client.get("/contacts/1", headers={"Connection": "close"})
    assert closing.headers["connection"] == "close"
    assert (await client.get("/contacts/1")).status_code == 200
    assert chaos.stats().connections == 2
    assert chaos.stats().total_calls == 7


async def test_chunked_request_body_is_read(chaos: ChaosAPI, client: httpx.AsyncClient) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"email": "x@'
        yield b'example.com"}'

    created = await client.post("/contacts", content=body())
    assert created.status_code == 201
    assert created.json()["email"] == "x@example.com"
    assert chaos.stats().creations == 1


async def test_malformed_request_gets_400_and_close(chaos: ChaosAPI) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", chaos.port)
    writer.write(b"NONSENSE\r\n\r\n")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 2)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert b"Connection: close" in raw


# -- vendor status shapes -----------------------------------------------------------------

STATUS_CASES: list[tuple[StatusFault, int, dict[str, str], Callable[[Any], bool]]] = [
    (
        StatusFault(status=401, vendor="salesforce"),
        401,
        {"sforce-limit-info": "api-usage=1200/15000"},
        lambda b: (
            b == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
        ),
    ),
    (
        StatusFault(status=503, vendor="salesforce"),
        503,
        {},
        lambda b: b == [{"message": "Server Unavailable", "errorCode": "SERVER_UNAVAILABLE"}],
    ),
    (
        StatusFault(status=403, vendor="salesforce"),
        403,
        {"sforce-limit-info": "api-usage=15000/15000"},
        lambda b: b[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED",
    ),
    (
        StatusFault(status=429, vendor="hubspot"),
        429,
        {
            "x-hubspot-ratelimit-interval-milliseconds": "10000",
            "x-hubspot-ratelimit-max": "100",
            "x-hubspot-ratelimit-remaining": "0",
        },
        lambda b: (
            b["policyName"] == "TEN_SECONDLY_ROLLING"
            and b["errorType"] == "RATE_LIMIT"
            and b["status"] == "error"
            and b["message"] == "You have reached your ten_secondly_rolling limit."
            and bool(b["correlationId"])
        ),
    ),
    (
        StatusFault(status=429, vendor="hubspot", policy="DAILY"),
        429,
        {"x-hubspot-ratelimit-daily-remaining": "0"},
        lambda b: b["policyName"] == "DAILY",
    ),
    (
        StatusFault(status=429, vendor="slack"),
        429,
        {"retry-after": "30"},
        lambda b: b == {"ok": False, "error": "ratelimited"},
    ),
    (
        StatusFault(status=200, vendor="slack", slack_error="token_expired"),
        200,
        {},
        lambda b: b == {"ok": False, "error": "token_expired"},
    ),
    (
        StatusFault(status=200, vendor="slack", slack_error="invalid_auth"),
        200,
        {},
        lambda b: b == {"ok": False, "error": "invalid_auth"},
    ),
    (
        StatusFault(status=403, vendor="github", retry_after=60),
        403,
        {"retry-after": "60"},
        lambda b: (
            "secondary rate limit" in b["message"]
            and b["documentation_url"].endswith("#about-secondary-rate-limits")
        ),
    ),
    (
        StatusFault(status=403, vendor="github"),
        403,
        {"x-ratelimit-remaining": "4990"},
        lambda b: b["message"] == "Resource not accessible by integration",
    ),
    (
        StatusFault(status=403, vendor="github", policy="primary"),
        403,
        {"x-ratelimit-remaining": "0"},
        lambda b: b["message"].startswith("API rate limit exceeded"),
    ),
    (
        StatusFault(status=401, vendor="google"),
        401,
        {"www-authenticate": 'Bearer realm="https://accounts.google.com/", error="invalid_token"'},
        lambda b: b["error"]["code"] == 401 and b["error"]["status"] == "UNAUTHENTICATED",
    ),
    (
        StatusFault(status=429, vendor="graph"),
        429,
        {"retry-after": "41"},
        lambda b: (
            b["error"]["code"] == "activityLimitReached"
            and b["error"]["innerError"] == {"code": "throttledRequest"}
        ),
    ),
    (
        StatusFault(status=429, vendor="graph", retry_after=2),
        429,
        {"retry-after": "2"},
        lambda b: b["error"]["message"] == "The request has been throttled",
    ),
    (
        StatusFault(status=503, retry_after=7),
        503,
        {"retry-after": "7"},
        lambda b: (
            b == {"error": "service_unavailable", "message": "Service Unavailable", "status": 503}
        ),
    ),
    (
        StatusFault(status=404),
        404,
        {},
        lambda b: b == {"error": "not_found", "message": "Not Found", "status": 404},
    ),
]


@pytest.mark.parametrize(
    ("fault", "status", "headers", "body_ok"),
    STATUS_CASES,
    ids=[
        f"{c[0].vendor}-{c[0].status}-{c[0].policy or c[0].slack_error or c[0].retry_after}"
        for c in STATUS_CASES
    ],
)
async def test_status_fault_has_the_vendor_shape(
    chaos: ChaosAPI,
    client: httpx.AsyncClient,
    fault: StatusFault,
    status: int,
    headers: dict[str, str],
    body_ok: Callable[[Any], bool],
) -> None:
    chaos.set_plan(FaultPlan(rules=[rule("/contacts/*", fault)]))
    response = await client.get("/contacts/1")
    assert response.status_code == status
    for name, value in headers.items():
        assert response.headers.get(name) == value, name
    assert response.headers["content-type"] == "application/json"
    assert body_ok(response.json()), response.text
    assert (await client.get("/contacts/1")).json()["id"] == "1"  # attempt 2 succeeds
    assert chaos.stats().faults_by_status == {str(status): 1}


@pytest.mark.parametrize("status", [400, 403, 500, 502, 503])
async def test_generic_status_faults_are_plain_json_errors(
    chaos: ChaosAPI, client: httpx.AsyncClient, status: int
) -> None:
    chaos.set_plan(FaultPlan(rules=[rule("/deals/*", StatusFault(status=status))]))
    response = await client.get("/deals/3")
    assert response.status_code == status
    assert response.json()["status"] == status
    assert "retry-after" not in response.headers


def test_status_fault_validation_rejects_impossible_shapes() -> None:
    with pytest.raises(ValidationError):
        StatusFault(status=200)  # only Slack errors hide in a 200
    with pytest.raises(ValidationError):
        StatusFault(status=429, vendor="slack", policy="DAILY")
    with pytest.raises(ValidationError):
        StatusFault(status=429, vendor="hubspot", slack_error="ratelimited")
    with pytest.raises(ValidationError):
        FaultRule(path="*", faults=[ResetFault()], always=ResetFault())
    with pytest.raises(ValidationError):
        FaultRule(path="*")


# -- connection-level faults --------------------------------------------------------------


async def test_reset_breaks_the_connection_and_the_server_lives_on(
    chaos: ChaosAPI, client: httpx.AsyncClient
) -> None:
    chaos.set_plan(FaultPlan(rules=[rule("/contacts/1", ResetFault())]))
    with pytest.raises(BROKEN_CONNECTION):
        await client.get("/contacts/1")
    assert (await client.get("/contacts/1")).status_code == 200
    assert chaos.stats().faults_by_kind == {"reset": 1}


async def test_reset_sends_a_tcp_rst(chaos: ChaosAPI) -> None:
    chaos.set_plan(FaultPlan(rules=[rule("/contacts/1", ResetFault())]))
    reader, writer = await asyncio.open_connection("127.0.0.1", chaos.port)
    writer.write(b"GET /contacts/1 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1024), 2)
    writer.close()


async def test_truncated_body_is_cut_json_under_a_longer_content_length(chaos: ChaosAPI) -> None:
    chaos.set_plan(FaultPlan(rules=[rule("/contacts/1", TruncatedFault())]))
    reader, writer = await asyncio.open_connection("127.0.0.1", chaos.port)
    writer.write(b"GET /contacts/1 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 2)  # the server closes after the cut
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    length = int(
        next(
            v
            for k, _, v in (h.partition(b": ") for h in head.split(b"\r\n"))
            if k == b"Content-Length"
        )
    )
    assert 0 < len(body) < length
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)


async def test_truncated_body_makes_httpx_raise(chaos: ChaosAPI, client: httpx.AsyncClient) -> None:
    chaos.set_plan(FaultPlan(rules=[rule("/contacts/*", TruncatedFault(keep_fraction=0.3))]))
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get("/contacts/5")
    assert (await client.get("/contacts/5")).json()["email"] == "c5@example.com"


async def test_timeout_hangs_past_the_client_timeout(chaos: ChaosAPI) -> None:
    chaos.set_plan(FaultPlan(rules=[rule("/contacts/1", TimeoutFault(hang_s=5))]))
    async with httpx.AsyncClient(base_url=chaos.url, timeout=0.3) as short:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await short.get("/contacts/1")
        assert 0.25 < time.monotonic() - started < 2
        assert (await short.get("/contacts/1")).status_code == 200  # others are not blocked


async def test_hung_request_does_not_block_other_connections(chaos: ChaosAPI) -> None:
    chaos.set_plan(FaultPlan(rules=[rule("/contacts/hang", TimeoutFault(hang_s=5))]))
    async with (
        httpx.AsyncClient(base_url=chaos.url, timeout=0.5) as slow,
        httpx.AsyncClient(base_url=chaos.url, timeout=2) as fast,
    ):
        hanging = asyncio.ensure_future(slow.get("/contacts/hang"))
        await asyncio.sleep(0.05)
        answers = await asyncio.gather(*(fast.get(f"/contacts/{i}") for i in range(5)))
        assert [r.status_code for r in answers] == [200] * 5
        assert not hanging.done()
        with pytest.raises(httpx.ReadTimeout):
            await hanging


async def test_stop_is_prompt_while_a_request_hangs_and_leaks_no_tasks() -> None:
    before = asyncio.all_tasks()
    api = ChaosAPI(FaultPlan(rules=[rule("/contacts/*", TimeoutFault(hang_s=5))]))
    await api.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    writer.write(b"GET /contacts/1 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", api.port)  # keep-alive
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await asyncio.wait_for(api.stop(), 2)
    assert time.monotonic() - started < 1
    assert await asyncio.wait_for(reader.read(), 1) == b""  # closed without an answer
    assert await asyncio.wait_for(idle_reader.read(), 1) == b""
    writer.close()
    idle_writer.close()
    await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert leaked == []
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", api.port)


async def test_latency_answers_late_but_correctly(
    chaos: ChaosAPI, client: httpx.AsyncClient
) -> None:
    chaos.set_plan(FaultPlan(rules=[rule("/deals/1", LatencyFault(delay_ms=200))]))
    started = time.monotonic()
    response = await client.get("/deals/1")
    assert time.monotonic() - started >= 0.2
    assert response.status_code == 200 and response.json()["id"] == "1"


async def test_schema_rename_renames_email_and_makes_amount_a_number(
    chaos: ChaosAPI, client: httpx.AsyncClient
) -> None:
    chaos.set_plan(FaultPlan(rules=[rule("*contacts/*", SchemaRenameFault())]))
    flat = (await client.get("/contacts/3")).json()
    assert flat == {
        "id": "3",
        "email_address": "c3@example.com",
        "name": "Contact 3",
        "amount": 1000.5,
    }
    nested = (await client.get("/hubspot/contacts/3")).json()
    assert nested["properties"] == {
        "email_address": "c3@example.com",
        "amount": 1000.5,
        "hs_new_prop": "x",
    }
    assert "email" in (await client.get("/contacts/3")).json()  # attempt 2 is back to normal


# -- plan determinism ---------------------------------------------------------------------


def _draws(plan: FaultPlan, keys: list[tuple[str, int]]) -> dict[tuple[str, int], Fault | None]:
    return {(path, n): plan.fault_for("GET", path, n) for path, n in keys}


def test_same_seed_same_faults_in_any_order_other_seed_differs() -> None:
    keys = [(f"/contacts/{i}", n) for i in range(200) for n in range(1, 4)]
    shuffled = list(keys)
    random.Random(1).shuffle(shuffled)
    first = _draws(FaultPlan.random(seed=11, rate=0.3), keys)
    again = _draws(FaultPlan.random(seed=11, rate=0.3), shuffled)
    other = _draws(FaultPlan.random(seed=12, rate=0.3), keys)
    assert first == again
    assert first != other
    assert any(f is not None for f in first.values())


def test_observed_fault_rate_matches_rate_over_2000_draws() -> None:
    plan = FaultPlan.random(seed=5, rate=0.3, max_consecutive=None)
    draws = [plan.fault_for("GET", f"/contacts/{i}", n) for i in range(400) for n in range(1, 6)]
    assert len(draws) == 2000
    observed = sum(f is not None for f in draws) / len(draws)
    assert abs(observed - 0.3) < 0.04  # 4 standard deviations
    kinds = {f.kind for f in draws if f is not None}
    assert kinds == {"status", "reset", "truncated"}


def test_max_consecutive_bounds_every_run_of_faults() -> None:
    plan = FaultPlan.random(seed=9, rate=0.7, max_consecutive=2)
    for i in range(300):
        runs, longest = 0, 0
        for n in range(1, 30):
            runs = runs + 1 if plan.fault_for("GET", f"/deals/{i}", n) else 0
            longest = max(longest, runs)
        assert longest <= 2
        needed = plan.attempts_needed("GET", f"/deals/{i}")
        assert needed is not None and 1 <= needed <= 3


def test_random_faults_respect_paths_prefix_and_rules_win() -> None:
    plan = FaultPlan.random(
        seed=1,
        rate=1.0,
        max_consecutive=1,
        paths_prefix="/deals",
        rules=[FaultRule(path="/deals/perm", always=StatusFault(status=403, vendor="github"))],
    )
    assert plan.fault_for("GET", "/contacts/1", 1) is None
    assert plan.fault_for("GET", "/deals/1", 1) is not None
    assert plan.fault_for("GET", "/deals/1", 2) is None
    assert plan.attempts_needed("GET", "/deals/1") == 2
    assert plan.attempts_needed("GET", "/deals/perm") is None
    assert plan.attempts_needed("GET", "/contacts/1") == 1


def test_plan_survives_a_json_round_trip() -> None:
    plan = FaultPlan.random(
        seed=3,
        rate=0.2,
        rules=[
            rule(
                "/contacts/*",
                StatusFault(status=429, vendor="hubspot", policy="DAILY"),
                ResetFault(),
            ),
            FaultRule(path="/deals/*", outage=Outage(start_s=1, duration_s=2)),
            FaultRule(method="post", path="/contacts", always=TimeoutFault(hang_s=1)),
        ],
    )
    assert FaultPlan.model_validate_json(plan.model_dump_json()) == plan
    assert plan.rules[2].method == "POST"


async def test_attempts_needed_agrees_with_the_server(chaos: ChaosAPI) -> None:
    plan = FaultPlan.random(
        seed=21,
        rate=0.5,
        kinds=[
            StatusFault(status=503),
            StatusFault(status=429, vendor="slack"),
            ResetFault(),
            TruncatedFault(),
        ],
        rules=[
            rule(
                "/contacts/scripted", StatusFault(status=502), ResetFault(), StatusFault(status=503)
            ),
            FaultRule(path="/contacts/dead", always=StatusFault(status=404)),
        ],
    )
    chaos.set_plan(plan)
    paths = [f"/contacts/{i}" for i in range(25)] + ["/contacts/scripted", "/contacts/dead"]
    async with httpx.AsyncClient(base_url=chaos.url, timeout=5) as client:

        async def attempts_until_ok(path: str) -> int | None:
            for attempt in range(1, 7):
                try:
                    if (await client.get(path)).status_code == 200:
                        return attempt
                except BROKEN_CONNECTION:
                    pass
            return None

        observed = await asyncio.gather(*(attempts_until_ok(p) for p in paths))
    expected = [plan.attempts_needed("GET", p) for p in paths]
    assert observed == expected
    assert expected[-2:] == [4, None]
    assert any(n is not None and n > 1 for n in expected[:-2])
    assert chaos.stats().calls_to("GET", "/contacts/dead") == 6


# -- idempotency --------------------------------------------------------------------------


async def test_idempotency_key_replays_the_saved_response(
    chaos: ChaosAPI, client: httpx.AsyncClient
) -> None:
    body = {"email": "new@example.com", "name": "New"}
    first = await client.post("/contacts", json=body, headers={"Idempotency-Key": "k1"})
    replay = await client.post("/contacts", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == replay.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json() == {**body, "id": first.json()["id"]}
    other = await client.post(
        "/contacts", json={**body, "name": "Else"}, headers={"Idempotency-Key": "k1"}
    )
    assert other.status_code == 400
    assert other.json()["error"]["type"] == "idempotency_error"
    stats = chaos.stats()
    assert stats.creations == 1
    assert stats.idempotent_replays == 1
    assert stats.idempotency_keys == {"k1": 3}
    assert stats.calls_to("POST", "/contacts") == 3


async def test_key_in_flight_gets_409(chaos: ChaosAPI, client: httpx.AsyncClient) -> None:
    chaos.set_plan(FaultPlan(rules=[rule("/contacts", LatencyFault(delay_ms=300), method="POST")]))
    headers = {"Idempotency-Key": "slow"}
    slow = asyncio.ensure_future(client.post("/contacts", json={"a": 1}, headers=headers))
    await asyncio.sleep(0.1)
    async with httpx.AsyncClient(base_url=chaos.url, timeout=5) as other:
        busy = await other.post("/contacts", json={"a": 1}, headers=headers)
    assert busy.status_code == 409
    assert busy.json()["error"]["code"] == "idempotency_key_in_use"
    assert (await slow).status_code == 201
    assert chaos.stats().creations == 1


async def test_retry_after_truncated_post_replays_instead_of_creating_twice(
    chaos: ChaosAPI, client: httpx.AsyncClient
) -> None:
    chaos.set_plan(FaultPlan(rules=[rule("/contacts", TruncatedFault(), method="POST")]))
    headers = {"Idempotency-Key": "once"}
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/contacts", json={"a": 1}, headers=headers)
    retried = await client.post("/contacts", json={"a": 1}, headers=headers)
    assert retried.headers["idempotent-replayed"] == "true"
    assert chaos.stats().creations == 1


async def test_posts_without_keys_create_duplicates_and_attempts_count_per_key(
    chaos: ChaosAPI, client: httpx.AsyncClient
) -> None:
    chaos.set_plan(FaultPlan(rules=[rule("/contacts", StatusFault(status=503), method="POST")]))
    assert (await client.post("/contacts", json={"a": 1})).status_code == 503
    assert (await client.post("/contacts", json={"a": 1})).status_code == 201
    assert (await client.post("/contacts", json={"a": 1})).status_code == 201
    keyed = await client.post("/contacts", json={"a": 2}, headers={"Idempotency-Key": "fresh"})
    assert keyed.status_code == 503  # attempt 1 for this key, though the 4th POST overall
    stats = chaos.stats()
    assert (stats.creations, stats.duplicate_creations) == (2, 1)


async def test_idempotency_store_is_bounded() -> None:
    async with (
        ChaosAPI(idempotency_capacity=3) as chaos,
        httpx.AsyncClient(base_url=chaos.url) as client,
    ):
        for n in range(5):
            await client.post("/contacts", json={"n": n}, headers={"Idempotency-Key": f"k{n}"})
        assert sorted(chaos.stats().idempotency_keys) == ["k2", "k3", "k4"]
        again = await client.post("/contacts", json={"n": 0}, headers={"Idempotency-Key": "k0"})
        assert "idempotent-replayed" not in again.headers  # k0 was forgotten
        assert chaos.stats().creations == 6


# -- OAuth --------------------------------------------------------------------------------


async def _refresh(client: httpx.AsyncClient, refresh_token: str | None) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token or "", "client_id": "crm"}
    return await client.post("/oauth/token", data=form)


async def test_bearer_tokens_rotation_and_invalid_grant() -> None:
    clock = FakeClock()
    async with (
        ChaosAPI(require_token=True, clock=clock, token_ttl_s=60) as chaos,
        httpx.AsyncClient(base_url=chaos.url) as client,
    ):
        unauth = await client.get("/contacts/1")
        assert unauth.status_code == 401
        assert unauth.json()[0]["errorCode"] == "INVALID_SESSION_ID"
        auth = {"Authorization": f"Bearer {chaos.access_token}"}
        assert (await client.get("/contacts/1", headers=auth)).status_code == 200

        clock.now += 61  # past expires_in
        assert (await client.get("/contacts/1", headers=auth)).status_code == 401

        old_refresh = chaos.refresh_token
        refreshed = await _refresh(client, old_refresh)
        assert refreshed.status_code == 200
        tokens = refreshed.json()
        assert set(tokens) == {"access_token", "token_type", "expires_in", "refresh_token"}
        assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 60
        assert tokens["refresh_token"] != old_refresh
        assert tokens["access_token"] != auth["Authorization"].split()[1]
        new_auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        assert (await client.get("/contacts/1", headers=new_auth)).status_code == 200

        reused = await _refresh(client, old_refresh)
        assert reused.status_code == 400
        assert reused.json()["error"] == "invalid_grant"

        chaos.expire_tokens()
        assert (await client.get("/contacts/1", headers=new_auth)).status_code == 401
        chaos.revoke_grant()
        revoked = await _refresh(client, tokens["refresh_token"])
        assert revoked.json() == {
            "error": "invalid_grant",
            "error_description": "Token has been expired or revoked.",
        }
        stats = chaos.stats()
        assert stats.token_refreshes == 1
        assert stats.invalid_grants == 2
        assert stats.auth_rejections == 3
        assert stats.tokens_issued == 2  # the initial grant and one refresh


async def test_concurrent_refreshes_with_one_token_let_exactly_one_win() -> None:
    async with (
        ChaosAPI(require_token=True) as chaos,
        httpx.AsyncClient(base_url=chaos.url) as a,
        httpx.AsyncClient(base_url=chaos.url) as b,
    ):
        token = chaos.refresh_token
        results = await asyncio.gather(_refresh(a, token), _refresh(b, token))
        assert sorted(r.status_code for r in results) == [200, 400]
        assert chaos.stats().token_refreshes == 1


async def test_client_credentials_and_control_endpoints_for_tokens(
    chaos: ChaosAPI, client: httpx.AsyncClient
) -> None:
    issued = await client.post(
        "/oauth/token", data={"grant_type": "client_credentials", "client_id": "x"}
    )
    assert issued.status_code == 200 and "refresh_token" not in issued.json()
    assert (await client.post("/oauth/token", data={"grant_type": "password"})).status_code == 400
    await client.post("/__chaos/revoke-grant")
    assert (await _refresh(client, chaos.refresh_token)).json()["error"] == "invalid_grant"
    fresh = (await client.post("/__chaos/tokens")).json()
    assert (await _refresh(client, fresh["refresh_token"])).status_code == 200
    current = (await client.get("/__chaos/tokens")).json()
    assert current["access_token"] == chaos.access_token
    assert len(current["access_token"]) >= 32
    assert current["access_token"] != fresh["access_token"]


@pytest.mark.parametrize(
    ("vendor", "status", "check"),
    [
        ("slack", 200, lambda r: r.json() == {"ok": False, "error": "token_expired"}),
        ("google", 401, lambda r: 'error="invalid_token"' in r.headers["www-authenticate"]),
    ],
)
async def test_rejected_tokens_take_the_auth_vendor_shape(
    vendor: Any, status: int, check: Callable[[httpx.Response], bool]
) -> None:
    async with (
        ChaosAPI(require_token=True, auth_vendor=vendor) as chaos,
        httpx.AsyncClient(base_url=chaos.url) as client,
    ):
        auth = {"Authorization": f"Bearer {chaos.access_token}"}
        chaos.expire_tokens()
        response = await client.get("/contacts/1", headers=auth)
        assert response.status_code == status
        assert check(response)


# -- outages, control, lifecycle ----------------------------------------------------------


async def test_outage_window_follows_the_injected_clock() -> None:
    clock = FakeClock()
    plan = FaultPlan(rules=[FaultRule(path="/contacts/*", outage=Outage(start_s=10, duration_s=5))])
    async with (
        ChaosAPI(plan, clock=clock) as chaos,
        httpx.AsyncClient(base_url=chaos.url) as client,
    ):
        assert (await client.get("/contacts/1")).status_code == 200
        clock.now += 10
        down = await client.get("/contacts/1")
        assert down.status_code == 503
        assert down.json() == [{"message": "Server Unavailable", "errorCode": "SERVER_UNAVAILABLE"}]
        clock.now += 4.9
        assert (await client.get("/contacts/2")).status_code == 503
        assert (await client.get("/deals/2")).status_code == 200
        clock.now += 0.1
        assert (await client.get("/contacts/1")).status_code == 200
        assert chaos.stats().faults_by_status == {"503": 2}


async def test_control_endpoints_never_fault_and_are_not_counted(
    chaos: ChaosAPI, client: httpx.AsyncClient
) -> None:
    chaos.set_plan(FaultPlan(rules=[FaultRule(path="*", always=ResetFault())]))
    stats = await client.get("/__chaos/stats")
    assert stats.status_code == 200 and stats.json()["total_calls"] == 0
    plan = FaultPlan(rules=[rule("/deals/*", StatusFault(status=500))])
    assert (await client.put("/__chaos/plan", content=plan.model_dump_json())).status_code == 200
    assert FaultPlan.model_validate((await client.get("/__chaos/plan")).json()) == plan
    assert (await client.get("/deals/1")).status_code == 500
    assert (await client.get("/deals/1")).status_code == 200
    counted = (await client.get("/__chaos/stats")).json()
    assert counted["total_calls"] == 2
    assert counted["calls"] == {"GET /deals/1": 2}
    assert counted["faults_by_kind"] == {"status": 1}
    assert (await client.post("/__chaos/reset")).status_code == 200
    assert (await client.get("/__chaos/stats")).json()["total_calls"] == 0
    assert (await client.get("/deals/1")).status_code == 500  # attempt numbers restarted
    bad = await client.put("/__chaos/plan", json={"rules": [{"path": "*"}]})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_plan"
    assert chaos.plan == plan


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "example.com"])
def test_only_loopback_hosts_are_accepted(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        ChaosAPI(host=host)
    ChaosAPI(host="::1")
    ChaosAPI(host="localhost")


def test_start_in_thread_serves_sync_callers_and_stops() -> None:
    handle = ChaosAPI(
        FaultPlan(rules=[rule("/contacts/1", StatusFault(status=503))])
    ).start_in_thread()
    try:
        with httpx.Client(base_url=handle.url, timeout=5) as client:
            assert client.get("/contacts/1").status_code == 503
            assert client.get("/contacts/1").status_code == 200
        assert handle.stats().calls_to("GET", "/contacts/1") == 2
    finally:
        handle.stop()
    assert not handle.running
    with pytest.raises(httpx.ConnectError), httpx.Client(base_url=handle.url) as client:
        client.get("/contacts/1")


async def test_command_line_prints_url_serves_and_exits_on_sigterm(tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(
        FaultPlan(rules=[rule("/deals/*", StatusFault(status=502))]).model_dump_json()
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "healing.testing.chaos", "--port", "0", "--plan", str(plan_file)),
        *("--seed", "4", "--rate", "0.3"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert line.startswith("CHAOS_URL=http://127.0.0.1:")
        url = line.strip().removeprefix("CHAOS_URL=")
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/deals/1")).status_code == 502
            served = FaultPlan.model_validate((await client.get("/__chaos/plan")).json())
        assert (served.seed, served.rate) == (4, 0.3)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 5) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stderr is not None
    assert b"Warning" not in await proc.stderr.read()


def test_package_exports() -> None:
    assert set(healing.testing.__all__) >= {
        "ChaosAPI",
        "ChaosStats",
        "ChaosThread",
        "Fault",
        "FaultPlan",
        "FaultRule",
        "LatencyFault",
        "Outage",
        "ResetFault",
        "SchemaRenameFault",
        "StatusFault",
        "TimeoutFault",
        "TruncatedFault",
    }
    for name in healing.testing.__all__:
        assert getattr(healing.testing, name) is not None
    with pytest.raises(AttributeError):
        _ = healing.testing.NoSuchThing
