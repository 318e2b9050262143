"""Shared fixtures and helpers for every test tier.

pytest-asyncio 1.x runs every async test and fixture on one session-scoped loop (configured in
pyproject.toml); there is deliberately no ``event_loop`` / ``event_loop_policy`` fixture here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from healing.devserver import DevServer, DevServerError, find_temporal_cli

REQUIRE_SERVICES_ENV = "HEALING_REQUIRE_SERVICES"
_TESTS = Path(__file__).resolve().parent
_TIER_MARKERS = {"temporal": "temporal", "chaos": "chaos"}  # tests/<folder>/ -> marker


def require_service(name: str, reason: str) -> NoReturn:
    """Skip the test because ``name`` is unavailable, or fail it when services are required.

    CI sets ``HEALING_REQUIRE_SERVICES=1`` so that a missing server, binary or browser turns
    into a failure instead of a quiet skip.
    """
    if os.environ.get(REQUIRE_SERVICES_ENV) == "1":
        pytest.fail(f"{name} is required ({REQUIRE_SERVICES_ENV}=1) but unavailable: {reason}")
    pytest.skip(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by tier folder, so ``-m "not temporal"`` runs only what needs no server."""
    for item in items:
        here = item.path.resolve().parent
        folder = here.name
        if folder in _TIER_MARKERS and here.parent == _TESTS:
            item.add_marker(getattr(pytest.mark, _TIER_MARKERS[folder]))


@pytest.fixture(scope="session")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """One real Temporal dev server for the session: free ports, state in a temp dir.

    The HealingStatus and HealingErrorType search attributes are registered. Use uuid task
    queues and workflow ids: the server is shared by every test of the session.
    """
    try:
        find_temporal_cli()
    except DevServerError as exc:
        require_service("temporal dev server", str(exc))
    server = DevServer(state_dir=tmp_path_factory.mktemp("devserver"))
    server.start(timeout=60)
    try:
        yield server
    finally:
        server.stop()
