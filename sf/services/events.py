"""Stream events: one listener interface for what happens to a stream, and the Redis pub/sub
bus that carries those events to every node.

`StreamService` tells its local listeners (Mopidy `CoreListener` style: subclass
`StreamListener`, override what you need). `EventBus` is one of them: it publishes each event
on Redis, and hands the events other nodes published to its own subscribers, so a node that
only serves viewers can follow streams without owning ingest, and a media node hears about
changes made through any API node.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from redis.asyncio import Redis

from sf.db.streams import Stream

log = logging.getLogger("sf.events")

CHANNEL = "sf:events:streams"


def channel_name(redis: Redis, name: str) -> str:
    """A pub/sub channel of this deployment: pub/sub ignores Redis database numbers, so
    deployments (or test runs) sharing one Redis server on different databases would hear each
    other's events without the database in the name."""
    database = redis.connection_pool.connection_kwargs.get("db", 0)
    return f"{name}:db{database}"
KINDS = ("live", "updated", "ended", "thumbnail", "offline")


@dataclass(frozen=True)
class StreamEvent:
    """What changed, and the stream's public state after the change."""

    kind: str
    stream_id: int
    user_id: int
    is_live: bool
    is_private: bool
    title: str
    thumbnail: str | None
    category_id: int | None
    ts: float
    origin: str = ""  # the node that published it

    @classmethod
    def of(cls, kind: str, stream: Stream) -> StreamEvent:
        return cls(kind, stream.id, stream.user_id, stream.is_live, stream.is_private,
                   stream.title, stream.thumbnail, stream.category_id, time.time())

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> StreamEvent:
        data: dict[str, Any] = json.loads(raw)
        if data.get("kind") not in KINDS:
            raise ValueError(f"unknown stream event kind {data.get('kind')!r}")
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


@dataclass(frozen=True)
class AccessEvent:
    """An owner withdrew a viewer's invite to their private streams."""

    owner_id: int
    viewer_id: int
    ts: float
    kind: str = "revoked"
    origin: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


Event = StreamEvent | AccessEvent


def event_from_json(raw: bytes | str) -> Event:
    data: dict[str, Any] = json.loads(raw)
    if data.get("kind") == "revoked":
        return AccessEvent(int(data["owner_id"]), int(data["viewer_id"]), float(data["ts"]),
                           origin=str(data.get("origin", "")))
    return StreamEvent.from_json(raw)


class StreamListener:
    """Hears what happens to streams; every method is a no-op until overridden."""

    async def stream_live(self, event: StreamEvent) -> None:
        """The stream went live (or resumed after its encoder reconnected)."""

    async def stream_updated(self, event: StreamEvent) -> None:
        """Title, description, category or privacy changed."""

    async def stream_ended(self, event: StreamEvent) -> None:
        """The stream stopped being live (owner, key reset, sweeper)."""

    async def thumbnail_changed(self, event: StreamEvent) -> None:
        """A new thumbnail was taken."""

    async def stream_offline(self, event: StreamEvent) -> None:
        """The stream's media node died: not live, not ended; its encoder may resume it on
        any media node within the grace period (then `stream_live`), else it ends."""

    async def viewer_revoked(self, event: AccessEvent) -> None:
        """A viewer lost access to an owner's private streams."""


_METHODS = {"live": "stream_live", "updated": "stream_updated", "ended": "stream_ended",
            "thumbnail": "thumbnail_changed", "offline": "stream_offline",
            "revoked": "viewer_revoked"}


async def notify(listeners: list[StreamListener], event: Event) -> None:
    """Tell every listener; one that fails is logged and does not stop the others."""
    for listener in listeners:
        try:
            await getattr(listener, _METHODS[event.kind])(event)
        except Exception:
            log.exception("%s failed on a %s event", type(listener).__name__, event.kind)


class EventBus(StreamListener):
    """Publishes this node's stream events on Redis; delivers other nodes' to subscribers."""

    def __init__(self, redis: Redis, node_id: str) -> None:
        self.redis = redis
        self.node_id = node_id
        self.channel = channel_name(redis, CHANNEL)
        self.subscribers: list[StreamListener] = []
        self._task: asyncio.Task[None] | None = None
        self._outage = False

    def subscribe(self, listener: StreamListener) -> None:
        """`listener` hears the events published by other nodes."""
        self.subscribers.append(listener)

    async def _publish(self, event: Event) -> None:
        try:
            await self.redis.publish(self.channel, replace(event, origin=self.node_id).to_json())
        except Exception:
            log.warning("could not publish a %s event", event.kind, exc_info=True)

    stream_live = stream_updated = stream_ended = thumbnail_changed = stream_offline = _publish
    viewer_revoked = _publish

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._listen())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _listen(self) -> None:
        """Deliver other nodes' events until stopped; a lost Redis is logged once per outage."""
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    if self._outage:
                        log.info("stream events flow again")
                        self._outage = False
                    async for message in pubsub.listen():
                        await self._deliver(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception:
                if not self._outage:
                    log.warning("stream event subscription lost; retrying", exc_info=True)
                    self._outage = True
                await asyncio.sleep(1)

    async def _deliver(self, raw: bytes) -> None:
        try:
            event = event_from_json(raw)
        except (ValueError, TypeError, KeyError):
            log.warning("ignored a malformed stream event")
            return
        if event.origin != self.node_id:
            await notify(self.subscribers, event)
