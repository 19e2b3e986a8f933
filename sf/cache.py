"""Short-TTL cache in Redis for hot public reads, shared by every API node.

Entries are the encoded answers themselves (JSON bytes), written to clients as they are: no
decode and re-encode per hit. They are keyed by what they depend on and deleted by the writes
that change them; the TTL bounds staleness for anything an invalidation misses (e.g. live
viewer counts).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sf.observability import Outage

log = logging.getLogger("sf.cache")

PREFIX = "sf:cache:"
STREAMS_NAMESPACE = "streams"
CATEGORIES_NAMESPACE = "categories"


@dataclass(frozen=True)
class CacheReads:
    """Cache entries to read ahead, in the round trip that gates a request
    (`sf.ratelimit.RateLimiter`): the entries `prefix .. generation .. suffix` under the
    namespace generation `generation_key`, or, without one, the entries `prefix .. suffix`."""

    generation_key: str | None
    prefix: str
    suffixes: tuple[str, ...]


@dataclass(frozen=True)
class Prefetched:
    """Entries read ahead: `values[key]` is the entry's bytes, or None where it is missing."""

    namespace: str | None
    generation: int
    values: dict[str, bytes | None]


# The lifetime of entries that every change to what they hold invalidates (by a generation
# bump), such as a user's own profile: the TTL only bounds an invalidation that was missed,
# so it can be longer than `SF_CACHE_TTL`, which bounds how stale live viewer counts get.
INVALIDATED_TTL = 30


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
        # Misses being computed in this process, by entry key: concurrent requests for an
        # expired entry wait for one computation instead of each querying PostgreSQL.
        self._computing: dict[str, asyncio.Future[bytes]] = {}

    def reads(self, namespace: str | None, keys: tuple[str, ...]) -> CacheReads | None:
        """What to read ahead for `keys` (of `namespace`, or plain keys), or None when there
        is nothing to read or the cache is off."""
        if self.ttl <= 0 or not keys:
            return None
        if namespace is None:
            return CacheReads(None, PREFIX, keys)
        return CacheReads(f"{PREFIX}gen:{namespace}", f"{PREFIX}{namespace}:",
                          tuple(f":{key}" for key in keys))

    @staticmethod
    def prefetched(namespace: str | None, keys: tuple[str, ...], generation: bytes | None,
                   entries: tuple[bytes | None, ...] | None) -> Prefetched | None:
        """The read-ahead entries of `reads(namespace, keys)`, as the gate returned them."""
        if entries is None:
            return None
        return Prefetched(namespace, int(generation or 0), dict(zip(keys, entries, strict=True)))

    async def get_or_set_in(self, namespace: str | None, key: str,
                            compute: Callable[[], Awaitable[bytes]],
                            prefetched: Prefetched | None = None, ttl: int = 0) -> bytes:
        """The cached bytes, or `compute()`'s, stored for the TTL (`ttl`: a longer lifetime,
        `INVALIDATED_TTL`); straight from `compute` while Redis is unreachable.

        An entry of a namespace that `bump` invalidates as a whole is read together with the
        namespace's generation in one round trip (a single Redis server, as configured: the
        script names the entry's key itself); namespace None: a plain key, which writes
        delete. Either may have been read ahead, in `prefetched`."""
        if self.ttl <= 0:
            return await compute()
        raw: Any  # bytes or None (decode_responses=False)
        if prefetched is not None and prefetched.namespace == namespace \
                and key in prefetched.values:
            generation, raw = prefetched.generation, prefetched.values[key]
        else:
            try:
                if namespace is None:
                    generation, raw = 0, await self.redis.get(PREFIX + key)
                else:
                    generation, raw = await self._get_in_namespace(
                        keys=[f"{PREFIX}gen:{namespace}"],
                        args=[f"{PREFIX}{namespace}:", f":{key}"])
            except (RedisError, OSError) as error:
                self.outage.lost(error)
                return await compute()
            self.outage.back()
        if raw is not None:
            return bytes(raw)
        entry = key if namespace is None else f"{namespace}:{int(generation)}:{key}"
        return await self._compute_and_store(entry, compute, ttl)

    async def get_or_set(self, key: str, compute: Callable[[], Awaitable[bytes]],
                         prefetched: Prefetched | None = None, ttl: int = 0) -> bytes:
        """`get_or_set_in` for a plain key (no namespace)."""
        return await self.get_or_set_in(None, key, compute, prefetched, ttl)

    async def _compute_and_store(self, key: str, compute: Callable[[], Awaitable[bytes]],
                                 ttl: int = 0) -> bytes:
        """A missed entry: `compute()`'s bytes, stored for the TTL when Redis takes them.
        A computation of the same entry already under way in this process is joined."""
        pending = self._computing.get(key)
        if pending is not None:
            await asyncio.wait([pending])
            if not pending.cancelled():
                return pending.result()  # its value, or the error it raised (e.g. NotFound)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._computing[key] = future
        try:
            value = await compute()
        except Exception as error:
            future.set_exception(error)
            future.exception()  # retrieved: joiners get it; nobody else has to
            raise
        except BaseException:
            future.cancel()  # joiners compute for themselves
            raise
        else:
            future.set_result(value)
        finally:
            if self._computing.get(key) is future:
                del self._computing[key]
        try:
            await self.redis.set(PREFIX + key, value, ex=max(ttl, self.ttl))
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
