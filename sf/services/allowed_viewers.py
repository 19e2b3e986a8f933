"""Invite use-cases: who may see the private streams of a channel (its allowed viewers)."""

from __future__ import annotations

import time

import asyncpg

from sf.cache import Cache
from sf.db import allowed_viewers as allowed_db
from sf.db.users import User
from sf.services.events import AccessEvent
from sf.services.streams import StreamService


class AllowedViewerService:
    """A streamer's invites to the private streams of their channel."""

    def __init__(self, db: asyncpg.Pool, cache: Cache, streams: StreamService) -> None:
        self.db = db
        self.cache = cache
        self.streams = streams  # whose listeners hear that an invite ended

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
        await self.streams.tell(AccessEvent(owner_id, viewer.id, time.time()))
        return viewer

    async def allowed_viewers(self, owner_id: int, limit: int,
                              cursor: str | None) -> tuple[list[User], str | None]:
        return await allowed_db.list_allowed(self.db, owner_id, limit, cursor)
