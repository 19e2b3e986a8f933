"""Channel use-cases: stream keys, default settings, streams, going live, and their caches.

The media layer plugs in through `on_stream_ended` / `on_key_reset` callbacks so this module
does not import actors (layers call downward only).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from sf.cache import Cache
from sf.db import allowed_viewers as allowed_db
from sf.db import categories as categories_db
from sf.db import stream_keys as keys_db
from sf.db import streams as streams_db
from sf.db.stream_keys import StreamKey, StreamSettings
from sf.db.streams import Stream
from sf.db.users import User
from sf.errors import Forbidden
from sf.security import StreamKeyCipher

log = logging.getLogger("sf.channels")

StreamHook = Callable[[int], Awaitable[None]]
UpdatedHook = Callable[[Stream], Awaitable[None]]
KeyResetHook = Callable[[int, int | None], Awaitable[None]]

STREAMS_NAMESPACE = "streams"
CATEGORIES_NAMESPACE = "categories"


class ChannelService:
    """Everything a streamer does with their channel, plus the public stream reads."""

    def __init__(self, db: asyncpg.Pool, cipher: StreamKeyCipher, cache: Cache) -> None:
        self.db = db
        self.cipher = cipher
        self.cache = cache
        self.on_stream_ended: list[StreamHook] = []
        self.on_key_reset: list[KeyResetHook] = []
        self.on_stream_updated: list[UpdatedHook] = []

    # --- keys and settings ---------------------------------------------------------------------

    async def create_for_new_user(self, connection: asyncpg.Connection, user: User) -> None:
        """Registration hook: every account gets a key and default settings."""
        await keys_db.create_stream_key(connection, self.cipher, user.id)

    async def get_key(self, user_id: int) -> StreamKey:
        return await keys_db.get_stream_key(self.db, self.cipher, user_id)

    async def reset_key(self, user_id: int) -> StreamKey:
        """New key; the old one stops working now and a live publish that used it is dropped."""
        async with self.db.acquire() as connection, connection.transaction():
            key = await keys_db.reset_stream_key(connection, self.cipher, user_id)
            live_id = await connection.fetchval(
                "SELECT id FROM streams WHERE user_id = $1 AND is_live", user_id)
        for hook in self.on_key_reset:
            await hook(user_id, live_id)
        return key

    async def get_settings(self, user_id: int) -> StreamSettings:
        return await keys_db.get_settings(self.db, user_id)

    async def update_settings(self, user_id: int, changes: dict[str, Any]) -> StreamSettings:
        return await keys_db.update_settings(self.db, user_id, changes)

    # --- who may see the private streams --------------------------------------------------------

    async def allow_viewer(self, owner_id: int, username: str) -> User:
        """Invite a user to every private stream of the owner's channel."""
        return await allowed_db.allow(self.db, owner_id, username)

    async def revoke_viewer(self, owner_id: int, username: str) -> User:
        """End an invite: the user gets no new playback URL from now on (signed URLs they
        hold expire within `playback_url_ttl`)."""
        return await allowed_db.revoke(self.db, owner_id, username)

    async def allowed_viewers(self, owner_id: int, limit: int,
                              cursor: str | None) -> tuple[list[User], str | None]:
        return await allowed_db.list_allowed(self.db, owner_id, limit, cursor)

    # --- streams -------------------------------------------------------------------------------

    async def changed(self, username: str | None = None) -> None:
        """Invalidate cached stream and category lists (and a user's public profile)."""
        await self.cache.bump(STREAMS_NAMESPACE)
        await self.cache.bump(CATEGORIES_NAMESPACE)
        if username:
            await self.cache.delete(f"user:{username.lower()}")

    async def create_stream(self, user_id: int, fields: dict[str, Any]) -> Stream:
        stream = await streams_db.create_stream(self.db, user_id, **fields)
        await self.changed()
        return stream

    async def update_stream(self, stream_id: int, user_id: int, changes: dict[str, Any]) -> Stream:
        stream = await streams_db.update_stream(self.db, stream_id, user_id, changes)
        await self.changed()
        for hook in self.on_stream_updated:
            await hook(stream)
        return stream

    async def end_stream(self, stream_id: int, user_id: int | None = None) -> None:
        """End a stream (by its owner, or by the platform when `user_id` is None)."""
        was_live = await streams_db.end_stream(self.db, stream_id, user_id)
        username = await self.db.fetchval(
            "SELECT u.username FROM streams s JOIN users u ON u.id = s.user_id WHERE s.id = $1",
            stream_id)
        await self.changed(username)
        if was_live:
            for hook in self.on_stream_ended:
                await hook(stream_id)

    async def get_stream(self, stream_id: int, viewer_id: int | None) -> Stream:
        return await streams_db.get_stream(self.db, stream_id, viewer_id)

    async def list_streams(self, viewer_id: int | None, filters: dict[str, Any],
                           loader: Callable[[list[Stream], str | None], Any]) -> Any:
        """A page of streams rendered by `loader`.

        Anonymous pages (public streams only) are shared through the cache for a short TTL;
        a logged-in viewer may see private streams they were invited to, so their pages come
        straight from PostgreSQL (bench/api.py: per-viewer cache entries were rarely hit and
        raised p99 at 500 req/s). Writes bump the namespace generation.
        """

        async def compute() -> Any:
            streams, cursor = await streams_db.list_streams(self.db, viewer_id=viewer_id, **filters)
            return loader(streams, cursor)

        if viewer_id is not None:
            return await compute()
        generation = await self.cache.generation(STREAMS_NAMESPACE)
        params = "&".join(f"{key}={filters[key]}" for key in sorted(filters))
        return await self.cache.get_or_set(f"streams:{generation}:anon:{params}", compute)

    async def list_categories(self, limit: int, cursor: str | None,
                              loader: Callable[[list[Any], str | None], Any]) -> Any:
        generation = await self.cache.generation(CATEGORIES_NAMESPACE)

        async def compute() -> Any:
            return loader(*await categories_db.list_categories(self.db, limit, cursor))

        return await self.cache.get_or_set(f"categories:{generation}:{limit}:{cursor}", compute)

    # --- publishing ----------------------------------------------------------------------------

    async def authorize_publish(self, presented_key: str, media_node: str | None = None,
                                resume_within: int = 0) -> Stream:
        """The stream an RTMP publish with this key goes live as.

        Unknown key → Forbidden. An encoder that reconnects within `resume_within` seconds of
        losing its connection continues the same stream; otherwise the user's prepared stream
        goes live, or a new one opens from their default settings. A second concurrent
        publish of one user → Conflict.
        """
        user_id = await keys_db.find_user_by_key(self.db, self.cipher, presented_key)
        if user_id is None:
            raise Forbidden("Unknown stream key")
        async with self.db.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", user_id)
            stream_id = await streams_db.resume_after_disconnect(
                connection, user_id, resume_within, media_node)
            if stream_id is None:
                sealed = await keys_db.sealed_key(connection, user_id)
                stream_id = await streams_db.go_live(connection, user_id, sealed, media_node)
        stream = await streams_db.get_stream(self.db, stream_id, user_id)
        await self.changed(stream.username)
        return stream
