"""DriftBook: mappings and drift records over fleet state (MemoryFleetState here; the same
FleetState contract is tested on every backend in tests/store/test_fleet_state.py)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from healing.adaptation import Change, adapt
from healing.catalog import ConnectorCatalog
from healing.drift import DriftBook, export_model_change, mapping_id
from healing.store.memory import MemoryFleetState
from healing.testing.drift import drift_body


class Person(BaseModel):
    id: str
    last_name: str
    email: str


PERSON = {"id": "1", "last_name": "Lovelace", "email": "a@b.com"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state() -> MemoryFleetState:
    return MemoryFleetState()


def book_of(state: MemoryFleetState, clock: Clock) -> DriftBook:
    return DriftBook(state, clock=clock, monotonic=clock)


async def test_a_learned_mapping_is_active_for_every_book_on_the_same_state(
    state: MemoryFleetState, clock: Clock
) -> None:
    one, two = book_of(state, clock), book_of(state, clock)
    assert await two.active("crm", "get") is None  # cached: "none" for about a second
    found = adapt(Person, drift_body("hubspot", PERSON))
    learned = await one.learn("crm", "get", found, status="active", decided_by="healing")
    assert learned.status == "active" and learned.version == 1
    assert learned.evidence == ["email_address -> email: unique format"]
    assert await two.active("crm", "get") is None  # still within two's cache
    clock.now += 1.1
    seen = await two.active("crm", "get")
    assert seen is not None and seen.mapping_id == learned.mapping_id
    assert seen.renames == {"email_address": "email"}
    assert await two.active("crm", "other") is None


async def test_the_same_proposal_found_twice_is_one_document_and_keeps_a_rejection(
    state: MemoryFleetState, clock: Clock
) -> None:
    book = book_of(state, clock)
    found = adapt(Person, drift_body("merge_name", {**PERSON, "first_name": "Ada"}))
    first = await book.learn("crm", "get", found, status="proposed")
    again = await book.learn("crm", "get", found, status="proposed")
    assert first.mapping_id == again.mapping_id
    assert first.mapping_id == mapping_id("crm", "get", {"name": "last_name"}, None)
    assert {c.observed for c in first.candidates} == {"name", "first_name"}  # both shown
    assert await book.active("crm", "get") is None  # a proposal is never applied
    rejected = await book.decide(first.mapping_id, "rejected", decided_by="ada")
    assert rejected.status == "rejected" and rejected.decided_by == "ada"
    later = await book.learn("crm", "get", found, status="active")
    assert later.status == "rejected"  # a human's no stays no
    with pytest.raises(KeyError):
        await book.decide("m-nope", "active")


async def test_approving_makes_the_mapping_the_newest_and_pinned_wins(
    state: MemoryFleetState, clock: Clock
) -> None:
    book = book_of(state, clock)
    auto = adapt(Person, {"id": "1", "last_name": "L", "email_address": "a@b.com"})
    other = adapt(Person, {"id": "1", "surname": "L", "last_name_x": "L", "email": "a@b.com"})
    a = await book.learn("crm", "get", auto, status="active")
    b = await book.learn("crm", "get", other, status="proposed")
    assert b.revision == a.revision + 1
    await book.decide(b.mapping_id, "active", decided_by="ada")
    clock.now += 2
    newest = await book.active("crm", "get")
    assert newest is not None and newest.mapping_id == b.mapping_id
    await book.decide(a.mapping_id, "pinned", decided_by="ada")
    clock.now += 2
    pinned = await book.active("crm", "get")
    assert pinned is not None and pinned.mapping_id == a.mapping_id


async def test_drift_records_count_per_change_with_first_and_last_seen(
    state: MemoryFleetState, clock: Clock
) -> None:
    book = book_of(state, clock)
    added = Change("added", "properties.hs_new_prop", to_type="string")
    retyped = Change("retyped", "properties.amount", from_type="string", to_type="number")
    await book.record("crm", "get", [added, retyped])
    clock.now += 5
    await book.record("crm", "get", [added, added])  # one call counts a change once
    records = {r.path: r for r in await book.records()}
    assert records["properties.hs_new_prop"].count == 2
    assert records["properties.hs_new_prop"].first_seen == 1000.0
    assert records["properties.hs_new_prop"].last_seen == 1005.0
    assert records["properties.amount"].count == 1
    assert records["properties.amount"].describe() == "retyped properties.amount (string -> number)"
    export = export_model_change(await book.mappings(fresh=True), await book.records())
    assert export == {
        "crm.get": {
            "add": {"properties.hs_new_prop": "string"},
            "retype": {"properties.amount": "number"},
        }
    }


class BrokenState(MemoryFleetState):
    async def state_get(self, space: str, key: str) -> None:  # type: ignore[override]
        raise ConnectionError("store down")

    async def state_list(self, space: str, *, limit: int = 1000) -> list:  # type: ignore[override]
        raise ConnectionError("store down")


async def test_a_store_outage_never_fails_a_call(clock: Clock) -> None:
    book = book_of(BrokenState(), clock)
    assert await book.active("crm", "get") is None
    await book.record("crm", "get", [Change("added", "x", to_type="string")])  # no raise


def test_schema_drift_defaults_adapt_for_reads_and_review_for_writes() -> None:
    catalog = ConnectorCatalog.from_toml(
        """
