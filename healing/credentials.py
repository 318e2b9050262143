"""Credentials: the token model, the stores that keep tokens, and an httpx auth that uses them.

Tokens never travel through Temporal: activities receive a connector and a connection name and
read the token here. Credentials live in the healing store (:class:`FleetCredentialStore`, the
``credentials`` space of fleet state, one row per (connector, connection)), encrypted at rest
with ``HEALING_SECRET_KEY`` (a ``MultiFernet``: ``"new,old"`` decrypts rows of either key and
writes with the first; :meth:`FleetCredentialStore.rotate` re-encrypts every row). Every store
is a compare-and-swap store on ``Credential.version``:

    stored = await store.get("crm", "acme")              # version 3
    ok = await store.put(new, expected_version=3)        # stores version 4, or False if
                                                         # another worker got there first

``MemoryCredentialStore`` serves tests; ``FileCredentialStore`` (one Fernet-encrypted file) is
kept for import into the store (the worker imports it at start-up) and export.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import tempfile
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import quote, unquote

import httpx
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from healing.errors import ConfigError, CredentialError, SecretKeyMismatch
from healing.store.base import FleetState
from healing.store.memory import MemoryFleetState

__all__ = [
    "CREDENTIALS_SPACE",
    "DEFAULT_CONNECTION",
    "BearerAuth",
    "Credential",
    "CredentialStore",
    "FileCredentialStore",
    "FleetCredentialStore",
    "MemoryCredentialStore",
    "OAuthClient",
    "SecretBox",
    "connection_flag",
    "credential_name",
    "generate_secret_key",
    "secret_key_of",
]

CREDENTIALS_SPACE = "credentials"
"""Fleet-state space of the credential rows."""
DEFAULT_CONNECTION = "default"
CONNECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$"
"""Allowed connection names: letters, digits and ``._:@+-`` (safe in a shell command and a
store key), up to 128 characters."""
_CONNECTION_RE = re.compile(CONNECTION_PATTERN)
_SECRET_FIELDS = ("access_token", "refresh_token")


class Credential(BaseModel):
    """One (connector, connection)'s tokens. ``repr``, ``str`` and JSON dumps show
    ``**********`` for tokens.

    ``version`` is set by the store (+1 per write); the value passed to ``put`` is ignored.
    ``revoked`` is the shared dead-grant verdict on this version: the lease holder got
    ``invalid_grant`` for its refresh token, so nobody sends it again.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    connector: str
    connection: str = DEFAULT_CONNECTION
    access_token: SecretStr
    refresh_token: SecretStr | None = None
    expires_at: float | None = None
    """Epoch seconds; None when the vendor did not say (the token is then used until a 401)."""
    token_type: str = "Bearer"
    version: int = 0
    issued_at: float | None = None
    """Epoch seconds the token was obtained; with ``expires_at`` it gives the lifetime."""
    revoked: str | None = None
    """Why the grant is dead (the token endpoint's words, no secrets); None while it lives."""

    def expires_within(self, seconds: float, *, now: float) -> bool:
        """True when the access token expires less than ``seconds`` after ``now``."""
        return self.expires_at is not None and self.expires_at - seconds <= now

    def leeway(self, at_most_s: float, fraction: float) -> float:
        """How early to refresh: ``fraction`` of the token's lifetime, at most ``at_most_s``
        (a 30 s token refreshes 3 s early, not on every call)."""
        if self.expires_at is None or self.issued_at is None:
            return at_most_s
        return min(at_most_s, max(self.expires_at - self.issued_at, 0.0) * fraction)


AuthMethod = Literal["client_secret_post", "client_secret_basic", "private_key_jwt"]
"""How a client authenticates at the token endpoint (RFC 6749 s2.3.1, RFC 7523 s2.2)."""


