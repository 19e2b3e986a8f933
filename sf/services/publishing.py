"""Publishing use-cases: which stream an RTMP publish goes live as (key check, resume after a
disconnect, the media node's admission, in one transaction), the streams of dead media nodes
taken offline, and the stream an nginx-rtmp callback names."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg

from sf.cache import Cache
from sf.db import stream_keys as keys_db
from sf.db import streams as streams_db
from sf.db.streams import Stream
from sf.errors import Forbidden
from sf.security import StreamKeyCipher
from sf.services.streams import StreamService

# What a media node's admission says of a publish, decided inside its go-live transaction
# (connection, user id, whether it resumes a stream): the address range it came from and
# whether it gets a transcoded ladder; it refuses by raising a domain error.
PublishGate = Callable[[asyncpg.Connection, int, bool], Awaitable[tuple[str | None, bool]]]


class PublishingService:
    """Streams going live from an encoder, and going offline with their media node."""

    def __init__(self, db: asyncpg.Pool, cipher: StreamKeyCipher, cache: Cache,
                 streams: StreamService) -> None:
        self.db = db
        self.cipher = cipher
        self.cache = cache
        self.streams = streams  # whose listeners hear of streams going live and offline

    async def authorize_publish(self, presented_key: str, media_node: str | None = None,
                                resume_within: int = 0,
                                admit: PublishGate | None = None) -> Stream:
        """The stream an RTMP publish with this key goes live as.

        Unknown key → Forbidden. An encoder that reconnects within `resume_within` seconds of
        losing its connection (or its media node) continues the same stream, on whichever node
        it reached; otherwise the user's prepared stream goes live, or a new one opens from
        their default settings. A second concurrent publish of one user → Conflict. `admit`
        (the media node's transcoder admission) runs in the same transaction before anything
        changes: it may refuse by raising, and says where the publish came from and whether it
        gets a ladder, which the stream records.
        """
        user_id = await keys_db.find_user_by_key(self.db, self.cipher, presented_key)
        if user_id is None:
            raise Forbidden("Unknown stream key")
        async with self.db.acquire() as connection, connection.transaction():
            await streams_db.lock_user_publishing(connection, user_id)
            stream_id = await streams_db.resume_after_disconnect(
                connection, user_id, resume_within, media_node)
            origin = None
            if admit is not None:
                origin = await admit(connection, user_id, stream_id is not None)
            if stream_id is None:
                sealed = await keys_db.sealed_key(connection, user_id)
                stream_id = await streams_db.go_live(connection, user_id, sealed, media_node)
            if origin is not None:
                await streams_db.record_publish_origin(connection, stream_id, *origin)
        stream = await streams_db.get_stream(self.db, stream_id, user_id)
        await self.cache.forget_public_views(stream.username)
        await self.streams.tell_stream("live", stream)
        return stream

    async def take_offline_streams_of(self, media_nodes: list[str]) -> list[int]:
        """The live streams of dead media nodes go offline (resumable within the grace period
        on any node); listeners hear `stream_offline`. The ids taken offline."""
        stream_ids = await streams_db.take_offline(self.db, media_nodes)
        if stream_ids:
            await self.cache.forget_public_views()
        for stream_id in stream_ids:
            stream = await streams_db.load_stream(self.db, stream_id)
            if stream is not None:
                await self.streams.tell_stream("offline", stream)
        return stream_ids

    async def stream_of_callback_name(self, name: str) -> int | None:
        """The stream an nginx-rtmp callback names: a stream id, or the key it was published
        with (nginx-rtmp keeps the original name for on_update and on_publish_done)."""
        if name.isdigit() and len(name) <= 18:
            return int(name)
        user_id = await keys_db.find_user_by_key(self.db, self.cipher, name)
        if user_id is None:
            return None
        return await streams_db.live_stream_of(self.db, user_id)
