"""The connector catalog: which upstream APIs exist, how to reach them and what they offer.

A TOML file (path from ``HEALING_CONNECTORS``, default ``connectors.toml``; see
``connectors.example.toml``) with one ``[connectors.NAME]`` table per API: ``base_url``,
``timeout_s``, ``alternatives`` (reroute targets), ``rate_limit``, ``headers``,
``max_response_bytes`` (default 1 MiB), ``[auth]`` and
``[operations.OP]`` (``method``, ``path`` with ``{name}`` placeholders, ``response_model``,
``idempotent``, ``timeout_s``, ``schema_drift``: ``adapt`` | ``review`` | ``pause``, default
``adapt`` for reads and ``review`` for writes; see :mod:`healing.drift`).

Secrets never live in the file: auth names the environment variable that holds them
(``client_secret_env``, ``api_key_env``). Every problem is a ``ConfigError`` whose message names
the file, the connector and the field.
"""

from __future__ import annotations

import importlib
import string
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from healing.credentials import AuthMethod
from healing.drift import DriftPolicy, default_policy
from healing.errors import ConfigError
from healing.redact import is_secret_header

HttpMethod = Literal["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "POST", "PATCH"]
AuthKind = Literal["none", "api_key", "oauth2"]

_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024
"""1 MiB: below Temporal's 2 MiB payload limit, with room for the result's envelope."""
# Keys that would put a secret into the file, and what to use instead.
_ENV = "set {} to the NAME of the environment variable that holds it"
_STORE = "tokens belong in the credential store (`healing credentials set`)"
_INLINE_SECRETS = {"client_secret": _ENV.format("client_secret_env"), "token": _STORE}
_INLINE_SECRETS |= {"api_key": _ENV.format("api_key_env"), "access_token": _STORE}
_INLINE_SECRETS |= {"secret": _ENV.format("client_secret_env"), "refresh_token": _STORE}


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RateLimitSpec(_Spec):
    """Client-side pacing: at most ``requests`` per ``per_s`` seconds, bursts up to ``requests``."""

    requests: int = Field(ge=1)
    per_s: float = Field(gt=0)


class AuthSpec(_Spec):
    """How to authenticate; secrets are named by environment variable, never inlined."""

    kind: AuthKind = "none"
    token_url: str | None = None
    client_id: str | None = None
    client_secret_env: str | None = None
    grant: Literal["refresh_token", "client_credentials"] = "refresh_token"
    api_key_env: str | None = None
    header: str = "Authorization"
    """Header that carries the API key (``api_key``) or the bearer token (``oauth2``)."""
    scheme: str | None = None
    """Prefix of an API key header value, e.g. ``Bearer`` or ``Token``; None sends the key bare."""
    scope: str | None = None
    auth_method: AuthMethod = "client_secret_post"
    """How the client authenticates at the token endpoint: ``client_secret_post``,
    ``client_secret_basic`` (RFC 6749 s2.3.1) or ``private_key_jwt`` (RFC 7523)."""
    private_key_env: str | None = None
    """Environment variable holding the PEM key that signs ``private_key_jwt`` assertions."""
    authorize_url: str | None = None
    """Authorization endpoint for ``healing credentials authorize`` (code flow with PKCE)."""
    scopes: list[str] = Field(default_factory=list)
    """Scopes to ask for (joined with spaces); ``scope`` is the same as one string."""
    token_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """Hard timeout of one token-endpoint request; the fleet's refresh lease outlives it."""

    @model_validator(mode="after")
    def _complete(self) -> AuthSpec:
        oauth2, credentials = self.kind == "oauth2", self.grant == "client_credentials"
        for broken, problem in (
            (oauth2 and not (self.token_url and self.client_id), "needs token_url and client_id"),
            (oauth2 and credentials and not self.client_secret_env, "needs client_secret_env"),
            (self.kind == "api_key" and not self.api_key_env, "needs api_key_env"),
            (
                oauth2 and self.auth_method == "private_key_jwt" and not self.private_key_env,
                'with auth_method = "private_key_jwt" needs private_key_env',
            ),
        ):
            if broken:
                raise ValueError(f"{self.kind} auth {problem}")
        return self


class OperationSpec(_Spec):
    """One call a connector offers: ``method`` on ``path`` (``{name}`` placeholders)."""

    method: HttpMethod = "GET"
    path: str
    response_model: str | None = None
    """Import path ``pkg.module:Class`` of a pydantic model the response must fit."""
    idempotent: bool | None = None
    """Safe to repeat; defaults to True for GET/HEAD/OPTIONS/PUT/DELETE, False for POST/PATCH.
    Non-idempotent calls are sent with an ``Idempotency-Key`` header."""
    timeout_s: float | None = Field(default=None, gt=0)
    schema_drift: DriftPolicy | None = None
    """What a response that drifted from ``response_model`` does: ``adapt`` (confident
    mappings apply by themselves), ``review`` (a human approves the mapping; the response
    already received is used, never re-requested), ``pause`` (only mappings a human approved
    apply; any other drift escalates, its proposal offered as ``accept_mapping``).
    Default: ``adapt`` for idempotent operations (reads), ``review`` for the others (writes,
    whose side effect has happened: a human confirms how its answer is read)."""

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            method = str(data.get("method", "GET")).upper()
            data["method"] = method
            if data.get("idempotent") is None:
                data["idempotent"] = method in _IDEMPOTENT_METHODS
        return data

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"{value!r} must start with '/'")
        _placeholders(value)
        return value

    @field_validator("response_model")
    @classmethod
    def _check_model_path(cls, value: str | None) -> str | None:
        return value if value is None else ":".join(_split_import_path(value))

    @property
    def placeholders(self) -> list[str]:
        """Names of the ``{name}`` placeholders in ``path``, in order."""
        return _placeholders(self.path)

    @property
    def is_idempotent(self) -> bool:
        return bool(self.idempotent)

    @property
    def drift_policy(self) -> DriftPolicy:
        """``schema_drift``, or its default for this operation (see the field)."""
        return self.schema_drift or default_policy(self.is_idempotent)

    def model(self) -> type[BaseModel] | None:
        """The response model class, imported now (None when the operation has none)."""
        return resolve_model(self.response_model) if self.response_model else None