class OAuthClient(BaseModel):
    """How to get one connector's tokens from its OAuth 2 authorization server.

    ``auth_method``: ``client_secret_post`` (default) sends ``client_id``/``client_secret`` in
    the form body, ``client_secret_basic`` in an HTTP Basic header, ``private_key_jwt`` a JWT
    signed with ``private_key`` (PEM). ``authorize_url`` enables the PKCE authorization-code
    flow of ``healing credentials authorize``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    token_url: str
    client_id: str
    client_secret: SecretStr | None = None
    grant: Literal["refresh_token", "client_credentials"] = "refresh_token"
    scope: str | None = None
    auth_method: AuthMethod = "client_secret_post"
    private_key: SecretStr | None = None
    authorize_url: str | None = None
    timeout_s: float = 10.0


@runtime_checkable
class CredentialStore(Protocol):
    """Where credentials live: an async compare-and-swap store keyed by (connector,
    connection)."""

    async def get(self, connector: str, connection: str = DEFAULT_CONNECTION) -> Credential | None:
        """The stored credential, or None."""
        ...

    async def put(self, cred: Credential, *, expected_version: int | None) -> bool:
        """Store ``cred`` if the stored version still equals ``expected_version`` (None:
        nothing stored).

        Returns:
            False, writing nothing, when another writer changed the credential first.
        """
        ...

    async def delete(self, connector: str, connection: str = DEFAULT_CONNECTION) -> None:
        """Forget the credential (no error if there is none)."""
        ...


def generate_secret_key() -> str:
    """A new key for ``HEALING_SECRET_KEY``."""
    return Fernet.generate_key().decode("ascii")


def key_id(key: str) -> str:
    """A short, non-secret name of a Fernet key (a hash prefix), for messages."""
    return hashlib.sha256(b"healing-key-id:" + key.encode()).hexdigest()[:8]


class SecretBox:
    """``HEALING_SECRET_KEY`` as a MultiFernet: comma-separated keys, newest first."""

    def __init__(self, keys: str | bytes) -> None:
        text = keys.decode("ascii", "replace") if isinstance(keys, bytes) else keys
        parts = [k.strip() for k in text.split(",") if k.strip()]
        try:
            fernets = [Fernet(k) for k in parts]
            if not fernets:
                raise ValueError
        except (ValueError, TypeError):
            raise ConfigError(
                "HEALING_SECRET_KEY is not a Fernet key (32 url-safe base64 bytes; several "
                "comma-separated while rotating); create one with: python -c "
                '"import healing.credentials as c; print(c.generate_secret_key())"'
            ) from None
        self.key_ids = [key_id(k) for k in parts]
        self._fernets = fernets
        self._multi = MultiFernet(fernets)

    @property
    def primary_id(self) -> str:
        return self.key_ids[0]

    def seal(self, data: dict[str, Any]) -> str:
        return self._multi.encrypt(json.dumps(data).encode()).decode("ascii")

    def open(self, token: str) -> dict[str, Any] | None:
        """The sealed data, or None when no key of this box wrote it."""
        try:
            data: dict[str, Any] = json.loads(self._multi.decrypt(token.encode("ascii")))
        except InvalidToken:
            return None
        return data

    def sealed_by(self, token: str) -> int | None:
        """Index of the key (0: the primary) that sealed ``token``, None if none did."""
        for i, fernet in enumerate(self._fernets):
            try:
                fernet.decrypt(token.encode("ascii"))
            except (InvalidToken, ValueError):
                continue
            return i
        return None

    def seal_bytes(self, data: bytes) -> bytes:
        return self._multi.encrypt(data)

    def open_bytes(self, blob: bytes) -> bytes | None:
        """The plain bytes, or None when no key of this box sealed ``blob``."""
        try:
            return self._multi.decrypt(blob)
        except InvalidToken:
            return None

    def reseal(self, token: str) -> str:
        """The same data encrypted with the primary key (MultiFernet.rotate)."""
        return self._multi.rotate(token.encode("ascii")).decode("ascii")


def _plain(cred: Credential) -> dict[str, Any]:
    data = cred.model_dump()
    for name in _SECRET_FIELDS:  # tolerate plain strings set through model_copy(update=...)
        if isinstance(data[name], SecretStr):
            data[name] = data[name].get_secret_value()
    return data


def row_key(connector: str, connection: str = DEFAULT_CONNECTION) -> str:
    """The fleet-state key of a credential: ``connector/connection``, each percent-encoded."""
    return f"{quote(connector, safe='')}/{quote(connection, safe='')}"


def parse_row_key(key: str) -> tuple[str, str]:
    connector, _, connection = key.partition("/")
    return unquote(connector), unquote(connection or DEFAULT_CONNECTION)


def credential_name(connector: str, connection: str = DEFAULT_CONNECTION) -> str:
    """How messages name a credential: ``'crm'`` or ``'crm' connection 'acme'``."""
    if connection == DEFAULT_CONNECTION:
        return repr(connector)
    return f"{connector!r} connection {connection!r}"


def connection_flag(connection: str = DEFAULT_CONNECTION) -> str:
    """The ``--connection`` option of a ``healing credentials`` command ("" for the default),
    shell-quoted."""
    return "" if connection == DEFAULT_CONNECTION else f" --connection {shlex.quote(connection)}"


def check_connection(value: str) -> str:
    """``value`` if it is a valid connection name, else a ValueError naming the rule."""
    if not _CONNECTION_RE.match(value):
        raise ValueError(
            "a connection name is 1-128 letters, digits or ._:@+- and starts with a letter or digit"
        )
    return value


def secret_key_of(value: Any) -> str:
    """``HEALING_SECRET_KEY`` (a str or SecretStr), or a ConfigError saying how to make one."""
    key = value.get_secret_value() if isinstance(value, SecretStr) else value
    if not key:
        raise ConfigError(
            "HEALING_SECRET_KEY is not set: credentials are stored encrypted with it (make a key"
            ' with: python -c "import healing.credentials as c; print(c.generate_secret_key())")'
        )
    return str(key)


class FleetCredentialStore:
    """Credentials as versioned rows of the healing store's fleet state, shared by every
    worker that uses the same ``HEALING_STORE``.

    A row holds the non-secret fields in clear (connector, connection, expiry, the dead-grant
    verdict, the id of the key that sealed it) and the tokens sealed with ``HEALING_SECRET_KEY``.

    Args:
        fleet: The store's fleet state (any :class:`healing.store.Store`).
        secret_key: ``HEALING_SECRET_KEY``: one Fernet key, or several comma-separated.
        clock: Epoch seconds for ``updated_at``.
    """

    def __init__(
        self,
        fleet: FleetState,
        secret_key: str | bytes,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fleet = fleet
        self.box = SecretBox(secret_key)
        self._clock = clock

    async def get(self, connector: str, connection: str = DEFAULT_CONNECTION) -> Credential | None:
        entry = await self.fleet.state_get(CREDENTIALS_SPACE, row_key(connector, connection))
        if entry is None:
            return None
        return self._load(entry.value, entry.version)

    async def put(self, cred: Credential, *, expected_version: int | None) -> bool:
        data = _plain(cred)
        sealed = self.box.seal({name: data.pop(name) for name in _SECRET_FIELDS})
        data.pop("version")
        value = {**data, "sealed": sealed, "key_id": self.box.primary_id}
        written = await self.fleet.state_put(
            CREDENTIALS_SPACE,
            row_key(cred.connector, cred.connection),
            value,
            expected_version=expected_version,
            now=self._clock(),
        )
        return written is not None

    async def delete(self, connector: str, connection: str = DEFAULT_CONNECTION) -> None:
        await self.fleet.state_delete(CREDENTIALS_SPACE, row_key(connector, connection))

    async def list(self) -> list[tuple[str, str, int, str | None]]:
        """(connector, connection, version, key id) of every row, without decrypting."""
        rows = await self.fleet.state_list(CREDENTIALS_SPACE, limit=100_000)
        out = []
        for entry in rows:
            connector, connection = parse_row_key(entry.key)
            kid = entry.value.get("key_id")
            out.append((connector, connection, entry.version, str(kid) if kid else None))
        return out

    async def check_key(self) -> int:
        """Check that ``HEALING_SECRET_KEY`` opens every stored row; returns how many.

        Raises:
            ConfigError: Some row was sealed with a key not in ``HEALING_SECRET_KEY``.
        """
        rows = await self.fleet.state_list(CREDENTIALS_SPACE, limit=100_000)
        foreign = [e for e in rows if self.box.open(str(e.value.get("sealed", ""))) is None]
        if foreign:
            names = ", ".join(credential_name(*parse_row_key(e.key)) for e in foreign[:5])
            kids = sorted({str(e.value.get("key_id")) for e in foreign})
            raise SecretKeyMismatch(
                f"HEALING_SECRET_KEY (key id {', '.join(self.box.key_ids)}) cannot decrypt "
                f"{len(foreign)} of the {len(rows)} stored credentials ({names}), written with "
                f"key id {', '.join(kids)}: set the key they were stored with (while rotating, "
                '"NEW_KEY,OLD_KEY", then run `healing credentials rotate-key`)'
            )
        return len(rows)

    async def rotate(self, *, rounds: int = 5) -> int:
        """Re-encrypt every row with the first key of ``HEALING_SECRET_KEY``; returns how many
        rows were rewritten. A row a worker rewrote meanwhile is read and re-encrypted again.

        Raises:
            ConfigError: Some row could not be opened, or is still sealed with an older key
                after ``rounds`` passes (a worker still running with only an old key rewrites
                rows with it: give every worker "NEW,OLD" first); names the rows.
        """
        await self.check_key()
        done = 0
        for _ in range(rounds):
            stale = [
                e
                for e in await self.fleet.state_list(CREDENTIALS_SPACE, limit=100_000)
                if e.value.get("key_id") != self.box.primary_id
                or self.box.sealed_by(str(e.value.get("sealed", ""))) != 0
            ]
            if not stale:
                return done
            for entry in stale:
                try:
                    sealed = self.box.reseal(str(entry.value["sealed"]))
                except (InvalidToken, KeyError):
                    continue  # a worker with a foreign key wrote it; named below
                value = {**entry.value, "sealed": sealed, "key_id": self.box.primary_id}
                written = await self.fleet.state_put(
                    CREDENTIALS_SPACE,
                    entry.key,
                    value,
                    expected_version=entry.version,
                    now=self._clock(),
                )
                done += written is not None
        names = ", ".join(credential_name(*parse_row_key(e.key)) for e in stale[:10])
        raise ConfigError(
            f"{len(stale)} credential(s) are still sealed with an older key than key id "
            f"{self.box.primary_id} ({names}): a worker running with only an old "
            'HEALING_SECRET_KEY keeps rewriting them; give every worker "NEW,OLD" and run '
            "`healing credentials rotate-key` again before dropping the old key"
        )

    def _load(self, value: dict[str, Any], version: int) -> Credential:
        where = credential_name(str(value.get("connector")), str(value.get("connection")))
        secrets = self.box.open(str(value.get("sealed", "")))
        if secrets is None:
            raise SecretKeyMismatch(
                f"cannot decrypt the stored credential of {where}: HEALING_SECRET_KEY does not "
                f"match the key it was written with (key id {value.get('key_id')}); no "
                "reauthorization helps, set the right key",
                connector=str(value.get("connector")),
            )
        clear = {k: v for k, v in value.items() if k not in ("sealed", "key_id")}
        try:
            return Credential.model_validate({**clear, **secrets, "version": version})
        except ValidationError:
            raise CredentialError(
                f"the stored credential of {where} is malformed",
                connector=str(clear.get("connector")),
            ) from None


class MemoryCredentialStore(FleetCredentialStore):
    """A :class:`FleetCredentialStore` over one process's memory (tests, single process)."""

    def __init__(self, fleet: FleetState | None = None) -> None:
        super().__init__(fleet or MemoryFleetState(), generate_secret_key())


