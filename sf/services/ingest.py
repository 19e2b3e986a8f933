"""Ingest on this node: nginx-rtmp callbacks → streams going live/ending → StreamActors.

Runs on the loop thread. It talks to actors only through the StreamDirectory (tell, never
wait) and hears from them through the LoopBridge (`on_thumbnail`, `on_health`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections.abc import Awaitable
from typing import Any

import asyncpg
import tornado.httpclient
from redis.asyncio import Redis
from redis.exceptions import RedisError

from sf.actors.bridge import LoopBridge
from sf.actors.directory import StreamDirectory
from sf.config import Config
from sf.db import stream_keys as keys_db
from sf.db import streams as streams_db
from sf.db.streams import Stream
from sf.errors import Conflict
from sf.media import hls
from sf.observability import (
    MEDIA_NODES_ALIVE,
    NODE_CPU_BUSY,
    STREAMS_TAKEN_OFFLINE,
    TRANSCODER_ADMISSIONS,
    TRANSCODER_CAPACITY,
    TRANSCODER_DEGRADED,
    TRANSCODER_FPS,
    TRANSCODER_RESTARTS,
    TRANSCODER_SPEED,
    Outage,
)
from sf.services.admission import REFUSED, Admission, TranscoderAdmission
from sf.services.events import StreamEvent, StreamListener
from sf.services.media_nodes import CpuMonitor, MediaNode, MediaNodeRegistry
from sf.services.publishing import PublishingService
from sf.services.streams import StreamService

log = logging.getLogger("sf.ingest")

HEALTH_KEY = "sf:media:health:{}"
CPU_SAMPLE_SECONDS = 1.0


class IngestService(StreamListener):
    """One per API process of a node that sits next to an nginx-rtmp (a media node).

    The `owner` (the node's process 0) takes nginx-rtmp's callbacks and holds the actors; the
    node's other processes `forward` a callback that reaches them to it. As a `StreamListener`
    of the stream service each drops the publishers of the streams ended through it; `remote`
    hears changes made by other processes and nodes, and stops the actors they concern.
    """

    def __init__(self, config: Config, db: asyncpg.Pool, redis: Redis,
                 streams: StreamService, publishing: PublishingService,
                 registry: MediaNodeRegistry, *,
                 owner: bool = True) -> None:
        self.config = config
        self.owner = owner
        self.db = db
        self.redis = redis
        self.streams = streams
        self.publishing = publishing
        self.registry = registry
        self.bridge = LoopBridge(asyncio.get_running_loop())
        self.directory = StreamDirectory(config, self.bridge, self)
        self.remote = RemoteStreamChanges(self)
        self.cpu = CpuMonitor()
        self.admission = TranscoderAdmission(config, registry, self.cpu,
                                             self.directory.transcoders)
        self._sweeper: asyncio.Task[None] | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._next_beat = 0.0  # monotonic time of the next heartbeat
        self.health_outage = Outage(log, "Redis", "transcoder health is not copied there")
        self.stopping = False
        self.http = tornado.httpclient.AsyncHTTPClient()
        if shutil.which(config.ffmpeg) is None:
            log.warning("ffmpeg not found: this node cannot transcode")

    # --- nginx-rtmp callbacks ------------------------------------------------------------------

    async def publish(self, presented_key: str, address: str = "") -> int:
        """on_publish: authorize the key, admit (ladder, source-only or refused: a domain
        error), go live (or resume), start the actor; the stream id. `address`: the
        publisher's, as nginx-rtmp saw it."""
        admission = self.admission
        # Asked before the go-live transaction (no Redis round trip while it holds its locks),
        # and only when this node looks full; "no" when Redis cannot tell.
        others_have_room = bool(admission.lack_of_room() and await admission.others_with_room())
        decided: list[Admission] = []

        async def admit(connection: asyncpg.Connection, user_id: int,
                        resumed: bool) -> tuple[str | None, bool]:
            decision = await admission.decide(connection, user_id, address, resumed,
                                              others_have_room)
            decided.append(decision)
            if decision.decision == REFUSED:
                admission.record(decision, user_id, None)
                raise admission.refusal(decision)
            return decision.address_range, decision.transcoded

        def authorize() -> Awaitable[Stream]:
            return self.publishing.authorize_publish(
                presented_key, media_node=self.config.media_node_url,
                resume_within=self.config.publish_grace_seconds, admit=admit)

        try:
            try:
                stream = await authorize()
            except Conflict:
                # Still live on another node: one that died moments ago (its encoder came
                # back sooner than its heartbeat expired) is taken over at once.
                if not await self._take_over(presented_key):
                    raise
                for decision in decided:
                    admission.release(decision)
                decided.clear()
                stream = await authorize()
        except BaseException:
            for decision in decided:
                admission.release(decision)
            raise
        decision = decided[-1]
        try:
            settings = await keys_db.get_settings(self.db, stream.user_id)
            thumbnail_name = await self._thumbnail_name(stream)
            self.directory.start(stream.id, private=stream.is_private,
                                 passthrough=settings.source_passthrough or self.config.source_passthrough,
                                 thumbnail_name=thumbnail_name, source_only=not decision.transcoded)
        finally:
            admission.release(decision)
        admission.record(decision, stream.user_id, stream.id)
        log.info("stream %s live (user %s)", stream.id, stream.user_id,
                 extra={"stream_id": stream.id, "user_id": stream.user_id, "event": "live"})
        return stream.id

    async def forward(self, path: str, body: bytes,
                      request_id: str) -> tornado.httpclient.HTTPResponse:
        """A callback that reached a process other than the owner, passed on to the owner
        (under the same request id, so both log lines name one callback)."""
        return await self.http.fetch(
            f"{self.config.ingest_url}{path}", method="POST", body=body, request_timeout=10,
            follow_redirects=False, raise_error=False,
            headers={"Content-Type": "application/x-www-form-urlencoded",
                     "X-Request-ID": request_id})

    async def resolve(self, name: str) -> int | None:
        """A callback's stream name — a stream id, or the key it was published with — as an id."""
        return await self.publishing.stream_of_callback_name(name)

    async def publish_done(self, stream_id: int) -> None:
        """on_publish_done: stop transcoding; the stream ends unless the encoder comes back."""
        self.directory.stop(stream_id)
        if await streams_db.mark_disconnected(self.db, stream_id):
            log.info("stream %s: publisher left, %ss grace", stream_id,
                     self.config.publish_grace_seconds,
                     extra={"stream_id": stream_id, "event": "publisher_left"})
            if self.config.publish_grace_seconds == 0:
                await self.streams.end_stream(stream_id)

    async def update(self, stream_id: int) -> bool:
        """on_update: refresh liveness; False (drop the publisher) if the stream was ended."""
        return await streams_db.touch_live(self.db, stream_id)

    # --- what the stream service tells (StreamListener) ------------------------------------------

    async def stream_ended(self, event: StreamEvent) -> None:
        """A stream ended on this node (DELETE, key reset, sweeper): stop its actor, drop its
        publisher wherever it is ingested."""
        self.directory.stop(event.stream_id)
        await self.drop_publisher(event.stream_id)

    async def stream_updated(self, event: StreamEvent) -> None:
        self.apply_privacy(event.stream_id, event.is_private)

    def apply_privacy(self, stream_id: int, private: bool) -> None:
        """Make nginx refuse (or serve) the unsigned HLS path of a stream held on this node.

        Written here rather than only by the actor: a stream whose encoder is between
        reconnects has no actor, but its segments are still on disk and must follow the
        privacy the owner chose at once.
        """
        self.directory.set_private(stream_id, private)
        if hls.hls_dir_for(self.config.media_dir, stream_id).is_dir():
            hls.set_private_marker(self.config.media_dir, stream_id, private)
        else:  # ended and cleaned up: its last thumbnail stays, and stays private
            hls.set_thumbnail_private_marker(self.config.media_dir, stream_id, private)

    async def drop_publisher(self, stream_id: int) -> None:
        """Ask the ingesting node's nginx-rtmp to disconnect the publisher now."""
        node = await streams_db.media_node_of(self.db, stream_id) or self.config.media_node_url
        url = f"{node}/control/drop/publisher?app=live&name={int(stream_id)}"
        try:
            await self.http.fetch(url, request_timeout=5, raise_error=False,
                                  headers={"X-SF-Control": self.config.internal_secret})
        except OSError as exc:
            log.warning("could not reach media node %s to drop stream %s: %s", node, stream_id, exc)

    # --- events from the actors (run on the loop through the bridge) ---------------------------

    async def on_thumbnail(self, stream_id: int, url: str) -> None:
        if not self.stopping:
            await self.streams.set_thumbnail(stream_id, url)

    async def on_not_copyable(self, stream_id: int, reason: str) -> None:
        """A source-only stream whose source cannot be copied (not H.264): refused after all."""
        if self.stopping or stream_id not in self.directory:
            return
        TRANSCODER_ADMISSIONS.labels(REFUSED, "not_h264").inc()
        log.warning("stream %s refused: %s", stream_id, reason,
                    extra={"event": "admission", "decision": REFUSED, "reason": "not_h264",
                           "stream_id": stream_id})
        await self.streams.end_stream(stream_id)

    async def on_health(self, stream_id: int, health: dict[str, Any]) -> None:
        if self.stopping:
            return
        label = str(stream_id)
        gauges = (TRANSCODER_SPEED, TRANSCODER_FPS, TRANSCODER_RESTARTS, TRANSCODER_DEGRADED)
        if health["state"] == "stopped":
            for gauge in gauges:
                with contextlib.suppress(KeyError):  # never reported for this stream
                    gauge.remove(label)
        else:
            TRANSCODER_SPEED.labels(label).set(health["speed"])
            TRANSCODER_FPS.labels(label).set(health["fps"])
            TRANSCODER_RESTARTS.labels(label).set(health["restarts"])
            TRANSCODER_DEGRADED.labels(label).set(1 if health["state"] == "degraded" else 0)
        # The gauges first: a Redis outage must not freeze them (nor log an ERROR every 2 s
        # per stream); the copy in Redis simply expires meanwhile.
        try:
            await self.redis.set(HEALTH_KEY.format(stream_id), json.dumps(health), ex=60)
        except (RedisError, OSError) as error:
            self.health_outage.lost(error)
        else:
            self.health_outage.back()

    # --- housekeeping --------------------------------------------------------------------------

    async def _thumbnail_name(self, stream: Stream) -> str:
        """Keep the stream's thumbnail file across restarts and reconnects."""
        if stream.thumbnail and stream.thumbnail.startswith("/media/thumbnails/"):
            return stream.thumbnail.removeprefix("/media/thumbnails/").split("?")[0]
        return hls.new_thumbnail_name(stream.id)

    async def sweep(self) -> None:
        """Take the streams of dead media nodes offline; end streams past their grace period
        or silent too long; drop old segments."""
        await self.take_dead_nodes_offline()
        expired = await streams_db.expired_live_streams(
            self.db, self.config.publish_grace_seconds, self.config.stream_liveness_timeout)
        for stream_id in expired:
            log.info("stream %s: ended by the sweeper", stream_id)
            await self.streams.end_stream(stream_id)
        await asyncio.get_running_loop().run_in_executor(None, self._remove_old_media)

    async def take_dead_nodes_offline(self) -> list[int]:
        """Live streams ingested by media nodes whose heartbeat stopped go offline (their
        viewers are told; their encoders may resume them on any node within the grace
        period). Nothing happens while the registry cannot be trusted (Redis down)."""
        nodes = await streams_db.live_media_nodes(self.db)
        dead = await self.registry.dead_among(nodes, self.config.media_node_url)
        if not dead:
            return []
        return await self._take_offline(dead)

    async def _take_over(self, presented_key: str) -> bool:
        """Whether the key's live stream was held by a media node now `gone` (its streams
        then go offline, to be resumed here)."""
        stream_id = await self.publishing.stream_of_callback_name(presented_key)
        if stream_id is None:
            return False
        holder = await streams_db.media_node_of(self.db, stream_id)
        if holder is None or not await self.registry.gone(holder, self.config.media_node_url):
            return False
        return bool(await self._take_offline([holder]))

    async def _take_offline(self, dead: list[str]) -> list[int]:
        stream_ids = await self.publishing.take_offline_streams_of(dead)
        if stream_ids:  # every surviving node tries; the one that took them reports
            STREAMS_TAKEN_OFFLINE.inc(len(stream_ids))
            log.error("media node lost (%s): %s live streams taken offline",
                      ", ".join(dead), len(stream_ids),
                      extra={"event": "media_node_lost", "media_nodes": dead,
                             "stream_ids": stream_ids})
        return stream_ids

    def node_state(self) -> MediaNode:
        """What this media node's heartbeat says of it."""
        config, admission = self.config, self.admission
        return MediaNode(url=config.media_node_url, node_id=config.node_id,
                         origin=config.media_origin, rtmp_url=config.rtmp_url,
                         transcoders=admission.transcoders, capacity=admission.capacity,
                         cpu_busy=self.cpu.busy, has_room=admission.lack_of_room() is None)

    async def report(self) -> None:
        """One round of the reporter: sample the CPU, heartbeat when due, export the load."""
        await self.cpu.sample()
        now = time.monotonic()
        if now >= self._next_beat:
            self._next_beat = now + self.registry.interval
            await self.registry.beat(self.node_state())
            with contextlib.suppress(Exception):  # Redis unreachable: the gauge keeps its value
                MEDIA_NODES_ALIVE.set(len(await self.registry.alive()))
        busy = self.cpu.busy
        if busy is not None:
            NODE_CPU_BUSY.set(busy)
        TRANSCODER_CAPACITY.set(self.admission.capacity)

    async def _report_forever(self) -> None:
        while True:
            try:
                await self.report()
            except Exception:
                log.exception("media node report failed")
            await asyncio.sleep(min(CPU_SAMPLE_SECONDS, self.registry.interval))

    def _remove_old_media(self) -> None:
        root = self.config.media_dir / "hls"
        if not root.is_dir():
            return
        cutoff = time.time() - self.config.segment_retention_seconds
        for directory in root.iterdir():
            if not directory.name.isdigit() or int(directory.name) in self.directory:
                continue
            newest = max((p.stat().st_mtime for p in directory.rglob("*") if p.is_file()),
                         default=directory.stat().st_mtime)
            if newest < cutoff:
                hls.remove_stream_media(self.config.media_dir, int(directory.name))

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("sweep failed")

    async def start(self) -> None:
        if self.owner:
            self.admission.export_outcomes()
            self._reporter = asyncio.ensure_future(self._report_forever())
            self._sweeper = asyncio.ensure_future(self._sweep_forever())

    async def stop(self) -> None:
        self.stopping = True
        tasks = [task for task in (self._sweeper, self._reporter) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.owner:
            await self.registry.withdraw(self.config.media_node_url)
        await self.directory.stop_all()


class RemoteStreamChanges(StreamListener):
    """Changes made through other nodes, applied to the streams this node holds."""

    def __init__(self, ingest: IngestService) -> None:
        self.ingest = ingest

    async def stream_updated(self, event: StreamEvent) -> None:
        self.ingest.apply_privacy(event.stream_id, event.is_private)

    async def stream_live(self, event: StreamEvent) -> None:
        """Live on another media node (its encoder reconnected there): this node's copy of the
        playlists is stale from now on, and nginx stops serving it (the `.live` marker)."""
        if self.ingest.owner and event.stream_id not in self.ingest.directory:
            hls.set_live_marker(self.ingest.config.media_dir, event.stream_id, False)

    async def stream_ended(self, event: StreamEvent) -> None:
        self.ingest.directory.stop(event.stream_id)
