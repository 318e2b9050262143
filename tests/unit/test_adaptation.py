"""The adapter: evidence decides what is applied alone, what a human sees, what cannot adapt.

Cases from the issue over the chaos API's drift kinds (``healing.testing.drift``), plus the
property that the adapter never raises on arbitrary JSON and always answers one of its two
well-formed outcomes.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from healing.adaptation import AUTOMATIC_EVIDENCE, Adaptation, Change, KnownMapping, adapt
from healing.testing.drift import DRIFT_KINDS, drift_body
from tests.chaos.drift_models import Contact, Person


class Props(BaseModel):
    email: str
    amount: str


class HubSpotContact(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    properties: Props


PERSON = {
    "id": "7",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "email": "ada@example.com",
    "amount": "1000.50",
}
HUBSPOT = {"id": "123", "properties": {"email": "a@b.com", "amount": "1000.50"}}


def test_hubspot_change_is_adapted_alone_by_a_unique_email_format() -> None:
    found = adapt(HubSpotContact, drift_body("hubspot", HUBSPOT))
    assert found.ok and found.automatic and not found.known
    assert found.renames == {"properties.email_address": "properties.email"}
    assert found.data == {"id": "123", "properties": {"email": "a@b.com", "amount": "1000.5"}}
    assert found.extra == {"properties.hs_new_prop": "x"}
    chosen = [c for c in found.candidates if c.chosen]
    assert [(c.observed, c.evidence) for c in chosen] == [
        ("properties.email_address", "unique format")
    ]
    kinds = {c.describe() for c in found.changes}
    assert kinds == {
        "renamed properties.email -> properties.email_address",
        "added properties.hs_new_prop (string)",
        "retyped properties.amount (string -> number)",
    }


def test_a_known_mapping_fits_at_once_and_counts_as_known() -> None:
    known = KnownMapping({"properties.email_address": "properties.email"})
    found = adapt(HubSpotContact, drift_body("hubspot", HUBSPOT), known=known)
    assert found.ok and found.known and found.confidence == 1.0
    assert found.extra == {"properties.hs_new_prop": "x"}


def test_a_rename_is_automatic_with_the_value_the_request_sent() -> None:
    sent = {"name": "Ada Lovelace", "email": "ada@example.com"}
    drifted = drift_body("rename", {"id": "5", **sent})
    with_evidence = adapt(Contact, drifted, request=sent)
    assert with_evidence.ok and with_evidence.automatic
    assert [c.evidence for c in with_evidence.candidates] == ["request value"]
    name_only = adapt(Contact, drifted)  # a GET: only the name matches
    assert name_only.ok and not name_only.automatic
    assert [c.evidence for c in name_only.candidates] == ["name only"]


@pytest.mark.parametrize(
    ("kind", "expected", "observed", "evidence"),
    [
        ("merge_name", "last_name", "name", "name only"),
        ("home_currency", "amount", "amount_in_home_currency", "name suggests a conversion"),
    ],
)
def test_wrong_candidates_are_proposed_never_applied(
    kind: str, expected: str, observed: str, evidence: str
) -> None:
    found = adapt(Person, drift_body(kind, PERSON))  # type: ignore[arg-type]
    assert found.ok and not found.automatic
    assert found.renames == {observed: expected}
    [cand] = found.candidates
    assert (cand.expected, cand.observed, cand.evidence) == (expected, observed, evidence)
    assert evidence not in AUTOMATIC_EVIDENCE
    assert "a human decides" in found.explain()


def test_an_ambiguous_pair_names_both_candidates_and_applies_neither_alone() -> None:
    found = adapt(Person, drift_body("ambiguous", PERSON))
    assert not found.automatic
    assert sorted(c.observed for c in found.candidates) == ["email_address", "work_email"]
    assert all(c.expected == "email" for c in found.candidates)
    assert "2 candidates" in found.explain()


def test_a_removed_required_field_cannot_adapt_and_says_which() -> None:
    found = adapt(Person, drift_body("remove", PERSON))
    assert not found.ok and found.data is None
    assert found.missing == ["email"]
    assert found.explain() == (
        "required field email (string) is missing and no other key of the response can hold it"
    )


@pytest.mark.parametrize("kind", ["data", "results", "items", "list"])
def test_envelopes_are_unwrapped_when_the_inner_object_fits(kind: str) -> None:
    found = adapt(Person, drift_body(kind, PERSON))  # type: ignore[arg-type]
    assert found.ok and found.automatic and found.envelope == kind
    assert found.data is not None and found.data["last_name"] == "Lovelace"
    assert [c.kind for c in found.changes][:1] == ["envelope"]


def test_an_envelope_whose_inner_object_does_not_fit_is_not_unwrapped() -> None:
    found = adapt(Person, {"data": {"unrelated": 1}})
    assert not found.ok
    assert found.envelope is None  # the first option's reasons: the body as it came


def test_changes_never_carry_values() -> None:
    secret = "jane.doe.4417@example.com"
    body = drift_body("hubspot", {"id": "1", "properties": {"email": secret, "amount": "9931"}})
    found = adapt(HubSpotContact, body)
    text = repr(found.changes) + repr(found.candidates) + found.explain()
    assert secret not in text and "9931" not in text


def test_every_drift_kind_has_one_outcome() -> None:
    """The benchmark's table in miniature: what each chaos drift kind ends as."""
    outcome = {}
    for kind in DRIFT_KINDS:
        found = adapt(Person, drift_body(kind, PERSON))
        outcome[kind] = "auto" if found.ok and found.automatic else "review" if found.ok else "no"
    assert outcome == {
        "hubspot": "auto",  # email_address: the only email-shaped new key
        "rename": "auto",  # Person has no `name`: nothing renamed that it needs
        "merge_name": "review",
        "home_currency": "review",
        "ambiguous": "review",
        "remove": "no",
        "data": "auto",
        "results": "auto",
        "items": "auto",
        "list": "auto",
    }


