"""Garbage collection for a node that holds many long-lived objects.

A node with 10,000 viewer WebSockets holds millions of container objects that live as long as
their connections, and CPython's full (generation 2) collection walks every one of them while
the loop stands still: bench/viewers.py measured pauses of 0.5–0.9 s every 10–20 s at 10,000
viewers, and REST p95 went from 9 ms to 700 ms with them.

So the node moves what has survived into the permanent generation (`gc.freeze`) every
`FREEZE_EVERY` seconds; automatic collections then walk only objects younger than that.
Closed connections are freed by reference counting, not by the collector (Tornado breaks a
handler's cycles when it closes; `tests/test_gc_policy.py` holds it to that), so freezing them
is not a leak. Cyclic garbage frozen anyway is collected by one full pass every
`SF_GC_FULL_SECONDS` (0: never), which stalls the loop once for as long as it takes
(about a second at 10,000 viewers on this machine; logged with its duration).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger("sf.gc")

FREEZE_EVERY = 10.0  # seconds


class GcPolicy:
    """Freezes survivors periodically; a full collection every `full_every` seconds."""

    def __init__(self, full_every: float) -> None:
        self.full_every = full_every
        self._task: asyncio.Task[None] | None = None
        self._last_full = time.monotonic()

    def start(self) -> None:
        gc.freeze()  # what start-up built (modules, services) lives as long as the node
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        gc.unfreeze()

    def step(self, now: float) -> None:
        """One period: a full collection when due, then freeze whatever survived."""
        if self.full_every > 0 and now - self._last_full >= self.full_every:
            self._last_full = now
            started = time.perf_counter()
            gc.unfreeze()
            collected = gc.collect()
            log.info("full garbage collection: %d objects freed in %.0f ms", collected,
                     (time.perf_counter() - started) * 1000)
        gc.freeze()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FREEZE_EVERY)
            self.step(time.monotonic())
