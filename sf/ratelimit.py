"""The request gate: fixed-window rate limits in Redis, shared by every API node, counted in
the same round trip as the session check and cache reads (one Lua script run over the
pipelined connection of `sf.redis_pipeline`), and the failed-login throttle."""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sf.cache import CacheReads
from sf.config import Config
from sf.errors import RateLimited
from sf.observability import Outage
from sf.redis_pipeline import PipelinedScript

log = logging.getLogger("sf.ratelimit")


@dataclass(frozen=True)
class Limit:
    """`limit` requests per `window` seconds for one identity in one bucket."""

    bucket: str
    identity: str
    limit: int
    window: int


def network_of(address: str) -> str:
    """The /24 (IPv4) or /64 (IPv6) network of a client address, where one operator's
    addresses usually sit together; an unparsable address stands for itself."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


DAY = 86400


def auth_limits(config: Config, client_ip: str, action: str) -> list[Limit]:
    """The limits of a sign-in, sign-up or password reset (`action`: "login", "register",
    "password-reset"), beyond the per-address request limit: per address, per /24 or /64
    network (all of a network's attempts together), and per node for the action (so a flood of
    one action cannot spend another's budget). security.md#login-flood."""
    window = config.rate_limit_window
    return [Limit("auth-ip", client_ip, config.rate_limit_auth_ip, window),
            Limit("auth-net", network_of(client_ip), config.rate_limit_auth_network, window),
            Limit("auth-node", f"{action}:{config.node_id}", config.rate_limit_auth_node, window)]


def registration_limits(config: Config, client_ip: str) -> list[Limit]:
    """`auth_limits` of a registration, plus the day's registrations from its network.
    security.md#throwaway-accounts."""
    return [*auth_limits(config, client_ip, "register"),
            Limit("signup-net", network_of(client_ip), config.accounts_per_range_per_day, DAY)]


def signed_in_address_limit(config: Config, client_ip: str) -> Limit:
    """The budget of a client address for signed-in requests, all its accounts together,
    counted in the same round trip as each account's own. security.md#throwaway-accounts."""
    return Limit("signed-in-ip", client_ip, config.rate_limit_authenticated_ip,
                 config.rate_limit_window)


@dataclass(frozen=True)
class Verdict:
    """The outcome of counting one request against the tightest of its limits."""

    allowed: bool
    limit: int
    remaining: int
    retry_after: int
    counted: bool = True  # False: Redis was unreachable, nothing was counted (allowed)


# One round trip per API request: a session's liveness, the rate-limit counts and the cache
# entries the request will answer from.
# KEYS: [the session key, the revoked-token key] when ARGV[1] == '1'; the window keys of the
# limits counted when the session is alive (or when there is no session: ARGV[2] of them), then
# those counted when it is not; then the cache generation key when ARGV[4] == '1'.
# ARGV: has-session, #alive keys, #other keys, has-generation, cache prefix, #entries, the
# entries' suffixes, then each limit key's expiry (alive keys first).
# Returns {alive (1/0), count of each counted key, generation or false, entry or false ...}.
_GATE = """
local has_session, n_alive, n_other = ARGV[1] == '1', tonumber(ARGV[2]), tonumber(ARGV[3])
local has_generation, prefix, n_entries = ARGV[4] == '1', ARGV[5], tonumber(ARGV[6])
local first = 1
local alive = 1
if has_session then
  first = 3
  if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 1 then alive = 0 end
end
local lo, hi = first, first + n_alive - 1
if alive == 0 then lo, hi = first + n_alive, first + n_alive + n_other - 1 end
local result = {alive}
for i = lo, hi do
  local count = redis.call('INCR', KEYS[i])
  if count == 1 then redis.call('EXPIRE', KEYS[i], ARGV[6 + n_entries + i - first + 1]) end
  result[#result + 1] = count
end
local generation = ''
if has_generation then
  generation = redis.call('GET', KEYS[first + n_alive + n_other]) or '0'
  result[#result + 1] = generation
else
  result[#result + 1] = false
end
for i = 1, n_entries do
  result[#result + 1] = redis.call('GET', prefix .. generation .. ARGV[6 + i])
end
return result
"""


@dataclass(frozen=True)
class Gate:
    """What the gate found for one request."""

    alive: bool | None  # the session's liveness (True without a session; None: unknown)
    verdict: Verdict
    generation: bytes | None = None  # the cache namespace's generation, when one was read
    entries: tuple[bytes | None, ...] | None = None  # the cache reads' values; None: not read


class RateLimiter:
    """Counts requests per window in one round trip per request (a Lua script, on the gate's
    own connection to `redis`'s server), together with the session check and cache reads that
    request needs."""

    def __init__(self, redis: Redis) -> None:
        self.outage = Outage(log, "Redis", "rate limits are not enforced until it is back")
        self._gate = PipelinedScript(redis, _GATE)

    def close(self) -> None:
        self._gate.close()

    async def hit(self, limits: list[Limit], reads: CacheReads | None = None) -> Gate:
        """The verdict for one request (and its cache reads); with Redis unreachable every
        request is allowed (the API keeps answering; nginx's per-address limits still hold)."""
        return await self._run(None, limits, [], reads)

    async def hit_for_session(self, liveness_keys: tuple[str, str], if_alive: list[Limit],
                              otherwise: list[Limit], reads: CacheReads | None = None) -> Gate:
        """In one round trip: whether a session is alive (its key exists and its token's
        revoked key does not), and the verdict of `if_alive` or else `otherwise` (a revoked
        token must not spend its user's budget). Redis unreachable: alive None, allowed."""
        return await self._run(liveness_keys, if_alive, otherwise, reads)

    async def _run(self, liveness_keys: tuple[str, str] | None, if_alive: list[Limit],
                   otherwise: list[Limit], reads: CacheReads | None) -> Gate:
        now = time.time()
        limits = [*if_alive, *otherwise]
        keys = [*(liveness_keys or ()), *(self._key(item, now) for item in limits)]
        suffixes: tuple[str, ...] = ()
        generation_key = None
        if reads is not None:
            suffixes, generation_key = reads.suffixes, reads.generation_key
            if generation_key is not None:
                keys.append(generation_key)
        args = ["1" if liveness_keys else "0", len(if_alive), len(otherwise),
                "1" if generation_key is not None else "0", reads.prefix if reads else "",
                len(suffixes), *suffixes, *(item.window + 1 for item in limits)]
        try:
            result = await self._gate(keys, args)
        except (RedisError, OSError) as error:
            self.outage.lost(error)
            return Gate(None if liveness_keys else True, self._allowed(if_alive or otherwise))
        self.outage.back()
        alive = result[0] == 1
        counted = if_alive if alive else otherwise
        verdict = self._verdict(counted, result[1:1 + len(counted)], now)
        rest = result[1 + len(counted):]
        return Gate(alive, verdict, rest[0] if generation_key is not None else None,
                    tuple(rest[1:]) if reads is not None else None)

    @staticmethod
    def _key(item: Limit, now: float) -> str:
        return f"sf:rl:{item.bucket}:{item.identity}:{int(now // item.window)}"

    @staticmethod
    def _allowed(limits: list[Limit]) -> Verdict:
        tightest = min(limits, key=lambda item: item.limit)
        return Verdict(True, tightest.limit, tightest.limit, 0, counted=False)

    @staticmethod
    def _verdict(limits: list[Limit], counts: list[int], now: float) -> Verdict:
        """The tightest verdict over limits and their counts in this window."""
        if len(limits) == 1:  # the common case, without the lists
            item, count = limits[0], int(counts[0])
            return Verdict(count <= item.limit, item.limit, max(0, item.limit - count),
                           max(1, int(item.window - (now % item.window)) + 1))
        verdicts = []
        for item, count in zip(limits, counts, strict=True):
            retry_after = max(1, int(item.window - (now % item.window)) + 1)
            verdicts.append(Verdict(int(count) <= item.limit, item.limit,
                                    max(0, item.limit - int(count)), retry_after))
        blocked = [v for v in verdicts if not v.allowed]
        if blocked:
            return max(blocked, key=lambda v: v.retry_after)
        return min(verdicts, key=lambda v: v.remaining)


LOGIN_DELAY_BASE = 0.5   # seconds, once an account's failures pass its ceiling
LOGIN_DELAY_MAX = 8.0
LOGIN_DELAY_STEP = 10    # the delay doubles every this many failures past the ceiling


class LoginThrottle:
    """Failed logins counted per account, so guessing cannot lock the owner out.

    An account is the user a login string names (by username or email alike) or, for unknown
    names, the normalized string itself. Failures are limited per (account, client IP): an
    attacker's address is refused while the owner elsewhere still gets in. Past a ceiling of
    failures from all addresses together, a login to the account from a network (/24, /64)
    that has failed against it waits, exponentially longer, which slows a distributed attack;
    a network without failures against the account (the owner's usual one) does not wait, so
    failures aimed at an account never stack delays for its owner (security.md#login-flood).
    """

    def __init__(self, redis: Redis, per_address: int, ceiling: int, window: int) -> None:
        self.redis = redis
        self.per_address = per_address
        self.ceiling = ceiling
        self.window = window

    def _keys(self, account: str, client_ip: str) -> tuple[list[str], int]:
        """[account, (account, address), (account, network)] keys of this window."""
        now = time.time()
        window_start = int(now // self.window)
        retry_after = max(1, int(self.window - (now % self.window)) + 1)
        return ([f"sf:lf:{account}:{window_start}",
                 f"sf:lf:{account}:{client_ip}:{window_start}",
                 f"sf:lf:{account}:n{network_of(client_ip)}:{window_start}"], retry_after)

    async def check(self, account: str, client_ip: str) -> float:
        """Raise RateLimited for a locked (account, IP) pair; else the seconds to wait first."""
        keys, retry_after = self._keys(account, client_ip)
        account_failures, pair_failures, network_failures = await self.redis.mget(*keys)
        if int(pair_failures or 0) >= self.per_address:
            raise RateLimited(retry_after, "Too many failed logins for this account, retry later")
        excess = int(account_failures or 0) - self.ceiling
        if excess < 0 or not int(network_failures or 0):
            return 0.0
        return float(min(LOGIN_DELAY_MAX, LOGIN_DELAY_BASE * 2 ** (excess // LOGIN_DELAY_STEP)))

    async def failed(self, account: str, client_ip: str) -> None:
        keys, _ = self._keys(account, client_ip)
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.incr(key)
                pipe.expire(key, self.window + 1, nx=True)
            await pipe.execute()

    async def succeeded(self, account: str, client_ip: str) -> None:
        """The owner proved who they are: their address starts afresh."""
        await self.redis.delete(self._keys(account, client_ip)[0][1])
