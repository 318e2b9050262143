"""Credential stores (compare-and-swap, encryption at rest) and single-flight token refresh."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import multiprocessing
import os
import secrets
import stat
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from healing.credentials import (
    BearerAuth,
    Credential,
    CredentialStore,
    FileCredentialStore,
    MemoryCredentialStore,
    OAuthClient,
    generate_secret_key,
)
from healing.errors import ConfigError, CredentialError, GrantRevoked, TokenEndpointUnavailable
from healing.oauth import TokenRefresher

CLIENT_SECRET = "cs-" + secrets.token_hex(8)
KEY = generate_secret_key()


def _tok(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _yield_sleep(_: float) -> None:
    """Stands in for the invalid_grant grace wait: lets other tasks run, no wall-clock time."""
    for _ in range(20):
        await asyncio.sleep(0)


def _client(url: str = "https://auth.test/token", **kw: Any) -> OAuthClient:
    return OAuthClient(token_url=url, client_id="app", client_secret=CLIENT_SECRET, **kw)


class TokenEndpoint:
    """A token endpoint with refresh-token rotation: each refresh token works once.

    Serves an ``httpx.MockTransport`` (``handler``) and the real TCP server below (``answer``).
    ``hold`` requests are kept waiting until that many have arrived (forces a race).
    """

    def __init__(self, refresh_token: str, *, hold: int = 0, rotate: bool = True) -> None:
        self.valid = {refresh_token}
        self.issued: list[str] = []
        self.forms: list[dict[str, str]] = []
        self.headers: list[httpx.Headers] = []
        self.successes = 0
        self.invalid_grants = 0
        self.fail_with: int | None = None
        self.gate: asyncio.Event | None = None
        self.hold = hold
        self.rotate = rotate
        self._arrived = asyncio.Event()
        self.entered = asyncio.Event()

    @property
    def calls(self) -> int:
        return len(self.forms)

    async def answer(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.forms.append(form)
        self.entered.set()
        if self.hold and self.calls < self.hold:
            await asyncio.wait_for(self._arrived.wait(), 5)
        elif self.hold:
            self._arrived.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            return self.fail_with, {"error": "server_error"}
        if form["grant_type"] == "client_credentials":
            self.successes += 1
            return 200, {"access_token": self._issue("AT"), "expires_in": 3600}
        if form.get("refresh_token") not in self.valid:
            self.invalid_grants += 1
            return 400, {"error": "invalid_grant", "error_description": "Token has been revoked."}
        payload: dict[str, Any] = {"access_token": self._issue("AT"), "expires_in": 3600}
        if self.rotate:
            self.valid.discard(form["refresh_token"])
            new_refresh = self._issue("RT")
            self.valid.add(new_refresh)
            payload["refresh_token"] = new_refresh
        self.successes += 1
        return 200, payload

    def _issue(self, prefix: str) -> str:
        self.issued.append(_tok(prefix))
        return self.issued[-1]

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.headers.append(request.headers)
        form = dict(urllib.parse.parse_qsl(request.content.decode()))
        status, payload = await self.answer(form)
        return httpx.Response(status, json=payload)

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handler))


async def _seed(store: CredentialStore, *, expires_at: float | None = None) -> Credential:
    cred = Credential(
        connector="crm",
        access_token=_tok("AT0"),
        refresh_token=_tok("RT0"),
        expires_at=expires_at,
    )
    assert await store.put(cred, expected_version=None)
    return cred


def _rt(cred: Credential) -> str:
    assert cred.refresh_token is not None
    return cred.refresh_token.get_secret_value()


def _secret_values(*creds: Credential | None) -> list[str]:
    out = [CLIENT_SECRET]
    for c in creds:
        if c is not None:
            out.append(c.access_token.get_secret_value())
            if c.refresh_token is not None:
                out.append(c.refresh_token.get_secret_value())
    return out


def _assert_no_secrets(text: str, values: list[str]) -> None:
    leaked = [v for v in values if v in text]
    assert not leaked, f"secret values leaked: {len(leaked)}"


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CredentialStore:
    if request.param == "memory":
        return MemoryCredentialStore()
    return FileCredentialStore(tmp_path / "creds.enc", KEY)


# --- the model ---------------------------------------------------------------------------


def test_credential_never_shows_token_values() -> None:
    cred = Credential(connector="crm", access_token="AT-visible", refresh_token="RT-visible")
    shown = [
        repr(cred),
        str(cred),
        json.dumps(cred.model_dump(mode="json")),
        cred.model_dump_json(),
    ]
    for text in shown:
        assert "visible" not in text
    assert cred.access_token.get_secret_value() == "AT-visible"
    with pytest.raises(ValueError):  # frozen
        cred.version = 3  # type: ignore[misc]


def test_expires_within() -> None:
    cred = Credential(connector="c", access_token="a", expires_at=1000.0)
    assert cred.expires_within(60, now=941.0)
    assert not cred.expires_within(60, now=939.0)
    assert not Credential(connector="c", access_token="a").expires_within(60, now=1e12)


# --- stores ------------------------------------------------------------------------------


async def test_compare_and_swap(store: CredentialStore) -> None:
    assert await store.get("crm") is None
    first = await _seed(store)
    assert not await store.put(first, expected_version=None)  # already exists
    stored = await store.get("crm")
    assert stored is not None and stored.version == 0
    assert stored.access_token.get_secret_value() == first.access_token.get_secret_value()

    newer = first.model_copy(update={"access_token": SecretStr("AT1"), "version": 99})
    assert await store.put(newer, expected_version=0)
    assert not await store.put(newer, expected_version=0)  # stale
    assert not await store.put(newer, expected_version=5)
    stored = await store.get("crm")
    assert stored is not None and stored.version == 1  # version comes from the store, not cred
    assert stored.access_token.get_secret_value() == "AT1"
    assert stored.refresh_token == first.refresh_token

    await store.delete("crm")
    await store.delete("crm")  # idempotent
    assert await store.get("crm") is None
    assert await store.put(first, expected_version=None)


async def _increment(store: CredentialStore, times: int) -> int:
    conflicts = 0
    for i in range(times):
        while True:
            cur = await store.get("crm")
            assert cur is not None
            if await store.put(
                cur.model_copy(update={"access_token": SecretStr(f"t{i}")}),
                expected_version=cur.version,
            ):
                break
            conflicts += 1
    return conflicts


async def test_concurrent_increments_in_one_process(store: CredentialStore) -> None:
    await _seed(store)
    await asyncio.gather(*(_increment(store, 10) for _ in range(5)))
    stored = await store.get("crm")
    assert stored is not None and stored.version == 50


def _process_increments(path: str, key: str, times: int, barrier: Any) -> None:
    store = FileCredentialStore(path, key)
    barrier.wait()
    asyncio.run(_increment(store, times))


def test_file_store_cas_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "creds.enc"
    asyncio.run(_seed(FileCredentialStore(path, KEY)))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_process_increments, args=(str(path), KEY, 50, barrier))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    stored = asyncio.run(FileCredentialStore(path, KEY).get("crm"))
    assert stored is not None and stored.version == 100


async def test_file_store_encrypts_at_rest(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "creds.enc"
    store = FileCredentialStore(path, KEY)
    cred = await _seed(store)
    blob = path.read_bytes()
    for value in [*_secret_values(cred), "crm", "access_token"]:
        assert value.encode() not in blob
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir() if not p.name.startswith("creds.enc")] == []
    again = await FileCredentialStore(path, KEY.encode()).get("crm")  # bytes key, new instance
    assert again is not None and again.refresh_token == cred.refresh_token


async def test_file_store_wrong_key(tmp_path: Path) -> None:
    path = tmp_path / "creds.enc"
    await _seed(FileCredentialStore(path, KEY))
    other = generate_secret_key()
    with pytest.raises(CredentialError, match="does not match") as info:
        await FileCredentialStore(path, other).get("crm")
    assert KEY not in str(info.value) and other not in str(info.value)
    with pytest.raises(CredentialError, match="does not match"):
        await FileCredentialStore(path, other).put(
            Credential(connector="x", access_token="a"), expected_version=None
        )


def test_file_store_rejects_malformed_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="generate_secret_key") as info:
        FileCredentialStore(tmp_path / "c", "hunter2-not-a-key")
    assert "hunter2" not in str(info.value)


# --- refresh -----------------------------------------------------------------------------


async def test_concurrent_refresh_calls_the_endpoint_once() -> None:
    store = MemoryCredentialStore()
    old = await _seed(store)
    endpoint = TokenEndpoint(_rt(old))
    endpoint.gate = asyncio.Event()
    async with endpoint.http() as http:
        refresher = TokenRefresher(store, {"crm": _client()}, http=http)
        tasks = [asyncio.create_task(refresher.refresh("crm", reason="401")) for _ in range(20)]
        for _ in range(10):
            await asyncio.sleep(0)
        endpoint.gate.set()
        results = await asyncio.gather(*tasks)
    assert endpoint.calls == 1
    assert {r.access_token.get_secret_value() for r in results} == {endpoint.issued[0]}
    assert {r.version for r in results} == {1}
    form = endpoint.forms[0]
    assert form == {
        "grant_type": "refresh_token",
        "refresh_token": _rt(old),
        "client_id": "app",
        "client_secret": CLIENT_SECRET,
    }


async def test_two_workers_race_with_rotation() -> None:
    store = MemoryCredentialStore()
    old = await _seed(store)
    endpoint = TokenEndpoint(_rt(old), hold=2)
    async with endpoint.http() as http:
        workers = [
            TokenRefresher(store, {"crm": _client()}, http=http, sleep=_yield_sleep)
            for _ in range(2)
        ]
        a, b = await asyncio.gather(*(w.refresh("crm", seen_version=0) for w in workers))
    assert (endpoint.successes, endpoint.invalid_grants) == (1, 1)  # they really raced
    assert a.access_token == b.access_token
    assert a.access_token.get_secret_value() == endpoint.issued[0]
    stored = await store.get("crm")
    assert stored is not None and stored.version == 1
    assert stored.refresh_token is not None
    assert stored.refresh_token.get_secret_value() == endpoint.issued[1]


async def test_invalid_grant_waits_for_a_sibling_write_in_flight() -> None:
    store = MemoryCredentialStore()
    old = await _seed(store)
    endpoint = TokenEndpoint("already-used")
    sibling = Credential(connector="crm", access_token=_tok("ATs"), refresh_token=_tok("RTs"))
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:  # the sibling's write lands during the grace
        sleeps.append(delay)
        if len(sleeps) == 2:
            assert await store.put(sibling, expected_version=0)

    async with endpoint.http() as http:
        refresher = TokenRefresher(store, {"crm": _client()}, http=http, sleep=sleep)
        got = await refresher.refresh("crm", seen_version=old.version)
    assert got.access_token == sibling.access_token and got.version == 1
    assert sleeps == [0.5, 0.5]


async def test_invalid_grant_without_sibling_is_revoked(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = MemoryCredentialStore()
    old = await _seed(store)
    endpoint = TokenEndpoint("some-other-token")
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    async with endpoint.http() as http:
        refresher = TokenRefresher(store, {"crm": _client()}, http=http, sleep=sleep)
        with pytest.raises(GrantRevoked) as info:
            await refresher.refresh("crm")
    message = str(info.value)
    assert "'crm'" in message and "reauthorize" in message
    assert info.value.connector == "crm"
    assert endpoint.invalid_grants == 1 and sum(sleeps) == pytest.approx(2.0)
    _assert_no_secrets(message + repr(info.value) + caplog.text, _secret_values(old))
    stored = await store.get("crm")
    assert stored is not None and stored.version == 0  # nothing overwritten


async def test_missing_refresh_token_is_revoked() -> None:
    store = MemoryCredentialStore()
    await store.put(Credential(connector="crm", access_token="a"), expected_version=None)
    endpoint = TokenEndpoint("x")
    async with endpoint.http() as http:
        with pytest.raises(GrantRevoked, match="reauthorize"):
            await TokenRefresher(store, {"crm": _client()}, http=http).refresh("crm")
    assert endpoint.calls == 0


async def test_lost_cas_returns_the_winner() -> None:
    """A non-rotating endpoint lets both workers succeed; the store picks one winner."""
    store = MemoryCredentialStore()
    old = await _seed(store)
    endpoint = TokenEndpoint(_rt(old), rotate=False)
    endpoint.gate = asyncio.Event()
    winner = old.model_copy(update={"access_token": SecretStr("AT-winner")})
    async with endpoint.http() as http:
        task = asyncio.create_task(
            TokenRefresher(store, {"crm": _client()}, http=http).refresh("crm", seen_version=0)
        )
        await endpoint.entered.wait()
        assert await store.put(winner, expected_version=0)  # another worker stores first
        endpoint.gate.set()
        got = await task
    assert got.access_token.get_secret_value() == "AT-winner" and got.version == 1
    assert endpoint.successes == 1


async def test_keeps_refresh_token_when_not_rotated() -> None:
    store = MemoryCredentialStore()
    clock = Clock()
    old = await _seed(store)
    endpoint = TokenEndpoint(_rt(old), rotate=False)
    async with endpoint.http() as http:
        got = await TokenRefresher(store, {"crm": _client()}, http=http, clock=clock).refresh("crm")
    assert got.refresh_token == old.refresh_token
    assert got.expires_at == clock.now + 3600
    assert got.version == 1


async def test_proactive_refresh_within_leeway() -> None:
    store = MemoryCredentialStore()
    clock = Clock()
    old = await _seed(store, expires_at=clock.now + 120)
    endpoint = TokenEndpoint(_rt(old))
    async with endpoint.http() as http:
        refresher = TokenRefresher(store, {"crm": _client()}, http=http, clock=clock, leeway_s=60)
        assert await refresher.access_token("crm") == old.access_token.get_secret_value()
        assert endpoint.calls == 0
        clock.now += 61  # 59 s left: inside the leeway
        assert await refresher.access_token("crm") == endpoint.issued[0]
        assert endpoint.calls == 1
        assert await refresher.access_token("crm") == endpoint.issued[0]  # fresh for an hour
        assert endpoint.calls == 1


async def test_proactive_refresh_failure_keeps_a_still_valid_token() -> None:
    store = MemoryCredentialStore()
    clock = Clock()
    old = await _seed(store, expires_at=clock.now + 30)
    endpoint = TokenEndpoint(_rt(old))
    endpoint.fail_with = 503
    async with endpoint.http() as http:
        refresher = TokenRefresher(store, {"crm": _client()}, http=http, clock=clock)
        assert await refresher.access_token("crm") == old.access_token.get_secret_value()
        clock.now += 61  # expired now, and past the cooldown: the failure must surface
        with pytest.raises(CredentialError):
            await refresher.access_token("crm")
    assert endpoint.calls == 2


async def test_access_token_without_credential() -> None:
    refresher = TokenRefresher(MemoryCredentialStore(), {"crm": _client()})
    with pytest.raises(CredentialError, match="no credential stored for connector 'crm'"):
        await refresher.access_token("crm")
    with pytest.raises(CredentialError, match="no OAuth client"):
        await refresher.refresh("other")
    await refresher.aclose()


async def test_client_credentials_mints_first_token_with_basic_auth() -> None:
    store = MemoryCredentialStore()
    endpoint = TokenEndpoint("unused")
    client = _client(grant="client_credentials", scope="read", auth_method="client_secret_basic")
    async with endpoint.http() as http:
        refresher = TokenRefresher(store, {"svc": client}, http=http)
        assert await refresher.access_token("svc") == endpoint.issued[0]
    assert endpoint.forms == [{"grant_type": "client_credentials", "scope": "read"}]
    basic = base64.b64encode(f"app:{CLIENT_SECRET}".encode()).decode()
    assert endpoint.headers[0]["authorization"] == f"Basic {basic}"
    stored = await store.get("svc")
    assert stored is not None and stored.version == 0 and stored.refresh_token is None


async def test_cooldown_after_server_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = MemoryCredentialStore()
    clock = Clock()
    old = await _seed(store)
    endpoint = TokenEndpoint(_rt(old))
    endpoint.fail_with = 503
    errors: list[CredentialError] = []
    async with endpoint.http() as http:
        refresher = TokenRefresher(store, {"crm": _client()}, http=http, clock=clock, cooldown_s=30)
        for advance in (0, 29):
            clock.now += advance
            with pytest.raises(CredentialError) as info:
                await refresher.refresh("crm")
            assert not isinstance(info.value, GrantRevoked)
            assert isinstance(info.value, TokenEndpointUnavailable)  # transient, not a dead grant
            errors.append(info.value)
        assert endpoint.calls == 1  # the second attempt did not call out
        assert "503" in str(errors[0]) and "failed moments ago" in str(errors[1])
        assert "retrying" not in str(errors[0])  # nothing retries on its own
        endpoint.fail_with = None
        clock.now += 1.5
        got = await refresher.refresh("crm")
    assert endpoint.calls == 2 and got.version == 1
    text = " ".join(str(e) + repr(e) for e in errors) + caplog.text
    _assert_no_secrets(text, _secret_values(old, got))


async def test_network_error_is_transient_and_scrubbed() -> None:
    store = MemoryCredentialStore()
    old = await _seed(store)
    token = _rt(old)

    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused; was sending {token}", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(boom)) as http:
        with pytest.raises(CredentialError, match="ConnectError: refused") as info:
            await TokenRefresher(store, {"crm": _client()}, http=http).refresh("crm")
    assert not isinstance(info.value, GrantRevoked)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    _assert_no_secrets(str(info.value), _secret_values(old))


async def test_bearer_auth_sets_header() -> None:
    seen: list[str] = []

    def echo(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return httpx.Response(200)

    store = MemoryCredentialStore()
    cred = await _seed(store)
    refresher = TokenRefresher(store, {})
    async with httpx.AsyncClient(transport=httpx.MockTransport(echo)) as http:
        await http.get("https://api.test/x", auth=refresher.auth("crm"))
        await http.get("https://api.test/x", auth=BearerAuth(_const("T2")))
    assert seen == [f"Bearer {cred.access_token.get_secret_value()}", "Bearer T2"]


def test_bearer_auth_needs_async_client() -> None:
    http = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    with http, pytest.raises(RuntimeError, match="AsyncClient"):
        http.get("https://api.test/x", auth=BearerAuth(_const("T3")))


def _const(value: str) -> Callable[[], Awaitable[str]]:
    async def get() -> str:
        return value

    return get


# --- a real token endpoint over TCP ------------------------------------------------------


@contextlib.asynccontextmanager
async def _serve(endpoint: TokenEndpoint) -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        status, payload = await endpoint.answer(dict(urllib.parse.parse_qsl(body.decode())))
        data = json.dumps(payload).encode()
        reason = {200: "OK", 400: "Bad Request"}.get(status, "Error")
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/oauth/token"
    finally:
        server.close()
        await server.wait_closed()


async def test_real_token_endpoint_rotation_race_and_revocation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two workers (own store instance, own refresher, own HTTP client) on one encrypted file.

    The server holds the first request until the second arrives, so both present the same
    refresh token: one wins, the other gets invalid_grant and must adopt the winner's token.
    """
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "creds.enc"
    old = await _seed(FileCredentialStore(path, KEY))
    endpoint = TokenEndpoint(_rt(old), hold=2)
    async with _serve(endpoint) as url:
        clients = {"crm": _client(url)}
        tasks: list[asyncio.Task[Credential]] = []

        async def grace(delay: float) -> None:
            """Time passes until the sibling's write lands (the loser's own task cannot end)."""
            await asyncio.wait(tasks, timeout=5, return_when=asyncio.FIRST_COMPLETED)

        workers = [
            TokenRefresher(FileCredentialStore(path, KEY), clients, sleep=grace) for _ in range(2)
        ]
        try:
            tasks += [asyncio.create_task(w.refresh("crm", seen_version=0)) for w in workers]
            a, b = await asyncio.gather(*tasks)
            assert (endpoint.successes, endpoint.invalid_grants) == (1, 1)
            assert a.access_token == b.access_token
            assert a.access_token.get_secret_value() == endpoint.issued[0]
            assert a.version == b.version == 1

            endpoint.hold = 0  # the rotated refresh token works once more
            c = await workers[1].refresh("crm", seen_version=1)
            assert c.version == 2 and endpoint.successes == 2

            # A worker restores a stale credential (its refresh token was used): no sibling
            # rotates it, so the grant is declared dead.
            assert await FileCredentialStore(path, KEY).put(old, expected_version=2)
            with pytest.raises(GrantRevoked, match="reauthorize") as info:
                await TokenRefresher(
                    FileCredentialStore(path, KEY), clients, sleep=_yield_sleep
                ).refresh("crm")
        finally:
            for w in workers:
                await w.aclose()
    blob = path.read_bytes()
    values = _secret_values(old, a, c)
    _assert_no_secrets(str(info.value) + repr(info.value) + caplog.text, values)
    for value in values:
        assert value.encode() not in blob


