"""The node's directory of live streams: stream id → StreamActor (owned by the loop thread)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pykka

from sf.actors.bridge import LoopBridge
from sf.actors.stream_actor import GetHealth, MediaEvents, SetPrivate, StreamActor
from sf.config import Config
from sf.observability import LIVE_STREAMS, TRANSCODERS_RUNNING

log = logging.getLogger("sf.actors")


class StreamDirectory:
    """Starts, finds and stops this node's stream actors; every call returns without waiting."""

    def __init__(self, config: Config, bridge: LoopBridge, events: MediaEvents) -> None:
        self.config = config
        self.bridge = bridge
        self.events = events
        self._actors: dict[int, pykka.ActorRef[Any]] = {}
        self._ladders: set[int] = set()  # streams transcoded (the others are source-only)

    def __contains__(self, stream_id: int) -> bool:
        return stream_id in self._actors

    def stream_ids(self) -> list[int]:
        return list(self._actors)

    def transcoders(self) -> int:
        """Streams of this node with a transcoded ladder."""
        return len(self._ladders)

    def start(self, stream_id: int, *, private: bool, passthrough: bool,
              thumbnail_name: str, source_only: bool = False) -> None:
        """Start the stream's actor (replacing a previous one of the same stream)."""
        self.stop(stream_id)
        self._actors[stream_id] = StreamActor.start(
            stream_id, self.config, self.bridge, self.events, private, passthrough, thumbnail_name,
            source_only)
        if not source_only:
            self._ladders.add(stream_id)
        self._count()

    def stop(self, stream_id: int) -> None:
        ref = self._actors.pop(stream_id, None)
        if ref is not None:
            ref.stop(block=False)  # the actor stops FFmpeg on its own thread
        self._ladders.discard(stream_id)
        self._count()

    def _count(self) -> None:
        LIVE_STREAMS.set(len(self._actors))
        TRANSCODERS_RUNNING.set(len(self._ladders))

    def set_private(self, stream_id: int, private: bool) -> None:
        ref = self._actors.get(stream_id)
        if ref is not None:
            ref.tell(SetPrivate(private))

    async def health(self, stream_id: int, timeout: float = 2.0) -> dict[str, Any] | None:
        """Ask an actor for its health without blocking the loop (reply via an asyncio future)."""
        ref = self._actors.get(stream_id)
        if ref is None:
            return None
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        try:
            ref.tell(GetHealth(future))
        except pykka.ActorDeadError:
            return None
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None

    async def stop_all(self, timeout: float = 10.0) -> None:
        """Stop every actor and wait (off the loop) until their FFmpegs are gone."""
        refs = list(self._actors.values())
        self._actors.clear()
        self._ladders.clear()
        self._count()
        futures = [ref.stop(block=False) for ref in refs]

        def wait_all() -> None:
            for future in futures:
                try:
                    future.get(timeout=timeout)
                except Exception:  # an actor that died already has nothing left to stop
                    log.warning("actor did not stop cleanly", exc_info=True)

        await asyncio.get_running_loop().run_in_executor(None, wait_all)
