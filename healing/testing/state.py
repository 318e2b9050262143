"""The chaos server's memory: counters, attempt numbers, idempotency keys and OAuth tokens.

Everything here is bounded: call counters grow with distinct method+path pairs only; attempt
numbers, idempotency keys, per-key counters and created-body fingerprints are LRU maps capped
at `capacity`; at most `MAX_ACCESS_TOKENS` access tokens are remembered.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict

from healing.testing._http import Response, json_response
from healing.testing.plan import Fault, FaultPlan, StatusFault, Vendor
from healing.testing.vendors import (
    idempotency_in_use,
    idempotency_mismatch,
    oauth_error,
    status_response,
)

V = TypeVar("V")
MAX_ACCESS_TOKENS = 32
MAX_REFRESH_TOKENS = 4096
MAX_MINTED = 20_000


class ChaosStats(BaseModel):
    """What the server saw since start or the last reset (control endpoints excluded).

    `calls` is keyed "METHOD /path"; `idempotency_keys` counts requests per key;
    `creations` counts resources POST /contacts created (replays excluded) and
    `duplicate_creations` those whose body had already created one; `faults_by_kind` is keyed
    by fault kind (an outage counts as "status") and `faults_by_status` by status code;
    `connections` counts accepted TCP connections; `token_refreshes` counts successful token
    endpoint grants, `tokens_issued` every access token minted (the initial grant included).
    """

    model_config = ConfigDict(frozen=True)

    total_calls: int = 0
    connections: int = 0
    calls: dict[str, int] = {}
    idempotency_keys: dict[str, int] = {}
    creations: int = 0
    duplicate_creations: int = 0
    idempotent_replays: int = 0
    faults_total: int = 0
    faults_by_kind: dict[str, int] = {}
    faults_by_status: dict[str, int] = {}
    token_refreshes: int = 0
    tokens_issued: int = 0
    invalid_grants: int = 0
    auth_rejections: int = 0
    token_calls: int = 0
    """POST /oauth/token requests the grant logic answered (plan faults are in `calls`)."""
    refresh_token_reuses: int = 0
    """Refresh tokens presented again after they were rotated away."""
    reuses_in_grace: int = 0
    """Of those, the ones within `reuse_interval_s` (accepted)."""
    reuse_revocations: int = 0
    """Grants revoked by reuse detection."""
    authorizations: int = 0
    """Authorization codes exchanged (PKCE flow)."""
    calls_by_grant: dict[str, int] = {}
    """CRM calls accepted, by the grant (account) whose access token they carried."""
    body_bytes_sent: int = 0
    """Body bytes of `BodyFault` answers the client took before it hung up."""

    def calls_to(self, method: str, path: str) -> int:
        return self.calls.get(f"{method.upper()} {path}", 0)


class TokenSet(BaseModel):
    model_config = ConfigDict(frozen=True)

    access_token: str
    refresh_token: str | None
    expires_in: int
    token_type: str = "Bearer"


class _LRU(Generic[V]):
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: OrderedDict[str, V] = OrderedDict()

    def get(self, key: str) -> V | None:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: str, value: V) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.capacity:
            self.items.popitem(last=False)

    def pop(self, key: str) -> None:
        self.items.pop(key, None)


@dataclass
class _Saved:
    fingerprint: str
    response: Response | None = None  # None while the first request is in flight


@dataclass
class Grant:
    """One account's authorization at the vendor: its current refresh token, and the ones
    rotated away (refresh token -> when it was rotated, on the server's clock)."""

    name: str
    refresh_token: str
    rotated: OrderedDict[str, float]
    revoked: bool = False
    revoked_by_reuse: bool = False


@dataclass
class _Code:
    grant: str
    challenge: str
    method: str
    redirect_uri: str
    client_id: str


class Tokens:
    """OAuth grants by account (a connection): rotating refresh tokens, expiring access
    tokens, revocation, refresh-token reuse detection, and the authorization-code flow with
    PKCE (RFC 7636).

    `reuse_detection` (OAuth 2.0 Security BCP s4.14, Auth0, Okta): presenting a refresh token
    that was already rotated away revokes the whole grant. `reuse_interval_s`: for that long
    after a rotation the previous refresh token still works (Auth0's reuse interval, Okta's
    grace period), so a client whose answer was lost can retry.
    """

    def __init__(self, clock: Callable[[], float], ttl_s: float) -> None:
        self._clock = clock
        self.ttl_s = ttl_s
        self.grants: dict[str, Grant] = {}
        self._by_refresh: OrderedDict[str, str] = OrderedDict()  # refresh token -> grant
        self._access: OrderedDict[str, tuple[float, str]] = OrderedDict()  # -> (expires, grant)
        self._codes: OrderedDict[str, _Code] = OrderedDict()
        self.reuse_detection = False
        self.reuse_interval_s = 0.0
        self.minted: deque[str] = deque(maxlen=MAX_MINTED)
        """Every token value issued lately (access and refresh), for secret scans."""
        self.pkce_secrets: deque[str] = deque(maxlen=MAX_MINTED)
        """Authorization codes and PKCE verifiers presented at the token endpoint."""
        self.accepted_at: deque[float] = deque(maxlen=MAX_MINTED)
        """When API calls with a valid access token were accepted (benchmarks count expiries)."""
        self.clear_counts()

    def clear_counts(self) -> None:
        self.issued = self.refreshes = self.invalid_grants = self.rejections = 0
        self.token_calls = self.reuses = self.reuses_in_grace = self.reuse_revocations = 0
        self.authorizations = 0
        self.calls_by_grant: Counter[str] = Counter()

    @property
    def revoked(self) -> bool:
        grant = self.grants.get("default")
        return grant is not None and grant.revoked

    @property
    def latest_access(self) -> str | None:
        return self.latest_access_of("default")

    def latest_access_of(self, grant: str) -> str | None:
        for token, (_, owner) in reversed(self._access.items()):
            if owner == grant:
                return token
        return None

    @property
    def refresh_token(self) -> str | None:
        grant = self.grants.get("default")
        return grant.refresh_token if grant is not None else None

    def _new_access(self, grant: str) -> str:
        token = secrets.token_urlsafe(24)
        self.minted.append(token)
        self._access[token] = (self._clock() + self.ttl_s, grant)
        while len(self._access) > MAX_ACCESS_TOKENS:
            self._access.popitem(last=False)
        self.issued += 1
        return token

    def _new_refresh(self, grant: str) -> str:
        token = secrets.token_urlsafe(32)
        self.minted.append(token)
        self._by_refresh[token] = grant
        while len(self._by_refresh) > MAX_REFRESH_TOKENS:
            self._by_refresh.popitem(last=False)
        return token

    def _token_set(self, grant: Grant) -> TokenSet:
        return TokenSet(
            access_token=self._new_access(grant.name),
            refresh_token=grant.refresh_token,
            expires_in=int(self.ttl_s),
        )

    def issue_grant(self, name: str = "default") -> TokenSet:
        """A fresh grant for account `name` (as after a human authorizes): the grant's old
        refresh tokens die."""
        old = self.grants.get(name)
        if old is not None:
            self._revoke_access(name)
        grant = Grant(name, self._new_refresh(name), OrderedDict())
        self.grants[name] = grant
        return self._token_set(grant)

    def _revoke_access(self, name: str) -> None:
        now = self._clock()
        for token, (expires, owner) in self._access.items():
            if owner == name:
                self._access[token] = (min(expires, now), owner)

    def expire_all(self) -> None:
        now = self._clock()
        for token, (expires, owner) in self._access.items():
            self._access[token] = (min(expires, now), owner)

    def revoke(self, name: str | None = None) -> None:
        """Revoke grant `name` (every grant when None): refreshes get invalid_grant and its
        access tokens stop working."""
        for grant in self.grants.values():
            if name is None or grant.name == name:
                grant.revoked = True
                self._revoke_access(grant.name)

    def check(self, authorization: str | None, vendor: Vendor) -> Response | None:
        """None if the Bearer token is valid, else the vendor's rejection."""
        scheme, _, token = (authorization or "").partition(" ")
        held = self._access.get(token) if scheme.lower() == "bearer" else None
        if held is not None and self._clock() < held[0]:
            grant = self.grants.get(held[1])
            if grant is not None and not grant.revoked:
                self.calls_by_grant[held[1]] += 1
                self.accepted_at.append(self._clock())
                return None
        self.rejections += 1
        if vendor == "slack":
            error = "invalid_auth" if held is None else "token_expired"
            return status_response(StatusFault(status=200, vendor="slack", slack_error=error))
        return status_response(StatusFault(status=401, vendor=vendor))

    def authorize(self, query: dict[str, str]) -> Response:
        """GET /oauth/authorize: the vendor's consent page, approved at once; redirects to
        `redirect_uri` with a code. `login_hint` picks the account (grant), "default" else."""
        missing = [
            name
            for name in ("response_type", "client_id", "redirect_uri", "code_challenge")
            if not query.get(name)
        ]
        if missing:
            return oauth_error("invalid_request", f"missing {', '.join(missing)}")
        if query["response_type"] != "code":
            return oauth_error("unsupported_response_type", "only response_type=code")
        method = query.get("code_challenge_method", "plain")
        if method != "S256":
            return oauth_error("invalid_request", "code_challenge_method must be S256")
        code = secrets.token_urlsafe(16)
        self._codes[code] = _Code(
            query.get("login_hint") or "default",
            query["code_challenge"],
            method,
            query["redirect_uri"],
            query["client_id"],
        )
        while len(self._codes) > MAX_ACCESS_TOKENS:
            self._codes.popitem(last=False)
        params = {"code": code, **({"state": query["state"]} if "state" in query else {})}
        sep = "&" if "?" in query["redirect_uri"] else "?"
        location = f"{query['redirect_uri']}{sep}{urlencode(params)}"
        return Response(302, b"", (("Location", location),))

    def token_endpoint(self, form: dict[str, str]) -> Response:
        self.token_calls += 1
        grant_type = form.get("grant_type")
        if grant_type == "refresh_token":
            presented = form.get("refresh_token")
            if not presented:
                return oauth_error("invalid_request", "Missing required parameter: refresh_token")
            return self._refresh(presented)
        if grant_type == "authorization_code":
            return self._exchange(form)
        if grant_type == "client_credentials":
            grant = self.grants.get("default")
            if grant is not None and grant.revoked:
                return oauth_error("invalid_client", "The OAuth client was disabled.", status=401)
            self.refreshes += 1
            tokens = TokenSet(
                access_token=self._new_access("default"),
                refresh_token=None,
                expires_in=int(self.ttl_s),
            )
            return _tokens(tokens)
        return oauth_error("unsupported_grant_type", f"Invalid grant_type: {grant_type}")

    def _refresh(self, presented: str) -> Response:
        owner = self._by_refresh.get(presented)
        grant = self.grants.get(owner) if owner is not None else None
        if grant is None:
            self.invalid_grants += 1
            return oauth_error("invalid_grant", "expired access/refresh token")
        if grant.revoked:
            self.invalid_grants += 1
            return oauth_error("invalid_grant", "Token has been expired or revoked.")
        if not secrets.compare_digest(presented, grant.refresh_token):
            rotated_at = grant.rotated.get(presented)
            if rotated_at is None:  # an older grant of this account
                self.invalid_grants += 1
                return oauth_error("invalid_grant", "expired access/refresh token")
            self.reuses += 1
            if self._clock() - rotated_at < self.reuse_interval_s:
                self.reuses_in_grace += 1
            elif self.reuse_detection:
                self.reuse_revocations += 1
                self.invalid_grants += 1
                self.revoke(grant.name)
                grant.revoked_by_reuse = True
                return oauth_error("invalid_grant", "Unknown or invalid refresh token (reuse).")
            else:
                self.invalid_grants += 1
                return oauth_error("invalid_grant", "expired access/refresh token")
        grant.rotated[grant.refresh_token] = self._clock()  # rotation: the old one dies
        while len(grant.rotated) > MAX_REFRESH_TOKENS:
            grant.rotated.popitem(last=False)
        grant.refresh_token = self._new_refresh(grant.name)
        self.refreshes += 1
        return _tokens(self._token_set(grant))

    def _exchange(self, form: dict[str, str]) -> Response:
        self.pkce_secrets.extend(v for v in (form.get("code"), form.get("code_verifier")) if v)
        code = self._codes.pop(form.get("code") or "", None)
        if code is None:
            return oauth_error("invalid_grant", "unknown or used authorization code")
        verifier = form.get("code_verifier") or ""
        digest = hashlib.sha256(verifier.encode()).digest()
        expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if not verifier or not secrets.compare_digest(expected, code.challenge):
            return oauth_error("invalid_grant", "PKCE verification failed")
        if form.get("redirect_uri") != code.redirect_uri:
            return oauth_error("invalid_grant", "redirect_uri does not match")
        self.authorizations += 1
        return _tokens(self.issue_grant(code.grant))


def _tokens(tokens: TokenSet) -> Response:
    body = tokens.model_dump(exclude_none=True)
    return json_response(200, body, (("Cache-Control", "no-store"),))


class ChaosState:
    """Counters and decisions for one server; mutated only on the server's event loop."""

    def __init__(
        self, plan: FaultPlan, *, clock: Callable[[], float], token_ttl_s: float, capacity: int
    ) -> None:
        self.plan = plan
        self._clock = clock
        self._capacity = capacity
        self._ttl_s = token_ttl_s
        self.epoch = clock()
        self.tokens = Tokens(clock, token_ttl_s)
        self._clear()
        self.tokens.issue_grant()

    def _clear(self) -> None:
        self.total_calls = self.connections = 0
        self.calls: Counter[str] = Counter()
        self.by_key: _LRU[int] = _LRU(self._capacity)
        self.attempts: _LRU[int] = _LRU(self._capacity)
        self.saved: _LRU[_Saved] = _LRU(self._capacity)
        self.created_bodies: _LRU[bool] = _LRU(self._capacity)
        self.faults_by_kind: Counter[str] = Counter()
        self.faults_by_status: Counter[str] = Counter()
        self.creations = self.duplicate_creations = self.replays = 0
        self.body_bytes_sent = 0
        self.next_id = 1000
        self.tokens.clear_counts()

    def restart_epoch(self) -> None:
        self.epoch = self._clock()

    def set_plan(self, plan: FaultPlan) -> None:
        self.plan = plan
        self.attempts = _LRU(self._capacity)
        self.restart_epoch()

    def reset(self) -> None:
        self._clear()
        self.restart_epoch()

    def begin_call(self, method: str, path: str, key: str | None) -> Fault | None:
        """Count one upstream call and decide its fault."""
        route = f"{method} {path}"
        self.total_calls += 1
        self.calls[route] += 1
        if key is not None:
            self.by_key.put(key, (self.by_key.get(key) or 0) + 1)
        attempt_key = route if key is None else f"{route} key={key}"
        attempt = (self.attempts.get(attempt_key) or 0) + 1
        self.attempts.put(attempt_key, attempt)
        elapsed = self._clock() - self.epoch
        fault = self.plan.fault_for(method, path, attempt, idempotency_key=key, elapsed_s=elapsed)
        if fault is not None:
            self.faults_by_kind[fault.kind] += 1
            if fault.kind == "status":
                self.faults_by_status[str(fault.status)] += 1
        return fault

    async def create_contact(self, body: bytes, key: str | None, delay_s: float) -> Response:
        """POST /contacts with Stripe's idempotency semantics."""
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return status_response(StatusFault(status=400))
        fingerprint = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        echo: tuple[tuple[str, str], ...] = () if key is None else (("Idempotency-Key", key),)
        pending: _Saved | None = None
        if key is not None:
            saved = self.saved.get(key)
            if saved is not None:
                if saved.response is None:
                    return idempotency_in_use()
                if saved.fingerprint != fingerprint:
                    return idempotency_mismatch()
                self.replays += 1
                old = saved.response
                return Response(
                    old.status, old.body, (*old.headers, ("Idempotent-Replayed", "true"))
                )
            pending = _Saved(fingerprint)
            self.saved.put(key, pending)
        try:
            await asyncio.sleep(delay_s)
        except asyncio.CancelledError:
            if key is not None:
                self.saved.pop(key)
            raise
        self.next_id += 1
        self.creations += 1
        if self.created_bodies.get(fingerprint):
            self.duplicate_creations += 1
        self.created_bodies.put(fingerprint, True)
        response = json_response(201, {**payload, "id": str(self.next_id)}, echo)
        if pending is not None:
            pending.response = response
        return response

    def snapshot(self) -> ChaosStats:
        return ChaosStats(
            total_calls=self.total_calls,
            connections=self.connections,
            calls=dict(self.calls),
            idempotency_keys=dict(self.by_key.items),
            creations=self.creations,
            duplicate_creations=self.duplicate_creations,
            idempotent_replays=self.replays,
            faults_total=sum(self.faults_by_kind.values()),
            faults_by_kind=dict(self.faults_by_kind),
            faults_by_status=dict(self.faults_by_status),
            token_refreshes=self.tokens.refreshes,
            tokens_issued=self.tokens.issued,
            invalid_grants=self.tokens.invalid_grants,
            auth_rejections=self.tokens.rejections,
            token_calls=self.tokens.token_calls,
            refresh_token_reuses=self.tokens.reuses,
            reuses_in_grace=self.tokens.reuses_in_grace,
            reuse_revocations=self.tokens.reuse_revocations,
            authorizations=self.tokens.authorizations,
            calls_by_grant=dict(self.tokens.calls_by_grant),
            body_bytes_sent=self.body_bytes_sent,
        )
