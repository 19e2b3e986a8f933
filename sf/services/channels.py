"""Channel use-cases: stream keys, default settings, invites, streams, going live, categories.

What happens to a stream is told to `StreamListener`s (the event bus, this node's ingest), so
this module knows nothing of actors or Redis pub/sub (layers call downward only).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from sf.cache import CATEGORIES_NAMESPACE, INVALIDATED_TTL, STREAMS_NAMESPACE, Cache, Prefetched
from sf.db import allowed_viewers as allowed_db
from sf.db import categories as categories_db
from sf.db import stream_keys as keys_db
from sf.db import streams as streams_db
from sf.db.categories import Category
from sf.db.stream_keys import StreamKey, StreamSettings
from sf.db.streams import Stream
from sf.db.users import User
from sf.errors import Forbidden
from sf.schemas.dump import encode_json
from sf.security import StreamKeyCipher
from sf.services.events import AccessEvent, StreamEvent, StreamListener, notify

log = logging.getLogger("sf.channels")


# What a media node's admission says of a publish, decided inside its go-live transaction
# (connection, user id, whether it resumes a stream): the address range it came from and
# whether it gets a transcoded ladder; it refuses by raising a domain error.
PublishGate = Callable[[asyncpg.Connection, int, bool], Awaitable[tuple[str | None, bool]]]

# Page keys of recent filter sets (ChannelService._page_key), forgotten all at once when full.
_PAGE_KEYS: dict[tuple[Any, ...], str] = {}
_PAGE_KEYS_LIMIT = 4096


class ChannelService:
    """Everything a streamer does with their channel, plus the public stream reads."""

    def __init__(self, db: asyncpg.Pool, cipher: StreamKeyCipher, cache: Cache,
                 listeners: list[StreamListener] | None = None) -> None:
        self.db = db
        self.cipher = cipher
        self.cache = cache
        self.listeners: list[StreamListener] = list(listeners or [])

    def add_listener(self, listener: StreamListener) -> None:
        self.listeners.append(listener)

    async def _tell(self, kind: str, stream: Stream) -> None:
        await notify(self.listeners, StreamEvent.of(kind, stream))

    # --- keys and settings ---------------------------------------------------------------------

    async def create_for_new_user(self, connection: asyncpg.Connection, user: User) -> None:
        """Part of registration: every account gets a key and default settings."""
        await keys_db.create_stream_key(connection, self.cipher, user.id)

    async def get_key(self, user_id: int) -> StreamKey:
        return await keys_db.get_stream_key(self.db, self.cipher, user_id)

    async def reset_key(self, user_id: int) -> StreamKey:
        """New key; the old one stops working now and a live publish that used it ends."""
        async with self.db.acquire() as connection, connection.transaction():
            key = await keys_db.reset_stream_key(connection, self.cipher, user_id)
            live_id = await streams_db.live_stream_of(connection, user_id)
        if live_id is not None:
            await self.end_stream(live_id)
        return key

    async def rotate_key_encryption(self) -> int:
        """Re-encrypt every stream key with the first configured key; how many changed."""
        return await keys_db.rotate_encryption(self.db, self.cipher)

    async def get_settings(self, user_id: int) -> StreamSettings:
        return await keys_db.get_settings(self.db, user_id)

    async def update_settings(self, user_id: int, changes: dict[str, Any]) -> StreamSettings:
        return await keys_db.update_settings(self.db, user_id, changes)

    # --- who may see the private streams --------------------------------------------------------

    async def allow_viewer(self, owner_id: int, username: str) -> User:
        """Invite a user to every private stream of the owner's channel."""
        viewer = await allowed_db.allow(self.db, owner_id, username)
        await self.cache.forget_public_views()  # their lists are no longer the public ones
        return viewer

    async def revoke_viewer(self, owner_id: int, username: str) -> User:
        """End an invite: the user gets no new playback URL from now on (signed URLs they
        hold expire within `playback_url_ttl`)."""
        viewer = await allowed_db.revoke(self.db, owner_id, username)
        await self.cache.forget_public_views()
        await notify(self.listeners, AccessEvent(owner_id, viewer.id, time.time()))
        return viewer

    async def allowed_viewers(self, owner_id: int, limit: int,
                              cursor: str | None) -> tuple[list[User], str | None]:
        return await allowed_db.list_allowed(self.db, owner_id, limit, cursor)

    # --- streams -------------------------------------------------------------------------------

    async def create_stream(self, user_id: int, fields: dict[str, Any]) -> Stream:
        stream = await streams_db.create_stream(self.db, user_id, **fields)
        await self.cache.forget_public_views()
        return stream

    async def update_stream(self, stream_id: int, user_id: int, changes: dict[str, Any]) -> Stream:
        stream = await streams_db.update_stream(self.db, stream_id, user_id, changes)
        await self.cache.forget_public_views(stream.username)
        await self._tell("updated", stream)
        return stream

    async def end_stream(self, stream_id: int, user_id: int | None = None) -> None:
        """End a stream (by its owner, or by the platform when `user_id` is None)."""
        was_live = await streams_db.end_stream(self.db, stream_id, user_id)
        stream = await streams_db.load_stream(self.db, stream_id)
        await self.cache.forget_public_views(stream.username if stream else None)
        if was_live and stream is not None:
            await self._tell("ended", stream)

    async def set_thumbnail(self, stream_id: int, url: str) -> None:
        stream = await streams_db.set_thumbnail(self.db, stream_id, url)
        if stream is not None:
            await self.cache.forget_public_views()
            await self._tell("thumbnail", stream)

    async def get_stream(self, stream_id: int, viewer_id: int | None) -> Stream:
        return await streams_db.get_stream(self.db, stream_id, viewer_id)

    @staticmethod
    def _page_key(filters: dict[str, Any], checked: bool) -> str:
        # JSON, not key=value text: no two filter sets share a key (a cursor "None" and no
        # cursor did, outside attack F6). Remembered: every list request asks, twice.
        try:  # each value with its type: 1, 1.0 and True are equal as dict keys
            key = (checked, *sorted(
                (name, value.__class__, value) for name, value in filters.items()))
            memo: tuple[Any, ...] | None = key
            known = _PAGE_KEYS.get(key)
        except TypeError:  # an unhashable filter value
            memo, known = None, None
        if known is None:
            known = f"{'checked' if checked else 'anon'}:{json.dumps(filters, sort_keys=True)}"
            if memo is not None:
                if len(_PAGE_KEYS) >= _PAGE_KEYS_LIMIT:
                    _PAGE_KEYS.clear()
                _PAGE_KEYS[memo] = known
        return known

    def stream_list_reads(self, viewer_id: int | None, filters: dict[str, Any],
                          checked: bool = False) -> tuple[str, tuple[str, ...]]:
        """The cache entries `list_streams` answers from, to read ahead (`Cache.reads`): the
        shared page, and for a signed-in viewer whether they see public streams only."""
        page_key = self._page_key(filters, checked)
        if viewer_id is None:
            return STREAMS_NAMESPACE, (page_key,)
        return STREAMS_NAMESPACE, (page_key, f"public-only:{viewer_id}")

    async def list_streams(self, viewer_id: int | None, filters: dict[str, Any],
                           loader: Callable[[list[Stream], str | None], Any],
                           prefetched: Prefetched | None = None,
                           check: Callable[[], Awaitable[Any]] | None = None) -> bytes:
        """A page of streams rendered by `loader`, as JSON.

        Pages of public streams only are shared through the cache for a short TTL: every
        anonymous page, and a signed-in viewer's when they can see no private stream at all
        (most viewers; that fact is cached too, under the same generation). A viewer who owns
        a private stream or was invited to one gets their page straight from PostgreSQL
        (bench/api.py: per-viewer cache entries were rarely hit). Writes bump the namespace
        generation. `check` (e.g. that the category exists) runs before a page is computed:
        a page is only cached once it passed, and cached under its own keys.
        """

        async def compute(viewer: int | None) -> bytes:
            if check is not None:
                await check()
            streams, cursor = await streams_db.list_streams(self.db, viewer_id=viewer, **filters)
            return encode_json(loader(streams, cursor))

        if viewer_id is not None and not await self._sees_only_public(viewer_id, prefetched):
            return await compute(viewer_id)
        return await self.cache.get_or_set_in(STREAMS_NAMESPACE,
                                              self._page_key(filters, check is not None),
                                              lambda: compute(None), prefetched)

    async def _sees_only_public(self, viewer_id: int, prefetched: Prefetched | None) -> bool:
        async def look_up() -> bytes:
            return b"1" if await streams_db.sees_only_public(self.db, viewer_id) else b"0"

        # Whatever changes it (invites, private streams) bumps the generation.
        return await self.cache.get_or_set_in(STREAMS_NAMESPACE, f"public-only:{viewer_id}",
                                              look_up, prefetched, INVALIDATED_TTL) == b"1"

    # --- categories ----------------------------------------------------------------------------

    @staticmethod
    def category_list_reads(limit: int, cursor: str | None) -> tuple[str, tuple[str, ...]]:
        """The cache entry `list_categories` answers from, to read ahead (`Cache.reads`)."""
        return CATEGORIES_NAMESPACE, (f"{limit}:{cursor}",)

    async def list_categories(self, limit: int, cursor: str | None,
                              loader: Callable[[list[Any], str | None], Any],
                              prefetched: Prefetched | None = None) -> bytes:
        """A page of categories rendered by `loader`, as JSON shared through the cache."""
        async def compute() -> bytes:
            return encode_json(loader(*await categories_db.list_categories(self.db, limit, cursor)))

        namespace, (key,) = self.category_list_reads(limit, cursor)
        return await self.cache.get_or_set_in(namespace, key, compute, prefetched)

    async def add_category(self, name: str, description: str = "",
                           thumbnail: str | None = None) -> Category:
        category = await categories_db.add_category(self.db, name, description, thumbnail)
        await self.cache.forget_public_views()
        return category

    async def update_category(self, category_id: int, changes: dict[str, object]) -> Category:
        category = await categories_db.update_category(self.db, category_id, changes)
        await self.cache.forget_public_views()
        return category

    async def remove_category(self, category_id: int) -> int:
        """Remove a category; its streams move to none. How many streams moved."""
        moved = await categories_db.remove_category(self.db, category_id)
        await self.cache.forget_public_views()
        return moved

    # --- publishing ----------------------------------------------------------------------------

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
        await self._tell("live", stream)
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
                await self._tell("offline", stream)
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
