"""The connector catalog: loading, defaults, and a ConfigError that names every problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from healing.catalog import ConnectorCatalog, load_catalog, resolve_model
from healing.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

SAMPLE = """
[connectors.crm]
base_url = "https://api.example.com"
timeout_s = 5
alternatives = ["crm_eu"]
rate_limit = { requests = 100, per_s = 10 }
headers = { Accept = "application/json" }

[connectors.crm.auth]
kind = "oauth2"
token_url = "https://api.example.com/oauth/token"
client_id = "my-app"
client_secret_env = "CRM_CLIENT_SECRET"
grant = "refresh_token"

[connectors.crm.operations.get_contact]
method = "GET"
path = "/contacts/{id}"
response_model = "tests.models:Contact"

[connectors.crm.operations.create_contact]
method = "post"
path = "/contacts"

[connectors.crm.operations.upsert_contact]
method = "PUT"
path = "/contacts/{id}"

[connectors.crm.operations.send_invoice]
method = "POST"
path = "/invoices/{invoice_id}/send"
idempotent = true
timeout_s = 60

[connectors.crm_eu]
base_url = "https://eu.api.example.com"

[connectors.crm_eu.auth]
kind = "api_key"
api_key_env = "CRM_EU_KEY"
header = "X-Api-Key"

