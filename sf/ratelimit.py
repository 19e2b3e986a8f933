"""Fixed-window rate limits in Redis, shared by every API node."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sf.errors import RateLimited
from sf.observability import Outage

log = logging.getLogger("sf.ratelimit")


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


# KEYS: a session key and a revoked-token key, then the window keys of the limits to count
# when the session is alive, then those to count when it is not. ARGV: how many keys the first
# set has, then each limit key's expiry. Returns {alive (1/0), count of each counted key}.
_COUNT_FOR_SESSION = """
local alive = 0
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('EXISTS', KEYS[2]) == 0 then alive = 1 end
local alive_keys = tonumber(ARGV[1])
local first, last = 3, 2 + alive_keys
if alive == 0 then first, last = 3 + alive_keys, #KEYS end
local result = {alive}
for i = first, last do
  local count = redis.call('INCR', KEYS[i])
  if count == 1 then redis.call('EXPIRE', KEYS[i], ARGV[i - 1]) end
  result[#result + 1] = count
end
return result
"""


class RateLimiter:
    """Counts requests per window with one pipelined round trip for all limits of a request."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.outage = Outage(log, "Redis", "rate limits are not enforced until it is back")
        self._count_for_session = redis.register_script(_COUNT_FOR_SESSION)

    async def hit_for_session(self, liveness_keys: tuple[str, str], if_alive: list[Limit],
                              otherwise: list[Limit]) -> tuple[bool | None, Verdict]:
        """In one round trip: whether a session is alive (its key exists and its token's
        revoked key does not), and the verdict of `if_alive` or else `otherwise` (a revoked
        token must not spend its user's budget). Redis unreachable: (None, allowed)."""
        now = time.time()
        keys = [self._key(item, now) for item in [*if_alive, *otherwise]]
        expiries = [item.window + 1 for item in [*if_alive, *otherwise]]
        try:
            result = await self._count_for_session(
                keys=[*liveness_keys, *keys], args=[len(if_alive), *expiries])
        except (RedisError, OSError) as error:
            self.outage.lost(error)
            return None, self._allowed(if_alive or otherwise)
        self.outage.back()
        alive = bool(int(result[0]))
        return alive, self._verdict(if_alive if alive else otherwise,
                                    [int(count) for count in result[1:]], now)

    @staticmethod
    def _key(item: Limit, now: float) -> str:
        return f"sf:rl:{item.bucket}:{item.identity}:{int(now // item.window)}"

    @staticmethod
    def _allowed(limits: list[Limit]) -> Verdict:
        tightest = min(limits, key=lambda item: item.limit)
        return Verdict(True, tightest.limit, tightest.limit, 0)

    @staticmethod
    def _verdict(limits: list[Limit], counts: list[int], now: float) -> Verdict:
        """The tightest verdict over limits and their counts in this window."""
        verdicts = []
        for item, count in zip(limits, counts, strict=True):
            retry_after = max(1, int(item.window - (now % item.window)) + 1)
            verdicts.append(Verdict(count <= item.limit, item.limit,
                                    max(0, item.limit - count), retry_after))
        blocked = [v for v in verdicts if not v.allowed]
        if blocked:
            return max(blocked, key=lambda v: v.retry_after)
        return min(verdicts, key=lambda v: v.remaining)

    async def hit(self, limits: list[Limit]) -> Verdict:
        """The verdict for one request; with Redis unreachable every request is allowed
        (the API keeps answering; nginx's per-address limits still hold)."""
        now = time.time()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for item in limits:
                    key = self._key(item, now)
                    pipe.incr(key)
                    pipe.expire(key, item.window + 1, nx=True)
                results = await pipe.execute()
        except (RedisError, OSError) as error:
            self.outage.lost(error)
            return self._allowed(limits)
        self.outage.back()
        return self._verdict(limits, [int(count) for count in results[::2]], now)


LOGIN_DELAY_BASE = 0.5   # seconds, once an account's failures pass its ceiling
LOGIN_DELAY_MAX = 8.0
LOGIN_DELAY_STEP = 10    # the delay doubles every this many failures past the ceiling


class LoginThrottle:
    """Failed logins counted per account, so guessing cannot lock the owner out.

    An account is the user a login string names (by username or email alike) or, for unknown
    names, the normalized string itself. Failures are limited per (account, client IP): an
    attacker's address is refused while the owner elsewhere still gets in. Past a ceiling of
    failures from all addresses together, every login to the account waits, exponentially
    longer, which slows a distributed attack and still admits the owner.
    """

    def __init__(self, redis: Redis, per_address: int, ceiling: int, window: int) -> None:
        self.redis = redis
        self.per_address = per_address
        self.ceiling = ceiling
        self.window = window

    def _keys(self, account: str, client_ip: str) -> tuple[str, str, int]:
        now = time.time()
        window_start = int(now // self.window)
        retry_after = max(1, int(self.window - (now % self.window)) + 1)
        return (f"sf:lf:{account}:{window_start}",
                f"sf:lf:{account}:{client_ip}:{window_start}", retry_after)

    async def check(self, account: str, client_ip: str) -> float:
        """Raise RateLimited for a locked (account, IP) pair; else the seconds to wait first."""
        account_key, pair_key, retry_after = self._keys(account, client_ip)
        account_failures, pair_failures = await self.redis.mget(account_key, pair_key)
        if int(pair_failures or 0) >= self.per_address:
            raise RateLimited(retry_after, "Too many failed logins for this account, retry later")
        excess = int(account_failures or 0) - self.ceiling
        if excess < 0:
            return 0.0
        return float(min(LOGIN_DELAY_MAX, LOGIN_DELAY_BASE * 2 ** (excess // LOGIN_DELAY_STEP)))

    async def failed(self, account: str, client_ip: str) -> None:
        account_key, pair_key, _ = self._keys(account, client_ip)
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in (account_key, pair_key):
                pipe.incr(key)
                pipe.expire(key, self.window + 1, nx=True)
            await pipe.execute()

    async def succeeded(self, account: str, client_ip: str) -> None:
        """The owner proved who they are: their address starts afresh."""
        await self.redis.delete(self._keys(account, client_ip)[1])