class ConnectorSpec(_Spec):
    """One upstream API."""

    base_url: str = Field(pattern=r"^https?://\S+$")
    timeout_s: float = Field(default=10.0, gt=0)
    alternatives: list[str] = Field(default_factory=list)
    rate_limit: RateLimitSpec | None = None
    auth: AuthSpec = AuthSpec()
    operations: dict[str, OperationSpec] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    """Fixed, non-secret headers sent with every request."""
    max_response_bytes: int = Field(default=DEFAULT_MAX_RESPONSE_BYTES, ge=1)
    """Largest body read; past it reading stops and the call ends RESPONSE_TOO_LARGE (a
    result must fit Temporal's payload limit, and memory stays bounded)."""

    @field_validator("headers")
    @classmethod
    def _no_secret_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if is_secret_header(name):
                raise ValueError(f"header {name!r} looks like a secret; use [auth] instead")
        return value


class ConnectorCatalog(_Spec):
    """Every connector by name."""

    connectors: dict[str, ConnectorSpec] = Field(default_factory=dict)

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<connectors TOML>") -> ConnectorCatalog:
        """Parse and validate catalog TOML; ``source`` names the file in error messages."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source} is not valid TOML: {exc}") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<connectors>") -> ConnectorCatalog:
        """Validate an already-parsed catalog (the TOML's top-level table)."""
        _reject_inline_secrets(data, source)
        try:
            catalog = cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, source)) from None
        for name, spec in catalog.connectors.items():
            for alt in spec.alternatives:
                if alt not in catalog.connectors or alt == name:
                    what = "itself" if alt == name else "unknown connector"
                    known = _known(catalog.connectors)
                    raise ConfigError(
                        f"{source}: connector '{name}': alternatives names {what} '{alt}' "
                        f"(known: {known})"
                    )
        return catalog

    def connector(self, name: str) -> ConnectorSpec:
        """The connector called ``name``; ConfigError listing the known ones if there is none."""
        try:
            return self.connectors[name]
        except KeyError:
            raise ConfigError(
                f"unknown connector '{name}' (known: {_known(self.connectors)})"
            ) from None

    def operation(self, connector: str, operation: str) -> OperationSpec:
        """The operation ``operation`` of ``connector``; ConfigError naming what is unknown."""
        spec = self.connector(connector)
        try:
            return spec.operations[operation]
        except KeyError:
            raise ConfigError(
                f"connector '{connector}' has no operation '{operation}' "
                f"(known: {_known(spec.operations)})"
            ) from None

    def alternatives(self) -> dict[str, list[str]]:
        """Reroute targets per connector, for ``SelfHealingInterceptor(alternatives=...)``."""
        return {name: list(spec.alternatives) for name, spec in self.connectors.items()}


