"""Stream use-cases: create, change and end a stream, its thumbnail, and the stream reads
(one stream, and the pages of the directory shared through the cache).

What happens to a stream is told to `StreamListener`s (the event bus, this node's viewers and
ingest), so this module knows nothing of actors or Redis pub/sub (layers call downward only).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from sf.cache import INVALIDATED_TTL, STREAMS_NAMESPACE, Cache, Prefetched
from sf.db import streams as streams_db
from sf.db.streams import Stream
from sf.schemas.dump import encode_json
from sf.services.events import Event, StreamEvent, StreamListener, notify

# Page keys of recent filter sets (StreamService._page_key), forgotten all at once when full.
_PAGE_KEYS: dict[tuple[Any, ...], str] = {}
_PAGE_KEYS_LIMIT = 4096


class StreamService:
    """A streamer's streams, the public stream reads, and the stream listeners every stream
    change is told to."""

    def __init__(self, db: asyncpg.Pool, cache: Cache,
                 listeners: list[StreamListener] | None = None) -> None:
        self.db = db
        self.cache = cache
        self.listeners: list[StreamListener] = list(listeners or [])

    def add_listener(self, listener: StreamListener) -> None:
        self.listeners.append(listener)

    async def tell(self, event: Event) -> None:
        """Tell every listener (one that fails does not stop the others)."""
        await notify(self.listeners, event)

    async def tell_stream(self, kind: str, stream: Stream) -> None:
        """Tell every listener what happened to `stream` (`StreamEvent.kind`)."""
        await notify(self.listeners, StreamEvent.of(kind, stream))

    async def create_stream(self, user_id: int, fields: dict[str, Any]) -> Stream:
        stream = await streams_db.create_stream(self.db, user_id, **fields)
        await self.cache.forget_public_views()
        return stream

    async def update_stream(self, stream_id: int, user_id: int, changes: dict[str, Any]) -> Stream:
        stream = await streams_db.update_stream(self.db, stream_id, user_id, changes)
        await self.cache.forget_public_views(stream.username)
        await self.tell_stream("updated", stream)
        return stream

    async def end_stream(self, stream_id: int, user_id: int | None = None) -> None:
        """End a stream (by its owner, or by the platform when `user_id` is None)."""
        was_live = await streams_db.end_stream(self.db, stream_id, user_id)
        stream = await streams_db.load_stream(self.db, stream_id)
        await self.cache.forget_public_views(stream.username if stream else None)
        if was_live and stream is not None:
            await self.tell_stream("ended", stream)

    async def set_thumbnail(self, stream_id: int, url: str) -> None:
        stream = await streams_db.set_thumbnail(self.db, stream_id, url)
        if stream is not None:
            await self.cache.forget_public_views()
            await self.tell_stream("thumbnail", stream)

    async def get_stream(self, stream_id: int, viewer_id: int | None) -> Stream:
        return await streams_db.get_stream(self.db, stream_id, viewer_id)

    @staticmethod
    def _page_key(filters: dict[str, Any], checked: bool) -> str:
        # JSON, not key=value text: no two filter sets share a key (a cursor "None" and no
        # cursor did, security.md#cursor-spelled-none). Remembered: every list request asks, twice.
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
