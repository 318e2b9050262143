"""A real HTTP webhook receiver on a free 127.0.0.1 port, for the notifier's tests.

It answers each request as scripted (an HTTP status, or ``"hang"``: read the request and never
answer) and records what arrived: path, headers (lower-cased names) and the raw body, so a
test can check the signature over exactly the bytes sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Action = int | Literal["hang"]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: Action
    at: float = field(default_factory=time.time)

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class Receiver:
    """A real HTTP/1.1 server on a free 127.0.0.1 port answering as scripted (a status, or
    ``"hang"``: read the request and answer only on ``release()``)."""

    def __init__(self, script: Sequence[Action] = (), then: Action = 200) -> None:
        self.script = list(script)
        self.then = then
        self.requests: list[Received] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._released = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hooks/healing"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readline()).decode("latin-1").split()
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            n = len(self.requests)
            action = self.script[n] if n < len(self.script) else self.then
            self.requests.append(Received(request_line[1], headers, body, action))
            if action == "hang":
                await self._released.wait()  # until release(), then 200
                action = 200
            reply = (
                f"HTTP/1.1 {action} Scripted\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            )
            writer.write(reply.encode())
            await writer.drain()
        finally:
            writer.close()

    def release(self) -> None:
        """Answer the hanging requests (200) and every later one at once."""
        self._released.set()
        self.then = 200 if self.then == "hang" else self.then

    def statuses(self) -> list[Action]:
        return [r.answered for r in self.requests]