def load_catalog(path: str | Path) -> ConnectorCatalog:
    """Read and validate the catalog file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"connector catalog {p} does not exist (set HEALING_CONNECTORS to its path; "
            "connectors.example.toml shows the format)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"connector catalog {p} cannot be read: {exc}") from None
    return ConnectorCatalog.from_toml(text, source=str(p))


def resolve_model(import_path: str) -> type[BaseModel]:
    """Import the pydantic model named by ``"pkg.module:Class"`` (``Outer.Inner`` allowed)."""
    try:
        module_name, attr_path = _split_import_path(import_path)
        obj: Any = importlib.import_module(module_name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    except ImportError as exc:
        raise ConfigError(
            f"response_model {import_path!r}: cannot import module '{module_name}': {exc}"
        ) from None
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise ConfigError(
                f"response_model {import_path!r}: module '{module_name}' has no '{attr_path}'"
            ) from None
    if not (isinstance(obj, type) and issubclass(obj, BaseModel)):
        raise ConfigError(f"response_model {import_path!r} is not a pydantic BaseModel class")
    return obj


def _split_import_path(import_path: str) -> tuple[str, str]:
    module_name, sep, attr_path = import_path.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(
            f"response_model {import_path!r} must look like 'package.module:ClassName'"
        )
    return module_name, attr_path


def _placeholders(path: str) -> list[str]:
    try:
        parsed = [(name, spec or conv) for _, name, spec, conv in string.Formatter().parse(path)]
    except ValueError as exc:
        raise ValueError(f"{path!r} has unbalanced braces ({exc})") from None
    for name, extra in parsed:
        if name is not None and (not name.isidentifier() or extra):
            raise ValueError(
                f"{path!r}: placeholder {{{name}{':' + extra if extra else ''}}} must be "
                "a bare parameter name like {id}"
            )
    return [name for name, _ in parsed if name is not None]


def _reject_inline_secrets(data: dict[str, Any], source: str) -> None:
    connectors = data.get("connectors")
    for name, spec in connectors.items() if isinstance(connectors, dict) else ():
        if not isinstance(spec, dict):
            continue
        auth = spec.get("auth")
        for where, table in (("", spec), ("auth.", auth if isinstance(auth, dict) else {})):
            for key in table:
                if key in _INLINE_SECRETS:
                    raise ConfigError(
                        f"{source}: connector '{name}': '{where}{key}' puts a secret in the "
                        f"file; {_INLINE_SECRETS[key]}"
                    )


def _describe(exc: ValidationError, source: str) -> str:
    problems = []
    for err in exc.errors():
        where, rest = "catalog", [str(part) for part in err["loc"]]
        if len(rest) >= 2 and rest[0] == "connectors":
            where, rest = f"connector '{rest[1]}'", rest[2:]
            if len(rest) >= 2 and rest[0] == "operations":
                where, rest = f"{where} operation '{rest[1]}'", rest[2:]
        field, msg = ".".join(rest), err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            field, msg = "", f"unknown key '{field}'"
        problems.append(f"{where}: {field + ': ' if field else ''}{msg}")
    return f"{source}: " + "; ".join(problems)


def _known(names: dict[str, Any]) -> str:
    return ", ".join(sorted(names)) or "none"