def _file_key(connector: str, connection: str) -> str:
    return connector if connection == DEFAULT_CONNECTION else row_key(connector, connection)


class FileCredentialStore:
    """All credentials in one JSON file, Fernet-encrypted at rest: for import into the
    healing store and export from it (workers read :class:`FleetCredentialStore`).

    Writes take an exclusive ``fcntl.flock`` on ``<path>.lock`` (so compare-and-swap holds
    across processes on one host), then write a temporary file and ``os.replace`` it, so
    readers see the old file or the new one, never half of one. Files are created ``0600``.
    Not for network file systems; use a SQL store to share credentials between hosts.
    """

    def __init__(self, path: str | os.PathLike[str], secret_key: str | bytes) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._box = SecretBox(secret_key)  # "NEW,OLD" opens a file of either key

    async def get(self, connector: str, connection: str = DEFAULT_CONNECTION) -> Credential | None:
        data = await asyncio.to_thread(self._read)
        return self._load(connector, data.get(_file_key(connector, connection)))

    async def items(self) -> list[Credential]:
        """Every stored credential (for ``healing credentials import``)."""
        data = await asyncio.to_thread(self._read)
        found = [self._load(name, item) for name, item in sorted(data.items())]
        return [cred for cred in found if cred is not None]

    async def put(self, cred: Credential, *, expected_version: int | None) -> bool:
        return await asyncio.to_thread(self._put_sync, cred, expected_version)

    async def delete(self, connector: str, connection: str = DEFAULT_CONNECTION) -> None:
        await asyncio.to_thread(self._delete_sync, _file_key(connector, connection))

    def _put_sync(self, cred: Credential, expected_version: int | None) -> bool:
        with self._locked():
            data = self._read()
            key = _file_key(cred.connector, cred.connection)
            stored = data.get(key)
            if (stored["version"] if stored else None) != expected_version:
                return False
            version = 1 if expected_version is None else expected_version + 1
            data[key] = {**_plain(cred), "version": version}
            self._write(data)
            return True

    def _delete_sync(self, connector: str) -> None:
        with self._locked():
            data = self._read()
            if data.pop(connector, None) is not None:
                self._write(data)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        plain = self._box.open_bytes(blob)
        if plain is None:
            raise CredentialError(
                f"cannot decrypt the credential file {self.path}: the secret key does not "
                "match the key it was written with (check HEALING_SECRET_KEY)"
            ) from None
        items: dict[str, dict[str, Any]] = json.loads(plain)["credentials"]
        return items

    def _write(self, data: dict[str, dict[str, Any]]) -> None:
        blob = self._box.seal_bytes(json.dumps({"format": 1, "credentials": data}).encode())
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _load(self, connector: str, item: dict[str, Any] | None) -> Credential | None:
        if item is None:
            return None
        try:
            return Credential.model_validate(item)
        except ValidationError:
            raise CredentialError(
                f"the stored credential for {connector!r} in {self.path} is malformed",
                connector=connector,
            ) from None


class BearerAuth(httpx.Auth):
    """Sets ``Authorization: Bearer <token>`` from an async token getter on every request.

    Use with an ``httpx.AsyncClient``, e.g. ``BearerAuth(lambda: refresher.access_token("crm"))``.
    It does not refresh on a 401 itself: the healing layer classifies the 401 as AUTH_EXPIRED
    and runs its refresh activity, so one refresh serves every worker.
    """

    def __init__(self, token: Callable[[], Awaitable[str]]) -> None:
        self._token = token

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers["Authorization"] = f"Bearer {await self._token()}"
        yield request

    def sync_auth_flow(self, request: httpx.Request) -> Any:
        raise RuntimeError("BearerAuth gets its token asynchronously: use httpx.AsyncClient")
