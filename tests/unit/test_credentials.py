"""Credentials in the healing store and the fleet-wide, leased refresh (healing.oauth).

Token endpoints here are the real chaos server on 127.0.0.1 (``healing.testing.ChaosAPI``), or
an ``httpx.MockTransport`` where only the request's shape matters (client authentication).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from healing.authorize import authorize
from healing.config import HealingConfig
from healing.credentials import (
    CREDENTIALS_SPACE,
    Credential,
    FileCredentialStore,
    FleetCredentialStore,
    MemoryCredentialStore,
    OAuthClient,
    SecretBox,
    generate_secret_key,
)
from healing.errors import (
    ConfigError,
    CredentialError,
    GrantRevoked,
    SecretKeyMismatch,
    TokenEndpointUnavailable,
)
from healing.oauth import LEASE_MARGIN_S, TokenRefresher
from healing.runner import import_credential_file
from healing.store.memory import MemoryFleetState
from healing.testing import ChaosAPI, FaultPlan, FaultRule, LatencyFault, StatusFault

KEY = generate_secret_key()


@pytest.fixture
async def chaos() -> AsyncIterator[ChaosAPI]:
    async with ChaosAPI(require_token=True) as api:
        yield api


def _client(chaos: ChaosAPI, **kw: Any) -> OAuthClient:
    return OAuthClient(
        token_url=f"{chaos.url}/oauth/token",
        authorize_url=f"{chaos.url}/oauth/authorize",
        client_id="app",
        client_secret="app-secret-value",
        timeout_s=kw.pop("timeout_s", 3.0),
        **kw,
    )


async def _seed(
    store: FleetCredentialStore,
    chaos: ChaosAPI,
    *,
    connection: str = "default",
    expires_in: float = -1.0,
    lifetime: float = 3600.0,
) -> Credential:
    tokens = chaos.issue_tokens(connection)
    now = time.time()
    cred = Credential(
        connector="crm",
        connection=connection,
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token,
        expires_at=now + expires_in,
        issued_at=now + expires_in - lifetime,
    )
    assert await store.put(cred, expected_version=None)
    stored = await store.get("crm", connection)
    assert stored is not None
    return stored


def _workers(fleet: MemoryFleetState, chaos: ChaosAPI, n: int = 2) -> list[TokenRefresher]:
    """``n`` refreshers sharing nothing but the fleet state, as separate workers would."""
    return [
        TokenRefresher(FleetCredentialStore(fleet, KEY), {"crm": _client(chaos)}, poll_s=0.02)
        for _ in range(n)
    ]


# -- the store ------------------------------------------------------------------------------


async def test_rows_are_keyed_by_connection_and_compare_and_swap() -> None:
    store = FleetCredentialStore(MemoryFleetState(), KEY)
    a = Credential(connector="crm", connection="acme", access_token="tok-acme-1")
    b = Credential(connector="crm", connection="globex", access_token="tok-globex-1")
    assert await store.put(a, expected_version=None)
    assert await store.put(b, expected_version=None)
    assert not await store.put(a, expected_version=None)  # exists already
    got = await store.get("crm", "acme")
    assert got is not None and got.access_token.get_secret_value() == "tok-acme-1"
    assert got.version == 1
    assert await store.put(a.model_copy(update={"access_token": "tok-2"}), expected_version=1)
    assert not await store.put(a, expected_version=1)  # a sibling wrote version 2
    other = await store.get("crm", "globex")
    assert other is not None and other.access_token.get_secret_value() == "tok-globex-1"
    assert await store.get("crm") is None
    await store.delete("crm", "acme")
    assert await store.get("crm", "acme") is None


async def test_tokens_are_encrypted_at_rest() -> None:
    fleet = MemoryFleetState()
    store = FleetCredentialStore(fleet, KEY)
    cred = Credential(connector="crm", access_token="at-plain-123", refresh_token="rt-plain-456")
    await store.put(cred, expected_version=None)
    raw = json.dumps([e.value for e in await fleet.state_list(CREDENTIALS_SPACE)])
    assert "at-plain-123" not in raw and "rt-plain-456" not in raw
    assert "sealed" in raw and "crm" in raw


async def test_a_wrong_key_is_named_at_start_up_not_at_call_time() -> None:
    fleet = MemoryFleetState()
    await FleetCredentialStore(fleet, KEY).put(
        Credential(connector="crm", access_token="x"), expected_version=None
    )
    other = FleetCredentialStore(fleet, generate_secret_key())
    with pytest.raises(ConfigError, match="HEALING_SECRET_KEY") as info:
        await other.check_key()
    assert "1 of the 1" in str(info.value) and "('crm')" in str(info.value)
    with pytest.raises(SecretKeyMismatch, match="no reauthorization helps"):
        await other.get("crm")


def test_a_malformed_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a Fernet key"):
        SecretBox("hunter2")


async def test_key_rotation_re_encrypts_every_row() -> None:
    fleet, new = MemoryFleetState(), generate_secret_key()
    old_store = FleetCredentialStore(fleet, KEY)
    for name in ("a", "b", "c"):
        await old_store.put(
            Credential(connector=name, access_token=f"t-{name}"), expected_version=None
        )
    both = FleetCredentialStore(fleet, f"{new},{KEY}")
    assert await both.check_key() == 3  # the old rows open with the second key
    assert await both.rotate() == 3
    only_new = FleetCredentialStore(fleet, new)
    await only_new.check_key()
    got = await only_new.get("b")
    assert got is not None and got.access_token.get_secret_value() == "t-b"
    assert await both.rotate() == 0  # nothing left on the old key


async def test_legacy_file_is_imported_once(tmp_path: Path) -> None:
    path = tmp_path / "credentials.enc"
    legacy = FileCredentialStore(path, KEY)
    await legacy.put(Credential(connector="crm", access_token="file-at"), expected_version=None)
    await legacy.put(
        Credential(connector="crm", connection="acme", access_token="file-acme"),
        expected_version=None,
    )
    store = FleetCredentialStore(MemoryFleetState(), KEY)
    config = HealingConfig(secret_key=KEY)
    assert await import_credential_file(store, config, path) == 2
    assert await import_credential_file(store, config, path) == 0  # already there
    got = await store.get("crm", "acme")
    assert got is not None and got.access_token.get_secret_value() == "file-acme"


# -- single flight across workers ----------------------------------------------------------


@pytest.mark.parametrize("reuse_detection", [False, True])
async def test_one_token_call_for_a_stampede_of_two_workers(
    chaos: ChaosAPI, reuse_detection: bool
) -> None:
    chaos.set_refresh_policy(reuse_detection=reuse_detection)
    fleet = MemoryFleetState()
    first, second = _workers(fleet, chaos)
    stale = await _seed(first._store, chaos)  # type: ignore[arg-type]
    got = await asyncio.gather(
        *(w.refresh("crm", seen_version=stale.version) for w in (first, second) * 25)
    )
    stats = chaos.stats()
    assert stats.token_calls == 1 and stats.refresh_token_reuses == 0
    assert {c.version for c in got} == {stale.version + 1}
    assert got[0].access_token.get_secret_value() == chaos.access_token
    for w in (first, second):
        await w.aclose()


async def test_a_dead_grant_costs_one_token_call_and_fails_every_waiter(chaos: ChaosAPI) -> None:
    fleet = MemoryFleetState()
    workers = _workers(fleet, chaos, 3)
    stale = await _seed(workers[0]._store, chaos)  # type: ignore[arg-type]
    chaos.revoke_grant()
    started = time.monotonic()
    results = await asyncio.gather(
        *(w.refresh("crm", seen_version=stale.version) for w in workers * 10),
        return_exceptions=True,
    )
    assert time.monotonic() - started < 5
    assert all(isinstance(r, GrantRevoked) for r in results), results
    assert chaos.stats().token_calls == 1
    assert "healing credentials authorize crm" in str(results[0])
    # A later call, in any worker, reads the shared verdict: no token call.
    with pytest.raises(GrantRevoked):
        await workers[1].credential("crm")
    assert chaos.stats().token_calls == 1


async def test_a_still_valid_token_serves_while_the_proactive_refresh_fails(
    chaos: ChaosAPI,
) -> None:
    chaos.set_plan(
        FaultPlan(rules=(FaultRule(path="/oauth/token", faults=(StatusFault(status=500),)),))
    )
    fleet = MemoryFleetState()
    (worker,) = _workers(fleet, chaos, 1)
    # 30 s left of a one-hour token: inside the 60 s leeway.
    cred = await _seed(worker._store, chaos, expires_in=30)  # type: ignore[arg-type]
    got = await worker.credential("crm")
    assert got.version == cred.version  # the 500: the current token, no error
    assert chaos.stats().calls_to("POST", "/oauth/token") == 1
    # The back-off is shared: nobody calls again for backoff_s; later the refresh works.
    await worker.credential("crm")
    assert chaos.stats().calls_to("POST", "/oauth/token") == 1
    await asyncio.sleep(2.1)
    assert (await worker.credential("crm")).version == cred.version + 1
    await worker.aclose()


async def test_an_expired_token_with_a_failing_endpoint_is_transient(chaos: ChaosAPI) -> None:
    chaos.set_plan(
        FaultPlan(rules=(FaultRule(path="/oauth/token", always=StatusFault(status=503)),))
    )
    fleet = MemoryFleetState()
    workers = _workers(fleet, chaos, 2)
    stale = await _seed(workers[0]._store, chaos)  # type: ignore[arg-type]
    results = await asyncio.gather(
        *(w.refresh("crm", seen_version=stale.version) for w in workers * 5),
        return_exceptions=True,
    )
    assert all(isinstance(r, TokenEndpointUnavailable) for r in results), results
    assert "503" in str(results[0])
    assert chaos.stats().calls_to("POST", "/oauth/token") == 1  # the others read the verdict
    stored = await workers[0]._store.get("crm")
    assert stored is not None and stored.revoked is None  # never a dead grant


async def test_a_slow_rotation_is_waited_for_not_called_twice(chaos: ChaosAPI) -> None:
    chaos.set_refresh_policy(reuse_detection=True)
    chaos.set_plan(
        FaultPlan(rules=(FaultRule(path="/oauth/token", faults=(LatencyFault(delay_ms=2500),)),))
    )
    fleet = MemoryFleetState()
    workers = _workers(fleet, chaos, 2)
    stale = await _seed(workers[0]._store, chaos)  # type: ignore[arg-type]
    got = await asyncio.gather(*(w.refresh("crm", seen_version=stale.version) for w in workers * 5))
    assert {c.version for c in got} == {stale.version + 1}
    stats = chaos.stats()
    assert stats.token_calls == 1 and stats.refresh_token_reuses == 0 and stats.invalid_grants == 0


async def test_an_answer_lost_to_a_timeout_heals_in_the_reuse_interval(chaos: ChaosAPI) -> None:
    """The endpoint rotates after the client gave up; Auth0/Okta keep the previous token valid
    for a reuse interval, so the retry gets a fresh pair instead of a dead grant."""
    chaos.set_refresh_policy(reuse_detection=True, reuse_interval_s=30)
    chaos.set_plan(
        FaultPlan(rules=(FaultRule(path="/oauth/token", faults=(LatencyFault(delay_ms=1500),)),))
    )
    store = FleetCredentialStore(MemoryFleetState(), KEY)
    worker = TokenRefresher(store, {"crm": _client(chaos, timeout_s=0.5)}, backoff_s=0.0)
    stale = await _seed(store, chaos)
    with pytest.raises(TokenEndpointUnavailable, match="no answer within"):
        await worker.refresh("crm", seen_version=stale.version)
    await asyncio.sleep(1.2)  # the server rotates now, after the client gave up
    got = await worker.refresh("crm", seen_version=stale.version)
    assert got.version == stale.version + 1
    stats = chaos.stats()
    assert stats.reuses_in_grace == 1 and stats.reuse_revocations == 0
    await worker.aclose()


async def test_two_connections_keep_separate_tokens(chaos: ChaosAPI) -> None:
    fleet = MemoryFleetState()
    (worker,) = _workers(fleet, chaos, 1)
    store = worker._store
    acme = await _seed(store, chaos, connection="acme")  # type: ignore[arg-type]
    globex = await _seed(store, chaos, connection="globex")  # type: ignore[arg-type]
    chaos.revoke_grant("acme")
    with pytest.raises(GrantRevoked, match="--connection acme"):
        await worker.refresh("crm", "acme", seen_version=acme.version)
    fresh = await worker.refresh("crm", "globex", seen_version=globex.version)
    assert fresh.version == globex.version + 1
    assert fresh.access_token.get_secret_value() == chaos.tokens_of("globex")[0]
    dead = await store.get("crm", "acme")
    assert dead is not None and dead.revoked is not None
    await worker.aclose()


async def test_a_short_lived_token_is_not_refreshed_on_every_call(chaos: ChaosAPI) -> None:
    fleet = MemoryFleetState()
    (worker,) = _workers(fleet, chaos, 1)
    await _seed(worker._store, chaos, expires_in=20, lifetime=30)  # type: ignore[arg-type]
    await worker.credential("crm")  # 20 s left of 30: the leeway is 3 s, not 60
    assert chaos.stats().token_calls == 0
    await worker.aclose()


# -- protocol details (authlib) -------------------------------------------------------------


def _capture(answer: dict[str, Any], status: int = 200) -> tuple[list[httpx.Request], Any]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=answer)

    return seen, httpx.MockTransport(handler)


def _mock_client(**kw: Any) -> OAuthClient:
    return OAuthClient(token_url="https://auth.test/token", client_id="app", **kw)


async def _one_refresh(client: OAuthClient, transport: Any) -> Credential:
    store = MemoryCredentialStore()
    await store.put(
        Credential(connector="crm", access_token="old", refresh_token="rt-1", expires_at=0),
        expected_version=None,
    )
    async with TokenRefresher(store, {"crm": client}, transport=transport) as refresher:
        return await refresher.refresh("crm")


@pytest.mark.parametrize("method", ["client_secret_post", "client_secret_basic"])
async def test_client_authentication_methods(method: str) -> None:
    seen, transport = _capture({"access_token": "new", "expires_in": 60})
    client = _mock_client(client_secret="s3cret-value", auth_method=method)
    await _one_refresh(client, transport)
    form = dict(httpx.QueryParams(seen[0].content.decode()))
    assert form["grant_type"] == "refresh_token" and form["refresh_token"] == "rt-1"
    if method == "client_secret_basic":
        assert seen[0].headers["authorization"].startswith("Basic ")
        assert "client_secret" not in form
    else:
        assert form["client_secret"] == "s3cret-value" and "authorization" not in seen[0].headers


async def test_private_key_jwt_sends_a_signed_assertion() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    seen, transport = _capture({"access_token": "new"})
    await _one_refresh(_mock_client(private_key=pem, auth_method="private_key_jwt"), transport)
    form = dict(httpx.QueryParams(seen[0].content.decode()))
    assert form["client_assertion_type"].endswith("jwt-bearer")
    assert form["client_assertion"].count(".") == 2 and "client_secret" not in form


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        ({"token_type": "Bearer"}, "without an access_token"),
        (["not", "an", "object"], "not a JSON object"),
    ],
)
async def test_malformed_answers_are_transient_and_named(answer: Any, said: str) -> None:
    _, transport = _capture(answer)
    with pytest.raises(TokenEndpointUnavailable, match=said):
        await _one_refresh(_mock_client(), transport)


@pytest.mark.parametrize("expires_in", [-3600, 0, "soon", 10**12])
async def test_absurd_expires_in_is_ignored(
    expires_in: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, transport = _capture({"access_token": "new", "expires_in": expires_in})
    cred = await _one_refresh(_mock_client(), transport)
    assert cred.expires_at is None and "expires_in" in caplog.text


async def test_secrets_never_reach_the_error_text() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused while sending {request.content.decode()}")

    with pytest.raises(TokenEndpointUnavailable) as info:
        await _one_refresh(_mock_client(client_secret="s3cret-value"), httpx.MockTransport(handler))
    assert "rt-1" not in str(info.value) and "s3cret-value" not in str(info.value)


# -- re-authorization with PKCE --------------------------------------------------------------


async def test_authorize_with_pkce_replaces_a_dead_grant(chaos: ChaosAPI) -> None:
    fleet = MemoryFleetState()
    (worker,) = _workers(fleet, chaos, 1)
    store = worker._store
    stale = await _seed(store, chaos, connection="acme")  # type: ignore[arg-type]
    chaos.revoke_grant("acme")
    with pytest.raises(GrantRevoked):
        await worker.refresh("crm", "acme", seen_version=stale.version)
    follow: list[asyncio.Task[httpx.Response]] = []

    async def human(url: str) -> httpx.Response:
        assert "code_challenge=" in url and "code_challenge_method=S256" in url
        async with httpx.AsyncClient(follow_redirects=True) as browser:
            return await browser.get(f"{url}&login_hint=acme")  # the account logged into

    done = await authorize(
        _client(chaos),
        store,  # type: ignore[arg-type]
        connector="crm",
        connection="acme",
        show_url=lambda url: follow.append(asyncio.ensure_future(human(url))),
        timeout_s=10,
    )
    assert (await follow[0]).status_code == 200
    assert done.credential.revoked is None and done.credential.version == stale.version + 2
    assert done.credential.access_token.get_secret_value() == chaos.tokens_of("acme")[0]
    assert chaos.stats().authorizations == 1
    assert (await worker.credential("crm", "acme")).version == done.credential.version
    await worker.aclose()


async def test_authorize_ignores_forged_and_stray_redirects(chaos: ChaosAPI) -> None:
    """Redirects with another state (a forged code or error) or to another path neither end
    the flow nor fail it; the genuine redirect that follows completes it."""
    store = MemoryCredentialStore()
    statuses: list[int] = []

    async def forged_then_human(url: str) -> None:
        redirect = httpx.URL(url).params["redirect_uri"]
        state = httpx.URL(url).params["state"]
        base = redirect.rsplit("/", 1)[0]
        async with httpx.AsyncClient() as browser:
            for target, params in (
                (redirect, {"code": "x", "state": "forged"}),
                (redirect, {"error": "access_denied", "state": "forged"}),
                (redirect, {"code": "x"}),
                (f"{base}/favicon.ico", {"code": "x", "state": state}),
            ):
                statuses.append((await browser.get(target, params=params)).status_code)
        async with httpx.AsyncClient(follow_redirects=True) as browser:
            statuses.append((await browser.get(url)).status_code)

    tasks: list[asyncio.Task[None]] = []
    done = await authorize(
        _client(chaos),
        store,
        connector="crm",
        show_url=lambda url: tasks.append(asyncio.ensure_future(forged_then_human(url))),
        timeout_s=10,
    )
    await asyncio.gather(*tasks)
    assert statuses == [400, 400, 400, 404, 200]
    assert done.credential.access_token.get_secret_value() == chaos.tokens_of("default")[0]


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (httpx.Response(503, text="down"), "token endpoint is unavailable"),
        (httpx.Response(200, json={"token_type": "Bearer"}), "without a usable access_token"),
        (httpx.Response(400, json={"error": "invalid_grant"}), "refused the authorization code"),
    ],
)
async def test_a_failed_code_exchange_is_named(
    chaos: ChaosAPI, answer: httpx.Response, said: str
) -> None:
    store = MemoryCredentialStore()
    tasks: list[asyncio.Task[httpx.Response]] = []

    async def human(url: str) -> httpx.Response:
        async with httpx.AsyncClient(follow_redirects=True) as browser:
            return await browser.get(url)

    with pytest.raises(CredentialError, match=said):
        await authorize(
            _client(chaos),
            store,
            connector="crm",
            show_url=lambda url: tasks.append(asyncio.ensure_future(human(url))),
            timeout_s=10,
            transport=httpx.MockTransport(lambda request: answer),
        )
    await asyncio.gather(*tasks)
    assert await store.get("crm") is None


async def test_a_dead_lease_holder_is_outlived_not_waited_for_forever(chaos: ChaosAPI) -> None:
    """A holder that died mid-refresh (its lease left behind) blocks nobody for long: a waiter
    gives up (transient) once a live holder would have answered, and the first attempt after
    the lease's time to live refreshes once."""
    fleet = MemoryFleetState()
    now = [time.time()]

    async def sleep(seconds: float) -> None:
        now[0] += seconds  # the waiter's clock moves; no real waiting
        await asyncio.sleep(0)

    store = FleetCredentialStore(fleet, KEY)
    stale = await _seed(store, chaos)
    ttl = _client(chaos).timeout_s + LEASE_MARGIN_S
    assert await fleet.lease_take("token-refresh:crm/default", "dead-worker", ttl_s=ttl, now=now[0])
    worker = TokenRefresher(
        store, {"crm": _client(chaos)}, clock=lambda: now[0], sleep=sleep, poll_s=0.5
    )
    started = now[0]
    with pytest.raises(TokenEndpointUnavailable, match="did not finish"):
        await worker.refresh("crm", seen_version=stale.version)
    assert now[0] - started <= _client(chaos).timeout_s + 11  # not the whole lease
    assert chaos.stats().token_calls == 0
    now[0] = started + ttl  # the workflow's next attempt, after the lease expired
    got = await worker.refresh("crm", seen_version=stale.version)
    assert got.version == stale.version + 1
    assert chaos.stats().token_calls == 1
    await worker.aclose()


