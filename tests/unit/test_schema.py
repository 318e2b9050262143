"""The evidence rules behind schema adaptation (``healing.schema`` helpers, exercised through
``healing.adaptation.adapt``, the one rename engine), and ``apply_mapping``."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from healing.adaptation import adapt
from healing.schema import apply_mapping, field_format


class Properties(BaseModel):
    email: str
    amount: float


class Contact(BaseModel):
    id: str | None = None
    properties: Properties


OLD = {"id": "123", "properties": {"email": "a@b.com", "amount": "1000.50"}}
NEW = {"properties": {"email_address": "a@b.com", "amount": 1000.5, "hs_new_prop": "x"}}


def test_old_shape_still_validates_with_string_to_number_coercion() -> None:
    found = adapt(Contact, OLD)
    assert found.ok and found.known
    assert found.data is not None and found.data["properties"]["amount"] == 1000.5


def test_hubspot_rename_is_found_nested_and_the_new_field_kept() -> None:
    found = adapt(Contact, NEW)
    assert found.ok and found.automatic
    assert found.renames == {"properties.email_address": "properties.email"}
    assert found.extra == {"properties.hs_new_prop": "x"}
    assert found.data == {"id": None, "properties": {"email": "a@b.com", "amount": 1000.5}}
    assert "removed id" not in {c.describe() for c in found.changes}  # optional: not drift


def test_a_refusal_names_fields_but_never_values() -> None:
    secret = {"properties": {"email_address": "jane.doe@example.com", "amount": "n/a-9931"}}
    found = adapt(Contact, secret)
    assert not found.ok
    text = found.explain()
    assert "properties.amount" in text
    assert "jane.doe" not in text and "9931" not in text


def test_numbers_are_coerced_to_string_fields() -> None:
    class Deal(BaseModel):
        model_config = ConfigDict(strict=True)
        amount: str
        code: str | None = None
        tags: list[str] = []
        count: int | str = 0

    found = adapt(Deal, {"amount": 1000.5, "code": 7, "tags": [1, "b"], "count": 3})
    assert found.data == {"amount": "1000.5", "code": "7", "tags": ["1", "b"], "count": 3}


def test_booleans_are_not_coerced_to_strings() -> None:
    class Flag(BaseModel):
        label: str

    found = adapt(Flag, {"label": True})
    assert not found.ok
    assert "label (string_type)" in found.explain()


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
def test_case_style_renames_apply_alone(expected: str, observed: str) -> None:
    model: type[BaseModel] = type(
        "Person", (BaseModel,), {"__annotations__": {expected: str}, "__module__": __name__}
    )
    found = adapt(model, {observed: "Ada"})
    assert found.ok and found.automatic
    assert found.renames == {observed: expected}
    assert found.data == {expected: "Ada"}


def test_two_name_only_candidates_are_proposed_with_both_shown() -> None:
    class Person(BaseModel):
        name: str

    found = adapt(Person, {"first_name": "Ada", "last_name": "Lovelace"})
    assert not found.automatic
    assert sorted(c.observed for c in found.candidates) == ["first_name", "last_name"]


def test_one_observed_field_never_fills_two_expected_ones() -> None:
    class Person(BaseModel):
        home_email: str
        work_email: str

    found = adapt(Person, {"email": "a@b.com"})
    assert not found.ok
    assert len(found.renames) <= 1


def test_value_evidence_picks_the_email_looking_candidate() -> None:
    class Person(BaseModel):
        email: str

    found = adapt(Person, {"email_status": "bounced", "email_address": "a@b.com"})
    assert found.ok and found.automatic
    assert found.renames == {"email_address": "email"}
    assert found.extra == {"email_status": "bounced"}


def test_the_format_comes_from_the_last_name_word_or_the_annotation() -> None:
    class Person(BaseModel):
        email_verified: bool
        email_status: str
        homepage_url: str
        mail_server: str
        work_email: str
        email_address: str
        created_at: str
        created_by: str

    fields = Person.model_fields
    formats = {name: field_format(name, info) for name, info in fields.items()}
    assert formats == {
        "email_verified": None,
        "email_status": None,
        "homepage_url": "url",
        "mail_server": None,
        "work_email": "email",
        "email_address": "email",
        "created_at": "date",
        "created_by": None,
    }


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
    found = adapt(Person, payload)
    assert found.ok
    assert found.renames == {
        "emailVerified": "email_verified",
        "emailStatus": "email_status",
        "homepage_link": "homepage_url",  # homepageURL is the closer name but not a URL
    }


def test_value_evidence_rejects_a_wrong_typed_candidate() -> None:
    class Deal(BaseModel):
        amount: float

    assert not adapt(Deal, {"amount_label": "high"}).ok
    coerced = adapt(Deal, {"amount_value": "12.5"})
    assert coerced.ok and coerced.renames == {"amount_value": "amount"}
    assert not coerced.automatic  # a partial name: a human confirms


def test_a_value_without_format_and_an_unrelated_name_is_not_mapped() -> None:
    class Person(BaseModel):
        email: str

    found = adapt(Person, {"hs_new_prop": "x"})
    assert not found.ok
    assert found.missing == ["email"]


def test_aliases_are_the_wire_names() -> None:
    class Person(BaseModel):
        first_name: str = Field(alias="firstName")
        last_name: str = Field(alias="lastName")

    assert adapt(Person, {"firstName": "Ada", "lastName": "L"}).known
    found = adapt(Person, {"firstName": "Ada", "surname": "L", "last_name": "L"})
    assert found.missing == [] and found.ok
    assert found.renames == {"last_name": "lastName"}


def test_python_field_name_is_name_evidence_too() -> None:
    class Person(BaseModel):
        surname: str = Field(alias="ln")

    found = adapt(Person, {"sur_name": "L"})
    assert found.ok and found.renames == {"sur_name": "ln"}


def test_optional_nested_model_is_walked() -> None:
    class Owner(BaseModel):
        email: str

    class Deal(BaseModel):
        owner: Owner | None = None

    found = adapt(Deal, {"owner": {"emailAddress": "a@b.com"}})
    assert found.ok and found.renames == {"owner.emailAddress": "owner.email"}
    assert adapt(Deal, {"owner": None}).known


def test_forbidding_model_accepts_added_fields() -> None:
    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")
        email: str

    found = adapt(Strict, {"email": "a@b.com", "hs_new_prop": "x"})
    assert found.ok and found.known and found.data == {"email": "a@b.com"}
    assert found.extra == {"hs_new_prop": "x"}


def test_a_non_object_payload_cannot_adapt_and_says_what_it_is() -> None:
    assert adapt(Contact, ["not", "an", "object"]).reasons == [
        "the response is array, not an object"
    ]
    assert adapt(Contact, "truncated").reasons == ["the response is string, not an object"]


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