# --- the property -------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["id", "email", "email_address", "data", "items", "results", "name"])
            | st.text(max_size=8),
            inner,
            max_size=5,
        )
    ),
    max_leaves=25,
)


def _well_formed(found: Adaptation) -> None:
    assert isinstance(found, Adaptation)
    if found.ok:
        assert isinstance(found.data, dict)
        assert 0.0 < found.confidence <= 1.0
    else:
        assert found.data is None
        assert found.reasons, "a refusal says why"
        assert all(isinstance(r, str) and r for r in found.reasons)


@settings(
    deadline=None, max_examples=300, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(payload=JSON, request=JSON)
def test_the_adapter_never_raises_and_answers_a_model_or_reasons(
    payload: Any, request: Any
) -> None:
    for model in (Person, HubSpotContact, Contact):
        found = adapt(model, payload, request=request)
        _well_formed(found)
        # adapt() turns an internal crash into a refusal: the property must see it as one.
        assert not any("could not analyse" in r for r in found.reasons)
        if found.automatic and found.ok:
            chosen = [c for c in found.candidates if c.chosen]
            assert all(c.evidence in AUTOMATIC_EVIDENCE for c in chosen)
        if found.ok:
            assert found.data is not None
            model.model_validate(found.data)  # what it returns really is the model


class WithOptional(BaseModel):
    id: str | None = None
    email: str


def test_a_weak_candidate_for_an_optional_field_does_not_block_an_automatic_rename() -> None:
    found = adapt(WithOptional, {"email_address": "a@b.com", "user_id": "7"})
    assert found.ok and found.automatic
    assert found.renames == {"email_address": "email"}  # `user_id` is not guessed to be `id`
    assert found.extra == {"user_id": "7"}
    assert [(c.observed, c.chosen) for c in found.candidates if c.expected == "id"] == [
        ("user_id", False)
    ]


class Names(BaseModel):
    first_name: str
    last_name: str


def test_one_key_never_becomes_two_fields() -> None:
    found = adapt(Names, {"name": "Ada Lovelace"})
    assert not found.ok
    assert len(found.renames) <= 1
    assert found.missing  # the other field has nothing of its own


# --- evidence that must not be enough (review findings) -----------------------------------


class Audit(BaseModel):
    id: str
    created_by: str


class Mailbox(BaseModel):
    id: str
    mail_server: str


def test_a_format_word_anywhere_in_a_name_is_no_format_evidence() -> None:
    # `created` / `mail` are words of these names, not what they hold: the name's last word
    # (or the annotation) says the format, and a date alone needs a similar name too.
    audit = adapt(Audit, {"id": "1", "deleted_at": "2024-05-01T10:00:00Z"})
    assert not (audit.ok and audit.automatic)
    assert "deleted_at" not in audit.renames or not audit.automatic
    mailbox = adapt(Mailbox, {"id": "1", "contact_email": "ada@example.com"})
    assert not (mailbox.ok and mailbox.automatic)
    assert all(c.evidence != "unique format" for c in audit.candidates + mailbox.candidates)


class Created(BaseModel):
    id: str
    created_at: str


def test_a_date_with_a_similar_name_is_still_unique_format_evidence() -> None:
    found = adapt(Created, {"id": "1", "created_on": "2024-05-01T10:00:00Z", "note": "x"})
    assert found.ok and found.automatic
    assert found.renames == {"created_on": "created_at"}
    assert [c.evidence for c in found.candidates] == ["unique format"]


class Item(BaseModel):
    id: str


def test_a_short_value_equal_by_chance_to_the_request_is_no_evidence() -> None:
    found = adapt(Item, {"page": 1, "items_total": 3}, request={"id": "1"})
    assert not (found.ok and found.automatic)
    assert all(c.evidence != "request value" for c in found.candidates)
    echoed = adapt(Item, {"record_id": "rec-4417"}, request={"id": "rec-4417"})
    assert echoed.ok and echoed.automatic  # an informative echo still is evidence
    assert [c.evidence for c in echoed.candidates] == ["request value"]


class Named(BaseModel):
    first_name: str


def test_same_words_apply_alone_only_with_a_value_of_the_fields_type() -> None:
    same = adapt(Named, {"firstName": "Ada"})
    assert same.ok and same.automatic and same.candidates[0].evidence == "same name"
    coerced = adapt(Named, {"firstName": 42})  # fits only after coercion: a human looks
    assert coerced.ok and not coerced.automatic
    assert coerced.candidates[0].evidence == "name only"


def test_a_removed_required_field_is_drift_recorded_as_removed() -> None:
    found = adapt(Person, drift_body("remove", PERSON))
    assert not found.ok
    assert Change("removed", "email", from_type="string") in found.changes


def test_keys_beside_an_envelope_are_kept_and_recorded() -> None:
    body = {"data": PERSON, "meta": {"page": 1}, "next": "https://x.example/p2"}
    for known in (None, KnownMapping(envelope="data")):
        found = adapt(Person, body, known=known)
        assert found.ok and found.envelope == "data"
        assert found.extra == {"meta": {"page": 1}, "next": "https://x.example/p2"}
        added = {c.describe() for c in found.changes if c.kind == "added"}
        assert added == {"added meta (object)", "added next (string)"}
