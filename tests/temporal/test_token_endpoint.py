"""Token-endpoint trouble is an outage, never a dead grant (time-skipping server).

Before, a token endpoint 500 while the access token was expired raised a CredentialError that
classified as AUTH_INVALID: every call of the connector went to a human with "reauthorize"
during the endpoint's blip. Now it is SERVICE_DOWN: retried with backoff inside the budget.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from healing.credentials import Credential, MemoryCredentialStore, OAuthClient
from healing.oauth import TokenRefresher
from tests.temporal.harness import Call, Harness, Scripted, fail, plugin


async def _expired_store() -> MemoryCredentialStore:
    store = MemoryCredentialStore()
    await store.put(
        Credential(
            connector="crm",
            access_token="old-access",
            refresh_token="refresh-1",
            expires_at=time.time() - 60,  # already expired: no current token to fall back on
        ),
        expected_version=None,
    )
    return store


def _endpoint(fail_first: int, calls: list[int]) -> httpx.AsyncClient:
    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) <= fail_first:
            return httpx.Response(500, json={"error": "server_error"})
        body = {"access_token": "new-access", "refresh_token": "refresh-2", "expires_in": 3600}
        return httpx.Response(200, json=body)

    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


async def test_a_token_endpoint_blip_heals_without_a_human(harness: Harness) -> None:
    store, calls = await _expired_store(), []
    http = _endpoint(2, calls)
    client = OAuthClient(token_url="https://login.example.test/token", client_id="cid")
    refresher = TokenRefresher(store, {"crm": client}, http=http, cooldown_s=0)

    async def call(_: Call) -> Any:
        token = await refresher.access_token("crm")  # what call_integration's auth does
        return {"ok": True, "token_is_new": token == "new-access"}

    acts = Scripted(then=call)
    async with http, harness.worker(acts.activity, plugin=plugin(tokens=refresher)):
        handle = await harness.start()
        out = await handle.result()
        st = await harness.status(handle)
    assert out["result"] == {"ok": True, "token_is_new": True}
    assert len(calls) == 3  # two 500s, then the token
    assert st.state == "healed" and not st.open_escalations
    assert st.counts_by_error_type == {"SERVICE_DOWN": 2}


async def test_a_token_endpoint_that_stays_down_escalates_as_an_outage(harness: Harness) -> None:
    store, calls = await _expired_store(), []
    http = _endpoint(10_000, calls)
    client = OAuthClient(token_url="https://login.example.test/token", client_id="cid")
    refresher = TokenRefresher(store, {"crm": client}, http=http, cooldown_s=0)

    async def call(_: Call) -> Any:
        await refresher.access_token("crm")
        return {"ok": True}

    acts = Scripted(then=call)
    async with http, harness.worker(acts.activity, plugin=plugin(tokens=refresher)):
        handle = await harness.start()
        esc = (await harness.escalated(handle)).open_escalation
    assert esc is not None
    assert esc.error_type == "SERVICE_DOWN"  # never AUTH_INVALID for a healthy grant
    assert "token endpoint unavailable" in esc.explanation
    assert "reauthorized" not in [o.option for o in esc.options]
    assert {"wait", "retry"} <= {o.option for o in esc.options}


async def test_a_401_whose_refresh_meets_a_dead_endpoint_escalates_as_an_outage(
    harness: Harness,
) -> None:
    """The refresh activity retries inside the healing budget; after it, the human is told the
    token endpoint is unavailable, with wait and retry: never AUTH_INVALID or reauthorize."""
    store, calls = MemoryCredentialStore(), []
    await store.put(
        Credential(connector="crm", access_token="old-access", refresh_token="refresh-1"),
        expected_version=None,
    )
    http = _endpoint(10_000, calls)
    client = OAuthClient(token_url="https://login.example.test/token", client_id="cid")
    refresher = TokenRefresher(store, {"crm": client}, http=http, backoff_s=0)
    salesforce = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    acts = Scripted(then=fail(401, salesforce))
    async with http, harness.worker(acts.activity, plugin=plugin(tokens=refresher)):
        handle = await harness.start()
        esc = (await harness.escalated(handle)).open_escalation
    assert esc is not None
    assert esc.error_type.value == "SERVICE_DOWN"
    options = [o.option for o in esc.options]
    assert "wait" in options and "retry" in options and "reauthorized" not in options
    assert "token endpoint stayed unavailable" in esc.explanation
    assert len(calls) >= 5  # retried with backoff inside the budget, not once
    stored = await store.get("crm")
    assert stored is not None and stored.revoked is None
