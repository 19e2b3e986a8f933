"""What a node runs besides request handling, started in order and stopped in reverse."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("sf.lifecycle")

# Parts of the platform register (start, stop) pairs here; they run in registration order.
Component = tuple[str, Callable[[Any], Awaitable[None]], Callable[[Any], Awaitable[None]]]
COMPONENTS: list[Component] = []


def register_component(name: str, start: Callable[[Any], Awaitable[None]],
                       stop: Callable[[Any], Awaitable[None]]) -> None:
    if all(existing[0] != name for existing in COMPONENTS):
        COMPONENTS.append((name, start, stop))


class NodeLifecycle:
    """Starts the registered components for one node's services; stops them in reverse."""

    def __init__(self, services: Any) -> None:
        self.services = services
        self.started: list[Component] = []

    async def start(self) -> None:
        for component in COMPONENTS:
            await component[1](self.services)
            self.started.append(component)

    async def stop(self) -> None:
        while self.started:
            name, _, stop = self.started.pop()
            try:
                await asyncio.wait_for(stop(self.services), timeout=15)
            except Exception:
                log.exception("stopping %s failed", name)
