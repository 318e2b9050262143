"""The chaos server's memory: counters, attempt numbers, idempotency keys and OAuth tokens.

Everything here is bounded: call counters grow with distinct method+path pairs only; attempt
numbers, idempotency keys, per-key counters and created-body fingerprints are LRU maps capped
at `capacity`; at most `MAX_ACCESS_TOKENS` access tokens are remembered.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

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


class Tokens:
    """One OAuth grant: rotating refresh token, expiring access tokens, revocation."""

    def __init__(self, clock: Callable[[], float], ttl_s: float) -> None:
        self._clock = clock
        self.ttl_s = ttl_s
        self.refresh_token: str | None = None
        self.revoked = False
        self._access: OrderedDict[str, float] = OrderedDict()  # token -> expires at (clock)
        self.issued = self.refreshes = self.invalid_grants = self.rejections = 0

    @property
    def latest_access(self) -> str | None:
        return next(reversed(self._access)) if self._access else None

    def _new_access(self) -> str:
        token = secrets.token_urlsafe(24)
        self._access[token] = self._clock() + self.ttl_s
        while len(self._access) > MAX_ACCESS_TOKENS:
            self._access.popitem(last=False)
        self.issued += 1
        return token

    def _token_set(self, access: str) -> TokenSet:
        return TokenSet(
            access_token=access, refresh_token=self.refresh_token, expires_in=int(self.ttl_s)
        )

    def issue_grant(self) -> TokenSet:
        self.revoked = False
        self.refresh_token = secrets.token_urlsafe(32)
        return self._token_set(self._new_access())

    def expire_all(self) -> None:
        now = self._clock()
        for token in self._access:
            self._access[token] = min(self._access[token], now)

    def revoke(self) -> None:
        self.revoked = True
        self.expire_all()

    def check(self, authorization: str | None, vendor: Vendor) -> Response | None:
        """None if the Bearer token is valid, else the vendor's rejection."""
        scheme, _, token = (authorization or "").partition(" ")
        expires = self._access.get(token) if scheme.lower() == "bearer" else None
        if expires is not None and self._clock() < expires:
            return None
        self.rejections += 1
        if vendor == "slack":
            error = "invalid_auth" if expires is None else "token_expired"
            return status_response(StatusFault(status=200, vendor="slack", slack_error=error))
        return status_response(StatusFault(status=401, vendor=vendor))

    def token_endpoint(self, form: dict[str, str]) -> Response:
        grant = form.get("grant_type")
        if grant == "refresh_token":
            presented = form.get("refresh_token")
            if not presented:
                return oauth_error("invalid_request", "Missing required parameter: refresh_token")
            if self.revoked:
                self.invalid_grants += 1
                return oauth_error("invalid_grant", "Token has been expired or revoked.")
            if self.refresh_token is None or not secrets.compare_digest(
                presented, self.refresh_token
            ):
                self.invalid_grants += 1
                return oauth_error("invalid_grant", "expired access/refresh token")
            self.refresh_token = secrets.token_urlsafe(32)  # rotation: the old one is now dead
            self.refreshes += 1
            tokens = self._token_set(self._new_access())
        elif grant == "client_credentials":
            if self.revoked:
                return oauth_error("invalid_client", "The OAuth client was disabled.", status=401)
            self.refreshes += 1
            tokens = TokenSet(
                access_token=self._new_access(), refresh_token=None, expires_in=int(self.ttl_s)
            )
        else:
            return oauth_error("unsupported_grant_type", f"Invalid grant_type: {grant}")
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
        self.tokens.issued = self.tokens.refreshes = 0
        self.tokens.invalid_grants = self.tokens.rejections = 0

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
            body_bytes_sent=self.body_bytes_sent,
        )
