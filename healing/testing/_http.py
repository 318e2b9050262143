"""A small HTTP/1.1 reader and writer on asyncio streams, for the chaos server only.

Hand-written on purpose: the chaos server must produce broken exchanges (TCP resets, bodies
shorter than their Content-Length, silent hangs) that a well-kept server framework refuses to
produce. It reads a request line, headers, and a Content-Length or chunked body; it supports
keep-alive (HTTP/1.1 default) and honours `Connection: close`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

MAX_HEADERS = 100
MAX_BODY = 10 * 1024 * 1024


class HTTPParseError(Exception):
    """The bytes on the wire are not an HTTP/1.x request this server accepts."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    version: str
    headers: dict[str, str]  # lower-cased names; a repeated header keeps its last value
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def keep_alive(self) -> bool:
        connection = (self.header("connection") or "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = field(default=())


def json_response(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, body, (("Content-Type", "application/json"), *headers))


async def _line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError as exc:
        raise HTTPParseError("header line too long") from exc


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """Read one request; None when the peer closed the connection between requests."""
    try:
        first = await reader.readuntil(b"\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise HTTPParseError("connection closed inside the request line") from exc
        return None
    except asyncio.LimitOverrunError as exc:
        raise HTTPParseError("request line too long") from exc
    parts = first.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HTTPParseError(f"bad request line: {first[:80]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    while True:
        line = (await _line(reader)).decode("latin-1").rstrip("\r\n")
        if not line:
            break
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HTTPParseError(f"bad header line: {line[:80]!r}")
        headers[name.lower()] = value.strip()
        if len(headers) > MAX_HEADERS:
            raise HTTPParseError("too many headers")
    body = await _read_body(reader, headers)
    url = urlsplit(target)
    return Request(method.upper(), url.path or "/", url.query, version, headers, body)


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = (await _line(reader)).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError as exc:
                raise HTTPParseError("bad chunk size") from exc
            if size == 0:
                while (await _line(reader)).strip():  # trailers
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY:
                raise HTTPParseError("body too large")
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length_text = headers.get("content-length")
    if length_text is None:
        return b""
    if not length_text.isdigit() or int(length_text) > MAX_BODY:
        raise HTTPParseError("bad Content-Length")
    return await reader.readexactly(int(length_text))


def encode_head(response: Response, *, content_length: int | None, close: bool) -> bytes:
    """Status line and headers; ``content_length=None`` announces a chunked body."""
    try:
        phrase = HTTPStatus(response.status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {response.status} {phrase}"]
    lines += [f"{name}: {value}" for name, value in response.headers]
    if content_length is None:
        lines.append("Transfer-Encoding: chunked")
    else:
        lines.append(f"Content-Length: {content_length}")
    lines.append("Connection: close" if close else "Connection: keep-alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def write_response(writer: asyncio.StreamWriter, response: Response, *, close: bool) -> None:
    writer.write(encode_head(response, content_length=len(response.body), close=close))
    writer.write(response.body)
    await writer.drain()