[connectors.crm_eu.operations.get_contact]
path = "/contacts/{id}"
"""


class Contact(BaseModel):
    id: str


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        ConnectorCatalog.from_toml(text, source="conn.toml")
    return str(info.value)


def test_sample_loads_with_every_field() -> None:
    catalog = ConnectorCatalog.from_toml(SAMPLE)
    crm = catalog.connector("crm")
    assert crm.base_url == "https://api.example.com"
    assert crm.timeout_s == 5
    assert crm.rate_limit is not None
    assert (crm.rate_limit.requests, crm.rate_limit.per_s) == (100, 10)
    assert crm.auth.kind == "oauth2"
    assert crm.auth.client_secret_env == "CRM_CLIENT_SECRET"
    assert crm.headers == {"Accept": "application/json"}
    op = catalog.operation("crm", "get_contact")
    assert (op.method, op.path, op.placeholders) == ("GET", "/contacts/{id}", ["id"])
    assert op.response_model == "tests.models:Contact"
    assert catalog.operation("crm", "send_invoice").timeout_s == 60
    eu = catalog.connector("crm_eu")
    assert (eu.timeout_s, eu.auth.kind, eu.auth.header) == (10, "api_key", "X-Api-Key")
    assert catalog.alternatives() == {"crm": ["crm_eu"], "crm_eu": []}


@pytest.mark.parametrize(
    ("operation", "idempotent"),
    [
        ("get_contact", True),
        ("upsert_contact", True),
        ("create_contact", False),
        ("send_invoice", True),  # explicit setting wins over the POST default
    ],
)
def test_idempotent_defaults_by_method(operation: str, idempotent: bool) -> None:
    op = ConnectorCatalog.from_toml(SAMPLE).operation("crm", operation)
    assert op.idempotent is idempotent
    assert op.is_idempotent is idempotent


def test_method_is_normalised_and_patch_is_not_idempotent() -> None:
    text = '[connectors.a]\nbase_url = "http://x"\n[connectors.a.operations.p]\n'
    op = ConnectorCatalog.from_toml(text + 'method = "patch"\npath = "/p"').operation("a", "p")
    assert (op.method, op.idempotent) == ("PATCH", False)


def test_load_catalog_reads_the_example_file() -> None:
    catalog = load_catalog(REPO / "connectors.example.toml")
    assert catalog.alternatives()["crm"] == ["crm_eu"]
    assert catalog.connector("crm").base_url == "http://127.0.0.1:8787"
    assert set(catalog.connector("crm").operations) <= set(catalog.connector("crm_eu").operations)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml does not exist.*HEALING_CONNECTORS"):
        load_catalog(tmp_path / "nope.toml")


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[connectors.crm\nbase_url = 1")
    with pytest.raises(ConfigError, match=r"broken\.toml is not valid TOML"):
        load_catalog(path)


@pytest.mark.parametrize(
    ("key", "fix"),
    [("client_secret", "client_secret_env"), ("api_key", "api_key_env")],
)
def test_inline_secret_in_auth_is_rejected(key: str, fix: str) -> None:
    text = SAMPLE.replace('client_id = "my-app"', f'client_id = "my-app"\n{key} = "s3cr3t"')
    message = _error(text)
    assert "conn.toml" in message
    assert "connector 'crm'" in message
    assert f"auth.{key}" in message
    assert fix in message
    assert "s3cr3t" not in message


def test_inline_api_key_on_the_connector_is_rejected() -> None:
    message = _error(SAMPLE.replace("timeout_s = 5", 'timeout_s = 5\napi_key = "k"'))
    assert "connector 'crm'" in message
    assert "'api_key'" in message
    assert "api_key_env" in message


def test_secret_looking_fixed_header_is_rejected() -> None:
    message = _error(SAMPLE.replace('Accept = "application/json"', 'Authorization = "Bearer x"'))
    assert "connector 'crm'" in message
    assert "Authorization" in message
    assert "[auth]" in message


def test_unknown_alternative_names_connector_and_target() -> None:
    message = _error(SAMPLE.replace('alternatives = ["crm_eu"]', 'alternatives = ["crm_us"]'))
    assert "conn.toml" in message
    assert "connector 'crm'" in message
    assert "unknown connector 'crm_us'" in message
    assert "crm_eu" in message  # the known ones are listed


def test_alternative_may_not_be_the_connector_itself() -> None:
    message = _error(SAMPLE.replace('alternatives = ["crm_eu"]', 'alternatives = ["crm"]'))
    assert "names itself 'crm'" in message


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("timeout_s = 5", "timeout_s = 5\nretries = 3", "connector 'crm': unknown key 'retries'"),
        (
            "per_s = 10 }",
            "per_s = 10, burst = 2 }",
            "connector 'crm': unknown key 'rate_limit.burst'",
        ),
        (
            'grant = "refresh_token"',
            'grant = "refresh_token"\nscopez = ["a"]',
            "connector 'crm': unknown key 'auth.scopez'",
        ),
        (
            "idempotent = true",
            "idempotent = true\nretry = 1",
            "connector 'crm' operation 'send_invoice': unknown key 'retry'",
        ),
    ],
)
def test_unknown_keys_are_named(old: str, new: str, expected: str) -> None:
    assert old in SAMPLE
    message = _error(SAMPLE.replace(old, new))
    assert message.startswith("conn.toml: ")
    assert expected in message


@pytest.mark.parametrize(
    "path",
    ["/contacts/{}", "/contacts/{0}", "/contacts/{id!r}", "/contacts/{id:>5}", "/contacts/{id"],
)
def test_bad_path_placeholders_are_named(path: str) -> None:
    message = _error(SAMPLE.replace('path = "/invoices/{invoice_id}/send"', f'path = "{path}"'))
    assert "connector 'crm' operation 'send_invoice': path" in message
    assert path in message


def test_path_must_be_absolute() -> None:
    message = _error(SAMPLE.replace('path = "/contacts"', 'path = "contacts"'))
    assert "operation 'create_contact': path" in message
    assert "must start with '/'" in message


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('kind = "oauth2"', 'kind = "saml"', "auth.kind"),
        ('token_url = "https://api.example.com/oauth/token"', "", "needs token_url"),
        ('api_key_env = "CRM_EU_KEY"', "", "needs api_key_env"),
        ('base_url = "https://eu.api.example.com"', 'base_url = "eu.example.com"', "base_url"),
        ('method = "GET"', 'method = "FETCH"', "operation 'get_contact': method"),
        ("timeout_s = 5", "timeout_s = 0", "connector 'crm': timeout_s"),
        ('"tests.models:Contact"', '"tests.models.Contact"', "package.module:ClassName"),
    ],
)
def test_invalid_values_name_the_field(old: str, new: str, expected: str) -> None:
    assert old in SAMPLE
    assert expected in _error(SAMPLE.replace(old, new))


def test_unknown_connector_and_operation_are_named() -> None:
    catalog = ConnectorCatalog.from_toml(SAMPLE)
    with pytest.raises(ConfigError, match=r"unknown connector 'erp' \(known: crm, crm_eu\)"):
        catalog.operation("erp", "get_contact")
    with pytest.raises(ConfigError, match=r"'crm_eu' has no operation 'create_contact'"):
        catalog.operation("crm_eu", "create_contact")


def test_resolve_model_imports_the_class() -> None:
    assert resolve_model(f"{__name__}:Contact") is Contact


@pytest.mark.parametrize(
    ("import_path", "expected"),
    [
        ("no_colon.Contact", "package.module:ClassName"),
        ("surely_missing_pkg_xyz.mod:Contact", "cannot import module 'surely_missing_pkg_xyz.mod'"),
        (f"{__name__}:Missing", "has no 'Missing'"),
        (f"{__name__}:SAMPLE", "is not a pydantic BaseModel class"),
    ],
)
def test_resolve_model_errors_are_clear(import_path: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_model(import_path)
    assert expected in str(info.value)
    assert import_path in str(info.value)


def test_max_response_bytes_defaults_to_1_mib_and_can_be_set() -> None:
    base = {"base_url": "https://api.example.com"}
    catalog = ConnectorCatalog.from_dict(
        {"connectors": {"a": base, "b": {**base, "max_response_bytes": 5_000_000}}}
    )
    assert catalog.connector("a").max_response_bytes == 1024 * 1024
    assert catalog.connector("b").max_response_bytes == 5_000_000


@pytest.mark.parametrize("value", [0, -1, "big"])
def test_an_invalid_max_response_bytes_is_named(value: object) -> None:
    data = {"connectors": {"crm": {"base_url": "https://x.example", "max_response_bytes": value}}}
    with pytest.raises(ConfigError, match="connector 'crm': max_response_bytes"):
        ConnectorCatalog.from_dict(data)
