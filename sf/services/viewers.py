"""Live viewers on this node: WebSocket connections per stream, counted by ViewersActors,
summed across nodes in Redis (`ViewerCounts`), pushed to the sockets at most about once a
second per stream.

Runs on the loop thread. Actors report counts through the LoopBridge; nothing here waits on
an actor. When Redis is unreachable the sockets keep getting this node's own counts, the
outage is logged once, and every count is written again when Redis is back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any, Protocol

import pykka
from redis.asyncio import Redis

from sf.actors.bridge import LoopBridge
from sf.actors.viewers import ViewerJoined, ViewerLeft, ViewersActor
from sf.config import Config
from sf.errors import NotFound
from sf.media.hls import sign_thumbnail
from sf.observability import WS_CONNECTIONS, WS_MESSAGES, WS_OPENED
from sf.services.channels import ChannelService
from sf.services.events import AccessEvent, StreamEvent, StreamListener, channel_name
from sf.services.sessions import SessionStore
from sf.services.viewer_counts import ViewerCounts

log = logging.getLogger("sf.viewers")

VIEWERS_CHANNEL = "sf:events:viewers"   # "a node's count of this stream changed"
TICK = 0.25                             # seconds between flushes
PUSH_EVERY = 1.0                        # at most one viewers message per stream per second
RECOUNT_EVERY = 1.0                     # totals of every watched stream, to notice dead nodes
SESSION_CHECK_EVERY = 5.0               # signed-in sockets whose session ended are closed
FAN_OUT_SLICE = 0.001                   # seconds of sending between two yields to the loop
CLOSE_NOT_FOUND = 4404
CLOSE_UNAUTHORIZED = 4401  # also the handler's code for a bad ticket
CLOSE_GOING_AWAY = 1001


class ViewerSocket(Protocol):
    """What the hub needs of a WebSocket connection."""

    account_id: int | None  # the signed-in viewer, None when anonymous
    session_id: str | None  # their session (a socket closes when it ends), None when anonymous

    @property
    def client_address(self) -> str: ...

    def send(self, payload: bytes) -> None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class ViewerHub(StreamListener):
    """This node's viewers of every stream, and what they are told."""

    def __init__(self, config: Config, redis: Redis, counts: ViewerCounts,
                 channels: ChannelService, sessions: SessionStore) -> None:
        self.config = config
        self.redis = redis
        self.viewers_channel = channel_name(redis, VIEWERS_CHANNEL)
        self.counts = counts
        self.channels = channels
        self.sessions = sessions
        self._last_session_check = 0.0
        self.bridge = LoopBridge(asyncio.get_running_loop())
        self.sockets: dict[int, set[ViewerSocket]] = defaultdict(set)
        self.fresh: set[ViewerSocket] = set()          # still waiting for their first total
        self.owners: dict[int, tuple[int, bool]] = {}   # stream → (owner id, private)
        self.actors: dict[int, pykka.ActorRef[Any]] = {}
        self.per_address: Counter[str] = Counter()
        self.local: dict[int, int] = {}
        self.dirty: set[int] = set()       # local count changed, not yet written to Redis
        self.recount: set[int] = set()     # another node's count changed
        self.totals: dict[int, int] = {}
        self.pushed: dict[int, tuple[int, float]] = {}  # stream → (total, when) last pushed
        self._redis_down = False
        self._last_recount = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self.closing = False

    # --- connections (called by the WebSocket handler) -------------------------------------

    def admits(self, address: str) -> bool:
        """Whether one more connection from this client address is allowed."""
        return self.per_address[address] < self.config.ws_connections_per_address

    def join(self, stream_id: int, owner_id: int, private: bool, socket: ViewerSocket,
             viewer_id: str) -> None:
        self.sockets[stream_id].add(socket)
        self.fresh.add(socket)
        self.owners[stream_id] = (owner_id, private)
        self.per_address[socket.client_address] += 1
        WS_CONNECTIONS.inc()
        WS_OPENED.inc()
        ref = self.actors.get(stream_id)
        if ref is None:
            ref = self.actors[stream_id] = ViewersActor.start(stream_id, self._report)
        ref.tell(ViewerJoined(viewer_id))
        asyncio.ensure_future(self._add_unique(stream_id, viewer_id))

    def leave(self, stream_id: int, socket: ViewerSocket, viewer_id: str) -> None:
        sockets = self.sockets.get(stream_id)
        if sockets is None or socket not in sockets:
            return
        sockets.discard(socket)
        self.fresh.discard(socket)
        self.per_address[socket.client_address] -= 1
        if self.per_address[socket.client_address] <= 0:
            del self.per_address[socket.client_address]
        WS_CONNECTIONS.dec()
        ref = self.actors.get(stream_id)
        if ref is not None:
            ref.tell(ViewerLeft(viewer_id))
            if not sockets:
                del self.actors[stream_id]
                ref.stop(block=False)
        if not sockets:
            del self.sockets[stream_id]

    def local_viewers(self) -> int:
        """Distinct viewers of this process's sockets, over all streams (for the metrics)."""
        return sum(self.local.values())

    def current_total(self, stream_id: int) -> int:
        return self.totals.get(stream_id, self.local.get(stream_id, 0))

    # --- counts (actor → loop) --------------------------------------------------------------

    def _report(self, stream_id: int, count: int) -> None:
        """Called on an actor thread: hand the new count to the loop."""
        self.bridge.submit(self._local_count, stream_id, count)

    async def _local_count(self, stream_id: int, count: int) -> None:
        self.local[stream_id] = count
        self.dirty.add(stream_id)

    async def _add_unique(self, stream_id: int, viewer_id: str) -> None:
        try:
            await self.counts.add_unique(stream_id, viewer_id)
        except Exception:
            self._lost_redis()

    # --- the flush loop -----------------------------------------------------------------------

    async def flush(self) -> None:
        """Write changed local counts, refresh totals, push what changed to the sockets."""
        now = time.monotonic()
        dirty, self.dirty = self.dirty, set()
        wanted = set(dirty) | self.recount
        self.recount = set()
        if now - self._last_recount >= RECOUNT_EVERY or self._redis_down:
            wanted |= set(self.sockets)
            self._last_recount = now
        try:
            if self._redis_down:
                dirty |= set(self.local)  # Redis is back (or still down): write everything
            await self.counts.publish_local({sid: self.local.get(sid, 0) for sid in dirty})
            for sid in [sid for sid in dirty if not self.local.get(sid)]:
                self.local.pop(sid, None)
            if dirty:
                await self.redis.publish(self.viewers_channel, json.dumps(sorted(dirty)))
            self.totals.update(await self.counts.totals(sorted(wanted)))
            if self._redis_down:
                log.info("viewer counts are shared through Redis again")
                self._redis_down = False
        except Exception:
            self.dirty |= dirty
            self._lost_redis()
            for sid in wanted:  # keep the sockets going with what this node knows
                self.totals[sid] = self.local.get(sid, 0)
        await self._push(now)

    def _lost_redis(self) -> None:
        if not self._redis_down:
            log.warning("Redis unreachable: viewers get this node's counts until it is back")
            self._redis_down = True

    async def _push(self, now: float) -> None:
        for stream_id, sockets in list(self.sockets.items()):
            total = self.current_total(stream_id)
            last_total, last_time = self.pushed.get(stream_id, (-1, 0.0))
            changed = total != last_total and now - last_time >= PUSH_EVERY
            targets = sockets if changed else [s for s in sockets if s in self.fresh]
            if not targets:
                continue
            payload = json.dumps({"type": "viewers", "stream_id": stream_id, "viewers": total,
                                  "ts": time.time()}).encode()  # encoded once, for every socket
            await self._fan_out(payload, targets)
            self.fresh.difference_update(targets)
            WS_MESSAGES.inc(len(targets))
            if changed:
                self.pushed[stream_id] = (total, now)
        for stream_id in [sid for sid in self.pushed if sid not in self.sockets]:
            del self.pushed[stream_id]

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                await self.flush()
                if time.monotonic() - self._last_session_check >= SESSION_CHECK_EVERY:
                    self._last_session_check = time.monotonic()
                    await self.close_ended_sessions()
            except Exception:
                log.exception("viewer flush failed")

    async def close_ended_sessions(self) -> int:
        """Close (4401) the signed-in sockets whose session has ended since they connected:
        logout, password change or refresh-token reuse ends WebSocket access too, within
        SESSION_CHECK_EVERY. How many were closed. Redis unreachable: checked next time."""
        by_session: dict[str, list[ViewerSocket]] = defaultdict(list)
        for sockets in self.sockets.values():
            for socket in sockets:
                if socket.session_id is not None:
                    by_session[socket.session_id].append(socket)
        if not by_session:
            return 0
        try:
            alive = await self.sessions.alive(list(by_session))
        except Exception:
            self._lost_redis()
            return 0
        closed = 0
        for session_id, ended in by_session.items():
            if session_id not in alive:
                for socket in ended:
                    socket.close(CLOSE_UNAUTHORIZED, "session ended")
                    closed += 1
        return closed

    async def _follow_other_nodes(self) -> None:
        """Other nodes' count changes: recount those streams at the next tick."""
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.viewers_channel)
                    async for message in pubsub.listen():
                        try:
                            self.recount.update(int(sid) for sid in json.loads(message["data"])
                                                if int(sid) in self.sockets)
                        except (ValueError, TypeError):
                            log.warning("ignored a malformed viewers event")
            except asyncio.CancelledError:
                raise
            except Exception:
                self._lost_redis()
                await asyncio.sleep(1)

    # --- stream events (StreamListener: local and other nodes') -------------------------------

    async def _broadcast_state(self, event: StreamEvent) -> None:
        if event.stream_id not in self.sockets:
            return
        self.owners[event.stream_id] = (event.user_id, event.is_private)
        if event.is_private:
            await self._close_unauthorized(event.stream_id)
        thumbnail = event.thumbnail
        if event.is_private:  # everyone still connected may see it: a signed, expiring URL
            thumbnail = sign_thumbnail(thumbnail, event.stream_id, self.config.internal_secret,
                                       self.config.playback_url_ttl)
        payload = json.dumps({"type": "stream", "stream_id": event.stream_id,
                              "is_live": event.is_live, "title": event.title,
                              "thumbnail": thumbnail, "ts": event.ts}).encode()
        await self._fan_out(payload, self.sockets.get(event.stream_id, ()))

    @staticmethod
    async def _fan_out(payload: bytes, sockets: Iterable[ViewerSocket]) -> None:
        """Send one payload to many sockets, yielding to the loop after every millisecond of
        sending, so that a broadcast to 10,000 viewers (~150 ms of send() calls on this
        machine) delays each step of a request by a millisecond at most, not by the whole
        broadcast (bench/viewers.py: REST p95 during churn 184 ms with 500-socket slices)."""
        clock = time.perf_counter
        slice_end = clock() + FAN_OUT_SLICE
        for socket in list(sockets):
            socket.send(payload)
            if clock() >= slice_end:
                await asyncio.sleep(0)
                slice_end = clock() + FAN_OUT_SLICE

    stream_live = stream_updated = stream_ended = thumbnail_changed = _broadcast_state
    stream_offline = _broadcast_state

    async def _close_unauthorized(self, stream_id: int) -> None:
        """A stream became private: only its owner and invited viewers stay."""
        verdicts: dict[int | None, bool] = {None: False}
        for socket in list(self.sockets.get(stream_id, ())):
            if socket.account_id not in verdicts:
                try:
                    await self.channels.get_stream(stream_id, socket.account_id)
                    verdicts[socket.account_id] = True
                except NotFound:
                    verdicts[socket.account_id] = False
            if not verdicts[socket.account_id]:
                socket.close(CLOSE_NOT_FOUND, "stream not found")

    async def viewer_revoked(self, event: AccessEvent) -> None:
        for stream_id, (owner_id, private) in list(self.owners.items()):
            if owner_id == event.owner_id and private:
                for socket in list(self.sockets.get(stream_id, ())):
                    if socket.account_id == event.viewer_id:
                        socket.close(CLOSE_NOT_FOUND, "stream not found")

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._flush_forever()),
                       asyncio.ensure_future(self._follow_other_nodes())]

    async def stop(self) -> None:
        """Close every socket with 1001 (clients reconnect elsewhere) and withdraw our counts."""
        self.closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sockets in list(self.sockets.values()):
            for socket in list(sockets):
                socket.close(CLOSE_GOING_AWAY, "server shutting down")
        for ref in self.actors.values():
            ref.stop(block=False)
        self.actors.clear()
        try:
            await self.counts.publish_local({sid: 0 for sid in self.local})
        except Exception:
            log.warning("could not withdraw this node's viewer counts; they expire with it")