# -- second review: lease, verdicts, rotation, import --------------------------------------


class _SlowFirstWrite(MemoryFleetState):
    """A store whose next credential write with a version check takes ``delay`` seconds (a
    PG pool starved by pacing, event log, breaker...)."""

    delay = 0.0

    async def state_put(self, space: str, key: str, value: Any, **kw: Any) -> int | None:
        if self.delay and space == CREDENTIALS_SPACE and kw.get("expected_version") is not None:
            delay, self.delay = self.delay, 0.0
            await asyncio.sleep(delay)
        return await super().state_put(space, key, value, **kw)


async def test_a_holder_slowed_by_the_store_keeps_its_lease(chaos: ChaosAPI) -> None:
    """The holder's write outlasts the lease's lifetime: it renews the lease meanwhile, so a
    sibling never sends the refresh token the holder already used (reuse detection on)."""
    chaos.set_refresh_policy(reuse_detection=True)
    fleet = _SlowFirstWrite()
    stale = await _seed(FleetCredentialStore(fleet, KEY), chaos)
    holder, sibling = (
        TokenRefresher(
            FleetCredentialStore(fleet, KEY),
            {"crm": _client(chaos, timeout_s=0.5)},
            poll_s=0.05,
            lease_ttl_s=0.6,
        )
        for _ in range(2)
    )
    fleet.delay = 1.5  # 2.5 lease lifetimes

    async def later() -> Credential:
        await asyncio.sleep(0.2)
        return await sibling.refresh("crm", seen_version=stale.version)

    got = await asyncio.gather(holder.refresh("crm", seen_version=stale.version), later())
    stats = chaos.stats()
    assert (stats.token_calls, stats.refresh_token_reuses, stats.reuse_revocations) == (1, 0, 0)
    assert [c.version for c in got] == [stale.version + 1] * 2
    for w in (holder, sibling):
        await w.aclose()


