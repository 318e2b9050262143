"""A human's re-authorization: the OAuth 2 authorization-code flow with PKCE (RFC 7636).

``healing credentials authorize CONNECTOR [--connection C]`` runs :func:`authorize`: it binds a
callback on 127.0.0.1 (a free port), prints the vendor's authorize URL, waits for the browser's
redirect with the code, exchanges it (with the PKCE verifier, through authlib) and stores the
new tokens as the next version of the (connector, connection) credential, clearing a dead-grant
verdict. Nothing secret is printed: the URL carries only the challenge and a state.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx

from healing.credentials import DEFAULT_CONNECTION, Credential, CredentialStore, OAuthClient
from healing.errors import CredentialError
from healing.oauth import OAuthError, TransientTokenError, credential_from_token, oauth_session
from healing.redact import redact

__all__ = ["AuthorizeResult", "authorize"]

_PAGE = (
    b"<!doctype html><title>healing</title><p>Authorized. You can close this window and go "
    b"back to the terminal.</p>"
)


@dataclass(frozen=True)
class AuthorizeResult:
    credential: Credential
    redirect_uri: str


_CALLBACK_PATH = "/callback"


class _Callback:
    """The GET on ``127.0.0.1:<port>/callback`` whose ``state`` is ours, carrying ``code`` or
    ``error``. Other paths and requests with another state (a forged or stale redirect) are
    answered and ignored: they neither end the flow nor report an error."""

    def __init__(self) -> None:
        self.got: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        self.state = ""
        self.ignored = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            while (await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split(" ")
            target = urlsplit(parts[1] if len(parts) >= 2 else "/")
            query = {k: v[-1] for k, v in parse_qs(target.query).items()}
            ours = (
                parts[0] == "GET"
                and target.path == _CALLBACK_PATH
                and bool(self.state)
                and secrets.compare_digest(query.get("state", ""), self.state)
            )
            ok = ours and ("code" in query or "error" in query)
            if ok:
                body, status = _PAGE, b"200 OK"
            elif target.path == _CALLBACK_PATH:
                self.ignored += 1
                body, status = b"not the redirect of this authorization", b"400 Bad Request"
            else:
                body, status = b"waiting for the authorization redirect", b"404 Not Found"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: text/html\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            await writer.drain()
            if ok and not self.got.done():
                self.got.set_result(query)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


async def authorize(
    client: OAuthClient,
    store: CredentialStore,
    *,
    connector: str,
    connection: str = DEFAULT_CONNECTION,
    show_url: Callable[[str], None] = print,
    timeout_s: float = 300.0,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.time,
) -> AuthorizeResult:
    """Run the code flow with PKCE and store the tokens; see the module docstring.

    Raises:
        CredentialError: No ``authorize_url``, the human denied it, the state did not match,
            no redirect within ``timeout_s``, or the code exchange failed.
    """
    if not client.authorize_url:
        raise CredentialError(
            f"connector {connector!r} has no authorize_url in its [auth] catalog section, so "
            "it cannot be authorized from here",
            connector=connector,
        )
    callback = _Callback()
    server = await asyncio.start_server(callback.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    redirect_uri = f"http://127.0.0.1:{port}{_CALLBACK_PATH}"
    session = oauth_session(
        client, transport=transport, redirect_uri=redirect_uri, code_challenge_method="S256"
    )
    try:
        verifier = secrets.token_urlsafe(48)
        state = secrets.token_urlsafe(16)
        callback.state = state
        url, _ = session.create_authorization_url(
            client.authorize_url, state=state, code_verifier=verifier
        )
        show_url(url)
        try:
            query = await asyncio.wait_for(callback.got, timeout_s)
        except TimeoutError:
            ignored = (
                f" ({callback.ignored} redirect(s) with a wrong state were ignored)"
                if callback.ignored
                else ""
            )
            raise CredentialError(
                f"no authorization redirect reached {redirect_uri} within {timeout_s:.0f} s"
                f"{ignored}",
                connector=connector,
            ) from None
        if "error" in query:
            said = redact(f"{query['error']} ({query.get('error_description', 'no description')})")
            raise CredentialError(
                f"the authorization server refused: {said[:200]}", connector=connector
            )
        try:
            token = dict(
                await session.fetch_token(
                    client.token_url,
                    grant_type="authorization_code",
                    code=query["code"],
                    code_verifier=verifier,
                )
            )
            new = credential_from_token(connector, connection, token, now=clock())
        except OAuthError as exc:
            raise CredentialError(
                f"the token endpoint refused the authorization code ({exc.error}); try again",
                connector=connector,
            ) from None
        except (TransientTokenError, httpx.HTTPError, TimeoutError) as exc:
            what = redact(str(exc)) if isinstance(exc, TransientTokenError) else type(exc).__name__
            raise CredentialError(
                f"the token endpoint is unavailable ({what}); the code is single-use: run the "
                "authorization again in a moment",
                connector=connector,
            ) from None
        except (KeyError, ValueError, TypeError):
            raise CredentialError(
                "the token endpoint answered the code exchange without a usable access_token",
                connector=connector,
            ) from None
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()
        await session.aclose()
    for _ in range(5):  # a worker may write the row meanwhile (a verdict); ours wins
        current = await store.get(connector, connection)
        expected = current.version if current is not None else None
        if await store.put(new, expected_version=expected):
            stored = await store.get(connector, connection)
            assert stored is not None
            return AuthorizeResult(stored, redirect_uri)
    raise CredentialError(
        f"the credential of {connector!r} kept changing while storing it; try again",
        connector=connector,
    )
