"""``@healing.integration(response_model=...)`` on a user's activity: its result is adapted to
the model in the same attempt (the activity runs once), and what cannot be adapted alone
escalates SCHEMA_MISMATCH naming the fields, with a proposal ``healing drift approve`` takes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from temporalio import activity

from healing import HealingConfig, HealingPlugin
from healing.client import decide
from healing.integration import integration
from tests.temporal.harness import Harness


class Contact(BaseModel):
    id: str
    email: str


class Counting:
    """A user activity returning the vendor's JSON as it comes (drifted)."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.calls = 0

        @activity.defn(name="crm_call")
        @integration(connector="crm", operation="get_contact", response_model=Contact)
        async def call(arg: dict[str, Any]) -> Any:
            self.calls += 1
            return dict(self.body)

        self.activity = call


async def test_a_user_activity_result_is_adapted_in_the_same_attempt(harness: Harness) -> None:
    acts = Counting({"id": "1", "email_address": "a@b.com", "hs_new_prop": "x"})
    plugin = HealingPlugin(HealingConfig())
    async with harness.worker(acts.activity, plugin=plugin):
        first = await (await harness.start()).result()
        second = await (await harness.start()).result()
    assert first["result"] == {"id": "1", "email": "a@b.com"}
    assert second["result"] == first["result"]
    assert acts.calls == 2  # once per workflow: never called again to adapt
    book = plugin.interceptor.drift
    active = await book.active("crm", "get_contact")
    assert active is not None and active.renames == {"email_address": "email"}
    assert {r.path for r in await book.records()} == {"email", "hs_new_prop"}


async def test_a_user_activity_result_without_evidence_escalates_naming_fields(
    harness: Harness,
) -> None:
    acts = Counting({"id": "1", "contact": "someone"})  # nothing says it is the email
    plugin = HealingPlugin(HealingConfig())
    async with harness.worker(acts.activity, plugin=plugin):
        handle = await harness.start()
        status = await harness.escalated(handle)
        [esc] = status.open_escalations
        assert esc.error_type.value == "SCHEMA_MISMATCH"
        assert "required field email (string) is missing" in esc.explanation
        assert acts.calls == 1
        await decide(harness.client, handle.id, "skip")
        assert (await handle.result())["skipped"] is True
