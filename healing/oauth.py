"""TokenRefresher: single-flight OAuth 2 token refresh over a compare-and-swap credential store.

One refresh serves every caller. In a process, concurrent callers queue on one lock per
connector and, once inside, re-read the store: if the version moved past what they saw, a
sibling already refreshed and they take its token without calling the token endpoint. Across
workers, the store's compare-and-swap on ``Credential.version`` decides the winner; the loser
re-reads and uses the winner's token. With refresh-token rotation (Intuit, Xero, Slack) the
loser's endpoint call answers ``invalid_grant``, so that answer only means a dead grant after
the store shows no rotation by a sibling (re-read, with a short grace for a write in flight).

httpx, not authlib: AsyncOAuth2Client locks per client instance, never refreshes on a 401, and
has no hook for the cross-worker compare-and-swap that single-flight across workers needs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx

from healing.credentials import BearerAuth, Credential, CredentialStore, OAuthClient
from healing.errors import CredentialError, GrantRevoked, TokenEndpointUnavailable
from healing.redact import redact, scrub

__all__ = ["TokenRefresher"]

log = logging.getLogger(__name__)


class TokenRefresher:
    """Hands out access tokens and refreshes them once, however many callers ask.

    Args:
        store: Where credentials live (shared by every worker).
        clients: OAuth client settings by connector; connectors without one use their stored
            token as is (API keys, static tokens).
        http: Client for token endpoint calls; one is created (and closed by ``aclose``) if None.
        clock: Epoch seconds; injected by tests.
        leeway_s: ``access_token`` refreshes a token expiring within this many seconds, or
            within ``leeway_fraction`` of its lifetime when that is shorter.
        leeway_fraction: Share of a token's lifetime kept as leeway (short-lived tokens).
        cooldown_s: After a failed endpoint call (5xx, network, bad answer), ``refresh`` fails
            fast for this long instead of calling out again.
        grace_s: After ``invalid_grant``, how long to keep re-reading the store for a sibling's
            rotation still being written, before declaring the grant revoked.
        sleep: Awaited between those re-reads; injected by tests.
    """

    def __init__(
        self,
        store: CredentialStore,
        clients: Mapping[str, OAuthClient],
        *,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        leeway_s: float = 60.0,
        leeway_fraction: float = 0.1,
        cooldown_s: float = 30.0,
        grace_s: float = 2.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._clients = dict(clients)
        self._http = http
        self._owns_http = http is None
        self._clock = clock
        self._leeway_s = leeway_s
        self._leeway_fraction = leeway_fraction
        self._cooldown_s = cooldown_s
        self._grace_s = grace_s
        self._sleep = sleep
        self._locks: dict[str, asyncio.Lock] = {}
        self._cooldown_until: dict[str, float] = {}

    async def __aenter__(self) -> TokenRefresher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this refresher created it."""
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    def auth(self, connector: str) -> BearerAuth:
        """An ``httpx.Auth`` that sends this connector's current access token."""
        return BearerAuth(lambda: self.access_token(connector))

    async def access_token(self, connector: str) -> str:
        """The connector's access token, refreshed first when it expires within the leeway."""
        return (await self.credential(connector)).access_token.get_secret_value()

    async def credential(self, connector: str) -> Credential:
        """The connector's credential (token and version), refreshed first when it expires
        within the leeway; the version lets a later refresh tell a sibling's rotation apart.

        Raises:
            CredentialError: Nothing is stored for the connector (client-credentials
                connectors instead get a first token), or the refresh of an expired token failed.
            GrantRevoked: The refresh grant is dead; a human must reauthorize.
        """
        cred = await self._store.get(connector)
        client = self._clients.get(connector)
        if cred is None:
            if client is None or client.grant != "client_credentials":
                raise CredentialError(
                    f"no credential stored for connector {connector!r}; "
                    f"store one with `healing credentials set {connector}`",
                    connector=connector,
                )
            cred = await self.refresh(connector, reason="no token yet")
        elif client is not None and cred.expires_within(
            cred.leeway(self._leeway_s, self._leeway_fraction), now=self._clock()
        ):
            try:
                cred = await self.refresh(
                    connector, seen_version=cred.version, reason="token expires within leeway"
                )
            except CredentialError as exc:
                if isinstance(exc, GrantRevoked) or cred.expires_within(0, now=self._clock()):
                    raise
                log.warning("proactive refresh for %s failed, using the current token", connector)
        return cred

    async def refresh(
        self, connector: str, *, seen_version: int | None = None, reason: str = ""
    ) -> Credential:
        """Refresh the connector's tokens once, or return a sibling's fresher credential.

        Args:
            connector: The connector whose token is stale.
            seen_version: Version of the credential the caller found stale. None: the version
                stored when this call starts, so concurrent calls still collapse into one.
            reason: Why, for the log (e.g. "401 from get_contact").

        Raises:
            GrantRevoked: ``invalid_grant`` and no sibling rotated the token (or there is no
                refresh token to use): a human must reauthorize.
            CredentialError: Anything else (no client config, cooling down, 5xx, network);
                transient.
        """
        client = self._clients.get(connector)
        if client is None:
            raise CredentialError(
                f"connector {connector!r} has no OAuth client configured, so its token "
                "cannot be refreshed",
                connector=connector,
            )
        if seen_version is None:
            before = await self._store.get(connector)
            seen_version = before.version if before is not None else None
        async with self._locks.setdefault(connector, asyncio.Lock()):
            current = await self._store.get(connector)
            if current is not None and (seen_version is None or current.version > seen_version):
                log.debug("credential for %s already refreshed by a sibling", connector)
                return current
            until = self._cooldown_until.get(connector, 0.0)
            if self._clock() < until:
                raise TokenEndpointUnavailable(
                    f"the token endpoint of {connector!r} failed moments ago; the next refresh "
                    f"attempt is allowed in {until - self._clock():.0f} s",
                    connector=connector,
                )
            return await self._refresh_locked(connector, client, current, reason)

    async def _refresh_locked(
        self, connector: str, client: OAuthClient, current: Credential | None, reason: str
    ) -> Credential:
        if client.grant == "refresh_token" and (current is None or current.refresh_token is None):
            if current is None:
                raise CredentialError(
                    f"no credential stored for {connector!r}", connector=connector
                )
            raise GrantRevoked(
                f"connector {connector!r} has no refresh token: a human must reauthorize it",
                connector=connector,
            )
        secrets = _secrets(client, current)
        form, auth = _request_parts(client, current)
        if self._http is None:
            self._http = httpx.AsyncClient()
        try:
            response = await self._http.post(
                client.token_url,
                data=form,
                auth=auth or httpx.USE_CLIENT_DEFAULT,
                timeout=client.timeout_s,
            )
        except httpx.HTTPError as exc:
            raise self._transient(
                connector, f"token endpoint unreachable ({type(exc).__name__}: {exc})", secrets
            ) from None
        body = _json(response)
        if response.status_code in (400, 401) and body.get("error") == "invalid_grant":
            return await self._after_invalid_grant(connector, current)
        if response.status_code != 200 or not isinstance(body.get("access_token"), str):
            if response.status_code == 200:  # name what is wrong with a 200
                detail = "a body that is not JSON" if not body else "no access_token in the answer"
            else:
                detail = str(body.get("error") or response.reason_phrase or "no detail")[:100]
            raise self._transient(
                connector, f"token endpoint answered {response.status_code} ({detail})", secrets
            )
        new = _credential(connector, body, current, now=self._clock())
        expected = current.version if current is not None else None
        if await self._store.put(new, expected_version=expected):
            self._cooldown_until.pop(connector, None)
            version = 0 if expected is None else expected + 1
            log.info("refreshed %s to version %d (%s)", connector, version, redact(reason))
            return new.model_copy(update={"version": version})
        winner = await self._store.get(connector)
        if winner is None:
            raise CredentialError(
                f"credential for {connector!r} was deleted during refresh", connector=connector
            )
        log.info("another worker refreshed %s first; using its token", connector)
        return winner

    async def _after_invalid_grant(self, connector: str, current: Credential | None) -> Credential:
        seen = current.version if current is not None else None
        steps = 4
        for step in range(steps + 1):
            if step:
                await self._sleep(self._grace_s / steps)
            latest = await self._store.get(connector)
            if latest is not None and latest.version != seen:
                log.info("invalid_grant for %s, but a sibling rotated the token", connector)
                return latest
            if self._grace_s <= 0:
                break
        log.warning("refresh grant for %s is revoked (invalid_grant)", connector)
        raise GrantRevoked(
            f"the token endpoint rejected the refresh grant of connector {connector!r} "
            f"(invalid_grant: expired or revoked): a human must reauthorize {connector!r}",
            connector=connector,
        )

    def _transient(self, connector: str, what: str, secrets: list[str]) -> CredentialError:
        self._cooldown_until[connector] = self._clock() + self._cooldown_s
        log.warning("token refresh for %s failed: %s", connector, _scrub(what, secrets))
        return TokenEndpointUnavailable(
            f"token endpoint unavailable for {connector!r}: {_scrub(what, secrets)}; the next "
            f"refresh attempt is allowed in {self._cooldown_s:.0f} s",
            connector=connector,
        )