async def test_a_holder_whose_write_loses_to_a_dead_verdict_raises_it() -> None:
    """The holder's write lost the version race to a revoked row: it raises the verdict
    instead of handing out the dead row as a fresh token."""
    fleet = MemoryFleetState()
    store = FleetCredentialStore(fleet, KEY)
    await store.put(
        Credential(connector="crm", access_token="at-1", refresh_token="rt-1", expires_at=0),
        expected_version=None,
    )

    async def handler(request: httpx.Request) -> httpx.Response:
        current = await store.get("crm")
        assert current is not None
        await store.put(
            current.model_copy(update={"revoked": "a sibling saw invalid_grant"}),
            expected_version=current.version,
        )
        return httpx.Response(200, json={"access_token": "at-2", "refresh_token": "rt-2"})

    worker = TokenRefresher(
        store,
        {"crm": OAuthClient(token_url="https://a.test/t", client_id="x")},
        transport=httpx.MockTransport(handler),
    )
    with pytest.raises(GrantRevoked, match="a sibling saw invalid_grant"):
        await worker.refresh("crm", seen_version=1)
    await worker.aclose()


async def test_a_dead_grant_verdict_yields_to_a_reauthorization_in_between() -> None:
    """invalid_grant for the old token while a human stored new tokens: the verdict loses
    the version race and the caller gets the human's tokens, not a false escalation."""
    store = FleetCredentialStore(MemoryFleetState(), KEY)
    await store.put(
        Credential(connector="crm", access_token="at-1", refresh_token="rt-1", expires_at=0),
        expected_version=None,
    )

    async def handler(request: httpx.Request) -> httpx.Response:
        current = await store.get("crm")
        assert current is not None
        human = Credential(connector="crm", access_token="at-human", refresh_token="rt-human")
        assert await store.put(human, expected_version=current.version)
        return httpx.Response(400, json={"error": "invalid_grant"})

    worker = TokenRefresher(
        store,
        {"crm": OAuthClient(token_url="https://a.test/t", client_id="x")},
        transport=httpx.MockTransport(handler),
    )
    got = await worker.refresh("crm", seen_version=1)
    assert got.version == 2 and got.access_token.get_secret_value() == "at-human"
    assert got.revoked is None
    await worker.aclose()


