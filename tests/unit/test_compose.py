"""Structure of docker-compose.temporal.yml (no Docker needed: the file is parsed, not run)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from healing.devserver import DEFAULT_SEARCH_ATTRIBUTES

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.temporal.yml"
REQUIRED_SERVICES = {
    "postgresql",
    "temporal",
    "temporal-admin-tools",
    "temporal-ui",
    "temporal-setup-search-attributes",
}


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict), "the compose file is not a mapping"
    result: dict[str, dict[str, Any]] = document["services"]
    return result


def env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, whichever of the two compose syntaxes it uses."""
    raw = service.get("environment", {})
    if isinstance(raw, list):
        return dict(item.split("=", 1) for item in raw)
    return {key: str(value) for key, value in raw.items()}


def script(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return command if isinstance(command, str) else "\n".join(command)


def image_is_pinned(image: str) -> bool:
    """True for ``name:tag`` with an explicit, versioned tag (not ``latest``)."""
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:  # no tag at all, or the colon belonged to a registry port
        return False
    return tag != "latest" and any(ch.isdigit() for ch in tag)


def container_ports(service: dict[str, Any]) -> set[int]:
    ports: set[int] = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    return ports


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("postgres:16.10", True),
        ("temporalio/ui:2.54.1", True),
        ("registry.local:5000/temporalio/server:1.32.0", True),
        ("postgres", False),
        ("postgres:latest", False),
        ("registry.local:5000/temporalio/server", False),
        ("temporalio/ui:stable", False),
    ],
)
def test_image_pin_check(image: str, pinned: bool) -> None:
    assert image_is_pinned(image) is pinned


def test_required_services_present(services: dict[str, dict[str, Any]]) -> None:
    assert REQUIRED_SERVICES - services.keys() == set()


def test_temporal_waits_for_healthy_postgres(services: dict[str, dict[str, Any]]) -> None:
    depends = services["temporal"]["depends_on"]
    assert depends["postgresql"]["condition"] == "service_healthy"
    assert "pg_isready" in str(services["postgresql"]["healthcheck"]["test"])
    # The server image does not create its schema: a one-shot service must have done it first.
    schema_steps = [
        n for n, c in depends.items() if c["condition"] == "service_completed_successfully"
    ]
    assert schema_steps, "temporal must wait for a schema setup service"
    for name in schema_steps:
        assert "--ep postgresql" in script(services[name])
        assert "temporal_visibility" in script(services[name])


def test_persistence_points_at_postgresql(services: dict[str, dict[str, Any]]) -> None:
    server, database = env(services["temporal"]), env(services["postgresql"])
    assert server["DB"] == "postgres12"
    assert server["POSTGRES_SEEDS"] == "postgresql"
    assert server["DB_PORT"] == "5432"
    assert server["POSTGRES_USER"] == database["POSTGRES_USER"]
    assert server["POSTGRES_PWD"] == database["POSTGRES_PASSWORD"]


def test_postgres_data_is_on_a_named_volume(services: dict[str, dict[str, Any]]) -> None:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    mounts = services["postgresql"]["volumes"]
    names = {str(m).split(":", 1)[0] for m in mounts if str(m).endswith("/var/lib/postgresql/data")}
    assert names & set(document.get("volumes", {})), mounts


def test_ui_and_admin_tools_point_at_temporal(services: dict[str, dict[str, Any]]) -> None:
    for name in ("temporal-ui", "temporal-admin-tools", "temporal-setup-search-attributes"):
        assert env(services[name])["TEMPORAL_ADDRESS"] == "temporal:7233", name


def test_setup_service_registers_search_attributes(services: dict[str, dict[str, Any]]) -> None:
    setup = services["temporal-setup-search-attributes"]
    text = script(setup)
    assert "search-attribute create" in text
    assert "--namespace default" in text
    registered = dict(re.findall(r"--name\s+(\w+)\s+--type\s+(\w+)", text))
    assert (
        registered
        == dict(DEFAULT_SEARCH_ATTRIBUTES)
        == {
            "HealingStatus": "Keyword",
            "HealingErrorType": "Keyword",
        }
    )
    assert "already exists" in text  # re-running on an existing cluster is not an error
    assert setup["depends_on"]["temporal"]["condition"] == "service_healthy"
    assert setup["restart"] == "no"
    assert setup["image"].startswith("temporalio/admin-tools:")


def test_every_image_tag_pinned(services: dict[str, dict[str, Any]]) -> None:
    unpinned = {
        n: s.get("image") for n, s in services.items() if not image_is_pinned(s.get("image", ""))
    }
    assert unpinned == {}


def test_server_and_admin_tools_share_a_version(services: dict[str, dict[str, Any]]) -> None:
    server = services["temporal"]["image"]
    assert server.startswith("temporalio/server:")
    tags = {s["image"].rpartition(":")[2] for s in services.values() if "admin-tools" in s["image"]}
    assert tags == {server.rpartition(":")[2]}


def test_ports_bound(services: dict[str, dict[str, Any]]) -> None:
    assert 7233 in container_ports(services["temporal"])
    assert 8080 in container_ports(services["temporal-ui"])


def test_scripts_escape_dollars_from_compose(services: dict[str, dict[str, Any]]) -> None:
    # Compose interpolates a single "$" itself (to an empty string); shell variables need "$$".
    for name, service in services.items():
        lone = re.findall(r"(?<!\$)\$(?!\$)", script(service).replace("$$", ""))
        assert lone == [], name
