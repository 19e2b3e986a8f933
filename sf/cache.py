"""Short-TTL cache in Redis for hot public reads, shared by every API node.

Entries are the encoded answers themselves (JSON bytes), written to clients as they are: no
decode and re-encode per hit. They are keyed by what they depend on and deleted by the writes
that change them; the TTL bounds staleness for anything an invalidation misses (e.g. live
viewer counts).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sf.observability import Outage

log = logging.getLogger("sf.cache")

PREFIX = "sf:cache:"
STREAMS_NAMESPACE = "streams"
CATEGORIES_NAMESPACE = "categories"


def public_user_key(username: str) -> str:
    """The one cache key of a user's public profile."""
    return f"user:{username.lower()}"


# KEYS[1]: a namespace's generation key. ARGV: the entry key's prefix and suffix, around the
# generation. Returns {generation, entry or false}: one round trip instead of two.
_GET_IN_NAMESPACE = """
local generation = redis.call('GET', KEYS[1]) or '0'
return {generation, redis.call('GET', ARGV[1] .. generation .. ARGV[2])}
"""


class Cache:
    """get-or-compute with a TTL, plus explicit and generation-based invalidation."""

    def __init__(self, redis: Redis, ttl: int) -> None:
        self.redis = redis
        self.ttl = ttl
        self.outage = Outage(log, "Redis", "reads go straight to PostgreSQL until it is back")
        self._get_in_namespace = redis.register_script(_GET_IN_NAMESPACE)

    async def get_or_set_in(self, namespace: str, key: str,
                            compute: Callable[[], Awaitable[bytes]]) -> bytes:
        """`get_or_set` for an entry of a namespace that `bump` invalidates as a whole; the
        namespace's generation and the entry are read in one round trip (a single Redis
        server, as configured: the script names the entry's key itself)."""
        if self.ttl <= 0:
            return await compute()
        try:
            generation, raw = await self._get_in_namespace(
                keys=[f"{PREFIX}gen:{namespace}"], args=[f"{PREFIX}{namespace}:", f":{key}"])
        except (RedisError, OSError) as error:
            self.outage.lost(error)
            return await compute()
        self.outage.back()
        if raw is not None:
            return raw
        return await self._compute_and_store(f"{namespace}:{int(generation)}:{key}", compute)

    async def get_or_set(self, key: str, compute: Callable[[], Awaitable[bytes]]) -> bytes:
        """The cached bytes, or `compute()`'s, stored for the TTL; straight from `compute`
        while Redis is unreachable."""
        if self.ttl <= 0:
            return await compute()
        try:
            raw = await self.redis.get(PREFIX + key)
        except (RedisError, OSError) as error:
            self.outage.lost(error)
            return await compute()
        if raw is not None:
            self.outage.back()
            return raw  # type: ignore[return-value]  # decode_responses=False: bytes
        return await self._compute_and_store(key, compute)

    async def _compute_and_store(self, key: str,
                                 compute: Callable[[], Awaitable[bytes]]) -> bytes:
        """A missed entry: `compute()`'s bytes, stored for the TTL when Redis takes them."""
        value = await compute()
        try:
            await self.redis.set(PREFIX + key, value, ex=self.ttl)
            self.outage.back()
        except (RedisError, OSError) as error:
            self.outage.lost(error)
        return value

    async def delete(self, *keys: str) -> None:
        if keys:
            try:
                await self.redis.delete(*(PREFIX + key for key in keys))
            except (RedisError, OSError) as error:
                self.outage.lost(error)  # entries expire within the TTL anyway

    async def generation(self, namespace: str) -> int:
        """The current version of a namespace; bumping it invalidates all its entries at once."""
        try:
            raw = await self.redis.get(f"{PREFIX}gen:{namespace}")
        except (RedisError, OSError) as error:
            self.outage.lost(error)
            return -1
        return int(raw or 0)

    async def bump(self, namespace: str) -> None:
        try:
            await self.redis.incr(f"{PREFIX}gen:{namespace}")
        except (RedisError, OSError) as error:
            self.outage.lost(error)

    async def forget_public_views(self, username: str | None = None) -> None:
        """Invalidate cached stream and category lists, and a user's public profile.

        Called by every write that changes what anonymous readers see (streams, profiles,
        follows, categories).
        """
        await self.bump(STREAMS_NAMESPACE)
        await self.bump(CATEGORIES_NAMESPACE)
        if username:
            await self.delete(public_user_key(username))
