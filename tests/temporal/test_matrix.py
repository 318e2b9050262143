"""Every row of the classification matrix, end to end on the time-skipping server.

A real Worker with ``HealingPlugin`` runs ``CallWorkflow`` over a ``Scripted`` integration
activity; the tests assert how many times the upstream was called, how far apart (workflow
time), what healing told the activity, and what a human would see (query, search attributes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationErrorCategory

from healing import (
    BackoffPolicy,
    BreakerPolicy,
    GrantRevoked,
    HealingConfig,
    HealingPlugin,
    SchemaMismatch,
    current_call,
)
from healing.breaker import BREAKER_SPACE
from healing.credentials import Credential, MemoryCredentialStore, OAuthClient
from healing.errors import IntegrationFailure
from healing.oauth import TokenRefresher
from tests.secrets_scan import find_secrets
from tests.temporal.harness import Call, ErrorRecorder, Harness, Scripted, Step, fail, plugin

SALESFORCE_401 = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
GITHUB_403_BODY = {
    "message": "Resource not accessible by integration",
    "documentation_url": "https://docs.github.com/rest",
}
GITHUB_403_HEADERS = {"x-ratelimit-remaining": "4999", "x-ratelimit-limit": "5000"}
SLACK_INVALID_AUTH = {"ok": False, "error": "invalid_auth"}
HUBSPOT_DAILY = {
    "status": "error",
    "message": "You have reached your daily limit.",
    "errorType": "RATE_LIMIT",
    "policyName": "DAILY",
}


def no_breaker(**kwargs: Any) -> HealingPlugin:
    """Long fault runs would open the (wall-clock) breaker; these tests are about budgets."""
    return plugin(HealingConfig(breaker=BreakerPolicy(enabled=False), **kwargs))


# --- 1. every matrix row --------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    error_type: str
    script: list[Step]
    calls: int
    healed: bool
    then: Step = None
    options: list[str] = field(default_factory=list)


ROWS: dict[str, Row] = {
    "TIMEOUT": Row(
        "TIMEOUT", [httpx.ReadTimeout("read timed out"), fail(504, "gateway timeout")], 3, True
    ),
    "RATE_LIMITED": Row("RATE_LIMITED", [fail(429, headers={"Retry-After": "7"})], 2, True),
    "SERVICE_DOWN": Row("SERVICE_DOWN", [fail(503)] * 3, 4, True),
    "NETWORK_ERROR": Row(
        "NETWORK_ERROR",
        [httpx.RemoteProtocolError("peer closed connection"), ConnectionResetError(104, "reset")],
        3,
        True,
    ),
    "AUTH_INVALID": Row(
        "AUTH_INVALID", [], 1, False, then=SLACK_INVALID_AUTH, options=["reauthorized"]
    ),
    "PERMISSION_DENIED": Row(
        "PERMISSION_DENIED",
        [],
        1,
        False,
        then=fail(403, GITHUB_403_BODY, GITHUB_403_HEADERS, connector="github"),
        options=["reauthorized"],
    ),
    "NOT_FOUND": Row("NOT_FOUND", [], 1, False, then=fail(404, {"message": "no contact 42"})),
    "INTERNAL_ERROR": Row("INTERNAL_ERROR", [], 3, False, then=fail(500), options=["wait"]),
}


async def _finish_paused(h: Harness, handle: WorkflowHandle[Any, Any]) -> None:
    from healing.client import decide

    await decide(h.client, handle.id, "skip", decided_by="test")
    assert (await handle.result())["skipped"] is True


@pytest.mark.parametrize("name", list(ROWS))
async def test_matrix_row(harness: Harness, name: str) -> None:
    row = ROWS[name]
    acts = Scripted(row.script, then=row.then)
    async with harness.worker(acts.activity):
        handle = await harness.start({"input": {"id": "42"}})
        if row.healed:
            out = await handle.result()
            assert out["result"]["ok"] is True
            assert acts.count == row.calls
            st = await harness.status(handle)
            assert st.open_escalations == []
            return
        st = await harness.escalated(handle)
        assert acts.count == row.calls, "a permanent error must not be retried"
        esc = st.open_escalation
        assert esc is not None and esc.error_type == row.error_type
        assert st.state == "awaiting_decision"
        offered = [o.option for o in esc.options]
        assert {"retry", "skip", "abort", *row.options} <= set(offered)
        assert "reroute" not in offered  # no alternative configured
        assert esc.explanation and row.error_type in esc.explanation
        # The time-skipping server has no visibility list API (list_workflows is
        # unimplemented), so read the attributes a 'HealingStatus = "awaiting_decision"'
        # query would match from describe().
        assert await harness.search_attributes(handle) == ("awaiting_decision", row.error_type)
        await _finish_paused(harness, handle)
        assert acts.count == row.calls
        # A human decided: "resolved", so "healed" counts heals without a human only.
        assert (await harness.search_attributes(handle))[0] == "resolved"


async def test_transient_heal_is_visible_afterwards(harness: Harness) -> None:
    acts = Scripted([fail(503), fail(503)])
    async with harness.worker(acts.activity):
        handle = await harness.start()
        await handle.result()
        st = await harness.status(handle)
    assert acts.count == 3
    assert st.counts_by_error_type.get("SERVICE_DOWN") == 2
    assert (await harness.search_attributes(handle))[0] == "healed"


async def test_rate_limited_waits_retry_after_in_workflow_time(harness: Harness) -> None:
    acts = Scripted([fail(429, headers={"Retry-After": "7"})] * 2)
    recorder = ErrorRecorder()
    async with harness.worker(acts.activity, interceptors=[recorder]):
        handle = await harness.start()
        out = await handle.result()
    assert out["result"]["ok"] is True
    assert acts.count == 3
    # The server waited (workflow time), not the worker: 7 s between attempts, no backoff.
    assert all(6.9 <= gap < 9 for gap in acts.gaps()), acts.gaps()
    assert [e.type for e in recorder.errors] == ["RATE_LIMITED", "RATE_LIMITED"]
    for err in recorder.errors:
        # Never sooner than asked; up to 10% later so throttled callers spread out.
        assert err.next_retry_delay is not None
        assert timedelta(seconds=7) <= err.next_retry_delay <= timedelta(seconds=7.7)
        assert not err.non_retryable
        assert err.category == ApplicationErrorCategory.BENIGN


async def test_service_down_exhausted_waits_for_recovery_then_escalates(harness: Harness) -> None:
    # DESIGN s4: retries spent, no alternative: probe at the breaker's cadence (30 s) while
    # the 120 s budget lasts, then escalate saying since when it fails and what it answered.
    acts = Scripted(then=fail(503, body={"error": {"code": "backendError"}}))
    async with harness.worker(acts.activity):
        handle = await harness.start()
        st = await harness.escalated(handle)
        gaps = acts.gaps()
        assert acts.count == 7, gaps  # 1 call + 3 retries + 3 probes (~37, ~67, ~97 s)
        assert all(gap < 9 for gap in gaps[:3]), gaps
        assert all(29 <= gap <= 36 for gap in gaps[3:]), gaps
        esc = st.open_escalation
        assert esc is not None and esc.error_type == "SERVICE_DOWN"
        assert "failing since" in esc.explanation and "HTTP 503" in esc.explanation
        assert "healing budget of 2m" in esc.explanation
        await _finish_paused(harness, handle)


async def test_service_down_exhausted_reroutes_to_alternative(harness: Harness) -> None:
    acts = Scripted(then=lambda c: fail(503) if c.connector == "crm" else None)
    async with harness.worker(acts.activity, plugin=plugin(alternatives={"crm": ["crm_eu"]})):
        handle = await harness.start()
        out = await handle.result()
        st = await harness.status(handle)
    assert [c.connector for c in acts.calls] == ["crm"] * 4 + ["crm_eu"]
    assert out["result"]["connector"] == "crm_eu"
    assert st.open_escalations == []
    assert st.state == "healed"
    assert any("crm_eu" in a.detail for a in st.history)
    assert await harness.search_attributes(handle) == ("healed", "SERVICE_DOWN")


# --- AUTH_EXPIRED: refresh, then retry ------------------------------------------------------


class CountingRefresher:
    """Stand-in for TokenRefresher: counts refreshes, optionally refuses them."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[str] = []
        self.error = error

    async def refresh(
        self, connector: str, *, seen_version: int | None = None, reason: str = ""
    ) -> Any:
        self.calls.append(connector)
        if self.error is not None:
            raise self.error
        return Credential(connector=connector, access_token="fresh", version=len(self.calls))


