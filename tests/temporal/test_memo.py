"""The ``healing`` memo: the open escalation in brief while paused, cleared on resume.

Visibility carries it, so listing and reading escalations needs no running worker.
"""

from __future__ import annotations

from healing.client import decide
from healing.names import MEMO_KEY
from healing.types import EscalationBrief
from tests.temporal.harness import Harness, Scripted, fail


async def test_memo_holds_the_open_escalation_and_is_cleared_on_resume(harness: Harness) -> None:
    acts = Scripted([fail(404)], then=None)
    async with harness.worker(acts.activity):
        handle = await harness.start()
        st = await harness.escalated(handle)
        esc = st.open_escalation
        assert esc is not None
        memo = await (await handle.describe()).memo()
        held = EscalationBrief.model_validate(memo[MEMO_KEY])
        assert held.escalation_id == esc.escalation_id and held.error_type == "NOT_FOUND"
        assert held.connector == "crm" and held.operation == "get_contact"
        assert "retry" in held.options and held.default_option == "abort"
        assert held.explanation and "\n" not in held.explanation
        assert (held.timeout_at - held.opened_at).total_seconds() == esc.timeout_s
        await decide(harness.client, handle.id, "retry", decided_by="test")
        await handle.result()
        memo = await (await handle.describe()).memo()
    assert MEMO_KEY not in memo
