"""ViewersActor: the distinct viewers of one stream in this process.

One per stream that has WebSocket viewers in this process, whether or not the node ingests
it: counting lives in an actor of its own rather than in the StreamActor, because a
StreamActor is replaced whenever the encoder reconnects and would lose the tally. The loop
`tell`s joins and leaves (one per socket); the actor reports a viewer's first tab (arrived,
with the network it came from) and last tab (departed) through the `report` callable it was
given (which schedules work on the loop via the LoopBridge), never by blocking anyone. Redis
then counts each viewer once over every process (`sf.services.viewer_counts`).
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
    network: str  # where the viewer counts for the anonymous cap (`SIGNED_IN` for accounts)


@dataclass(frozen=True)
class ViewerLeft:
    viewer_id: str


# report(stream id, generation, viewer id, network on arrival | None on departure)
Report = Callable[[int, int, str, str | None], None]


class ViewersActor(pykka.ThreadingActor):
    """Tabs of one viewer in this process: the first one arrives, the last one departs.

    `generation` tells this actor's reports from those of an earlier actor of the same stream
    (the loop stops an actor when the stream's last socket goes and starts another on the next
    join; a late report of the old one must not undo the new one's)."""

    def __init__(self, stream_id: int, generation: int, report: Report) -> None:
        super().__init__()
        self.stream_id = stream_id
        self.generation = generation
        self.report = report
        self.tabs: Counter[str] = Counter()

    def on_start(self) -> None:
        log.info("stream %s: viewers actor started", self.stream_id,
                 extra={"stream_id": self.stream_id, "event": "actor_started"})

    def on_receive(self, message: Any) -> None:
        if isinstance(message, ViewerJoined):
            self.tabs[message.viewer_id] += 1
            if self.tabs[message.viewer_id] == 1:
                self.report(self.stream_id, self.generation, message.viewer_id, message.network)
        elif isinstance(message, ViewerLeft) and message.viewer_id in self.tabs:
            self.tabs[message.viewer_id] -= 1
            if self.tabs[message.viewer_id] <= 0:
                del self.tabs[message.viewer_id]
                self.report(self.stream_id, self.generation, message.viewer_id, None)

    def on_stop(self) -> None:
        for viewer_id in self.tabs:
            self.report(self.stream_id, self.generation, viewer_id, None)
        self.tabs.clear()
        log.info("stream %s: viewers actor stopped", self.stream_id,
                 extra={"stream_id": self.stream_id, "event": "actor_stopped"})
