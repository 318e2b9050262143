"""MemoryFleetState behaves as the SQL backends do: the same scenarios as
tests/store/test_fleet_state.py, run on one in-process state shared by every "store"."""

from __future__ import annotations

from typing import Any

import pytest

from healing.store import FleetState
from healing.store.memory import MemoryFleetState
from tests.store import test_fleet_state as scenarios


class _Migrated(MemoryFleetState):
    async def migrate(self) -> list[int]:
        return []


@pytest.mark.parametrize(
    "scenario",
    [
        scenarios.test_one_writer_wins_each_version,
        scenarios.test_a_lease_has_one_holder_and_expires_by_itself,
        scenarios.test_counters_slide_and_add_atomically,
        scenarios.test_slots_are_distinct_and_spaced,
    ],
)
async def test_shared_scenarios(scenario: Any) -> None:
    state = _Migrated()
    await scenario(lambda: state)


async def test_documents() -> None:
    state = _Migrated()
    assert isinstance(state, FleetState)
    await scenarios.test_documents_are_compare_and_swap(state)  # type: ignore[arg-type]
