"""The inbox page of ``healing serve``, in headless Debian Chromium driven by Playwright.

The stack of tests/e2e/test_serve.py (a healing worker in this process, a chaos CRM whose
``/contacts/missing-*`` answer 404, the app under uvicorn on a free 127.0.0.1 port). The page
lists the paused workflow with what failed and what was tried; a click without the token is
refused and changes nothing; with the token, a click completes the workflow and the live
events panel (EventSource on the SSE endpoint) shows the decision as it happens. The edit
form sends ``edit_and_retry`` with a JSON patch. Nothing is downloaded: never
``playwright install``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from healing.devserver import DevServer
from tests.conftest import require_service
from tests.e2e.helpers import wait_until_awaiting
from tests.e2e.test_serve import (
    ServeStack,
    decision_events,
    query,
    serve_stack,
    wait_until_listed,
)
from tests.e2e.test_web_ui import CHROMIUM, CHROMIUM_ARGS

STEP_MS = 20_000


@pytest.fixture(scope="module")
def chromium() -> Path:
    """The Debian browser and the Playwright package, or a skip (a failure in CI)."""
    if not CHROMIUM.exists():
        require_service("chromium", f"{CHROMIUM} is missing (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        require_service("chromium", "the playwright package is missing (pip install playwright)")
    return CHROMIUM


@pytest.fixture(scope="module")
async def stack(dev_server: DevServer) -> AsyncIterator[ServeStack]:
    async with serve_stack(dev_server) as s:
        yield s


@contextlib.asynccontextmanager
async def inbox_page(chromium: Path, url: str, shot: Path) -> AsyncIterator[Any]:
    """A page on the inbox; a screenshot of it when the block fails."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        page = None
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(STEP_MS)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(url, wait_until="domcontentloaded")
            yield page
            assert errors == [], f"the page raised: {errors}"
        except BaseException:
            if page is not None:
                with contextlib.suppress(Exception):
                    await page.screenshot(path=str(shot), full_page=True, timeout=5_000)
                    print(f"screenshot: {shot}")
            raise
        finally:
            await browser.close()


async def test_inbox_decides_a_paused_workflow_and_shows_its_events_live(
    stack: ServeStack, chromium: Path, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    wf = await stack.start("missing-browser", prefix="inbox")
    (esc,) = (await wait_until_awaiting(stack.client, wf)).open_escalations
    offered = [o.option for o in esc.options]
    assert "skip" in offered
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=20) as http:
        await wait_until_listed(http, wf)  # the page lists from visibility

    async with inbox_page(chromium, f"{stack.base_url}/", tmp_path / "inbox.png") as page:
        card = page.locator(f'li.card[data-workflow-id="{wf}"]')
        await expect(card).to_be_visible()
        for text in ("NOT_FOUND", "crm.get_contact", "HTTP 404", "What was tried:"):
            await expect(card).to_contain_text(text)
        await expect(card.locator(".tried li").first).to_contain_text("escalate")
        assert await card.locator(".options button").all_inner_texts() == offered

        # The live panel follows the workflow before anything is decided.
        await card.get_by_role("button", name="Watch events").click()
        events = page.locator("#events")
        await expect(events).to_contain_text("escalate escalated (NOT_FOUND)")
        await expect(page.locator("#live-state")).to_contain_text("RUNNING, healing awaiting")

        # Without the token: refused, and the workflow is untouched.
        skip = card.get_by_role("button", name="skip", exact=True)
        await skip.click()
        await expect(card.locator(".result")).to_contain_text("skip refused (401)")
        assert (await query(stack.client, wf)).state == "awaiting_decision"
        assert await decision_events(stack.client, wf) == []

        # With the token (kept in sessionStorage, the field emptied): accepted, and the
        # decision and the workflow's end arrive on the open event stream.
        await page.locator("#token").fill(stack.token)
        await page.get_by_role("button", name="Use token").click()
        await expect(page.locator("#token-state")).to_have_text("token set for this tab")
        assert await page.locator("#token").input_value() == ""
        await skip.click()
        await expect(card.locator(".result")).to_contain_text("skip accepted")
        await expect(events).to_contain_text("decision decided (NOT_FOUND): skip by web")
        await expect(events).to_contain_text("workflow closed: COMPLETED")
        await expect(page.locator("#live-state")).to_have_text("closed: COMPLETED")
        assert stack.token not in await page.locator("body").inner_text()

    result: dict[str, Any] = await asyncio.wait_for(
        stack.client.get_workflow_handle(wf).result(), 20
    )
    (step,) = result["steps"]
    assert step["status"] == "skipped"
    assert step["healing"]["decision"] == "skip"


async def test_inbox_edit_form_sends_edit_and_retry_with_the_patch(
    stack: ServeStack, chromium: Path, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    wf = await stack.start("missing-edit", prefix="inbox-edit")
    (esc,) = (await wait_until_awaiting(stack.client, wf)).open_escalations
    assert "edit_and_retry" in [o.option for o in esc.options]
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=20) as http:
        await wait_until_listed(http, wf)

    async with inbox_page(chromium, f"{stack.base_url}/", tmp_path / "edit.png") as page:
        await page.locator("#token").fill(stack.token)
        await page.get_by_role("button", name="Use token").click()
        card = page.locator(f'li.card[data-workflow-id="{wf}"]')
        patch = card.get_by_role("textbox", name="input patch (JSON) for edit_and_retry")
        edit = card.get_by_role("button", name="edit_and_retry", exact=True)
        await patch.fill("{not json")
        await edit.click()
        await expect(card.locator(".result")).to_contain_text("the input patch is not JSON")
        await patch.fill('{"params": {"id": "42"}}')
        await edit.click()
        await expect(card.locator(".result")).to_contain_text("edit_and_retry accepted")
        await expect(page.locator("#events")).to_contain_text("workflow closed: COMPLETED")

    result: dict[str, Any] = await asyncio.wait_for(
        stack.client.get_workflow_handle(wf).result(), 20
    )
    (step,) = result["steps"]
    assert step["status"] == "ok"
    assert step["result"]["id"] == "42"  # the patched input reached the API
    assert step["healing"]["decisions"] == ["edit_and_retry"]