def _request_parts(
    client: OAuthClient, current: Credential | None
) -> tuple[dict[str, str], httpx.BasicAuth | None]:
    form: dict[str, str] = {"grant_type": client.grant}
    if client.grant == "refresh_token" and current is not None and current.refresh_token:
        form["refresh_token"] = current.refresh_token.get_secret_value()
    if client.scope:
        form["scope"] = client.scope
    secret = client.client_secret.get_secret_value() if client.client_secret else None
    if client.auth_method == "client_secret_basic":
        return form, httpx.BasicAuth(client.client_id, secret or "")
    form["client_id"] = client.client_id
    if secret is not None:
        form["client_secret"] = secret
    return form, None


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _credential(
    connector: str, body: dict[str, Any], current: Credential | None, *, now: float
) -> Credential:
    expires_at = None
    seconds = _expires_in(connector, body.get("expires_in"))
    if seconds is not None:
        expires_at = now + seconds
    refresh_token = body.get("refresh_token")
    if not isinstance(refresh_token, str):  # no rotation: keep the refresh token we have
        refresh_token = (
            current.refresh_token.get_secret_value() if current and current.refresh_token else None
        )
    return Credential(
        connector=connector,
        access_token=body["access_token"],
        refresh_token=refresh_token,
        expires_at=expires_at,
        token_type=str(body.get("token_type") or "Bearer"),
        issued_at=now,
    )


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
    values = [client.client_secret] if client.client_secret else []
    if current is not None:
        values += [current.access_token] + (
            [current.refresh_token] if current.refresh_token else []
        )
    return [v.get_secret_value() for v in values if v.get_secret_value()]


def _scrub(text: str, secrets: list[str]) -> str:
    """``healing.redact.redact`` plus the exact secret values we know (short ones included)."""
    return redact(str(scrub(text, secrets, min_length=1)))
