"""Scheduled jobs (address retention, expired and stale exports, erasure), run on exactly one
node at a time.

Every API node runs a `JobRunner`; a round of every job runs only under the jobs leader lock
(`LeaderLock`, the statistics' mechanism, on its own key), which the round renews while it
runs and releases at its end. A round that loses the lock (Redis unreachable, or stalled past
the lock's TTL) is cancelled at once, so two rounds never overlap. A finished round sets a
marker that lives for SF_JOBS_INTERVAL_SECONDS: the nodes look often, but only the first to
find the marker gone runs a round. `sf privacy purge` runs one round under the same lock.

To add a job: append a `Job(name, coroutine function)` to the list `sf/services/container.py`
gives the runner (or call `JobRunner.add`); its result (a JSON-able summary of what it did)
appears under its name in the round's report.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sf.services.statistics import LeaderLock

log = logging.getLogger("sf.jobs")

JOBS_LOCK_KEY = "sf:leader:jobs"
ROUND_DONE_KEY = "sf:jobs:round-done"  # set by a finished round for one interval
LOCK_TTL = 30.0  # seconds; the holder renews every third of it


@dataclass(frozen=True)
class Job:
    """One scheduled job: its name in reports and logs, and what it does (a summary back)."""

    name: str
    run: Callable[[], Awaitable[Any]]


class JobRunner:
    """Runs the registered jobs in rounds, one round at a time over every node."""

    def __init__(self, redis: Redis, owner: str, interval: float, jobs: list[Job],
                 lock_ttl: float = LOCK_TTL) -> None:
        self.redis = redis
        self.interval = interval
        self.jobs = list(jobs)
        self.lock_ttl = lock_ttl
        self.lock = LeaderLock(redis, JOBS_LOCK_KEY, ttl=lock_ttl, owner=owner)
        self._task: asyncio.Task[None] | None = None
        # The Redis lock is re-entrant for its holder, so rounds of this instance (its loop and
        # a direct call) also take turns here.
        self._one_round = asyncio.Lock()

    def add(self, job: Job) -> None:
        """Register one more job (run after those already registered)."""
        self.jobs.append(job)

    async def _run_jobs(self) -> dict[str, Any]:
        report: dict[str, Any] = {}
        for job in self.jobs:
            started = time.monotonic()
            try:
                report[job.name] = await job.run()
            except Exception as error:  # one failing job does not keep the others from running
                log.error("scheduled job %s failed", job.name, exc_info=True)
                report[job.name] = {"error": f"{type(error).__name__}: {error}"}
            log.info("scheduled job %s ran", job.name, extra={
                "job": job.name, "duration_ms": round((time.monotonic() - started) * 1000, 2)})
        return report

    async def _keep_lock(self, work: asyncio.Task[dict[str, Any]], lost: asyncio.Event) -> None:
        """Renew the lock while `work` runs; cancel `work` the moment it cannot be renewed."""
        while not work.done():
            await asyncio.sleep(self.lock_ttl / 3)
            try:
                held = await self.lock.hold()
            except RedisError:
                held = False
            if not held:
                log.error("lost the scheduled jobs lock during a round; the round is stopped")
                lost.set()
                work.cancel()
                return

    async def run_round(self, *, scheduled: bool = False) -> dict[str, Any] | None:
        """Every job once, under the lock; their report, or None when another instance holds
        the lock. `scheduled`: a runner's round, which also marks the interval as done."""
        async with self._one_round:
            return await self._locked_round(scheduled)

    async def _locked_round(self, scheduled: bool) -> dict[str, Any] | None:
        if not await self.lock.hold():
            return None
        if scheduled and await self.redis.exists(ROUND_DONE_KEY):
            # Another instance finished a round between this one's look and its lock.
            await self.lock.release()
            return None
        work = asyncio.ensure_future(self._run_jobs())
        lost = asyncio.Event()
        keeper = asyncio.ensure_future(self._keep_lock(work, lost))
        try:
            try:
                report = await work
            except asyncio.CancelledError:
                if not lost.is_set():
                    raise
                return None  # stopped for losing the lock: as if another instance had it
            if scheduled:
                await self.redis.set(ROUND_DONE_KEY, b"1",
                                     px=max(1, int(self.interval * 1000)))
            return report
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
            try:
                await self.lock.release()
            except RedisError as error:  # it lapses by itself within its TTL
                log.warning("could not release the scheduled jobs lock: %s", error)

    async def run_round_waiting(self, wait: float) -> dict[str, Any] | None:
        """`run_round`, waiting up to `wait` seconds for a round elsewhere to finish
        (`sf privacy purge`); None when the lock stayed taken."""
        deadline = time.monotonic() + wait
        while True:
            report = await self.run_round()
            if report is not None or time.monotonic() >= deadline:
                return report
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    async def tick(self) -> dict[str, Any] | None:
        """A runner's look: a round if none finished within the interval and the lock is free."""
        if await self.redis.exists(ROUND_DONE_KEY):
            return None
        return await self.run_round(scheduled=True)

    async def _run(self) -> None:
        pause = min(60.0, max(0.05, self.interval / 4))
        while True:
            try:
                await self.tick()
            except RedisError as error:
                log.warning("scheduled jobs skipped a round: Redis unreachable (%s)", error)
            except Exception:
                log.exception("scheduled jobs round failed")
            await asyncio.sleep(pause)

    async def start(self) -> None:
        """Look for due rounds in the background."""
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Stop looking (a round in progress is cancelled and the lock released); never raises."""
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
