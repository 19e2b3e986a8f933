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
from typing import Any

import tornado.httpclient

from sf.actors.bridge import LoopBridge
from sf.actors.directory import StreamDirectory
from sf.actors.stream_actor import remove_stream_media
from sf.db import stream_keys as keys_db
from sf.db import streams as streams_db
from sf.db.streams import Stream
from sf.media import hls
from sf.observability import (
    TRANSCODER_DEGRADED,
    TRANSCODER_FPS,
    TRANSCODER_RESTARTS,
    TRANSCODER_SPEED,
)

log = logging.getLogger("sf.ingest")

EVENTS_CHANNEL = "sf:events:streams"   # pub/sub: stream changes, for WebSocket nodes
HEALTH_KEY = "sf:media:health:{}"


class IngestService:
    """One per API node that sits next to an nginx-rtmp (a media node)."""

    def __init__(self, services: Any) -> None:
        self.services = services
        self.config = services.config
        self.db = services.db
        self.redis = services.redis
        self.channels = services.channels
        self.bridge = LoopBridge(asyncio.get_running_loop())
        self.directory = StreamDirectory(self.config, self.bridge, self)
        self._sweeper: asyncio.Task[None] | None = None
        self._privacy: asyncio.Task[None] | None = None
        self.stopping = False
        self.http = tornado.httpclient.AsyncHTTPClient()
        self.channels.on_stream_ended.append(self.stream_ended)
        self.channels.on_key_reset.append(self.key_reset)
        self.channels.on_stream_updated.append(self.stream_updated)

    # --- nginx-rtmp callbacks ------------------------------------------------------------------

    async def publish(self, presented_key: str) -> int:
        """on_publish: authorize the key, go live (or resume), start the actor; the stream id."""
        stream = await self.channels.authorize_publish(
            presented_key, media_node=self.config.media_node_url,
            resume_within=self.config.publish_grace_seconds)
        settings = await keys_db.get_settings(self.db, stream.user_id)
        thumbnail_name = await self._thumbnail_name(stream)
        self.directory.start(stream.id, private=stream.is_private,
                             passthrough=settings.source_passthrough or self.config.source_passthrough,
                             thumbnail_name=thumbnail_name)
        await self.publish_event(stream)
        log.info("stream %s live (user %s)", stream.id, stream.user_id)
        return stream.id

    async def resolve(self, name: str) -> int | None:
        """A callback's stream name — a stream id, or the key it was published with — as an id."""
        if name.isdigit() and len(name) <= 18:
            return int(name)
        user_id = await keys_db.find_user_by_key(self.db, self.services.cipher, name)
        if user_id is None:
            return None
        return await streams_db.live_stream_of(self.db, user_id)

    async def publish_done(self, stream_id: int) -> None:
        """on_publish_done: stop transcoding; the stream ends unless the encoder comes back."""
        self.directory.stop(stream_id)
        if await streams_db.mark_disconnected(self.db, stream_id):
            log.info("stream %s: publisher left, %ss grace", stream_id,
                     self.config.publish_grace_seconds)
            if self.config.publish_grace_seconds == 0:
                await self.channels.end_stream(stream_id)

    async def update(self, stream_id: int) -> bool:
        """on_update: refresh liveness; False (drop the publisher) if the stream was ended."""
        return await streams_db.touch_live(self.db, stream_id)

    # --- hooks from the channel service --------------------------------------------------------

    async def stream_ended(self, stream_id: int) -> None:
        """A stream ended (DELETE, key reset, sweeper): stop its actor, drop its publisher."""
        self.directory.stop(stream_id)
        await self.drop_publisher(stream_id)
        stream = await streams_db.load_stream(self.db, stream_id)
        if stream is not None:
            await self.publish_event(stream)

    async def key_reset(self, user_id: int, live_stream_id: int | None) -> None:
        if live_stream_id is not None:
            await self.channels.end_stream(live_stream_id)

    async def stream_updated(self, stream: Stream) -> None:
        self.apply_privacy(stream.id, stream.is_private)
        await self.publish_event(stream)

    def apply_privacy(self, stream_id: int, private: bool) -> None:
        """Make nginx refuse (or serve) the unsigned HLS path of a stream held on this node.

        Written here rather than only by the actor: a stream whose encoder is between
        reconnects has no actor, but its segments are still on disk and must follow the
        privacy the owner chose at once.
        """
        self.directory.set_private(stream_id, private)
        if hls.hls_dir_for(self.config.media_dir, stream_id).is_dir():
            hls.set_private_marker(self.config.media_dir, stream_id, private)

    async def _follow_privacy_changes(self) -> None:
        """Apply privacy changes made through any API node to the streams held on this one."""
        while not self.stopping:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(EVENTS_CHANNEL)
                    async for message in pubsub.listen():
                        event = json.loads(message["data"])
                        if event.get("type") == "stream" and "is_private" in event:
                            self.apply_privacy(int(event["stream_id"]), bool(event["is_private"]))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("stream event subscription lost; retrying", exc_info=True)
                await asyncio.sleep(1)

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
        if self.stopping:
            return
        stream = await streams_db.set_thumbnail(self.db, stream_id, url)
        if stream is not None:
            await self.channels.changed()
            await self.publish_event(stream)

    async def on_health(self, stream_id: int, health: dict[str, Any]) -> None:
        if self.stopping:
            return
        key = HEALTH_KEY.format(stream_id)
        await self.redis.set(key, json.dumps(health), ex=60)
        label = str(stream_id)
        gauges = (TRANSCODER_SPEED, TRANSCODER_FPS, TRANSCODER_RESTARTS, TRANSCODER_DEGRADED)
        if health["state"] == "stopped":
            for gauge in gauges:
                with contextlib.suppress(KeyError):  # never reported for this stream
                    gauge.remove(label)
            return
        TRANSCODER_SPEED.labels(label).set(health["speed"])
        TRANSCODER_FPS.labels(label).set(health["fps"])
        TRANSCODER_RESTARTS.labels(label).set(health["restarts"])
        TRANSCODER_DEGRADED.labels(label).set(1 if health["state"] == "degraded" else 0)

    async def publish_event(self, stream: Stream) -> None:
        """Tell every node (their WebSocket viewers) that a stream changed."""
        event = {"type": "stream", "stream_id": stream.id, "is_live": stream.is_live,
                 "title": stream.title, "thumbnail": stream.thumbnail,
                 "is_private": stream.is_private, "ts": time.time()}
        await self.redis.publish(EVENTS_CHANNEL, json.dumps(event))

    # --- housekeeping --------------------------------------------------------------------------

    async def _thumbnail_name(self, stream: Stream) -> str:
        """Keep the stream's thumbnail file across restarts and reconnects."""
        if stream.thumbnail and stream.thumbnail.startswith("/media/thumbnails/"):
            return stream.thumbnail.removeprefix("/media/thumbnails/").split("?")[0]
        return hls.new_thumbnail_name(stream.id)

    async def sweep(self) -> None:
        """End streams past their grace period or silent too long; drop old segments."""
        expired = await streams_db.expired_live_streams(
            self.db, self.config.publish_grace_seconds, self.config.stream_liveness_timeout)
        for stream_id in expired:
            log.info("stream %s: ended by the sweeper", stream_id)
            await self.channels.end_stream(stream_id)
        await asyncio.get_running_loop().run_in_executor(None, self._remove_old_media)

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
                remove_stream_media(self.config.media_dir, int(directory.name))

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("sweep failed")

    async def start(self) -> None:
        self._sweeper = asyncio.ensure_future(self._sweep_forever())
        self._privacy = asyncio.ensure_future(self._follow_privacy_changes())

    async def stop(self) -> None:
        self.stopping = True
        for task in (self._sweeper, self._privacy):
            if task:
                task.cancel()
        await self.directory.stop_all()


async def start_ingest(services: Any) -> None:
    """Lifecycle component: the ingest service of this node."""
    if shutil.which(services.config.ffmpeg) is None:
        log.warning("ffmpeg not found: this node cannot transcode")
    ingest = IngestService(services)
    services.extras["ingest"] = ingest
    await ingest.start()


async def stop_ingest(services: Any) -> None:
    ingest = services.extras.pop("ingest", None)
    if ingest is not None:
        await ingest.stop()
