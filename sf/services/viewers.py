"""Live viewers in this process: WebSocket connections per stream, their distinct viewers kept
by ViewersActors, counted once over every process and node in Redis (`ViewerCounts`), totals
pushed to the sockets at most about once a second per stream.

Runs on the loop thread. Actors report a viewer's first and last tab through the LoopBridge;
nothing here waits on an actor. Each tick (`flush`) sends every stream's joins and leaves to
Redis and reads back the totals in one script call. Anonymous viewers over their network's
cap stay connected, uncounted, and are offered again every few seconds (a place may have
freed up). When Redis is unreachable the sockets keep getting this process's own counts, the
outage is logged once, and the whole state is sent again when Redis is back.
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
from sf.security import ViewerIdSigner
from sf.services.events import AccessEvent, StreamEvent, StreamListener
from sf.services.sessions import SessionStore
from sf.services.streams import StreamService
from sf.services.viewer_counts import LEAVES, Changes, ViewerCounts

log = logging.getLogger("sf.viewers")

TICK = 0.25                             # seconds between flushes
PUSH_EVERY = 1.0                        # at most one viewers message per stream per second
RECOUNT_EVERY = 1.0                     # totals of every watched stream, to notice dead nodes
WAITING_RETRY_EVERY = 2.0               # uncounted anonymous viewers ask for a freed place
KEEP_KEYS_EVERY = 3600.0                # a quiet stream's counting keys are kept alive
RETIRED_KEPT = 8                        # earlier instances of this process dropped at once
SESSION_CHECK_EVERY = 5.0               # signed-in sockets whose session ended are closed
FAN_OUT_SLICE = 0.001                   # seconds of sending between two yields to the loop
CLOSE_NOT_FOUND = 4404
CLOSE_UNAUTHORIZED = 4401  # also the handler's code for a bad ticket
CLOSE_GOING_AWAY = 1001


class Sendable(Protocol):
    def send(self, payload: bytes) -> None: ...


async def fan_out(payload: bytes, sockets: Iterable[Sendable]) -> None:
    """Send one payload to many sockets, yielding to the loop after every millisecond of
    sending, so that a broadcast to 10,000 viewers (~150 ms of send() calls on this
    machine) delays each step of a request by a millisecond at most, not by the whole
    broadcast (bench/viewers.py: REST p95 during churn 184 ms with 500-socket slices).
    Shared with the chat's batches (sf/services/chat.py)."""
    clock = time.perf_counter
    slice_end = clock() + FAN_OUT_SLICE
    for socket in list(sockets):
        socket.send(payload)
        if clock() >= slice_end:
            await asyncio.sleep(0)
            slice_end = clock() + FAN_OUT_SLICE


class SessionSocket(Protocol):
    session_id: str | None

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


async def close_ended_sessions(sessions: SessionStore, sockets: Iterable[SessionSocket]) -> int:
    """Close (4401) those of `sockets` whose session has ended; how many. Raises what Redis
    raises (the caller's outage)."""
    by_session: dict[str, list[SessionSocket]] = defaultdict(list)
    for socket in sockets:
        if socket.session_id is not None:
            by_session[socket.session_id].append(socket)
    if not by_session:
        return 0
    alive = await sessions.alive(list(by_session))
    closed = 0
    for session_id, ended in by_session.items():
        if session_id not in alive:
            for socket in ended:
                socket.close(CLOSE_UNAUTHORIZED, "session ended")
                closed += 1
    return closed


