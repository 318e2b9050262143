"""Wrong endings of issue 6 (items 2, 4, 5) through a real worker and a real HTTP server.

``IntegrationWorkflow`` + ``IntegrationActivities`` + ``HealingPlugin`` on the time-skipping
server, calling ``ChaosAPI`` on 127.0.0.1. Each test failed on the old code:

* a refused request (missing path param, unknown operation) failed the workflow at once, with
  no escalation to fix it by;
* a 50 MB answer was downloaded on every attempt and retried for ever;
* a 404 whose body is JSON nested 100,000 deep was retried as INTERNAL_ERROR.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.client import WorkflowHandle

from activities import IntegrationActivities
from healing import HealingConfig, HealingPlugin
from healing.catalog import ConnectorCatalog
from healing.client import decide
from healing.testing import BodyFault, FaultPlan, FaultRule
from healing.testing.chaos import ChaosAPI
from healing.types import ErrorType, Escalation, HealingStatus
from tests.temporal.harness import Harness
from workflows import IntegrationWorkflow

MIB = 1024 * 1024
# Short waits: nothing here should wait at all, and a regression must not stall the suite.
CONFIG = HealingConfig.load(backoff={"initial_s": 0.1, "max_s": 0.5, "jitter": 0.0})


@pytest.fixture
async def crm() -> AsyncIterator[ChaosAPI]:
    async with ChaosAPI() as api:
        yield api


@pytest.fixture
async def acts(crm: ChaosAPI) -> AsyncIterator[IntegrationActivities]:
    # crm_eu is an alternative: endings about the request itself must not offer a reroute.
    catalog = ConnectorCatalog.from_toml(f"""
[connectors.crm]
base_url = "{crm.url}"
alternatives = ["crm_eu"]
[connectors.crm.operations.get_contact]
path = "/contacts/{{id}}"
[connectors.crm_eu]
base_url = "{crm.url}"
[connectors.crm_eu.operations.get_contact]
path = "/contacts/{{id}}"
""")
    async with IntegrationActivities(catalog) as activities:
        yield activities


def plugin(acts: IntegrationActivities) -> HealingPlugin:
    return HealingPlugin(CONFIG, alternatives=acts.catalog.alternatives())


async def start(harness: Harness, step: dict[str, Any]) -> WorkflowHandle[Any, Any]:
    return await harness.start({"steps": [step]}, workflow=IntegrationWorkflow.run)


async def escalation(harness: Harness, handle: WorkflowHandle[Any, Any]) -> Escalation:
    status: HealingStatus = await harness.wait_for(
        handle,
        lambda s: s.state == "awaiting_decision" and bool(s.open_escalations),
        "an open escalation",
        max_s=60,
    )
    esc = status.open_escalation
    assert esc is not None
    return esc


def options(esc: Escalation) -> list[str]:
    return [o.option for o in esc.options]


def always(fault: BodyFault) -> FaultPlan:
    return FaultPlan(rules=[FaultRule(path="/contacts/*", always=fault)])


# --- item 2: a refused request escalates, and edit_and_retry fixes it -----------------------


async def test_missing_path_param_escalates_and_edit_and_retry_completes(
    harness: Harness, acts: IntegrationActivities, crm: ChaosAPI
) -> None:
    async with harness.worker(
        acts.call_integration, plugin=plugin(acts), workflows=[IntegrationWorkflow]
    ):
        handle = await start(harness, {"connector": "crm", "operation": "get_contact"})
        esc = await escalation(harness, handle)
        assert esc.error_type is ErrorType.BAD_REQUEST
        assert "edit_and_retry" in options(esc)
        assert "reroute" not in options(esc)  # another region would refuse it the same way
        assert "needs params id" in esc.explanation
        assert crm.stats().total_calls == 0  # refused before anything was sent

        await decide(
            harness.client, handle.id, "edit_and_retry", input_patch={"params": {"id": "42"}}
        )
        result = await handle.result()
    step = result["steps"][0]
    assert step["status"] == "ok"
    assert step["result"]["id"] == "42"
    assert crm.stats().calls_to("GET", "/contacts/42") == 1


async def test_unknown_operation_escalates_instead_of_failing(
    harness: Harness, acts: IntegrationActivities, crm: ChaosAPI
) -> None:
    async with harness.worker(
        acts.call_integration, plugin=plugin(acts), workflows=[IntegrationWorkflow]
    ):
        handle = await start(
            harness, {"connector": "crm", "operation": "get_contcat", "params": {"id": "1"}}
        )
        esc = await escalation(harness, handle)
        assert esc.error_type is ErrorType.BAD_REQUEST
        assert "has no operation 'get_contcat'" in esc.explanation
        assert "edit_and_retry" in options(esc)

        patch = {"operation": "get_contact"}
        await decide(harness.client, handle.id, "edit_and_retry", input_patch=patch)
        result = await handle.result()
    assert result["steps"][0]["result"]["id"] == "1"
    assert crm.stats().total_calls == 1


# --- item 4: a response over the payload limit ends at once, read only up to the limit -------


async def test_a_50_mb_answer_escalates_response_too_large_after_one_request(
    harness: Harness, acts: IntegrationActivities, crm: ChaosAPI
) -> None:
    crm.set_plan(always(BodyFault(shape="huge", size_bytes=50 * MIB)))  # chunked: no length
    async with harness.worker(
        acts.call_integration, plugin=plugin(acts), workflows=[IntegrationWorkflow]
    ):
        handle = await start(
            harness, {"connector": "crm", "operation": "get_contact", "params": {"id": "7"}}
        )
        esc = await escalation(harness, handle)
    assert esc.error_type is ErrorType.RESPONSE_TOO_LARGE
    assert not esc.classification.retryable
    assert "max_response_bytes" in esc.explanation
    assert "edit_and_retry" in esc.explanation  # says what to do
    assert "edit_and_retry" in options(esc)
    assert "reroute" not in options(esc)
    stats = crm.stats()
    assert stats.calls_to("GET", "/contacts/7") == 1
    # The worker hung up near the 1 MiB limit; only socket buffers took more than that.
    assert stats.body_bytes_sent < 16 * MIB


# --- item 5: an unreadable error body keeps its status --------------------------------------


@pytest.mark.parametrize("shape", ["nested", "non_utf8"])
async def test_a_404_with_an_unreadable_body_escalates_not_found_after_one_request(
    harness: Harness, acts: IntegrationActivities, crm: ChaosAPI, shape: str
) -> None:
    crm.set_plan(always(BodyFault(shape=shape, status=404, depth=100_000)))
    async with harness.worker(
        acts.call_integration, plugin=plugin(acts), workflows=[IntegrationWorkflow]
    ):
        handle = await start(
            harness, {"connector": "crm", "operation": "get_contact", "params": {"id": "9"}}
        )
        esc = await escalation(harness, handle)
    assert esc.error_type is ErrorType.NOT_FOUND
    assert esc.classification.status_code == 404
    assert crm.stats().calls_to("GET", "/contacts/9") == 1
