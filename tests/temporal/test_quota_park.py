"""A spent daily or org quota parks the call durably until its reset, with no human
(time-skipping server: the hours pass in a moment)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError

from healing.names import STATUS_QUERY
from healing.types import HealingStatus
from tests.temporal.harness import Harness, Scripted, fail
from tests.temporal.test_current_details import current_details

HOURS_2 = 7200


def _daily_quota(retry_after: int | None, extra: dict[str, str] | None = None) -> Any:
    # Google's daily quota: 403 dailyLimitExceeded, Retry-After until the quota's reset.
    body = {
        "error": {
            "code": 403,
            "message": "Daily Limit Exceeded",
            "errors": [{"reason": "dailyLimitExceeded", "domain": "usageLimits"}],
        }
    }
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    headers.update(extra or {})
    return fail(403, body=json.dumps(body), headers=headers)


async def test_a_spent_daily_quota_parks_until_the_reset_and_resumes_with_no_human(
    harness: Harness,
) -> None:
    acts = Scripted([_daily_quota(HOURS_2)], then=None)
    async with harness.worker(acts.activity):
        handle = await harness.start()
        parked = await harness.wait_for(handle, lambda s: bool(s.parked), "a parked call")
        assert parked.state == "healing" and not parked.open_escalations
        ((call, until),) = parked.parked.items()
        assert call == "crm.get_contact"
        details = await current_details(handle)  # the Web UI's User Metadata tab
        assert "Parked until the quota resets" in details and "crm.get_contact" in details
        out = await handle.result()
        st = HealingStatus.model_validate(await handle.query(STATUS_QUERY))
    assert out["result"]["ok"] is True and acts.count == 2
    (gap,) = acts.gaps()
    assert HOURS_2 <= gap < HOURS_2 + 120, gap  # the reset, as the workflow's durable timer
    waiting = [a for a in st.history if a.outcome == "waiting"]
    assert waiting and "parked until" in waiting[0].detail and waiting[0].delay_s == HOURS_2
    assert (until - waiting[0].at).total_seconds() == HOURS_2
    assert st.state == "healed" and not st.parked  # healed with no human


async def test_a_quota_that_stays_spent_after_three_resets_asks_a_human(
    harness: Harness,
) -> None:
    acts = Scripted([_daily_quota(HOURS_2)] * 4, then=None)
    async with harness.worker(acts.activity):
        handle = await harness.start()
        # Time skips through the three parks and then the escalation's own timeout (abort).
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        st = await harness.status(handle)
    outcomes = [a.outcome for a in st.history]
    assert acts.count == 4 and outcomes.count("waiting") == 3
    (escalated,) = [a for a in st.history if a.outcome == "escalated"]
    assert escalated.error_type == "QUOTA_EXHAUSTED"
    assert "3 quota resets did not help" in escalated.detail
    assert outcomes.index("escalated") > max(i for i, o in enumerate(outcomes) if o == "waiting")


async def test_a_spent_quota_with_no_reset_asks_a_human(harness: Harness) -> None:
    acts = Scripted([_daily_quota(None)], then=None)
    async with harness.worker(acts.activity):
        handle = await harness.start()
        st = await harness.escalated(handle)
    esc = st.open_escalation
    assert esc is not None and esc.error_type == "QUOTA_EXHAUSTED" and not st.parked
    assert acts.count == 1


async def test_a_reset_header_without_retry_after_parks_too(harness: Harness) -> None:
    spent = _daily_quota(None, {"RateLimit-Remaining": "0", "RateLimit-Reset": str(HOURS_2)})
    acts = Scripted([spent], then=None)
    async with harness.worker(acts.activity):
        handle = await harness.start()
        out = await handle.result()
        st = await harness.status(handle)
    assert out["result"]["ok"] is True and acts.count == 2
    (gap,) = acts.gaps()
    assert HOURS_2 - 5 <= gap < HOURS_2 + 120, gap
    assert st.state == "healed" and not st.open_escalations


async def test_a_workflow_cancelled_while_parked_ends_failed_with_nothing_parked(
    harness: Harness,
) -> None:
    acts = Scripted([_daily_quota(HOURS_2)], then=None)
    async with harness.worker(acts.activity):
        handle = await harness.start()
        await harness.wait_for(handle, lambda s: bool(s.parked), "a parked call")
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        st = await harness.status(handle)
        details = await current_details(handle)
    assert st.state == "failed" and st.parked == {}
    assert "Parked" not in details
    assert acts.count == 1