class ViewerSocket(Protocol):
    """What the hub needs of a WebSocket connection."""

    account_id: int | None  # the signed-in viewer, None when anonymous
    session_id: str | None  # their session (a socket closes when it ends), None when anonymous

    @property
    def client_address(self) -> str: ...

    def send(self, payload: bytes) -> None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class ViewerHub(StreamListener):
    """This process's viewers of every stream, and what they are told."""

    def __init__(self, config: Config, redis: Redis, counts: ViewerCounts,
                 streams: StreamService, sessions: SessionStore) -> None:
        self.config = config
        self.redis = redis
        self.counts = counts
        self.streams = streams
        self.sessions = sessions
        self.signer = ViewerIdSigner(config.internal_secret)
        self.anonymous_per_network = config.viewers_anonymous_per_network
        self._last_session_check = 0.0
        self.bridge = LoopBridge(asyncio.get_running_loop())
        self.sockets: dict[int, set[ViewerSocket]] = defaultdict(set)
        self.fresh: set[ViewerSocket] = set()          # still waiting for their first total
        self.owners: dict[int, tuple[int, bool]] = {}   # stream → (owner id, private)
        self.live: dict[int, bool] = {}                 # stream → live (peaks, unique count)
        self.actors: dict[int, pykka.ActorRef[Any]] = {}
        self.generations: dict[int, int] = {}           # stream → its current actor's number
        self._generation = 0
        self.per_address: Counter[str] = Counter()
        # stream → viewer id → network: the distinct viewers of this process's sockets
        self.present: dict[int, dict[str, str]] = defaultdict(dict)
        # stream → viewer id → network, or LEAVES: not yet sent to Redis
        self.changes: Changes = defaultdict(dict)
        # stream → viewer id → network: anonymous viewers refused by their network's cap
        self.waiting: dict[int, dict[str, str]] = defaultdict(dict)
        self.recount: set[int] = set()     # another process's count changed
        self.totals: dict[int, int] = {}
        self.pushed: dict[int, tuple[int, float]] = {}  # stream → (total, when) last pushed
        self._resync = True                # (re)send the whole state as a new instance
        self._attempted = False            # the current instance may have written to Redis
        self._retired: list[str] = []      # earlier instances of this process to drop
        self._redis_down = False
        self._last_recount = 0.0
        self._last_waiting_retry = 0.0
        self._last_keep = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        self.closing = False

    # --- connections (called by the WebSocket handler) -------------------------------------

    def admits(self, address: str) -> bool:
        """Whether one more connection from this client address is allowed."""
        return self.per_address[address] < self.config.ws_connections_per_address

    def join(self, stream_id: int, owner_id: int, private: bool, live: bool,
             socket: ViewerSocket, viewer_id: str, network: str) -> None:
        """A socket of `viewer_id` (network: see `ViewerJoined`) watches `stream_id`."""
        self.sockets[stream_id].add(socket)
        self.fresh.add(socket)
        self.owners[stream_id] = (owner_id, private)
        self.live[stream_id] = live
        self.per_address[socket.client_address] += 1
        WS_CONNECTIONS.inc()
        WS_OPENED.inc()
        ref = self.actors.get(stream_id)
        if ref is None:
            self._generation += 1
            self.generations[stream_id] = self._generation
            ref = self.actors[stream_id] = ViewersActor.start(stream_id, self._generation,
                                                             self._report)
        ref.tell(ViewerJoined(viewer_id, network))

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
                # The stream's last socket here: every viewer departs now, whatever the old
                # actor still reports (a next join starts a new generation).
                del self.actors[stream_id]
                self.generations.pop(stream_id, None)
                ref.stop(block=False)
                for departed in self.present.pop(stream_id, {}):
                    self.changes[stream_id][departed] = LEAVES
                self.waiting.pop(stream_id, None)
        if not sockets:
            del self.sockets[stream_id]
            self.totals.pop(stream_id, None)
            self.live.pop(stream_id, None)

    def local_viewers(self) -> int:
        """Distinct viewers of this process's sockets, over all streams (for the metrics)."""
        return sum(len(viewers) for viewers in self.present.values())

    def current_total(self, stream_id: int) -> int:
        return self.totals.get(stream_id, self._local_total(stream_id))

    def _local_total(self, stream_id: int) -> int:
        """This process's own count of a stream: its viewers, anonymous ones capped per
        network as Redis would (what the sockets get while Redis is unreachable)."""
        per_network: Counter[str] = Counter(self.present.get(stream_id, {}).values())
        return sum(count if network == "+" else min(count, self.anonymous_per_network)
                   for network, count in per_network.items())

    # --- viewers (actor → loop) -------------------------------------------------------------

    def _report(self, stream_id: int, generation: int, viewer_id: str,
                network: str | None) -> None:
        """Called on an actor thread: hand a viewer's arrival or departure to the loop."""
        self.bridge.submit(self._viewer_changed, stream_id, generation, viewer_id, network)

    async def _viewer_changed(self, stream_id: int, generation: int, viewer_id: str,
                              network: str | None) -> None:
        if self.generations.get(stream_id) != generation:
            return  # an earlier actor of the stream: its viewers were let go already
        if network is not None:
            self.present[stream_id][viewer_id] = network
            self.changes[stream_id][viewer_id] = network
        else:
            present = self.present.get(stream_id, {})
            present.pop(viewer_id, None)
            if not present:
                self.present.pop(stream_id, None)
            self.changes[stream_id][viewer_id] = LEAVES
            self.waiting.get(stream_id, {}).pop(viewer_id, None)

    # --- the flush loop -----------------------------------------------------------------------

    def _take_changes(self, now: float) -> Changes:
        """What this tick sends: the joins and leaves since the last one, the waiting
        viewers' retries, and keep-alives; everything, when starting over as a new instance."""
        if self._resync:
            if self._attempted:
                # Only the last few are dropped at once: an older one (a long outage starts
                # over every tick) that did reach Redis lost its heartbeat long ago, and the
                # totals script reaps it anyway.
                self._retired = [*self._retired, self.counts.new_incarnation()][-RETIRED_KEPT:]
                self._attempted = False
            self.changes = defaultdict(dict)
            self.waiting = defaultdict(dict)
            return {sid: dict(viewers) for sid, viewers in self.present.items() if viewers}
        changes, self.changes = self.changes, defaultdict(dict)
        if now - self._last_waiting_retry >= WAITING_RETRY_EVERY:
            self._last_waiting_retry = now
            for stream_id, waiting in self.waiting.items():
                offered: Counter[str] = Counter()
                for viewer_id, network in waiting.items():
                    # No network takes more than its cap at once: more would be refused.
                    if offered[network] < self.anonymous_per_network:
                        offered[network] += 1
                        changes[stream_id].setdefault(viewer_id, network)
        if now - self._last_keep >= KEEP_KEYS_EVERY:
            self._last_keep = now
            for stream_id in self.present:
                changes.setdefault(stream_id, {})
        return {sid: viewers for sid, viewers in changes.items()}

    async def flush(self) -> None:
        """Send the joins and leaves, refresh totals, push what changed to the sockets."""
        now = time.monotonic()
        wanted = self.recount
        self.recount = set()
        if now - self._last_recount >= RECOUNT_EVERY or self._redis_down:
            wanted |= set(self.sockets)
            self._last_recount = now
        resync = self._resync
        changes = self._take_changes(now)
        wanted |= {sid for sid in changes if sid in self.sockets}
        try:
            self._attempted = True
            outcome = await self.counts.flush(
                changes, {sid: self.live.get(sid, False) for sid in sorted(wanted)},
                fresh=resync, retired=list(self._retired))
        except Exception:
            self._resync = True  # applied or not, unknown: start over as a new instance
            self._lost_redis()
            for sid in wanted:  # keep the sockets going with what this process knows
                self.totals[sid] = self._local_total(sid)
        else:
            if outcome.lost:
                log.warning("this process's viewers had expired from Redis (Redis restarted, "
                            "or no heartbeat for 10 s): counting them again")
                self._resync = True
            else:
                self._resync = False
                self._retired.clear()
                for sid, refused in outcome.refused.items():
                    present = self.present.get(sid, {})
                    for viewer_id in refused:
                        if viewer_id in present:
                            self.waiting[sid][viewer_id] = present[viewer_id]
                for sid, viewers in changes.items():
                    waiting = self.waiting.get(sid)
                    if waiting:
                        for viewer_id in viewers:
                            if viewer_id not in outcome.refused.get(sid, ()):
                                waiting.pop(viewer_id, None)
                self.totals.update({sid: total.viewers for sid, total in outcome.totals.items()
                                    if sid in self.sockets})
                if self._redis_down:
                    log.info("viewer counts are shared through Redis again")
                    self._redis_down = False
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
        try:
            return await close_ended_sessions(
                self.sessions, [socket for sockets in self.sockets.values() for socket in sockets])
        except Exception:
            self._lost_redis()
            return 0

    async def _follow_other_nodes(self) -> None:
        """Other processes' count changes: recount those streams at the next tick."""
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.counts.channel)
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
        self.live[event.stream_id] = event.is_live
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
        if not event.is_live:
            # Ended: viewers usually wait for the streamer's return, but not for a stream
            # nobody may see any more (its account deleted: security.md#erased-account-sockets).
            await self._close_unauthorized(event.stream_id)

    _fan_out = staticmethod(fan_out)

    stream_live = stream_updated = stream_ended = thumbnail_changed = _broadcast_state
    stream_offline = _broadcast_state

    async def _close_unauthorized(self, stream_id: int) -> None:
        """A stream became private, or ended: only those who may still see it stay (its owner
        and invited viewers; nobody once its account is deleted). A stream anyone may still
        see (public, its account not deleted) keeps every socket, anonymous ones too."""
        sockets = list(self.sockets.get(stream_id, ()))
        if not sockets or await self._visible_to(stream_id, None):
            return
        verdicts: dict[int | None, bool] = {None: False}
        for socket in sockets:
            if socket.account_id not in verdicts:
                verdicts[socket.account_id] = await self._visible_to(stream_id, socket.account_id)
            if not verdicts[socket.account_id]:
                socket.close(CLOSE_NOT_FOUND, "stream not found")

    async def _visible_to(self, stream_id: int, account_id: int | None) -> bool:
        try:
            await self.streams.get_stream(stream_id, account_id)
        except NotFound:
            return False
        return True

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
        self.generations.clear()
        try:
            retired = self._retired + ([self.counts.instance] if self._attempted else [])
            await self.counts.withdraw(retired)
        except Exception:
            log.warning("could not withdraw this node's viewer counts; they expire with it")
