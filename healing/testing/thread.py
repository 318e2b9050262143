"""ChaosThread: a ChaosAPI on its own event loop in a daemon thread, for synchronous callers.

with ChaosAPI(plan).start_in_thread() as chaos:
    httpx.get(f"{chaos.url}/contacts/1")
    chaos.stats()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType
from typing import Protocol, TypeVar

from healing.testing.plan import FaultPlan
from healing.testing.state import ChaosStats, TokenSet

__all__ = ["ChaosThread"]

T = TypeVar("T")


class _Server(Protocol):
    """What a ChaosThread drives: a ``ChaosAPI``, described here so that this module does not
    import ``chaos`` (which imports this one for ``start_in_thread``: no cycle)."""

    @property
    def url(self) -> str: ...
    async def start(self) -> object: ...
    async def stop(self) -> None: ...
    def stats(self) -> ChaosStats: ...
    def set_plan(self, plan: FaultPlan) -> None: ...
    def reset(self) -> None: ...
    def expire_tokens(self) -> None: ...
    def revoke_grant(self, grant: str | None = None) -> None: ...
    def issue_tokens(self, grant: str = "default") -> TokenSet: ...
    def tokens_of(self, grant: str) -> tuple[str | None, str | None]: ...
    def set_refresh_policy(
        self,
        *,
        reuse_detection: bool | None = None,
        reuse_interval_s: float | None = None,
        token_ttl_s: float | None = None,
    ) -> None: ...


class ChaosThread:
    """A `ChaosAPI` serving from its own event loop in a daemon thread.

    Every method here is safe to call from any thread; it runs on the server's loop.
    """

    def __init__(self, api: _Server, *, timeout_s: float = 10.0) -> None:
        self.api = api
        self._loop = asyncio.new_event_loop()
        self._stop_event: asyncio.Event | None = None
        self._started: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, name="chaos-api", daemon=True)
        self._thread.start()
        self._started.result(timeout=timeout_s)
        self.url = api.url

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop_event = asyncio.Event()
        try:
            await self.api.start()
        except BaseException as exc:
            self._started.set_exception(exc)
            return
        self._started.set_result(None)
        try:
            await self._stop_event.wait()
        finally:
            await self.api.stop()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def call(self, fn: Callable[[], T], *, timeout_s: float = 10.0) -> T:
        """Run `fn()` on the server's loop and return its result."""

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout_s)

    def stats(self) -> ChaosStats:
        return self.call(self.api.stats)

    def set_plan(self, plan: FaultPlan) -> None:
        self.call(lambda: self.api.set_plan(plan))

    def reset(self) -> None:
        self.call(self.api.reset)

    def expire_tokens(self) -> None:
        self.call(self.api.expire_tokens)

    def revoke_grant(self, grant: str | None = None) -> None:
        self.call(lambda: self.api.revoke_grant(grant))

    def issue_tokens(self, grant: str = "default") -> TokenSet:
        return self.call(lambda: self.api.issue_tokens(grant))

    def tokens_of(self, grant: str) -> tuple[str | None, str | None]:
        return self.call(lambda: self.api.tokens_of(grant))

    def set_refresh_policy(
        self,
        *,
        reuse_detection: bool | None = None,
        reuse_interval_s: float | None = None,
        token_ttl_s: float | None = None,
    ) -> None:
        self.call(
            lambda: self.api.set_refresh_policy(
                reuse_detection=reuse_detection,
                reuse_interval_s=reuse_interval_s,
                token_ttl_s=token_ttl_s,
            )
        )

    def stop(self, *, timeout_s: float = 10.0) -> None:
        if self._thread.is_alive() and self._stop_event is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(timeout_s)

    def __enter__(self) -> ChaosThread:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