class ShortLivedEndpoint(TokenEndpoint):
    """Issues tokens with the given ``expires_in`` (a vendor's honest or absurd value)."""

    def __init__(self, refresh_token: str, expires_in: Any) -> None:
        super().__init__(refresh_token)
        self.expires_in = expires_in

    async def answer(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        status, payload = await super().answer(form)
        if status == 200:
            payload["expires_in"] = self.expires_in
        return status, payload


async def test_a_short_lived_token_is_not_refreshed_on_every_call() -> None:
    # 30 s tokens: a fixed 60 s leeway would refresh on every call; a tenth of the lifetime
    # refreshes 3 s before expiry.
    store, clock = MemoryCredentialStore(), Clock()
    old = await _seed(store, expires_at=clock.now - 1)
    endpoint = ShortLivedEndpoint(_rt(old), 30)
    async with endpoint.http() as http:
        refresher = TokenRefresher(store, {"crm": _client()}, http=http, clock=clock)
        first = await refresher.access_token("crm")
        for _ in range(5):
            clock.now += 5  # 25 s of a 30 s token
            assert await refresher.access_token("crm") == first
        assert endpoint.calls == 1
        clock.now += 3  # 2 s left: inside the 3 s leeway
        assert await refresher.access_token("crm") != first
        assert endpoint.calls == 2


@pytest.mark.parametrize("expires_in", [-3600, 0, "soon", 10**12, "NaN"])
async def test_absurd_expires_in_is_ignored_with_a_warning(
    expires_in: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store, clock = MemoryCredentialStore(), Clock()
    old = await _seed(store, expires_at=clock.now - 1)
    endpoint = ShortLivedEndpoint(_rt(old), expires_in)
    async with endpoint.http() as http:
        refresher = TokenRefresher(store, {"crm": _client()}, http=http, clock=clock)
        token = await refresher.access_token("crm")
        # Not stored as already expired: the next call uses it instead of refreshing again.
        assert await refresher.access_token("crm") == token
    assert endpoint.calls == 1
    stored = await store.get("crm")
    assert stored is not None and stored.expires_at is None
    assert "expires_in" in caplog.text


def test_catalog_auth_method_reaches_the_oauth_client() -> None:
    from healing.catalog import ConnectorCatalog

    catalog = ConnectorCatalog.from_dict(
        {
            "connectors": {
                "crm": {
                    "base_url": "https://api.example.test",
                    "auth": {
                        "kind": "oauth2",
                        "token_url": "https://auth.example.test/token",
                        "client_id": "app",
                        "auth_method": "client_secret_basic",
                    },
                }
            }
        }
    )
    assert catalog.connector("crm").auth.auth_method == "client_secret_basic"
    with pytest.raises(ConfigError, match="auth_method"):
        ConnectorCatalog.from_dict(
            {
                "connectors": {
                    "crm": {
                        "base_url": "https://api.example.test",
                        "auth": {
                            "kind": "oauth2",
                            "token_url": "https://auth.example.test/token",
                            "client_id": "app",
                            "auth_method": "telepathy",
                        },
                    }
                }
            }
        )