[connectors.crm]
base_url = "https://crm.example.com"
[connectors.crm.operations.get_contact]
path = "/contacts/{id}"
[connectors.crm.operations.create_contact]
method = "POST"
path = "/contacts"
[connectors.crm.operations.charge]
method = "POST"
path = "/charges"
schema_drift = "pause"
"""
    )
    assert catalog.operation("crm", "get_contact").drift_policy == "adapt"
    assert catalog.operation("crm", "create_contact").drift_policy == "review"
    assert catalog.operation("crm", "charge").drift_policy == "pause"


def test_an_unknown_drift_policy_is_a_clear_error() -> None:
    from healing.errors import ConfigError

    with pytest.raises(ConfigError, match="schema_drift"):
        ConnectorCatalog.from_toml(
            """
[connectors.crm]
base_url = "https://crm.example.com"
[connectors.crm.operations.get_contact]
path = "/contacts/{id}"
schema_drift = "guess"
"""
        )


def test_a_mismatch_no_mapping_fits_is_handed_over_as_such_and_escalates() -> None:
    """The activity already adapted what it had: no "needs a schema adaptation", no retry."""
    from healing.config import HealingConfig
    from healing.policy import AttemptSituation, StepSituation, next_attempt, next_step
    from healing.types import Classification, ErrorType, HealingStrategy

    row = HealingConfig().row(ErrorType.SCHEMA_MISMATCH)
    cls = Classification(
        error_type=ErrorType.SCHEMA_MISMATCH,
        transient=row.transient,
        retryable=row.retryable,
        strategy=HealingStrategy.SCHEMA_ADAPT,
        max_attempts=row.max_attempts,
    )
    situation = AttemptSituation(
        classification=cls,
        used=1,
        elapsed_s=0.0,
        budget_s=120.0,
        backoff_s=1.0,
        probe_interval_s=30.0,
        max_retry_after_s=60.0,
    )
    verdict = next_attempt(situation)
    assert verdict.action == "hand_over"
    assert (
        verdict.reason == "SCHEMA_MISMATCH: no mapping with enough evidence makes the response fit"
    )
    assert next_step(StepSituation(classification=cls)).action == "escalate"
    mapped = cls.model_copy(update={"schema_mapping": {"email_address": "email"}})
    legacy = next_attempt(AttemptSituation(**{**situation.__dict__, "classification": mapped}))
    assert legacy.reason == "SCHEMA_MISMATCH needs a schema adaptation"  # user activities


class WriteFailingState(MemoryFleetState):
    """Reads work, every write fails (a store that went read-only, or down mid-call)."""

    async def state_put(self, *args: object, **kwargs: object) -> int | None:  # type: ignore[override]
        raise ConnectionError("store down")

    async def state_list(self, space: str, *, limit: int = 1000) -> list:  # type: ignore[override]
        raise ConnectionError("store down")


async def test_a_store_that_fails_while_learning_never_fails_a_result_already_received(
    clock: Clock,
) -> None:
    from healing.drift import fit_result
    from healing.errors import SchemaMismatch

    book = book_of(WriteFailingState(), clock)
    body = drift_body("data", PERSON)  # a confident envelope: adapted even unstored
    assert await fit_result(book, Person, body, "crm", "get") == PERSON
    proposal = drift_body("merge_name", {**PERSON, "first_name": "Ada"})
    with pytest.raises(SchemaMismatch, match="could not be stored"):
        await fit_result(book, Person, proposal, "crm", "get")


class CountingState(MemoryFleetState):
    def __init__(self) -> None:
        super().__init__()
        self.lists = 0

    async def state_list(self, space: str, *, limit: int = 1000) -> list:  # type: ignore[override]
        self.lists += 1
        return await super().state_list(space, limit=limit)


async def test_active_reads_one_document_per_operation_and_a_bad_one_hides_nothing(
    clock: Clock,
) -> None:
    state = CountingState()
    book = book_of(state, clock)
    for n in range(30):  # many operations' mappings: none of them is read to call `get`
        await book.learn(f"c{n}", "get", adapt(Person, drift_body("data", PERSON)), status="active")
    learned = await book.learn(
        "crm", "get", adapt(Person, drift_body("data", PERSON)), status="active"
    )
    await state.state_put("mappings", "m-broken0000", {"renames": 7}, expected_version=None, now=1)
    state.lists = 0
    clock.now += 2
    active = await book.active("crm", "get")
    assert active is not None and active.mapping_id == learned.mapping_id
    assert state.lists == 0  # the hot path never scans the mappings
    listed = await book.mappings()
    assert len(listed) == 31  # the undecodable document is skipped, the rest all listed
    await book.record("crm", "get", [Change("added", "x", to_type="string")])
    await state.state_put("drift", "bad", {"count": "many"}, expected_version=None, now=1)
    assert [r.path for r in await book.records()] == ["x"]
    rejected = await book.decide(learned.mapping_id, "rejected", decided_by="ada")
    assert rejected.status == "rejected"
    clock.now += 2
    assert await book.active("crm", "get") is None  # a rejection takes it off the pointer


async def test_a_user_activity_proposal_never_invites_a_plain_retry(
    state: MemoryFleetState, clock: Clock
) -> None:
    from healing.drift import fit_result
    from healing.errors import SchemaMismatch

    book = book_of(state, clock)
    proposal = drift_body("merge_name", {**PERSON, "first_name": "Ada"})
    with pytest.raises(SchemaMismatch) as caught:
        await fit_result(book, Person, proposal, "crm", "get")
    text = str(caught.value)
    assert "healing drift approve m-" in text and "then retry" not in text
    assert "runs the activity, and its request, again" in text
