"""Fixed-window rate limits in Redis, shared by every API node."""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis


@dataclass(frozen=True)
class Limit:
    """`limit` requests per `window` seconds for one identity in one bucket."""

    bucket: str
    identity: str
    limit: int
    window: int


@dataclass(frozen=True)
class Verdict:
    """The outcome of counting one request against the tightest of its limits."""

    allowed: bool
    limit: int
    remaining: int
    retry_after: int


class RateLimiter:
    """Counts requests per window with one pipelined round trip for all limits of a request."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def hit(self, limits: list[Limit]) -> Verdict:
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for item in limits:
                window_start = int(now // item.window)
                key = f"sf:rl:{item.bucket}:{item.identity}:{window_start}"
                pipe.incr(key)
                pipe.expire(key, item.window + 1, nx=True)
            results = await pipe.execute()
        verdicts = []
        for index, item in enumerate(limits):
            count = int(results[index * 2])
            retry_after = max(1, int(item.window - (now % item.window)) + 1)
            verdicts.append(Verdict(count <= item.limit, item.limit,
                                    max(0, item.limit - count), retry_after))
        blocked = [v for v in verdicts if not v.allowed]
        if blocked:
            return max(blocked, key=lambda v: v.retry_after)
        return min(verdicts, key=lambda v: v.remaining)