def _refusing(calls: list[bytes], error: str = "invalid_client") -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.content)
        return httpx.Response(401, json={"error": error, "error_description": "client disabled"})

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(
    "error", ["invalid_client", "unauthorized_client", "invalid_scope", "invalid_request"]
)
async def test_a_refused_client_is_one_token_call_for_every_waiter(error: str) -> None:
    fleet = MemoryFleetState()
    await FleetCredentialStore(fleet, KEY).put(
        Credential(
            connector="crm", access_token="at-1-value", refresh_token="rt-1-value", expires_at=0
        ),
        expected_version=None,
    )
    calls: list[bytes] = []
    client = OAuthClient(token_url="https://a.test/t", client_id="x", client_secret="s-value")
    workers = [
        TokenRefresher(
            FleetCredentialStore(fleet, KEY), {"crm": client}, transport=_refusing(calls, error)
        )
        for _ in range(2)
    ]
    got = await asyncio.gather(
        *(w.refresh("crm", seen_version=1) for w in workers * 15), return_exceptions=True
    )
    assert len(calls) == 1
    assert all(isinstance(g, GrantRevoked) for g in got)
    assert all("check the client settings" in str(g) for g in got)
    for w in workers:
        await w.aclose()


async def test_a_refused_proactive_refresh_keeps_serving_the_valid_token() -> None:
    """invalid_client inside the early-refresh window: calls go on with the still-valid token,
    and the fleet asks the endpoint once per back-off, not once per call."""
    now = [1_000_000.0]
    store = FleetCredentialStore(MemoryFleetState(), KEY)
    await store.put(
        Credential(
            connector="crm",
            access_token="at-still-valid",
            refresh_token="rt-1-value",
            issued_at=now[0] - 590,
            expires_at=now[0] + 10,  # within 10% of a 600 s lifetime
        ),
        expected_version=None,
    )
    calls: list[bytes] = []
    client = OAuthClient(token_url="https://a.test/t", client_id="x", client_secret="s-value")
    worker = TokenRefresher(
        store, {"crm": client}, transport=_refusing(calls), clock=lambda: now[0]
    )
    for _ in range(20):
        assert await worker.access_token("crm") == "at-still-valid"
    assert len(calls) == 1
    await worker.aclose()


