"""ViewersActor: counts one stream's distinct viewers on this node.

One per stream that has WebSocket viewers on this node, whether or not the node ingests it:
counting lives in an actor of its own rather than in the StreamActor, because a StreamActor is
replaced whenever the encoder reconnects and would lose the tally. The loop `tell`s joins and
leaves; the actor reports each new count back through the `report` callable it was given
(which schedules work on the loop via the LoopBridge), never by blocking anyone.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

log = logging.getLogger("sf.actors.viewers")


@dataclass(frozen=True)
class ViewerJoined:
    viewer_id: str


@dataclass(frozen=True)
class ViewerLeft:
    viewer_id: str


class ViewersActor(pykka.ThreadingActor):
    """Distinct viewers of one stream on this node: tabs of one viewer count once."""

    def __init__(self, stream_id: int, report: Callable[[int, int], None]) -> None:
        super().__init__()
        self.stream_id = stream_id
        self.report = report
        self.connections: Counter[str] = Counter()

    def on_start(self) -> None:
        log.info("stream %s: viewers actor started", self.stream_id,
                 extra={"stream_id": self.stream_id, "event": "actor_started"})

    def on_receive(self, message: Any) -> None:
        before = len(self.connections)
        if isinstance(message, ViewerJoined):
            self.connections[message.viewer_id] += 1
        elif isinstance(message, ViewerLeft):
            self.connections[message.viewer_id] -= 1
            if self.connections[message.viewer_id] <= 0:
                del self.connections[message.viewer_id]
        if len(self.connections) != before:
            self.report(self.stream_id, len(self.connections))

    def on_stop(self) -> None:
        if self.connections:
            self.connections.clear()
            self.report(self.stream_id, 0)
        log.info("stream %s: viewers actor stopped", self.stream_id,
                 extra={"stream_id": self.stream_id, "event": "actor_stopped"})