async def test_auth_expired_refreshes_real_token_then_succeeds(harness: Harness) -> None:
    store = MemoryCredentialStore()
    await store.put(
        Credential(connector="crm", access_token="old-access-1", refresh_token="refresh-1"),
        expected_version=None,
    )
    grants: list[bytes] = []

    def token_endpoint(request: httpx.Request) -> httpx.Response:
        grants.append(request.content)
        return httpx.Response(
            200,
            json={"access_token": "new-access-2", "refresh_token": "refresh-2", "expires_in": 3600},
        )

    http = httpx.AsyncClient(transport=httpx.MockTransport(token_endpoint))
    refresher = TokenRefresher(
        store,
        {"crm": OAuthClient(token_url="https://login.example.test/token", client_id="cid")},
        http=http,
    )

    async def salesforce(call: Call) -> Any:
        cred = await store.get("crm")
        assert cred is not None
        if cred.access_token.get_secret_value() == "old-access-1":
            return fail(401, SALESFORCE_401)
        return None

    acts = Scripted(then=salesforce)
    async with http, harness.worker(acts.activity, plugin=plugin(tokens=refresher)):
        handle = await harness.start()
        out = await handle.result()
        st = await harness.status(handle)
    assert out["result"]["ok"] is True
    assert len(grants) == 1 and b"refresh-1" in grants[0]
    assert acts.calls[-1].n == acts.count and acts.count >= 2
    assert st.state == "healed"
    assert await harness.search_attributes(handle) == ("healed", "AUTH_EXPIRED")
    history = (await handle.fetch_history()).to_json()
    assert "healing_refresh_credentials" in history
    summaries = [
        e.user_metadata.summary.data
        for e in await harness.events(handle)
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert b'"refresh credentials for crm after AUTH_EXPIRED"' in summaries
    # Payloads decoded: to_json() shows them base64, where no token could ever be seen.
    secrets = ("old-access-1", "new-access-2", "refresh-1", "refresh-2")
    assert find_secrets(await handle.fetch_history(), secrets) == []


async def test_auth_expired_refreshes_before_the_first_retry(harness: Harness) -> None:
    refresher = CountingRefresher()
    acts = Scripted(then=lambda c: None if refresher.calls else fail(401, SALESFORCE_401))
    async with harness.worker(acts.activity, plugin=plugin(tokens=refresher)):
        handle = await harness.start()
        out = await handle.result()
    assert out["result"]["ok"] is True
    assert refresher.calls == ["crm"]
    assert acts.count == 2, "an expired token is refreshed before the call is retried"


async def test_auth_expired_grant_revoked_escalates_as_auth_invalid(harness: Harness) -> None:
    refresher = CountingRefresher(GrantRevoked("invalid_grant: refresh token revoked"))
    acts = Scripted(then=fail(401, SALESFORCE_401))
    async with harness.worker(acts.activity, plugin=plugin(tokens=refresher)):
        handle = await harness.start()
        st = await harness.escalated(handle)
        esc = st.open_escalation
        assert esc is not None and esc.error_type == "AUTH_INVALID"
        assert "reauthorized" in [o.option for o in esc.options]
        assert "revoked" in esc.explanation
        assert refresher.calls == ["crm"]  # GrantRevoked is not retried
        assert await harness.search_attributes(handle) == ("awaiting_decision", "AUTH_INVALID")
        await _finish_paused(harness, handle)


# --- SCHEMA_MISMATCH: adapt, then retry -----------------------------------------------------


def _contact(call: Call) -> Any:
    """A CRM that renamed ``email`` to ``email_address``; fine once healing maps it back."""
    if call.mapping != {"email_address": "email"}:
        return SchemaMismatch(
            "Contact: field email missing, email_address unexpected",
            missing=["email"],
            unexpected=["email_address"],
            mapping={"email_address": "email"},
            connector="crm",
            operation="get_contact",
        )
    return {"email": "ada@example.com"}


async def test_schema_mismatch_adapts_mapping_on_retry(harness: Harness) -> None:
    acts = Scripted(then=_contact)
    async with harness.worker(acts.activity):
        handle = await harness.start()
        out = await handle.result()
    assert out["result"] == {"email": "ada@example.com"}
    assert acts.calls[-1].mapping == {"email_address": "email"}
    assert all(c.mapping == {} for c in acts.calls[:-1])
    events = await harness.events(handle)
    adapt = [
        e
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "healing_adapt_schema"
    ]
    assert len(adapt) == 1
    assert await harness.search_attributes(handle) == ("healed", "SCHEMA_MISMATCH")


async def test_schema_mismatch_mapping_reaches_the_first_retry(harness: Harness) -> None:
    acts = Scripted(then=_contact)
    async with harness.worker(acts.activity):
        handle = await harness.start()
        await handle.result()
    assert [c.mapping for c in acts.calls] == [{}, {"email_address": "email"}]


# --- 2. per-type budgets hold across attempts (heartbeat ledger) -----------------------------

TIMEOUT_504 = fail(504)
DOWN_503 = fail(503)


async def test_per_type_budgets_alternating_errors_heal(harness: Harness) -> None:
    # Three of each: within both budgets (3 retries each) though 6 failures in all.
    acts = Scripted([TIMEOUT_504, DOWN_503] * 3)
    async with harness.worker(acts.activity, plugin=no_breaker()):
        handle = await harness.start()
        out = await handle.result()
    assert out["result"]["ok"] is True
    assert acts.count == 7


async def test_per_type_budget_spent_escalates_with_counts(harness: Harness) -> None:
    err_500 = fail(500)
    acts = Scripted([err_500, DOWN_503] * 2 + [err_500], then=None)
    async with harness.worker(acts.activity, plugin=no_breaker()):
        handle = await harness.start()
        st = await harness.escalated(handle)
        assert acts.count == 5
        esc = st.open_escalation
        assert esc is not None and esc.error_type == "INTERNAL_ERROR"
        assert st.counts_by_error_type == {"INTERNAL_ERROR": 3, "SERVICE_DOWN": 2}
        assert "2 retries for INTERNAL_ERROR are spent" in esc.explanation
        await _finish_paused(harness, handle)


# --- 3. healing budget ----------------------------------------------------------------------


async def test_retry_after_past_limit_escalates_at_once_offering_wait(harness: Harness) -> None:
    acts = Scripted(then=fail(429, headers={"Retry-After": "600"}))
    async with harness.worker(acts.activity):
        handle = await harness.start()
        st = await harness.escalated(handle)
        assert acts.count == 1
        esc = st.open_escalation
        assert esc is not None and esc.error_type == "RATE_LIMITED"
        assert esc.classification.retry_after_s == 600
        assert "wait" in [o.option for o in esc.options]
        assert "wait 10m, past the" in esc.explanation
        await _finish_paused(harness, handle)


async def test_hubspot_daily_limit_escalates_at_once(harness: Harness) -> None:
    headers = {"X-HubSpot-RateLimit-Daily": "250000", "X-HubSpot-RateLimit-Daily-Remaining": "0"}
    acts = Scripted(then=fail(429, HUBSPOT_DAILY, headers, connector="hubspot"))
    async with harness.worker(acts.activity):
        handle = await harness.start()
        st = await harness.escalated(handle)
        assert acts.count == 1
        esc = st.open_escalation
        assert esc is not None and esc.error_type == "RATE_LIMITED"
        assert esc.classification.escalate_now is True
        await _finish_paused(harness, handle)


async def test_healing_budget_spent_escalates(harness: Harness) -> None:
    # 30 s Retry-After each time, budget 50 s: a wait that would pass 50 s escalates.
    acts = Scripted(then=fail(429, headers={"Retry-After": "30"}))
    async with harness.worker(acts.activity, plugin=no_breaker(healing_budget_s=50)):
        handle = await harness.start()
        st = await harness.escalated(handle)
        assert 2 <= acts.count <= 3
        esc = st.open_escalation
        assert esc is not None and "healing budget of 50s" in esc.explanation
        await _finish_paused(harness, handle)


async def test_healing_budget_counts_the_wait_just_served(harness: Harness) -> None:
    acts = Scripted(then=fail(429, headers={"Retry-After": "30"}))
    async with harness.worker(acts.activity, plugin=no_breaker(healing_budget_s=50)):
        handle = await harness.start()
        await harness.escalated(handle)
        # Call 2 starts at t=30 s; another 30 s wait would end at 60 s > 50 s.
        assert acts.count == 2
        await _finish_paused(harness, handle)


# --- 9. local activities --------------------------------------------------------------------


# A local activity's retry wait below the SDK's local_retry_threshold (1 min) is an
# in-worker sleep in real time, which time skipping cannot shorten: keep backoff short here.
FAST_BACKOFF = HealingConfig(backoff=BackoffPolicy(initial_s=0.05, max_s=0.2))


async def test_local_activity_transient_heals(harness: Harness) -> None:
    acts = Scripted([fail(503), fail(503)])
    async with harness.worker(acts.activity, plugin=plugin(FAST_BACKOFF)):
        handle = await harness.start({"local": True})
        out = await handle.result()
    assert out["result"]["ok"] is True
    assert acts.count == 3
    assert all(c.local for c in acts.calls)


async def test_local_activity_permanent_escalates(harness: Harness) -> None:
    acts = Scripted(then=fail(404))
    async with harness.worker(acts.activity):
        handle = await harness.start({"local": True})
        st = await harness.escalated(handle)
        assert acts.count == 1 and acts.calls[0].local
        assert st.open_escalation is not None
        assert st.open_escalation.error_type == "NOT_FOUND"
        await _finish_paused(harness, handle)
    assert acts.count == 1


# --- 10. non-integration activities pass through --------------------------------------------


async def test_unmarked_activity_is_untouched(harness: Harness) -> None:
    from temporalio.client import WorkflowFailureError
    from temporalio.exceptions import ActivityError, ApplicationError

    acts = Scripted(then=ValueError("plain bug"), name="plain_call", mark=False)
    async with harness.worker(acts.activity):
        handle = await harness.start({"activity": "plain_call", "max_attempts": 2})
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
        st = await harness.status(handle)
    assert acts.count == 2  # its own retry policy, nothing more
    assert acts.calls[0].connector is None  # no healing context
    cause = info.value.cause
    assert isinstance(cause, ActivityError)
    assert isinstance(cause.cause, ApplicationError) and cause.cause.type == "ValueError"
    assert cause.cause.details == ()  # no FailureReport attached
    assert st.state == "idle" and st.open_escalations == [] and st.attempts == 0
    assert await harness.search_attributes(handle) == (None, None)


async def test_unmarked_integration_failure_passes_through(harness: Harness) -> None:
    # Even an IntegrationFailure is not healed unless the activity is marked.
    acts = Scripted(then=IntegrationFailure("boom", status_code=503), name="plain_call", mark=False)
    async with harness.worker(acts.activity):
        handle = await harness.start({"activity": "plain_call", "max_attempts": 1})
        from temporalio.client import WorkflowFailureError

        with pytest.raises(WorkflowFailureError):
            await handle.result()
    assert acts.count == 1


async def test_a_401_after_a_siblings_rotation_uses_it_without_rotating_again(
    harness: Harness,
) -> None:
    store = MemoryCredentialStore()
    old = Credential(connector="crm", access_token="old-access-1", refresh_token="refresh-1")
    assert await store.put(old, expected_version=None)
    grants: list[bytes] = []

    def token_endpoint(request: httpx.Request) -> httpx.Response:
        grants.append(request.content)
        return httpx.Response(200, json={"access_token": "x", "expires_in": 3600})

    http = httpx.AsyncClient(transport=httpx.MockTransport(token_endpoint))
    refresher = TokenRefresher(
        store,
        {"crm": OAuthClient(token_url="https://login.example.test/token", client_id="cid")},
        http=http,
    )

    async def sent_v0_then_ok(call: Call) -> Any:
        ctx = current_call()
        assert ctx is not None
        if call.n == 1:
            ctx.token_version = 0  # this attempt sent version 0 ...
            # ... while another worker rotated the token (version 1) before our refresh.
            new = Credential(connector="crm", access_token="new-access-2", refresh_token="r2")
            assert await store.put(new, expected_version=0)
            return fail(401, SALESFORCE_401)
        return None

    acts = Scripted(then=sent_v0_then_ok)
    async with http, harness.worker(acts.activity, plugin=plugin(tokens=refresher)):
        out = await (await harness.start()).result()
    assert out["result"]["ok"] is True and acts.count == 2
    assert grants == []  # the sibling's token was used; no second rotation


async def test_reroute_skips_an_alternative_whose_circuit_the_fleet_holds_open(
    harness: Harness,
) -> None:
    healer = plugin(alternatives={"crm": ["crm_eu", "crm_us"]})
    # crm_eu is down for the whole fleet: its circuit is open in the shared state.
    opened = {"state": "open", "opened_at": 0.0, "open_s": 1e12, "opens": 1}
    fleet = healer.interceptor.breakers.state
    assert await fleet.state_put(BREAKER_SPACE, "crm_eu", opened, expected_version=None, now=0.0)
    acts = Scripted(then=lambda c: fail(503) if c.connector in ("crm", "crm_eu") else None)
    async with harness.worker(acts.activity, plugin=healer):
        handle = await harness.start()
        out = await handle.result()
        st = await harness.status(handle)
    assert [c.connector for c in acts.calls] == ["crm"] * 4 + ["crm_us"]
    assert out["result"]["connector"] == "crm_us"
    reroutes = [a.detail for a in st.history if a.strategy == "reroute"]
    assert reroutes == ["reroute to crm_us"]  # never sent to wait behind crm_eu's circuit
