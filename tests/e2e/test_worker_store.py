"""``python worker.py`` with a HEALING_STORE it cannot use: a clear message, exit non-zero.

The message names HEALING_STORE and never the URL's password; no traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from healing.devserver import DevServer, find_free_port
from tests.e2e.helpers import ROOT, run

WORKER = str(ROOT / "worker.py")
PASSWORD = "Sup3r-s3cret.pw"


def catalog(tmp_path: Path) -> Path:
    path = tmp_path / "connectors.toml"
    path.write_text(
        '[connectors.crm]\nbase_url = "http://127.0.0.1:9"\n'
        '[connectors.crm.operations.get_contact]\npath = "/contacts/{id}"\n'
    )
    return path


def assert_clear(code: int, out: str, err: str, *, mentions: str) -> None:
    assert code != 0, (out, err)
    assert "HEALING_STORE" in err and mentions in err, err
    assert PASSWORD not in out + err
    assert "Traceback" not in err, err


@pytest.mark.parametrize(
    ("url", "mentions"),
    [
        (f"postgresql://healing:{PASSWORD}@127.0.0.1:notaport/healing", "port"),
        (f"mysql://healing:{PASSWORD}@127.0.0.1/healing", "unsupported scheme"),
        ("sqlite://relative.db", "has no host"),
    ],
)
async def test_malformed_store_url(tmp_path: Path, url: str, mentions: str) -> None:
    # Checked before the worker connects anywhere: no Temporal server is needed (an address
    # nothing listens on makes sure a late check would show up as the wrong message).
    env = {
        "HEALING_CONNECTORS": str(catalog(tmp_path)),
        "HEALING_STORE": url,
        "TEMPORAL_ADDRESS": f"127.0.0.1:{find_free_port()}",
    }
    code, out, err = await run(sys.executable, WORKER, env=env, within=60)
    assert_clear(code, out, err, mentions=mentions)
    assert "malformed" in err


async def test_unreachable_postgres_store(dev_server: DevServer, tmp_path: Path) -> None:
    url = f"postgresql://healing:{PASSWORD}@127.0.0.1:{find_free_port()}/healing"
    env = {
        "HEALING_CONNECTORS": str(catalog(tmp_path)),
        "HEALING_STORE": url,
        "TEMPORAL_ADDRESS": dev_server.address,
        "HEALING_TASK_QUEUE": f"bad-store-{tmp_path.name}",
    }
    code, out, err = await run(sys.executable, WORKER, env=env, within=15)
    assert_clear(code, out, err, mentions="cannot connect")
    assert "postgresql://healing:***@127.0.0.1" in err
