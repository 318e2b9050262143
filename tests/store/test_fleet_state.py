"""Fleet state (DESIGN s5b) on every backend: versioned documents, leases, counters, slots.

These four shapes carry every decision workers share (credentials and their refresh lease,
breaker state and its probe lease, rate-limit slots, retry budgets, schema mappings), so each
is checked for what a fleet relies on: exactly one winner under concurrency.
"""

from __future__ import annotations

import asyncio

from healing.store import ANY_VERSION, Store
from tests.store.conftest import StoreFactory


async def test_documents_are_compare_and_swap(store: Store) -> None:
    assert await store.state_get("mappings", "crm/get") is None
    assert await store.state_put("mappings", "crm/get", {"a": 1}, expected_version=None, now=10)
    assert (
        await store.state_put("mappings", "crm/get", {"a": 9}, expected_version=None, now=11)
        is None
    )
    entry = await store.state_get("mappings", "crm/get")
    assert entry is not None and (entry.version, entry.value, entry.updated_at) == (1, {"a": 1}, 10)
    assert await store.state_put("mappings", "crm/get", {"a": 2}, expected_version=1, now=12) == 2
    assert (
        await store.state_put("mappings", "crm/get", {"a": 3}, expected_version=1, now=13) is None
    )
    got = ANY_VERSION
    assert (
        await store.state_put("mappings", "crm/get", {"n": [1, "x"]}, expected_version=got, now=14)
        == 3
    )
    assert (
        await store.state_put("mappings", "crm/list", {}, expected_version=ANY_VERSION, now=15) == 1
    )
    assert (
        await store.state_put("drift", "crm/get", {"d": True}, expected_version=None, now=16) == 1
    )
    listed = await store.state_list("mappings")
    assert [(e.key, e.version, e.value) for e in listed] == [
        ("crm/get", 3, {"n": [1, "x"]}),
        ("crm/list", 1, {}),
    ]
    assert not await store.state_delete("mappings", "crm/get", expected_version=2)
    assert await store.state_delete("mappings", "crm/get", expected_version=3)
    assert not await store.state_delete("mappings", "crm/get")
    assert await store.state_get("mappings", "crm/get") is None
    assert (await store.state_get("drift", "crm/get")) is not None


async def test_one_writer_wins_each_version(make_store: StoreFactory) -> None:
    stores = [make_store() for _ in range(4)]
    await stores[0].migrate()
    await stores[0].state_put("credentials", "crm", {"v": 0}, expected_version=None, now=1)
    won = await asyncio.gather(
        *(
            s.state_put("credentials", "crm", {"v": i}, expected_version=1, now=2)
            for i, s in enumerate(stores * 3)
        )
    )
    assert sorted(won, key=lambda v: v or 0)[-1] == 2 and won.count(2) == 1
    assert won.count(None) == len(won) - 1


async def test_a_lease_has_one_holder_and_expires_by_itself(make_store: StoreFactory) -> None:
    stores = [make_store() for _ in range(4)]
    await stores[0].migrate()
    taken = await asyncio.gather(
        *(s.lease_take("refresh:crm", f"w{i}", ttl_s=10, now=100) for i, s in enumerate(stores))
    )
    assert taken.count(True) == 1
    holder = f"w{taken.index(True)}"
    other = "w9"
    first = stores[0]
    assert await first.lease_take("refresh:crm", holder, ttl_s=10, now=105)  # extended to 115
    assert not await first.lease_take("refresh:crm", other, ttl_s=10, now=114.9)
    assert await first.lease_take("refresh:crm", other, ttl_s=10, now=115)  # the holder died
    assert not await first.lease_drop("refresh:crm", holder)
    assert await first.lease_drop("refresh:crm", other)
    assert await first.lease_take("refresh:crm", holder, ttl_s=1, now=116)
    assert await first.lease_take("probe:crm", other, ttl_s=1, now=116)  # names are separate


async def test_counters_slide_and_add_atomically(make_store: StoreFactory) -> None:
    stores = [make_store() for _ in range(3)]
    await stores[0].migrate()
    totals = await asyncio.gather(
        *(s.counter_add("breaker:crm:fail", 10, keep_from=5) for s in stores * 5)
    )
    assert sorted(totals) == list(range(1, 16))
    store = stores[0]
    assert await store.counter_add("breaker:crm:fail", 12, 3, keep_from=5) == 18
    assert await store.counter_add("breaker:crm:calls", 12, keep_from=5) == 1
    sums = await store.counter_sums(
        ["breaker:crm:fail", "breaker:crm:calls", "nobody"], since_bucket=11
    )
    assert sums == {"breaker:crm:fail": 3, "breaker:crm:calls": 1, "nobody": 0}
    assert await store.counter_add("breaker:crm:fail", 20, keep_from=11) == 4  # bucket 10 gone
    assert (await store.counter_sums(["breaker:crm:fail"], since_bucket=0))["breaker:crm:fail"] == 4


async def test_slots_are_distinct_and_spaced(make_store: StoreFactory) -> None:
    stores = [make_store() for _ in range(3)]
    await stores[0].migrate()
    starts = await asyncio.gather(
        *(s.slot_take("rate:crm", spacing_s=0.25, now=1000.0) for s in stores * 8)
    )
    assert sorted(starts) == [1000.0 + 0.25 * i for i in range(24)]
    store = stores[0]
    # Time passed: the next slot is now, not in the past; not_before pushes it.
    assert await store.slot_take("rate:crm", spacing_s=0.25, now=2000.0) == 2000.0
    assert await store.slot_take("rate:crm", spacing_s=0, now=2000.0, not_before=2010.0) == 2010.0
    assert await store.slot_take("rate:crm", spacing_s=0.25, now=2001.0) == 2010.0
    assert await store.slot_take("rate:crm", spacing_s=0.25, now=2001.0) == 2010.25
    assert await store.slot_take("rate:other", spacing_s=1, now=2001.0) == 2001.0
