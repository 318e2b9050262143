"""TokenRefresher: fleet-wide single-flight OAuth 2 token refresh over the credential store.

One token call per stale token version, for the whole fleet. A caller that finds the token of
(connector, connection) stale takes the refresh lease in the store (``lease_take``) BEFORE the
token call; only the holder calls the endpoint, everyone else waits for the new version and
uses it. The lease expires by itself (after the request's hard timeout plus a margin) if its
holder dies; a live holder renews it every third of its lifetime while it works, and checks it
still holds it right before the token call. So no process ever sends a refresh token a sibling
already sent: with refresh-
token rotation and reuse detection (OAuth 2.0 Security BCP; Auth0, Okta) a second send would
revoke the whole grant.

Verdicts are shared through the store too: ``invalid_grant`` for the current version marks the
row revoked, so every waiter escalates at once without another token call; a transient failure
(5xx, 429, timeout, malformed answer) is recorded with a short back-off, so waiters fail fast
and the fleet tries again once per back-off; a refusal of the OAuth client (``invalid_client``,
``unauthorized_client``, ...) is recorded per token version too, with a longer back-off, so a
refused fleet makes one token call per back-off, not one per waiting call. A still-valid access
token keeps serving while a proactive refresh fails or is refused.

Lease expiry is judged by each worker's wall clock: hosts sharing a store need synchronized
clocks (NTP); the lease's margin (30 s past the request's timeout) tolerates small skew.

The protocol (token requests, client authentication incl. ``private_key_jwt``, error parsing)
is authlib's; the lease is ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import socket
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import httpx

with warnings.catch_warnings():  # authlib 1.9 nags about httpx2, which httpx users lack
    import authlib.deprecate  # noqa: F401  (its "always" filter first, so ours below wins)

    warnings.simplefilter("ignore", DeprecationWarning)
    from authlib.integrations.base_client.errors import OAuthError
    from authlib.integrations.httpx_client import AsyncOAuth2Client
    from authlib.oauth2.rfc7523 import PrivateKeyJWT

from healing.credentials import (
    DEFAULT_CONNECTION,
    BearerAuth,
    Credential,
    CredentialStore,
    OAuthClient,
    connection_flag,
    credential_name,
    row_key,
)
from healing.errors import CredentialError, GrantRevoked, TokenEndpointUnavailable
from healing.redact import redact, scrub
from healing.store.base import ANY_VERSION, FleetState
from healing.store.memory import MemoryFleetState

__all__ = [
    "REFRESH_STATUS_SPACE",
    "OAuthError",
    "TokenRefresher",
    "TransientTokenError",
    "authorize_hint",
    "credential_from_token",
    "oauth_session",
]

log = logging.getLogger(__name__)

REFRESH_STATUS_SPACE = "credential_refresh"
"""Fleet-state space of the last transient refresh failure per credential (no secrets)."""
_TRANSIENT_OAUTH_ERRORS = {"temporarily_unavailable", "server_error", "slow_down"}
LEASE_MARGIN_S = 30.0
"""How long the refresh lease outlives the token request's hard timeout (store round trips
under load, clock skew between hosts)."""


class TransientTokenError(Exception):
    """The token endpoint failed in a way that may heal (5xx, 429, bad answer, timeout)."""


class _Busy(Exception):
    """Another worker holds the refresh lease (proactive refreshes do not wait for it)."""


def authorize_hint(connector: str, connection: str = DEFAULT_CONNECTION) -> str:
    """The command a human runs to re-authorize a credential (shell-quoted)."""
    return f"`healing credentials authorize {shlex.quote(connector)}{connection_flag(connection)}`"


def oauth_session(
    client: OAuthClient, *, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any
) -> AsyncOAuth2Client:
    """An authlib client for ``client`` (its ``auth_method``, scope and timeout)."""
    secret: str | None = None
    if client.auth_method == "private_key_jwt":
        secret = client.private_key.get_secret_value() if client.private_key else None
    elif client.client_secret is not None:
        secret = client.client_secret.get_secret_value()
    session = AsyncOAuth2Client(
        client_id=client.client_id,
        client_secret=secret,
        token_endpoint_auth_method=client.auth_method,
        scope=client.scope,
        timeout=client.timeout_s,
        transport=transport,
        **kwargs,
    )
    if client.auth_method == "private_key_jwt":
        session.register_client_auth_method(PrivateKeyJWT(client.token_url))

    def transient(resp: httpx.Response) -> httpx.Response:
        if resp.status_code == 429 or resp.status_code >= 500:
            raise TransientTokenError(f"token endpoint answered {resp.status_code}")
        try:
            body = resp.json()
        except ValueError:
            return resp
        # authlib fails on a non-numeric expires_in; an absurd one is dropped, with a warning
        if (
            isinstance(body, dict)
            and "expires_in" in body
            and _expires_in(client.client_id, body["expires_in"]) is None
        ):
            body = {k: v for k, v in body.items() if k != "expires_in"}
            return httpx.Response(resp.status_code, json=body, request=resp.request)
        return resp

    for hook in ("access_token_response", "refresh_token_response"):
        session.register_compliance_hook(hook, transient)
    return session


class TokenRefresher:
    """Hands out access tokens and refreshes each stale version once, fleet-wide.

    Args:
        store: Where credentials live (a :class:`healing.credentials.FleetCredentialStore`
            shares them, its leases and verdicts with every worker on the same store).
        clients: OAuth client settings by connector; connectors without one use their stored
            token as is (API keys, static tokens).
        fleet: Leases and shared verdicts; default ``store.fleet`` (else one process's memory).
        transport: httpx transport for token requests (tests); default httpx's.
        clock: Epoch seconds; injected by tests.
        leeway_s: A token is refreshed when it expires within ``leeway_fraction`` of its
            lifetime, at most ``leeway_s`` seconds before.
        wait_s: How long a caller waits for another worker's refresh before giving up
            (transient); default the request's timeout plus 10 s. A dead holder's lease
            expires by itself; the next attempt after that refreshes.
        poll_s: How often a waiting caller re-reads the store.
        backoff_s: After a transient endpoint failure, the fleet's next token call waits this
            long; callers meanwhile fail fast with the recorded reason.
        refused_backoff_s: The same after the endpoint refused the OAuth client
            (``invalid_client``, ``unauthorized_client``, ``invalid_scope``, ...).
        lease_ttl_s: Lifetime of the refresh lease; default the request's timeout plus
            ``LEASE_MARGIN_S``. The holder renews it every third of that while it works.
        sleep: Awaited between re-reads; injected by tests.
        http: Deprecated: a client whose transport is used for token requests.
        cooldown_s: Deprecated name of ``backoff_s``.
    """

    def __init__(
        self,
        store: CredentialStore,
        clients: Mapping[str, OAuthClient],
        *,
        fleet: FleetState | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        leeway_s: float = 60.0,
        leeway_fraction: float = 0.1,
        wait_s: float | None = None,
        poll_s: float = 0.1,
        backoff_s: float = 2.0,
        refused_backoff_s: float = 60.0,
        lease_ttl_s: float | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        http: httpx.AsyncClient | None = None,
        cooldown_s: float | None = None,
    ) -> None:
        if http is not None and transport is None:  # older callers passed a client
            transport = http._transport
        if cooldown_s is not None:  # the old name of backoff_s
            backoff_s = cooldown_s
        self._store = store
        self._clients = dict(clients)
        self._fleet: FleetState = fleet or getattr(store, "fleet", None) or MemoryFleetState()
        self._transport = transport
        self._clock = clock
        self._leeway_s = leeway_s
        self._leeway_fraction = leeway_fraction
        self._wait_s = wait_s
        self._poll_s = poll_s
        self._backoff_s = backoff_s
        self._refused_backoff_s = refused_backoff_s
        self._lease_ttl_s = lease_ttl_s
        self._sleep = sleep
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._locks: dict[str, asyncio.Lock] = {}
        self._checked = False
        self._sessions: dict[str, AsyncOAuth2Client] = {}
        self.token_calls = 0
        """Token-endpoint requests this refresher sent (figures, tests)."""

    async def __aenter__(self) -> TokenRefresher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP clients of the token requests."""
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.aclose()

    async def check(self) -> None:
        """Check at start-up that the secret key opens every stored credential (stores that
        seal, like :class:`healing.credentials.FleetCredentialStore`).

        Raises:
            ConfigError: Naming the rows the key cannot open.
        """
        if self._checked:
            return
        check_key = getattr(self._store, "check_key", None)
        if check_key is not None:
            await check_key()
        self._checked = True

    def auth(self, connector: str, connection: str = DEFAULT_CONNECTION) -> BearerAuth:
        """An ``httpx.Auth`` that sends this credential's current access token."""
        return BearerAuth(lambda: self.access_token(connector, connection))

    async def access_token(self, connector: str, connection: str = DEFAULT_CONNECTION) -> str:
        """The access token, refreshed first when it expires within the leeway."""
        return (await self.credential(connector, connection)).access_token.get_secret_value()

    async def credential(self, connector: str, connection: str = DEFAULT_CONNECTION) -> Credential:
        """The credential (token and version), refreshed first when it expires within the
        leeway; the version lets a later refresh tell a sibling's rotation apart.

        Raises:
            CredentialError: Nothing is stored (client-credentials connectors instead get a
                first token), or the refresh of an expired token failed.
            GrantRevoked: The grant is dead; a human must reauthorize.
        """
        cred = await self._store.get(connector, connection)
        client = self._clients.get(connector)
        where = credential_name(connector, connection)
        if cred is None:
            if client is None or client.grant != "client_credentials":
                raise CredentialError(
                    f"no credential stored for {where}; store one with "
                    f"{authorize_hint(connector, connection)} or `healing credentials set "
                    f"{shlex.quote(connector)}{connection_flag(connection)}`",
                    connector=connector,
                )
            return await self.refresh(connector, connection, reason="no token yet")
        if cred.revoked is not None:
            if cred.expires_within(0, now=self._clock()):
                raise self._revoked(connector, connection, cred.revoked)
            return cred  # the access token may still work; a 401 brings the verdict
        if client is None or not cred.expires_within(
            cred.leeway(self._leeway_s, self._leeway_fraction), now=self._clock()
        ):
            return cred
        if cred.expires_within(0, now=self._clock()):
            return await self.refresh(
                connector, connection, seen_version=cred.version, reason="token expired"
            )
        try:  # proactive: the current token still works, so never wait or fail for this
            return await self._refresh(
                connector, connection, cred.version, "token expires within leeway", wait=False
            )
        except _Busy:
            return cred
        except CredentialError as exc:  # incl. GrantRevoked: the token still works until expiry
            # The caller that met the failure logged it; here it is one line per call.
            log.debug("proactive refresh of %s failed, using the current token: %s", where, exc)
            return cred

    async def refresh(
        self,
        connector: str,
        connection: str = DEFAULT_CONNECTION,
        *,
        seen_version: int | None = None,
        reason: str = "",
    ) -> Credential:
        """Refresh the credential once for the fleet, or return a sibling's fresher one.

        Args:
            seen_version: Version the caller found stale. None: the version stored now.
            reason: Why, for the log (e.g. "401 from get_contact").

        Raises:
            GrantRevoked: The grant is dead (shared verdict, or ``invalid_grant`` now).
            TokenEndpointUnavailable: The endpoint failed, or a sibling's refresh did not
                finish in time; transient.
            CredentialError: Nothing stored, or no OAuth client configured.
        """
        if seen_version is None:
            before = await self._store.get(connector, connection)
            seen_version = before.version if before is not None else None
        try:
            return await self._refresh(connector, connection, seen_version, reason, wait=True)
        except _Busy:  # pragma: no cover - only wait=False raises it
            raise TokenEndpointUnavailable("refresh busy", connector=connector) from None

    async def _refresh(
        self, connector: str, connection: str, seen: int | None, reason: str, *, wait: bool
    ) -> Credential:
        client = self._clients.get(connector)
        where = credential_name(connector, connection)
        if client is None:
            raise CredentialError(
                f"connector {connector!r} has no OAuth client configured, so its token "
                "cannot be refreshed",
                connector=connector,
            )
        key = row_key(connector, connection)
        lease = f"token-refresh:{key}"
        ttl = (
            self._lease_ttl_s
            if self._lease_ttl_s is not None
            else client.timeout_s + LEASE_MARGIN_S
        )
        lock = self._locks.setdefault(key, asyncio.Lock())
        if not wait and lock.locked():
            raise _Busy  # a sibling task is refreshing already
        async with lock:
            started = self._clock()
            # A live holder answers within its timeout; a waiter then gives up (transient, the
            # workflow retries) rather than outwait a dead holder's lease inside one activity.
            waited = self._wait_s if self._wait_s is not None else client.timeout_s + 10.0
            deadline = started + waited
            while True:
                current = await self._store.get(connector, connection)
                if current is not None and current.revoked is not None:
                    raise self._revoked(connector, connection, current.revoked)
                version = current.version if current is not None else None
                if current is not None and (seen is None or version != seen):
                    return current  # a sibling refreshed (or a human stored new tokens)
                if current is None and client.grant != "client_credentials":
                    raise CredentialError(f"no credential stored for {where}", connector=connector)
                self._check_backoff(await self._status(key, version), connector, where)
                if await self._fleet.lease_take(lease, self.holder, ttl_s=ttl, now=self._clock()):
                    async with self._holding(lease, ttl):
                        again = await self._store.get(connector, connection)
                        if (again.version if again else None) != version:
                            continue  # the holder before us finished in between
                        self._check_backoff(await self._status(key, version), connector, where)
                        # Store round trips may have outlived the lease: send only if still ours.
                        if not await self._fleet.lease_take(
                            lease, self.holder, ttl_s=ttl, now=self._clock()
                        ):
                            continue
                        return await self._call(client, connector, connection, current, reason)
                if not wait:
                    raise _Busy
                if self._clock() >= deadline:
                    raise TokenEndpointUnavailable(
                        f"token endpoint unavailable for {where}: another worker's refresh did "
                        f"not finish within {deadline - started:.0f} s",
                        connector=connector,
                    )
                await self._sleep(self._poll_s)

    @contextlib.asynccontextmanager
    async def _holding(self, lease: str, ttl: float) -> AsyncIterator[None]:
        """Keep the lease alive while its holder works (renewed every ``ttl / 3``), then drop
        it. Real time, not the injected sleep: the lease must outlive slow store calls."""

        async def renew() -> None:
            while True:
                await asyncio.sleep(ttl / 3)
                try:
                    if not await self._fleet.lease_take(
                        lease, self.holder, ttl_s=ttl, now=self._clock()
                    ):
                        log.warning("refresh lease %s was taken over while held", lease)
                        return
                except Exception as exc:  # a store blip: the next renewal tries again
                    log.debug("renewing refresh lease %s failed: %s", lease, exc)

        task = asyncio.create_task(renew())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self._fleet.lease_drop(lease, self.holder)

    async def _status(self, key: str, version: int | None) -> dict[str, Any] | None:
        entry = await self._fleet.state_get(REFRESH_STATUS_SPACE, key)
        if entry is None or entry.value.get("version") != version:
            return None
        return entry.value

    def _check_backoff(self, status: dict[str, Any] | None, connector: str, where: str) -> None:
        if status is None:
            return
        left = float(status.get("until", 0.0)) - self._clock()
        if left > 0 and status.get("refused"):
            raise GrantRevoked(
                f"{status.get('error')} (the fleet asks the token endpoint again in {left:.0f} s)",
                connector=connector,
            )
        if left > 0:
            raise TokenEndpointUnavailable(
                f"token endpoint unavailable for {where}: {status.get('error')}; the fleet "
                f"tries again in {left:.1f} s",
                connector=connector,
            )

    async def _call(
        self,
        client: OAuthClient,
        connector: str,
        connection: str,
        current: Credential | None,
        reason: str,
    ) -> Credential:
        """The token call of the lease holder."""
        where = credential_name(connector, connection)
        secrets = _secrets(client, current)
        if client.grant == "refresh_token" and (current is None or current.refresh_token is None):
            raise GrantRevoked(
                f"{where} has no refresh token: a human must reauthorize it with "
                f"{authorize_hint(connector, connection)}",
                connector=connector,
            )
        session = self._session(connector, client)
        self.token_calls += 1
        try:
            async with asyncio.timeout(client.timeout_s):  # a hard bound: the lease outlives it
                if client.grant == "refresh_token":
                    assert current is not None and current.refresh_token is not None
                    body = await session.refresh_token(
                        client.token_url, refresh_token=current.refresh_token.get_secret_value()
                    )
                else:
                    body = await session.fetch_token(
                        client.token_url, grant_type="client_credentials"
                    )
            body = dict(body)
            if not isinstance(body.get("access_token"), str) or not body["access_token"]:
                raise TransientTokenError("token endpoint answered without an access_token")
        except OAuthError as exc:
            error = str(exc.error or "")
            said = _scrub(f"{error}: {exc.description or 'no description'}", secrets)[:200]
            if error in _TRANSIENT_OAUTH_ERRORS:
                return await self._failed(connector, connection, current, said, secrets)
            if error == "invalid_grant" and current is not None:
                verdict = f"the token endpoint rejected the refresh grant ({said})"
                marked = current.model_copy(update={"revoked": verdict})
                if not await self._store.put(marked, expected_version=current.version):
                    # Someone wrote meanwhile (a human re-authorized): theirs decides.
                    return await self._after_lost_write(connector, connection, current)
                log.warning("refresh grant of %s is dead: %s", where, said)
                raise self._revoked(connector, connection, verdict) from None
            message = (
                f"the token endpoint refused the OAuth client of {where} ({said}): check the "
                f"client settings of {connector!r}, then reauthorize with "
                f"{authorize_hint(connector, connection)}"
            )
            # Shared per token version: the fleet asks again once per back-off, not per call.
            until = self._clock() + self._refused_backoff_s
            status = {
                "version": current.version if current else None,
                "error": message,
                "until": until,
                "refused": True,
            }
            await self._fleet.state_put(
                REFRESH_STATUS_SPACE,
                row_key(connector, connection),
                status,
                expected_version=ANY_VERSION,
                now=self._clock(),
            )
            log.warning("token endpoint refused the OAuth client of %s: %s", where, said)
            raise GrantRevoked(message, connector=connector) from None
        except (TransientTokenError, httpx.HTTPError, TimeoutError, ValueError, TypeError) as exc:
            what = _describe(exc, client.timeout_s)
            return await self._failed(connector, connection, current, what, secrets)
        new = _credential(connector, connection, body, current, now=self._clock())
        expected = current.version if current is not None else None
        if not await self._store.put(new, expected_version=expected):
            log.warning("credential of %s changed during its refresh; using the stored one", where)
            return await self._after_lost_write(connector, connection, current)
        stored = await self._store.get(connector, connection)
        if stored is None:
            raise CredentialError(f"credential of {where} was deleted during refresh")
        log.info("refreshed %s to version %d (%s)", where, stored.version, redact(reason))
        return stored

    async def _after_lost_write(
        self, connector: str, connection: str, current: Credential | None
    ) -> Credential:
        """The holder's write lost the version race: the stored row decides (a human's new
        tokens serve; a dead-grant verdict raises)."""
        stored = await self._store.get(connector, connection)
        if stored is None:
            raise CredentialError(
                f"credential of {credential_name(connector, connection)} was deleted during "
                "refresh",
                connector=connector,
            )
        if stored.revoked is not None:
            raise self._revoked(connector, connection, stored.revoked)
        return stored

    async def _failed(
        self,
        connector: str,
        connection: str,
        current: Credential | None,
        what: str,
        secrets: list[str],
    ) -> Credential:
        what = _scrub(what, secrets)
        key = row_key(connector, connection)
        until = self._clock() + self._backoff_s
        status = {"version": current.version if current else None, "error": what, "until": until}
        await self._fleet.state_put(
            REFRESH_STATUS_SPACE, key, status, expected_version=ANY_VERSION, now=self._clock()
        )
        where = credential_name(connector, connection)
        log.warning("token refresh of %s failed: %s", where, what)
        raise TokenEndpointUnavailable(
            f"token endpoint unavailable for {where}: {what}; the fleet tries again in "
            f"{self._backoff_s:.0f} s",
            connector=connector,
        )

    def _revoked(self, connector: str, connection: str, verdict: str) -> GrantRevoked:
        return GrantRevoked(
            f"the OAuth grant of {credential_name(connector, connection)} is dead: {verdict}. "
            f"A human must reauthorize it: run {authorize_hint(connector, connection)}, then send "
            "`reauthorized` to the waiting workflows",
            connector=connector,
        )

    def _session(self, connector: str, client: OAuthClient) -> AsyncOAuth2Client:
        session = self._sessions.get(connector)
        if session is None:
            session = oauth_session(client, transport=self._transport)
            self._sessions[connector] = session
        return session


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return f"no answer within {timeout_s:.0f} s"
    if isinstance(exc, httpx.HTTPStatusError):
        return f"token endpoint answered {exc.response.status_code} {exc.response.reason_phrase}"
    if isinstance(exc, httpx.HTTPError):
        return f"token endpoint unreachable ({type(exc).__name__}: {exc})"
    if isinstance(exc, ValueError | TypeError):
        return "token endpoint answered with a body that is not a JSON object"
    return str(exc)


def _credential(
    connector: str,
    connection: str,
    body: dict[str, Any],
    current: Credential | None,
    *,
    now: float,
) -> Credential:
    expires_at = None
    seconds = _expires_in(connector, body.get("expires_in"))
    if seconds is not None:
        expires_at = now + seconds
    refresh_token = body.get("refresh_token")
    if not isinstance(refresh_token, str) or not refresh_token:
        # no rotation: keep the refresh token we have
        refresh_token = (
            current.refresh_token.get_secret_value() if current and current.refresh_token else None
        )
    return Credential(
        connector=connector,
        connection=connection,
        access_token=body["access_token"],
        refresh_token=refresh_token,
        expires_at=expires_at,
        token_type=str(body.get("token_type") or "Bearer"),
        issued_at=now,
    )


def credential_from_token(
    connector: str, connection: str, body: Mapping[str, Any], *, now: float
) -> Credential:
    """A credential from a token endpoint answer (e.g. the authorization-code exchange)."""
    return _credential(connector, connection, dict(body), None, now=now)


_MAX_LIFETIME_S = 366 * 24 * 3600.0


def _expires_in(connector: str, value: Any) -> float | None:
    """The token's lifetime in seconds; absurd values are dropped with a warning (the token
    is then used until a 401), so a negative one is not stored as already expired."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        log.warning("token endpoint of %s sent a non-numeric expires_in; ignoring it", connector)
        return None
    if not 0 < seconds <= _MAX_LIFETIME_S:  # also NaN
        log.warning("token endpoint of %s sent expires_in=%s; ignoring it", connector, value)
        return None
    return seconds


def _secrets(client: OAuthClient, current: Credential | None) -> list[str]:
    values = [v for v in (client.client_secret, client.private_key) if v is not None]
    if current is not None:
        values += [current.access_token] + (
            [current.refresh_token] if current.refresh_token else []
        )
    return [v.get_secret_value() for v in values if v.get_secret_value()]


def _scrub(text: str, secrets: list[str]) -> str:
    """``healing.redact.redact`` plus the exact secret values we know (short ones included)."""
    return redact(str(scrub(text, secrets, min_length=1)))
