"""The services one API node holds (pool, Redis, sessions, limits...), built once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from redis.asyncio import Redis

from sf.accounts import AccountService
from sf.avatars import ImageWorker
from sf.cache import Cache
from sf.channels import ChannelService
from sf.config import Config
from sf.db.pool import create_pool
from sf.ratelimit import LoginThrottle, RateLimiter
from sf.schemas import StreamSchema
from sf.security import PasswordHasher, StreamKeyCipher, TokenService
from sf.sessions import SessionStore


@dataclass
class Services:
    """Everything handlers reach through `self.services`; owned by the loop thread."""

    config: Config
    db: asyncpg.Pool
    redis: Redis
    tokens: TokenService
    hasher: PasswordHasher
    sessions: SessionStore
    limiter: RateLimiter
    accounts: AccountService
    cipher: StreamKeyCipher
    cache: Cache
    channels: ChannelService
    stream_schema: StreamSchema
    images: ImageWorker
    extras: dict[str, Any] = field(default_factory=dict)

    async def on_user_changed(self, username: str) -> None:
        """Forget cached public views of a user after their profile changed."""
        await self.channels.changed(username)

    async def close(self) -> None:
        """Release connections (actors are stopped by their owner before this)."""
        await self.redis.aclose()
        await self.db.close()
        self.hasher.executor.shutdown(wait=False)
        self.images.close()


async def start_services(config: Config, database_url: str | None = None) -> Services:
    """Connect to PostgreSQL and Redis and wire the services together."""
    db = await create_pool(config, database_url)
    redis = Redis.from_url(config.redis_url, decode_responses=False,
                           max_connections=256, health_check_interval=30)
    await redis.ping()
    tokens = TokenService(config)
    hasher = PasswordHasher(config.bcrypt_rounds, workers=max(1, os.cpu_count() or 1))
    sessions = SessionStore(redis, tokens)
    cipher = StreamKeyCipher(config.stream_key_encryption_keys, config.stream_key_lookup_secret)
    cache = Cache(redis, config.cache_ttl)
    channels = ChannelService(db, cipher, cache)
    throttle = LoginThrottle(redis, config.rate_limit_auth_account,
                             config.rate_limit_auth_account_ceiling, config.rate_limit_window)
    accounts = AccountService(db, hasher, sessions, throttle,
                              on_user_created=[channels.create_for_new_user])
    return Services(config, db, redis, tokens, hasher, sessions, RateLimiter(redis), accounts,
                    cipher, cache, channels,
                    StreamSchema(playback_secret=config.internal_secret,
                                 playback_ttl=config.playback_url_ttl),
                    ImageWorker(config.media_dir, config.avatar_size, config.avatar_max_pixels))
