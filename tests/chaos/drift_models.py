"""Response models of the schema drift tests (imported by ``response_model`` in their catalog,
also by workers in other processes)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class HubSpotProperties(BaseModel):
    email: str
    amount: str


class HubSpotContact(BaseModel):
    """VENDOR-FAULTS #10 before the change: ``{"id", "properties": {"email", "amount"}}``."""

    model_config = ConfigDict(extra="forbid")

    id: str
    properties: HubSpotProperties


class Person(BaseModel):
    """The chaos API's ``/people/{id}`` as it was."""

    id: str
    first_name: str
    last_name: str
    email: str
    amount: float


class Contact(BaseModel):
    """What ``POST /contacts`` echoes: the body sent plus its ``id``."""

    id: str
    name: str
    email: str


class PersonLite(BaseModel):
    """Part of ``/people/{id}``: every other key is an added field (drift that fails nothing)."""

    id: str
    email: str
