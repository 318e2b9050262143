"""The Temporal Web UI shows a paused workflow's escalation and can answer it.

A healing worker runs in this process (IntegrationWorkflow over a chaos CRM whose
``/contacts/missing-*`` always answer 404), against the dev server's own Web UI. Headless
Debian ``chromium`` driven by Playwright reads the Current Details on the "User Metadata" tab
(human durations, "Tried" as a list), finds the workflow in the
``HealingStatus="awaiting_decision"`` list, and sends the ``escalation_decision`` signal through
"More Actions -> Send a Signal", as a user would: an invalid one shows its rejection in Current
Details, a valid one resumes the workflow.
Nothing is downloaded: never ``playwright install``; CI installs the Debian package.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from temporalio.client import Client

from healing.client import decide
from healing.config import BackoffPolicy, HealingConfig
from healing.devserver import DevServer
from healing.plugin import HealingPlugin
from healing.runner import build_worker, connect
from healing.testing import ChaosAPI, FaultPlan, FaultRule, StatusFault
from tests.conftest import require_service
from tests.e2e.helpers import crm_catalog, get_contact, wait_until_awaiting

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STEP_MS = 20_000  # every UI step is bounded; the detail page never reaches networkidle
AWAITING = 'HealingStatus="awaiting_decision"'


@dataclass
class UiStack:
    server: DevServer
    ui_url: str
    chromium: Path
    client: Client
    task_queue: str


@pytest.fixture(scope="module")
def chromium() -> Path:
    """The Debian browser and the Playwright package, or a skip (a failure in CI)."""
    if not CHROMIUM.exists():
        require_service("chromium", f"{CHROMIUM} is missing (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        require_service("chromium", "the playwright package is missing (pip install playwright)")
    return CHROMIUM


@pytest.fixture(scope="module")
async def ui_stack(chromium: Path, dev_server: DevServer) -> AsyncIterator[UiStack]:
    assert dev_server.ui_url is not None, "the session dev server runs without its Web UI"
    plan = FaultPlan(
        rules=(
            FaultRule(path="/contacts/missing-*", always=StatusFault(status=404, vendor="hubspot")),
        )
    )
    config = HealingConfig.load(backoff=BackoffPolicy(initial_s=0.2, max_s=1.0))
    async with ChaosAPI(plan) as chaos:
        catalog = crm_catalog(chaos.url)
        plugin = HealingPlugin(config, alternatives=catalog.alternatives())
        client = await connect(dev_server.address, dev_server.namespace, plugin)
        task_queue = f"e2e-ui-{uuid.uuid4()}"
        worker, acts = build_worker(client, config, catalog, task_queue=task_queue)
        async with worker:  # live: Current Details come from the workflow's metadata query
            yield UiStack(dev_server, dev_server.ui_url, chromium, client, task_queue)
        await acts.aclose()


async def wait_until_listed(client: Client, query: str, workflow_id: str, within: float) -> None:
    """Visibility (the HealingStatus attribute) lags the workflow a little."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        async for wf in client.list_workflows(query):
            if wf.id == workflow_id:
                return
        await asyncio.sleep(0.3)
    raise AssertionError(f"{workflow_id} is not listed by {query!r} within {within}s")


async def open_current_details(page: Any, base: str, workflow_id: str) -> Any:
    """The workflow's page, User Metadata tab: the Current Details iframe's body."""
    from playwright.async_api import expect

    await page.goto(f"{base}/workflows/{workflow_id}", wait_until="domcontentloaded")
    await page.get_by_test_id("user-metadata-tab").click()
    details = page.frame_locator("#user-metadata-current-details").locator("body")
    await expect(details).to_contain_text("Needs a decision: NOT_FOUND", timeout=STEP_MS)
    return details


async def send_signal(page: Any, base: str, workflow_id: str, body: str) -> None:
    """More Actions -> Send a Signal -> escalation_decision with ``body``, as a user would."""
    from playwright.async_api import expect

    await page.goto(f"{base}/workflows/{workflow_id}", wait_until="domcontentloaded")
    await page.get_by_role("button", name="More Actions").click()
    await page.get_by_role("menuitem", name="Send a Signal").click()
    dialog = page.get_by_role("dialog", name="Send a Signal")
    await dialog.get_by_test_id("signal-select").click(force=True)  # a disabled <input>
    await page.get_by_role("option", name="escalation_decision", exact=True).click()
    data = dialog.get_by_role("textbox", name="Data")  # a CodeMirror editor
    await data.fill(body)
    await expect(data).to_have_text(body, timeout=STEP_MS)
    await dialog.get_by_role("button", name="Submit").click()
    toast = page.locator("#workflow-signal-success-toast")
    await expect(toast).to_contain_text("Workflow signaled.", timeout=STEP_MS)


