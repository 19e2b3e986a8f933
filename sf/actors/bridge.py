"""The only way from an actor thread to the Tornado loop: schedule a coroutine there."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("sf.actors")


class LoopBridge:
    """Runs `coroutine_function(*args)` on the loop, from any thread, without waiting."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._tasks: set[asyncio.Task[Any]] = set()

    def submit(self, coroutine_function: Callable[..., Awaitable[Any]], *args: Any) -> None:
        def start() -> None:
            task = asyncio.ensure_future(coroutine_function(*args))
            self._tasks.add(task)
            task.add_done_callback(self._finished)

        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(start)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("media event handler failed", exc_info=task.exception())

    def resolve(self, future: asyncio.Future[Any], value: Any) -> None:
        """Complete a loop future from an actor (the reply path of an ask from the loop)."""

        def set_result() -> None:
            if not future.done():
                future.set_result(value)

        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(set_result)
