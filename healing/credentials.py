"""Credentials: the token model, the stores that keep tokens, and an httpx auth that uses them.

Tokens never travel through Temporal: activities receive a connector name and read the token
here. Every store is a compare-and-swap store on ``Credential.version``, which is the
cross-worker guard of single-flight refresh (see :class:`healing.oauth.TokenRefresher`):

    stored = await store.get("crm")                      # version 3
    ok = await store.put(new, expected_version=3)        # stores version 4, or False if
                                                         # another worker got there first

``MemoryCredentialStore`` serves tests and single-process use; ``FileCredentialStore`` keeps
every credential in one Fernet-encrypted JSON file with a cross-process lock. SQL backends
implement the same :class:`CredentialStore` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import httpx
from cryptography.fernet import Fernet, InvalidToken
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from healing.errors import ConfigError, CredentialError

__all__ = [
    "BearerAuth",
    "Credential",
    "CredentialStore",
    "FileCredentialStore",
    "MemoryCredentialStore",
    "OAuthClient",
    "generate_secret_key",
]

_SECRET_FIELDS = ("access_token", "refresh_token")


class Credential(BaseModel):
    """One connector's tokens. ``repr``, ``str`` and JSON dumps show ``**********`` for tokens.

    ``version`` is set by the store (0 when first written, +1 per write); the value passed to
    ``put`` is ignored.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    connector: str
    access_token: SecretStr
    refresh_token: SecretStr | None = None
    expires_at: float | None = None
    """Epoch seconds; None when the vendor did not say (the token is then used until a 401)."""
    token_type: str = "Bearer"
    version: int = 0
    issued_at: float | None = None
    """Epoch seconds the token was obtained; with ``expires_at`` it gives the lifetime."""

    def expires_within(self, seconds: float, *, now: float) -> bool:
        """True when the access token expires less than ``seconds`` after ``now``."""
        return self.expires_at is not None and self.expires_at - seconds <= now

    def leeway(self, at_most_s: float, fraction: float) -> float:
        """How early to refresh: ``fraction`` of the token's lifetime, at most ``at_most_s``
        (a 30 s token refreshes 3 s early, not on every call)."""
        if self.expires_at is None or self.issued_at is None:
            return at_most_s
        return min(at_most_s, max(self.expires_at - self.issued_at, 0.0) * fraction)


AuthMethod = Literal["client_secret_post", "client_secret_basic"]
"""How a client authenticates at the token endpoint (RFC 6749 section 2.3.1)."""


class OAuthClient(BaseModel):
    """How to refresh one connector's tokens at its OAuth 2 token endpoint.

    ``auth_method`` follows RFC 6749 section 2.3.1: ``client_secret_post`` (default) sends
    ``client_id``/``client_secret`` in the form body, ``client_secret_basic`` in an HTTP Basic
    ``Authorization`` header.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    token_url: str
    client_id: str
    client_secret: SecretStr | None = None
    grant: Literal["refresh_token", "client_credentials"] = "refresh_token"
    scope: str | None = None
    auth_method: AuthMethod = "client_secret_post"
    timeout_s: float = 10.0


@runtime_checkable
class CredentialStore(Protocol):
    """Where credentials live: an async compare-and-swap store keyed by connector."""

    async def get(self, connector: str) -> Credential | None:
        """The stored credential, or None."""
        ...

    async def put(self, cred: Credential, *, expected_version: int | None) -> bool:
        """Store ``cred`` as version ``expected_version + 1`` (0 when ``expected_version`` is
        None) if the stored version still equals ``expected_version`` (None: nothing stored).

        Returns:
            False, writing nothing, when another writer changed the credential first.
        """
        ...

    async def delete(self, connector: str) -> None:
        """Forget the connector's credential (no error if there is none)."""
        ...


def _next_version(expected: int | None) -> int:
    return 0 if expected is None else expected + 1


class MemoryCredentialStore:
    """A process-local store, safe for concurrent tasks of one event loop."""

    def __init__(self) -> None:
        self._items: dict[str, Credential] = {}
        self._lock = asyncio.Lock()

    async def get(self, connector: str) -> Credential | None:
        return self._items.get(connector)

    async def put(self, cred: Credential, *, expected_version: int | None) -> bool:
        async with self._lock:
            stored = self._items.get(cred.connector)
            if (stored.version if stored else None) != expected_version:
                return False
            self._items[cred.connector] = _versioned(cred, _next_version(expected_version))
            return True

    async def delete(self, connector: str) -> None:
        async with self._lock:
            self._items.pop(connector, None)


def generate_secret_key() -> str:
    """A new key for :class:`FileCredentialStore` and ``HEALING_SECRET_KEY``."""
    return Fernet.generate_key().decode("ascii")


def _plain(cred: Credential) -> dict[str, Any]:
    data = cred.model_dump()
    for name in _SECRET_FIELDS:  # tolerate plain strings set through model_copy(update=...)
        if isinstance(data[name], SecretStr):
            data[name] = data[name].get_secret_value()
    return data


def _versioned(cred: Credential, version: int) -> Credential:
    """A validated copy with the store's version (model_copy alone skips validation)."""
    return Credential.model_validate({**_plain(cred), "version": version})


class FileCredentialStore:
    """All credentials in one JSON file, Fernet-encrypted at rest.

    Writes take an exclusive ``fcntl.flock`` on ``<path>.lock`` (so compare-and-swap holds
    across processes on one host), then write a temporary file and ``os.replace`` it, so
    readers see the old file or the new one, never half of one. Files are created ``0600``.
    Not for network file systems; use a SQL store to share credentials between hosts.
    """

    def __init__(self, path: str | os.PathLike[str], secret_key: str | bytes) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            self._fernet = Fernet(secret_key)
        except (ValueError, TypeError):
            raise ConfigError(
                "the credential store secret key is not a Fernet key (32 url-safe base64 "
                "bytes); create one with healing.credentials.generate_secret_key()"
            ) from None

    async def get(self, connector: str) -> Credential | None:
        data = await asyncio.to_thread(self._read)
        return self._load(connector, data.get(connector))

    async def put(self, cred: Credential, *, expected_version: int | None) -> bool:
        return await asyncio.to_thread(self._put_sync, cred, expected_version)

    async def delete(self, connector: str) -> None:
        await asyncio.to_thread(self._delete_sync, connector)

    def _put_sync(self, cred: Credential, expected_version: int | None) -> bool:
        with self._locked():
            data = self._read()
            stored = data.get(cred.connector)
            if (stored["version"] if stored else None) != expected_version:
                return False
            data[cred.connector] = _plain(_versioned(cred, _next_version(expected_version)))
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
        try:
            plain = self._fernet.decrypt(blob)
        except InvalidToken:
            raise CredentialError(
                f"cannot decrypt the credential file {self.path}: the secret key does not "
                "match the key it was written with (check HEALING_SECRET_KEY)"
            ) from None
        items: dict[str, dict[str, Any]] = json.loads(plain)["credentials"]
        return items

    def _write(self, data: dict[str, dict[str, Any]]) -> None:
        blob = self._fernet.encrypt(json.dumps({"format": 1, "credentials": data}).encode())
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