class _OldKeyWorker(MemoryFleetState):
    """A fleet where a worker still running with only the old key rewrites a row ``times``
    times, each right before the rotation's write."""

    def __init__(self, old_key: str, times: int) -> None:
        super().__init__()
        self.old = FleetCredentialStore(self, old_key)
        self.times = times
        self.inside = False

    async def state_put(self, space: str, key: str, value: Any, **kw: Any) -> int | None:
        if (
            self.times
            and not self.inside
            and space == CREDENTIALS_SPACE
            and kw.get("expected_version") is not None
        ):
            self.times -= 1
            cred = await self.old.get("crm")
            assert cred is not None
            self.inside = True  # the old worker's own write goes straight through
            try:
                await self.old.put(cred, expected_version=cred.version)
            finally:
                self.inside = False
        return await super().state_put(space, key, value, **kw)


async def test_rotation_retries_rows_a_worker_rewrote_with_the_old_key() -> None:
    new = generate_secret_key()
    fleet = _OldKeyWorker(KEY, times=2)
    fleet.times, times = 0, fleet.times
    await fleet.old.put(Credential(connector="crm", access_token="t-crm"), expected_version=None)
    fleet.times = times
    both = FleetCredentialStore(fleet, f"{new},{KEY}")
    await both.rotate()
    only_new = FleetCredentialStore(fleet, new)
    await only_new.check_key()  # every row is on the new key
    got = await only_new.get("crm")
    assert got is not None and got.access_token.get_secret_value() == "t-crm"


