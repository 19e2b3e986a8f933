"""`QueueWorker`: what the durable queues' workers share (the mail outbox, webhook deliveries,
go-live fan-outs): one per API process, working at once when this process queued something
(`wake`), else every `poll_seconds` for what other processes queued or left behind.

A round that meets an unreachable PostgreSQL or network is an outage, logged once when it
starts and once when it ends (`Outage`); any other failure is logged as an error and the
worker goes on: it must outlive any one bad row or bug.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from sf.observability import Outage


class QueueWorker:
    """Runs `work` in rounds until stopped; subclasses say what a round does."""

    def __init__(self, name: str, log: logging.Logger, outage: Outage,
                 poll_seconds: float) -> None:
        self.name = name
        self.log = log
        self.outage = outage
        self.poll_seconds = poll_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def work(self) -> None:
        """One round: everything due now."""
        raise NotImplementedError

    def wake(self) -> None:
        """Look for due work now (this process queued some)."""
        self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            # The flag too: `wait_for` may swallow a cancellation that meets a wake-up.
            self._stopping = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self.work()
                self.outage.back()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                self.outage.lost(error)
            except Exception:
                self.log.error("%s failed", self.name, exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
