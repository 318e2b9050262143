"""Schema adaptation: the HubSpot rename case and the evidence rules behind it."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from healing.errors import SchemaMismatch
from healing.schema import (
    SchemaDiff,
    added_fields,
    apply_mapping,
    diff_payload,
    infer_mapping,
    validate_response,
)


class Properties(BaseModel):
    email: str
    amount: float


class Contact(BaseModel):
    id: str | None = None
    properties: Properties


OLD = {"id": "123", "properties": {"email": "a@b.com", "amount": "1000.50"}}
NEW = {"properties": {"email_address": "a@b.com", "amount": 1000.5, "hs_new_prop": "x"}}


def test_old_shape_still_validates_with_string_to_number_coercion() -> None:
    contact = validate_response(Contact, OLD)
    assert contact.properties.amount == 1000.5


def test_hubspot_rename_is_diffed_nested() -> None:
    diff = diff_payload(Contact, NEW)
    assert diff.missing == ["properties.email"]
    assert sorted(diff.unexpected) == ["properties.email_address", "properties.hs_new_prop"]
    assert diff.mapping == {"properties.email_address": "properties.email"}
    assert diff.added == ["properties.hs_new_prop"]
    assert diff.unresolved == []
    assert diff.absent_optional == ["id"]
    assert added_fields(Contact, NEW) == ["properties.hs_new_prop"]


def test_hubspot_case_end_to_end() -> None:
    with pytest.raises(SchemaMismatch) as caught:
        validate_response(Contact, NEW)
    err = caught.value
    assert err.missing == ["properties.email"]
    assert err.mapping == {"properties.email_address": "properties.email"}

    contact = validate_response(Contact, NEW, err.mapping)
    assert contact.properties.email == "a@b.com"
    assert contact.properties.amount == 1000.5
    assert contact.id is None


def test_mismatch_message_names_fields_but_never_values() -> None:
    secret = {"properties": {"email_address": "jane.doe@example.com", "amount": "n/a-9931"}}
    with pytest.raises(SchemaMismatch) as caught:
        validate_response(Contact, secret)
    message = str(caught.value)
    assert "properties.email" in message
    assert "properties.amount" in message
    assert "jane.doe" not in message
    assert "9931" not in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_numbers_are_coerced_to_string_fields() -> None:
    class Deal(BaseModel):
        model_config = ConfigDict(strict=True)
        amount: str
        code: str | None = None
        tags: list[str] = []
        count: int | str = 0

    deal = validate_response(Deal, {"amount": 1000.5, "code": 7, "tags": [1, "b"], "count": 3})
    assert (deal.amount, deal.code, deal.tags, deal.count) == ("1000.5", "7", ["1", "b"], 3)


def test_booleans_are_not_coerced_to_strings() -> None:
    class Flag(BaseModel):
        label: str

    with pytest.raises(SchemaMismatch, match=r"label \(string_type\)"):
        validate_response(Flag, {"label": True})


@pytest.mark.parametrize(
    ("expected", "observed"),
    [
        ("first_name", "firstName"),
        ("firstName", "first_name"),
        ("first_name", "FirstName"),
        ("first_name", "first-name"),
        ("http_status", "HTTPStatus"),
    ],
)
def test_case_style_renames(expected: str, observed: str) -> None:
    model: type[BaseModel] = type(
        "Person", (BaseModel,), {"__annotations__": {expected: str}, "__module__": __name__}
    )
    assert infer_mapping(model, {observed: "Ada"}) == {observed: expected}
    assert getattr(validate_response(model, {observed: "Ada"}, {observed: expected}), expected)


def test_ambiguous_ties_are_left_unmapped_and_reported() -> None:
    class Person(BaseModel):
        name: str

    diff = diff_payload(Person, {"first_name": "Ada", "last_name": "Lovelace"})
    assert diff.mapping == {}
    assert diff.ambiguous == {"name": ["first_name", "last_name"]}
    with pytest.raises(SchemaMismatch, match="ambiguous") as caught:
        validate_response(Person, {"first_name": "Ada", "last_name": "Lovelace"})
    assert caught.value.mapping == {}


def test_one_observed_field_never_fills_two_expected_ones() -> None:
    class Person(BaseModel):
        home_email: str
        work_email: str

    diff = diff_payload(Person, {"email": "a@b.com"})
    assert diff.mapping == {}
    assert diff.ambiguous == {"home_email": ["email"], "work_email": ["email"]}


def test_value_evidence_picks_the_email_looking_candidate() -> None:
    class Person(BaseModel):
        email: str

    payload = {"email_status": "bounced", "email_address": "a@b.com"}
    assert infer_mapping(Person, payload) == {"email_address": "email"}


def test_email_named_fields_of_other_kinds_need_no_email_value() -> None:
    class Person(BaseModel):
        email_verified: bool
        email_status: str
        homepage_url: str

    payload = {
        "emailVerified": "true",
        "emailStatus": "bounced",
        "homepageURL": "not a url",
        "homepage_link": "https://ada.example",
    }
    assert infer_mapping(Person, payload) == {
        "emailVerified": "email_verified",
        "emailStatus": "email_status",
        "homepage_link": "homepage_url",  # homepageURL is the closer name but not a URL
    }


def test_value_evidence_rejects_a_wrong_typed_candidate() -> None:
    class Deal(BaseModel):
        amount: float

    assert infer_mapping(Deal, {"amount_label": "high"}) == {}
    assert infer_mapping(Deal, {"amount_value": "12.5"}) == {"amount_value": "amount"}


def test_exact_type_beats_coercible_type() -> None:
    class Deal(BaseModel):
        amount: float

    payload = {"amount_text": "12.5", "amount_value": 12.5}
    assert infer_mapping(Deal, payload) == {"amount_value": "amount"}


def test_unrelated_names_are_not_mapped() -> None:
    class Person(BaseModel):
        email: str

    diff = diff_payload(Person, {"hs_new_prop": "a@b.com"})
    assert diff.mapping == {}
    assert diff.unresolved == ["email"]


def test_aliases_are_the_wire_names() -> None:
    class Person(BaseModel):
        first_name: str = Field(alias="firstName")
        last_name: str = Field(alias="lastName")

    assert diff_payload(Person, {"firstName": "Ada", "lastName": "L"}) == SchemaDiff()
    diff = diff_payload(Person, {"firstName": "Ada", "surname": "L", "last_name": "L"})
    assert diff.missing == ["lastName"]
    assert diff.mapping == {"last_name": "lastName"}
    assert validate_response(Person, {"firstName": "Ada", "last_name": "L"}, diff.mapping)


def test_python_field_name_is_name_evidence_too() -> None:
    class Person(BaseModel):
        surname: str = Field(alias="ln")

    diff = diff_payload(Person, {"sur_name": "L"})
    assert diff.missing == ["ln"]
    assert diff.mapping == {"sur_name": "ln"}


def test_optional_nested_model_is_walked() -> None:
    class Owner(BaseModel):
        email: str

    class Deal(BaseModel):
        owner: Owner | None = None

    diff = diff_payload(Deal, {"owner": {"emailAddress": "a@b.com"}})
    assert diff.mapping == {"owner.emailAddress": "owner.email"}
    assert diff_payload(Deal, {"owner": None}) == SchemaDiff()


def test_forbidding_model_accepts_added_fields() -> None:
    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")
        email: str

    assert validate_response(Strict, {"email": "a@b.com", "hs_new_prop": "x"}).email == "a@b.com"


def test_non_object_payload_reports_every_required_field_missing() -> None:
    diff = diff_payload(Contact, ["not", "an", "object"])
    assert diff.missing == ["properties"]
    with pytest.raises(SchemaMismatch, match="missing properties"):
        validate_response(Contact, "truncated")


def test_apply_mapping_does_not_mutate_the_input() -> None:
    payload: dict[str, Any] = copy.deepcopy(NEW)
    before = copy.deepcopy(payload)
    moved = apply_mapping(payload, {"properties.email_address": "properties.email"})
    assert payload == before
    assert moved["properties"] == {"email": "a@b.com", "amount": 1000.5, "hs_new_prop": "x"}
    moved["properties"]["amount"] = 0
    assert payload["properties"]["amount"] == 1000.5


def test_apply_mapping_moves_across_levels_and_skips_what_it_cannot_do() -> None:
    payload = {"props": {"mail": "a@b.com"}, "email": "keep@b.com", "other": 1}
    moved = apply_mapping(
        payload,
        {
            "props.mail": "properties.email",
            "props": "properties",
            "missing.key": "somewhere",
            "other": "email",  # target exists: not clobbered
        },
    )
    assert moved == {"properties": {"email": "a@b.com"}, "email": "keep@b.com", "other": 1}