async def test_rotation_names_rows_an_old_key_worker_keeps_rewriting() -> None:
    new = generate_secret_key()
    fleet = _OldKeyWorker(KEY, times=0)
    await fleet.old.put(Credential(connector="crm", access_token="t-crm"), expected_version=None)
    fleet.times = 100
    with pytest.raises(ConfigError, match=r"still sealed with an older key.*'crm'"):
        await FleetCredentialStore(fleet, f"{new},{KEY}").rotate()


def test_a_key_mismatch_is_a_setup_error_not_an_auth_error() -> None:
    from healing.classify import classify_error, detect_error
    from healing.escalation import options_for
    from healing.types import ErrorType

    failure = detect_error(SecretKeyMismatch("cannot decrypt", connector="crm"), connector="crm")
    assert failure is not None
    verdict = classify_error(failure)
    assert verdict.error_type is ErrorType.INTERNAL_ERROR
    options = [o.option for o in options_for(verdict.error_type, ())]
    assert "reauthorized" not in options


async def test_a_legacy_file_of_the_old_key_imports_while_rotating(tmp_path: Path) -> None:
    new = generate_secret_key()
    path = tmp_path / "credentials.enc"
    await FileCredentialStore(path, KEY).put(
        Credential(connector="crm", access_token="file-at"), expected_version=None
    )
    store = FleetCredentialStore(MemoryFleetState(), f"{new},{KEY}")
    config = HealingConfig(secret_key=f"{new},{KEY}")
    assert await import_credential_file(store, config, path) == 1


