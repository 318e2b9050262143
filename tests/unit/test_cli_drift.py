"""``healing drift``: list, approve, reject and export, against a real SQLite store, no server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from healing.adaptation import Change, adapt
from healing.cli import main
from healing.drift import DriftBook
from healing.store import connect_store
from healing.testing.drift import drift_body


class Person(BaseModel):
    id: str
    last_name: str
    email: str


async def _seed(url: str) -> tuple[str, str]:
    store = await connect_store(url)
    try:
        book = DriftBook(store)
        drifted = {"id": "1", "first_name": "Ada", "last_name": "Lovelace", "email": "a@b.com"}
        review = adapt(Person, drift_body("merge_name", drifted))
        proposal = await book.learn("crm", "get_person", review, status="proposed")
        auto = adapt(Person, {"id": "1", "last_name": "L", "email_address": "a@b.com"})
        active = await book.learn("crm", "get_other", auto, status="active")
        await book.record("crm", "get_other", auto.changes)
        await book.record("crm", "get_other", [Change("added", "hs_new_prop", to_type="string")])
        return proposal.mapping_id, active.mapping_id
    finally:
        await store.close()


async def _status(url: str, mapping_id: str) -> str | None:
    store = await connect_store(url)
    try:
        found = await DriftBook(store).get(mapping_id)
        return found.status if found else None
    finally:
        await store.close()


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path}/healing.db"
    monkeypatch.setenv("HEALING_STORE", url)
    return url


def test_drift_lists_mappings_with_candidates_and_records_without_values(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    proposal, active = asyncio.run(_seed(store_url))
    assert main(["drift"]) == 0
    out = capsys.readouterr().out
    assert proposal in out and active in out
    assert "proposed" in out and "name -> last_name" in out
    assert "name only" in out  # why the candidate was not applied alone
    assert "added hs_new_prop (string)" in out
    assert "a@b.com" not in out and "Lovelace" not in out


def test_drift_approve_and_reject_change_the_status_for_the_fleet(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    proposal, active = asyncio.run(_seed(store_url))
    assert main(["drift", "approve", proposal, "--pin", "--by", "ada", "--no-resume"]) == 0
    assert "is now pinned" in capsys.readouterr().out
    assert asyncio.run(_status(store_url, proposal)) == "pinned"
    assert main(["drift", "reject", active]) == 0
    assert asyncio.run(_status(store_url, active)) == "rejected"
    assert main(["drift", "approve", "m-nope"]) == 1
    err = capsys.readouterr().err
    assert "no schema mapping has id 'm-nope'" in err and proposal in err
    assert main(["drift", "approve"]) == 1
    assert "needs a mapping ID" in capsys.readouterr().err


def test_drift_export_is_the_proposed_response_model_change(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(_seed(store_url))
    assert main(["drift", "export"]) == 0
    export = json.loads(capsys.readouterr().out)
    assert export["crm.get_other"]["rename"] == {"email": "email_address"}
    assert export["crm.get_other"]["add"] == {"hs_new_prop": "string"}
    assert "crm.get_person" not in export  # a proposal is not a change yet