async def test_web_ui_shows_the_escalation_and_its_signal_resumes_the_workflow(
    ui_stack: UiStack, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    client = ui_stack.client
    wf = f"e2e-ui-missing-{uuid.uuid4().hex[:8]}"
    await client.start_workflow(
        "IntegrationWorkflow", get_contact("missing-ui"), id=wf, task_queue=ui_stack.task_queue
    )
    (first,) = (await wait_until_awaiting(client, wf)).open_escalations
    # A retry that fails again: the second escalation has tried several things.
    await decide(client, wf, "retry", decided_by="e2e")
    deadline = time.monotonic() + 30
    while True:
        (escalation,) = (await wait_until_awaiting(client, wf)).open_escalations
        if escalation.escalation_id != first.escalation_id:
            break
        assert time.monotonic() < deadline, "no second escalation"
        await asyncio.sleep(0.2)
    offered = [o.option for o in escalation.options]
    assert "skip" in offered and "reroute" not in offered
    base = f"{ui_stack.ui_url}/namespaces/{ui_stack.server.namespace}"

    async with async_playwright() as pw:
        # launch() gives the browser a fresh temporary profile (its own --user-data-dir).
        browser = await pw.chromium.launch(
            executable_path=str(ui_stack.chromium), args=CHROMIUM_ARGS
        )
        page = None
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(STEP_MS)

            # (1) the workflow page: User Metadata -> Current Details explain the escalation
            details = await open_current_details(page, base, wf)
            for text in ("crm.get_contact", "HTTP 404", "escalation_decision"):
                await expect(details).to_contain_text(text, timeout=STEP_MS)
            # Human durations: the 7-day escalation timeout, never "604800s".
            await expect(details).to_contain_text("without a decision in 7d", timeout=STEP_MS)
            body = await details.inner_text()
            assert not re.search(r"\b\d{3,}s\b", body), body
            # "Tried" renders as a list: each thing tried is its own <li>, time first.
            tried = await details.locator("li", has_text=re.compile(r" UTC · ")).all_inner_texts()
            assert len(tried) == len(escalation.attempts) >= 3, tried
            assert all(re.match(r"\d\d:\d\d:\d\d UTC · ", t) for t in tried), tried
            assert any("decided" in t and "retry by e2e" in t for t in tried), tried
            options = details.locator("h3:has-text('Options') + ul > li > strong")
            assert await options.all_inner_texts() == offered

            # (2) the list of workflows waiting for a decision names it
            await wait_until_listed(client, AWAITING, wf, within=20)
            await page.goto(
                f"{base}/workflows?query={quote(AWAITING, safe='')}", wait_until="domcontentloaded"
            )
            listed = page.get_by_role("link", name=wf, exact=True)
            await expect(listed).to_be_visible(timeout=STEP_MS)
            # As the README says: Configure Columns -> add the custom search attributes; the
            # row then says why it waits.
            await page.get_by_role("button", name="Configure Columns").first.click()
            for column in ("HealingStatus", "HealingErrorType"):
                await page.get_by_role("button", name=f"Add {column} column").click()
            await page.get_by_role("button", name="Close Workflows Table configuration").click()
            headers = page.locator("thead th")
            await expect(headers.filter(has_text="HealingErrorType")).to_be_visible()
            row = page.get_by_role("row").filter(has=listed)
            await expect(row).to_contain_text("awaiting_decision", timeout=STEP_MS)
            await expect(row).to_contain_text("NOT_FOUND", timeout=STEP_MS)

            # (3) an invalid signal: "Workflow signaled.", and Current Details say why not
            await send_signal(page, base, wf, '{"option": "reroute", "decided_by": "web-ui"}')
            details = await open_current_details(page, base, wf)
            rejected = re.compile(  # the UI's markdown turns ' into typographic quotes
                r"Last decision rejected: option .reroute. is not offered for NOT_FOUND"
            )
            await expect(details).to_contain_text(rejected, timeout=STEP_MS)
            await expect(details).to_contain_text("sent by web-ui", timeout=STEP_MS)

            # (4) a valid one: {"option": "skip"} resumes the workflow
            await send_signal(page, base, wf, '{"option": "skip"}')
        except BaseException:
            if page is not None:  # best effort: what the page showed when it went wrong
                shot = tmp_path / "web-ui-failure.png"
                with contextlib.suppress(Exception):
                    await page.screenshot(path=str(shot), full_page=True, timeout=5_000)
                    print(f"screenshot: {shot}")
            raise
        finally:
            await browser.close()

    result: dict[str, Any] = await asyncio.wait_for(client.get_workflow_handle(wf).result(), 20)
    (step,) = result["steps"]
    assert step["status"] == "skipped"
    assert step["healing"]["decision"] == "skip"
