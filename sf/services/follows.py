"""Follows: follow and unfollow a channel (its cached public views forgotten, its webhooks
told of a new follower), and the follower / following lists."""

from __future__ import annotations

import asyncpg

from sf.cache import Cache
from sf.db import follows as follows_db
from sf.db.users import User
from sf.services.webhooks import WebhookService


class FollowService:
    """The follow use cases the follow handlers call."""

    def __init__(self, db: asyncpg.Pool, cache: Cache, webhooks: WebhookService) -> None:
        self.db = db
        self.cache = cache
        self.webhooks = webhooks

    async def follow(self, follower_id: int, username: str) -> None:
        """Follow `username` (idempotent); a new follow is a `follow.created` webhook event of
        the followed channel (queued; never fails the follow)."""
        target, created = await follows_db.follow(self.db, follower_id, username)
        await self.cache.forget_public_views(target.username)
        if created:
            await self.webhooks.follow_created(target.id, follower_id)

    async def unfollow(self, follower_id: int, username: str) -> None:
        """Stop following `username` (idempotent)."""
        target = await follows_db.unfollow(self.db, follower_id, username)
        await self.cache.forget_public_views(target.username)

    async def list_side(self, username: str, side: str, limit: int,
                        cursor: str | None) -> tuple[list[User], str | None]:
        """Followers (side="followers") or followed users (side="following"), newest first."""
        return await follows_db.list_follow_side(self.db, username, side, limit, cursor)
