"""call_integration's drift paths on a real chaos API, without Temporal: a rejected mapping is
never applied, a pinned one is never replaced automatically, and without a healing
interceptor a proposal is an error (nothing is held, nothing is guessed)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from activities import CallRequest, IntegrationActivities
from healing.catalog import ConnectorCatalog
from healing.drift import DriftBook
from healing.errors import SchemaMismatch
from healing.integration import CallContext, CallHints, _reset_current, _set_current
from healing.names import DRIFT_REVIEW_KEY
from healing.store.memory import MemoryFleetState
from healing.testing import ChaosAPI, FaultPlan, FaultRule, SchemaDriftFault
from healing.testing.drift import DriftKind


@pytest.fixture
async def crm() -> AsyncIterator[ChaosAPI]:
    async with ChaosAPI() as chaos:
        yield chaos


@pytest.fixture
def book() -> DriftBook:
    return DriftBook(MemoryFleetState(), cache_s=0)


def acts_for(crm: ChaosAPI) -> IntegrationActivities:
    catalog = ConnectorCatalog.from_toml(
        f'[connectors.crm]\nbase_url = "{crm.url}"\n'
        "[connectors.crm.operations.get_person]\n"
        'path = "/people/{id}"\nresponse_model = "tests.chaos.drift_models:Person"\n'
    )
    return IntegrationActivities(catalog)


async def call(
    acts: IntegrationActivities, book: DriftBook | None, ident: str = "1", *, reviews: bool = True
) -> dict[str, Any]:
    req = CallRequest(connector="crm", operation="get_person", params={"id": ident})
    token = None
    if book is not None:  # as the healing interceptor sets it up
        ctx = CallContext("crm", "get_person", CallHints(drift_reviews=reviews), 1)
        ctx.drift = book
        token = _set_current(ctx)
    try:
        env = ActivityEnvironment()
        env.info = dataclasses.replace(env.info, activity_type="call_integration")
        result: dict[str, Any] = await env.run(acts.call_integration, req)
        return result
    finally:
        if token is not None:
            _reset_current(token)


def drift(crm: ChaosAPI, kind: DriftKind) -> None:
    crm.set_plan(
        FaultPlan(rules=[FaultRule(path="/people/*", always=SchemaDriftFault(change=kind))])
    )


async def test_a_proposal_is_held_for_review_with_the_interceptor_and_an_error_without(
    crm: ChaosAPI, book: DriftBook
) -> None:
    drift(crm, "merge_name")
    async with acts_for(crm) as acts:
        held = await call(acts, book)
        assert held["result"] is None
        review = held[DRIFT_REVIEW_KEY]
        assert review["proposal"]["renames"] == {"name": "last_name"}
        assert review["body"]["name"] == "Ada Lovelace1"  # the response as received
        with pytest.raises(SchemaMismatch, match="needs approval"):
            await call(acts, None)
    assert crm.stats().calls_to("GET", "/people/1") == 2  # one per call, never re-sent


async def test_a_rejected_mapping_is_never_applied_again(crm: ChaosAPI, book: DriftBook) -> None:
    drift(crm, "data")
    async with acts_for(crm) as acts:
        first = await call(acts, book)
        mapping_id = first["healing"]["schema"]["mapping_id"]
        await book.decide(mapping_id, "rejected", decided_by="ada")
        with pytest.raises(SchemaMismatch, match=f"{mapping_id} .* was rejected by ada"):
            await call(acts, book, "2")


async def test_a_pinned_mapping_is_not_replaced_by_an_automatic_one(
    crm: ChaosAPI, book: DriftBook
) -> None:
    drift(crm, "data")
    async with acts_for(crm) as acts:
        first = await call(acts, book)
        pinned = first["healing"]["schema"]["mapping_id"]
        await book.decide(pinned, "pinned", decided_by="ada")
        drift(crm, "results")  # the vendor changes again: confident, yet a human's pin holds
        held = await call(acts, book, "2")
        assert DRIFT_REVIEW_KEY in held
        active = await book.active("crm", "get_person")
        assert active is not None and active.mapping_id == pinned


class WriteFailingState(MemoryFleetState):
    async def state_put(self, *args: object, **kwargs: object) -> int | None:  # type: ignore[override]
        raise ConnectionError("store down")

    async def state_list(self, space: str, *, limit: int = 1000) -> list:  # type: ignore[override]
        raise ConnectionError("store down")


async def test_a_store_failure_while_learning_adapts_or_escalates_never_a_network_error(
    crm: ChaosAPI,
) -> None:
    broken = DriftBook(WriteFailingState(), cache_s=0)
    async with acts_for(crm) as acts:
        drift(crm, "data")  # confident: the response already received is adapted anyway
        out = await call(acts, broken)
        assert out["result"]["last_name"] == "Lovelace1"
        assert out["healing"]["schema"]["adapted"] is True
        drift(crm, "merge_name")  # needs a human: SCHEMA_MISMATCH, not a retried store error
        with pytest.raises(SchemaMismatch, match="could not be stored"):
            await call(acts, broken, "2")
    assert crm.stats().calls_to("GET", "/people/1") == 1
    assert crm.stats().calls_to("GET", "/people/2") == 1


async def test_a_removed_required_field_leaves_a_removed_drift_record(
    crm: ChaosAPI, book: DriftBook
) -> None:
    drift(crm, "remove")
    async with acts_for(crm) as acts:
        with pytest.raises(SchemaMismatch, match="required field email"):
            await call(acts, book)
    records = {(r.change, r.path, r.from_type) for r in await book.records()}
    assert ("removed", "email", "string") in records


def paused_acts(crm: ChaosAPI) -> IntegrationActivities:
    catalog = ConnectorCatalog.from_toml(
        f'[connectors.crm]\nbase_url = "{crm.url}"\n'
        "[connectors.crm.operations.get_person]\n"
        'path = "/people/{id}"\nresponse_model = "tests.chaos.drift_models:Person"\n'
        'schema_drift = "pause"\n'
    )
    return IntegrationActivities(catalog)


async def test_pause_holds_a_proposal_and_applies_only_what_a_human_approved(
    crm: ChaosAPI, book: DriftBook
) -> None:
    drift(crm, "data")
    async with paused_acts(crm) as acts:
        held = await call(acts, book)  # confident, yet paused: held with a stored proposal
        proposal = held[DRIFT_REVIEW_KEY]["proposal"]
        assert proposal["status"] == "proposed" and "pause" in held[DRIFT_REVIEW_KEY]["explanation"]
        await book.decide(proposal["mapping_id"], "active", decided_by="healing")  # not a human
        assert DRIFT_REVIEW_KEY in await call(acts, book, "2")
        await book.decide(proposal["mapping_id"], "active", decided_by="ada")
        out = await call(acts, book, "3")
        assert out["result"]["last_name"] == "Lovelace3"
        assert out["healing"]["schema"] == {"mapping_id": proposal["mapping_id"]}


async def test_a_workflow_side_that_does_not_hold_reviews_gets_a_schema_mismatch(
    crm: ChaosAPI, book: DriftBook
) -> None:
    # An older workflow worker (rolling deploy) sends no drift_reviews hint: it would take a
    # held review (result None) for a success, so the activity raises instead.
    drift(crm, "merge_name")
    async with acts_for(crm) as acts:
        with pytest.raises(SchemaMismatch, match="needs approval"):
            await call(acts, book, reviews=False)
        assert DRIFT_REVIEW_KEY in await call(acts, book, "2")
