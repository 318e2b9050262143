"""Response models of benchmarks/schema_drift.py (imported by the workers it starts, old and
new code alike: only pydantic)."""

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
