"""adapt_schema with a held review (accept_mapping): the mapping is checked before anything is
decided, so a foreign, rejected, unfitting or malformed mapping never becomes active for the
fleet; an accepted one supersedes a pinned one."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from healing.activities import HealingActivities
from healing.adaptation import adapt
from healing.config import HealingConfig
from healing.drift import DriftBook, DriftReview, SchemaMapping
from healing.errors import DecisionError
from healing.escalation import check_decision
from healing.store.memory import MemoryFleetState
from healing.testing.drift import drift_body
from healing.types import EscalationDecision
from tests.chaos.drift_models import Person

MODEL = "tests.chaos.drift_models:Person"
PERSON = {
    "id": "1",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "email": "ada@example.com",
    "amount": 10.5,
}


async def held(book: DriftBook, operation: str = "get_person") -> DriftReview:
    body = drift_body("merge_name", PERSON)
    found = adapt(Person, body)
    proposal = await book.learn("crm", operation, found, status="proposed")
    return DriftReview(
        proposal=proposal.model_dump(mode="json"), body=body, model=MODEL, explanation="x"
    )


def acts_with(book: DriftBook) -> HealingActivities:
    acts = HealingActivities(HealingConfig())
    acts._drift = book
    return acts


async def accept(acts: HealingActivities, review: DriftReview, mapping_id: str | None) -> Any:
    request = {"review": review.model_dump(mode="json"), "mapping_id": mapping_id}
    return await ActivityEnvironment().run(acts.adapt_schema, {**request, "decided_by": "ada"})


@pytest.fixture
def book() -> DriftBook:
    return DriftBook(MemoryFleetState(), cache_s=0)


async def test_accepting_the_proposal_activates_it_and_reads_the_held_body(
    book: DriftBook,
) -> None:
    review = await held(book)
    out = await accept(acts_with(book), review, None)
    assert out["result"]["last_name"] == "Ada Lovelace"  # the held body, read with it
    active = await book.active("crm", "get_person")
    assert active is not None and active.mapping_id == review.mapping.mapping_id


async def test_a_foreign_mapping_is_refused_and_stays_as_it_was(book: DriftBook) -> None:
    review = await held(book)
    other = await held(book, "list_people")  # the same renames, another operation
    with pytest.raises(ApplicationError, match=r"is for crm\.list_people, not crm\.get_person"):
        await accept(acts_with(book), review, other.mapping.mapping_id)
    stored = await book.get(other.mapping.mapping_id)
    assert stored is not None and stored.status == "proposed"
    assert await book.active("crm", "list_people") is None


async def test_a_rejected_mapping_is_refused_and_stays_rejected(book: DriftBook) -> None:
    review = await held(book)
    await book.decide(review.mapping.mapping_id, "rejected", decided_by="bob")
    with pytest.raises(ApplicationError, match="was rejected by bob"):
        await accept(acts_with(book), review, None)
    stored = await book.get(review.mapping.mapping_id)
    assert stored is not None and stored.status == "rejected"


async def test_a_mapping_that_does_not_fit_the_held_body_is_not_activated(
    book: DriftBook,
) -> None:
    review = await held(book)
    unfit = SchemaMapping(
        mapping_id="m-0123456789", connector="crm", operation="get_person",
        renames={"nothing_here": "last_name"},
    )  # fmt: skip
    await book.state.state_put(
        "mappings", unfit.mapping_id, unfit.model_dump(mode="json"), expected_version=None, now=1.0
    )
    with pytest.raises(ApplicationError, match="does not make the response fit"):
        await accept(acts_with(book), review, unfit.mapping_id)
    stored = await book.get(unfit.mapping_id)
    assert stored is not None and stored.status == "proposed"


async def test_a_malformed_mapping_id_is_refused_by_the_activity_and_the_validator(
    book: DriftBook,
) -> None:
    review = await held(book)
    with pytest.raises(ApplicationError, match="is not a schema mapping id"):
        await accept(acts_with(book), review, "m-nope")
    with pytest.raises(DecisionError, match="is not a schema mapping id"):
        check_decision(
            EscalationDecision(option="accept_mapping", mapping_id="mapping 7"), [_escalation()]
        )


async def test_accepting_supersedes_a_pinned_mapping(book: DriftBook) -> None:
    review = await held(book)
    pinned = await book.learn(
        "crm", "get_person", adapt(Person, drift_body("data", PERSON)), status="active"
    )
    await book.decide(pinned.mapping_id, "pinned", decided_by="bob")
    await accept(acts_with(book), review, None)
    active = await book.active("crm", "get_person")
    assert active is not None and active.mapping_id == review.mapping.mapping_id
    old = await book.get(pinned.mapping_id)
    assert old is not None and old.status == "active"  # unpinned, no longer the newest


def _escalation() -> Any:
    from datetime import UTC, datetime

    from healing.escalation import build_escalation
    from healing.types import Classification, ErrorType, HealingStrategy

    cls = Classification(
        error_type=ErrorType.SCHEMA_MISMATCH, transient=False, retryable=False,
        strategy=HealingStrategy.ESCALATE, max_attempts=0, message="drift", fingerprint="f",
    )  # fmt: skip
    return build_escalation(
        escalation_id="e1", workflow_id="w", activity="call_integration", connector="crm",
        operation="get_person", classification=cls, attempts=[], reason="r", alternatives=[],
        opened_at=datetime(2026, 1, 1, tzinfo=UTC), timeout_s=60, default_option="abort",
        proposal={"mapping_id": "m-0123456789"},
    )  # fmt: skip