async def test_start_up_imports_a_legacy_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A credential deleted from the store does not come back from the file at the next
    start-up (its refresh token may be rotated away); a file no key opens only warns."""
    from healing.runner import prepare_credentials

    path = tmp_path / "credentials.enc"
    await FileCredentialStore(path, KEY).put(
        Credential(connector="crm", access_token="file-at", refresh_token="file-rt"),
        expected_version=None,
    )
    monkeypatch.setenv("HEALING_CREDENTIALS_FILE", str(path))
    fleet = MemoryFleetState()
    config = HealingConfig(secret_key=KEY)
    store = FleetCredentialStore(fleet, KEY)
    await prepare_credentials(config, None, fleet)
    assert await store.get("crm") is not None
    await store.delete("crm")
    await prepare_credentials(config, None, fleet)  # the next start-up
    assert await store.get("crm") is None
    other = HealingConfig(secret_key=generate_secret_key())
    await prepare_credentials(other, None, MemoryFleetState())  # warns, does not raise


# -- connection names ------------------------------------------------------------------------


def test_only_call_integration_names_the_refresh_connection() -> None:
    """A user activity's ``connection`` field (e.g. a DSN) is no credential connection."""
    from types import SimpleNamespace

    from healing.interceptor._workflow_outbound import _connection_of

    def start(activity: str, arg: Any) -> Any:
        return SimpleNamespace(activity=activity, args=[arg])

    assert _connection_of(start("call_integration", {"connection": "acme"})) == "acme"
    assert _connection_of(start("call_integration", {"connection": "default"})) is None
    dsn = {"connection": "postgresql://bob:pw@db/x"}
    assert _connection_of(start("load_rows", dsn)) is None
    assert _connection_of(start("call_integration", dsn)) is None  # not a valid name


