"""The chaos API's OAuth vendor: reuse detection, the reuse interval, grants per account and
the authorization-code flow with PKCE, over real HTTP."""

from __future__ import annotations

import base64
import hashlib

import httpx

from healing.testing import ChaosAPI
from tests.chaos.test_chaos_api import FakeClock


async def _refresh(client: httpx.AsyncClient, token: str | None) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": token or "", "client_id": "x"}
    return await client.post("/oauth/token", data=form)


async def test_reuse_detection_revokes_the_whole_grant() -> None:
    async with ChaosAPI(require_token=True) as chaos, httpx.AsyncClient(base_url=chaos.url) as c:
        chaos.set_refresh_policy(reuse_detection=True)
        first = chaos.refresh_token
        fresh = (await _refresh(c, first)).json()
        assert (await _refresh(c, first)).json()["error"] == "invalid_grant"  # a reuse
        # The family is dead: even the newest refresh token and access token stop working.
        assert (await _refresh(c, fresh["refresh_token"])).json()["error"] == "invalid_grant"
        bearer = {"Authorization": f"Bearer {fresh['access_token']}"}
        assert (await c.get("/contacts/1", headers=bearer)).status_code == 401
        stats = chaos.stats()
        assert stats.refresh_token_reuses == 1 and stats.reuse_revocations == 1
        assert stats.token_calls == 3


async def test_the_reuse_interval_accepts_the_previous_token_for_a_while() -> None:
    clock = FakeClock()
    async with (
        ChaosAPI(require_token=True, clock=clock) as chaos,
        httpx.AsyncClient(base_url=chaos.url) as c,
    ):
        chaos.set_refresh_policy(reuse_detection=True, reuse_interval_s=10)
        first = chaos.refresh_token
        assert (await _refresh(c, first)).status_code == 200
        clock.now += 5
        assert (await _refresh(c, first)).status_code == 200  # within the interval
        clock.now += 11
        assert (await _refresh(c, first)).json()["error"] == "invalid_grant"
        stats = chaos.stats()
        assert stats.reuses_in_grace == 1 and stats.reuse_revocations == 1


async def test_grants_per_account_are_independent() -> None:
    async with ChaosAPI(require_token=True) as chaos, httpx.AsyncClient(base_url=chaos.url) as c:
        acme, globex = chaos.issue_tokens("acme"), chaos.issue_tokens("globex")
        chaos.revoke_grant("acme")
        assert (await _refresh(c, acme.refresh_token)).json()["error"] == "invalid_grant"
        assert (await _refresh(c, globex.refresh_token)).status_code == 200
        assert (await c.post("/__chaos/revoke-grant?grant=globex")).status_code == 200
        assert (await _refresh(c, chaos.tokens_of("globex")[1])).status_code == 400


async def test_authorization_code_with_pkce() -> None:
    async with ChaosAPI(require_token=True) as chaos, httpx.AsyncClient(base_url=chaos.url) as c:
        verifier = "v" * 50
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        query = {
            "response_type": "code",
            "client_id": "app",
            "redirect_uri": "http://127.0.0.1:1/cb",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": "st",
            "login_hint": "acme",
        }
        plain = await c.get("/oauth/authorize", params={**query, "code_challenge_method": "plain"})
        assert plain.status_code == 400
        answer = await c.get("/oauth/authorize", params=query)
        assert answer.status_code == 302
        location = httpx.URL(answer.headers["location"])
        assert location.params["state"] == "st"
        code = location.params["code"]
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": query["redirect_uri"],
            "code_verifier": "wrong" * 10,
        }
        assert (await c.post("/oauth/token", data=form)).json()["error"] == "invalid_grant"
        answer = await c.get("/oauth/authorize", params=query)
        form["code"] = httpx.URL(answer.headers["location"]).params["code"]
        form["code_verifier"] = verifier
        tokens = (await c.post("/oauth/token", data=form)).json()
        assert tokens["access_token"] == chaos.tokens_of("acme")[0]
        assert (await c.post("/oauth/token", data=form)).status_code == 400  # a code is single-use
        assert chaos.stats().authorizations == 1
