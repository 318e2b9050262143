"""Schema mappings and drift records on every store backend (SQLite, PostgreSQL, Supabase REST):
what one worker learns, another reads; counts from concurrent writers all land."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from healing.adaptation import Change, adapt
from healing.drift import DriftBook
from healing.testing.drift import drift_body
from tests.store.conftest import StoreFactory


class Person(BaseModel):
    id: str
    last_name: str
    email: str


async def test_a_mapping_learned_by_one_worker_is_active_for_another(
    make_store: StoreFactory,
) -> None:
    one, two = make_store(), make_store()
    await one.migrate()
    learner, reader = DriftBook(one), DriftBook(two, cache_s=0)
    found = adapt(Person, drift_body("hubspot", {"id": "1", "last_name": "L", "email": "a@b.com"}))
    learned = await learner.learn("crm", "get", found, status="active", decided_by="healing")
    seen = await reader.active("crm", "get")
    assert seen is not None and seen.mapping_id == learned.mapping_id
    assert seen.renames == {"email_address": "email"} and seen.version == 1
    decided = await reader.decide(learned.mapping_id, "rejected", decided_by="ada")
    assert decided.version == 2
    assert await DriftBook(one, cache_s=0).active("crm", "get") is None


async def test_drift_counts_from_concurrent_workers_all_land(make_store: StoreFactory) -> None:
    stores = [make_store() for _ in range(3)]
    await stores[0].migrate()
    books = [DriftBook(s) for s in stores]
    added = Change("added", "hs_new_prop", to_type="string")
    await asyncio.gather(*(b.record("crm", "get", [added]) for b in books for _ in range(2)))
    [record] = await books[0].records()
    assert record.count == 6