@pytest.mark.parametrize("bad", ["a b", "$(touch x)", "-rf", "acme;ls", "x" * 129])
def test_connection_names_are_checked_where_calls_start(bad: str) -> None:
    from pydantic import ValidationError

    from activities.integration import CallRequest
    from workflows.integration import Step

    for model in (Step, CallRequest):
        with pytest.raises(ValidationError, match="connection name is 1-128"):
            model(connector="crm", operation="get", connection=bad)


def test_the_authorize_command_in_an_escalation_is_shell_quoted() -> None:
    import shlex

    from healing.oauth import authorize_hint

    hint = authorize_hint("crm", "bob@acme.io").strip("`")
    assert shlex.split(hint)[-2:] == ["--connection", "bob@acme.io"]
    assert shlex.split(authorize_hint("my crm").strip("`"))[-1] == "my crm"


async def test_the_key_is_checked_once_at_start_up() -> None:
    """prepare_credentials checks the key through the refresher; the plugin's check when the
    worker starts is then a no-op, not a second pass over every row."""
    from healing.runner import prepare_credentials

    class Counting(MemoryFleetState):
        lists = 0

        async def state_list(self, space: str, **kw: Any) -> Any:
            if space == CREDENTIALS_SPACE:
                self.lists += 1
            return await super().state_list(space, **kw)

    fleet = Counting()
    worker = TokenRefresher(FleetCredentialStore(fleet, KEY), {})
    await prepare_credentials(HealingConfig(secret_key=KEY), worker, fleet)
    await worker.check()  # what HealingPlugin.run_worker does
    assert fleet.lists == 1
