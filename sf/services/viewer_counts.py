"""Live viewer counts across processes and nodes, in Redis: one viewer counts once per stream.

A viewer is a viewer id: `u<user id>` when signed in, else the server-signed anonymous id of
the `sf_vid` cookie. Each API process incarnation (`instance`: its node id, a random suffix
new at every start and after it lost its place) reports which viewers it holds, and Lua
scripts keep, per stream `S` (keys `sf:vc:<S>:...`):

- `p:<instance>`: SET of the viewer ids that instance holds (its sockets' distinct viewers);
- `procs`: SET of the instances holding a set for the stream;
- `holders`: HASH viewer id → how many instances hold it. The stream's total is its length,
  so tabs of one viewer on different processes or nodes count once;
- `anon` / `nets`: HASH anonymous viewer → the network (/24, /64) it was counted from, and
  HASH network → anonymous viewers counted from it. At most `anonymous_per_network` are
  counted per network; a further one is refused (the process keeps it connected, uncounted,
  and asks again later, so it takes a freed place);
- `since`: ZSET viewer → first join (ms, Redis clock) while counted. Viewers counted for at
  least the dwell are the "dwelled" total, which statistics turn into watch time;
- `dwell`: ZSET of the counted viewers not yet in the unique count; once they have dwelled
  (and the stream is live) they move into the HyperLogLog `sf:uv:<S>`;
- `peak`: the highest total ever computed while the stream was live.

Every instance keeps a heartbeat (`sf:vc:alive:<instance>`, TTL `NODE_TTL`) and an index of
its streams (`sf:vc:i:<instance>`). Computing a stream's total first reaps the sets of
instances whose heartbeat is gone, so a process or node that dies stops counting within the
TTL, and a restarted process (a new instance) never inherits its predecessor's viewers. An
instance that finds its own heartbeat gone (Redis restarted empty, or the process stalled past
the TTL and was reaped) is told so, and starts over as a new instance with its full state.

One script call per hub tick applies every stream's joins and leaves, refreshes the
heartbeat, publishes which streams changed, and reads back the totals the hub wants.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from redis.asyncio import Redis

from sf.services.events import channel_name

NODE_TTL = 10  # seconds: a process silent this long stops counting
KEY_TTL = 86400  # seconds: a stream's counting keys outlive their last write by this much
UNIQUE_KEY = "sf:uv:{}"
UNIQUE_TTL = 7 * 86400  # statistics read it while the stream lives and when it ends
PEAK_KEY = "sf:vc:{}:peak"
HOLDERS_KEY = "sf:vc:{}:holders"
ALIVE_KEY = "sf:vc:alive:{}"
VIEWERS_CHANNEL = "sf:events:viewers"   # "these streams' totals changed", a JSON list of ids

_COMMON = """
local function key(stream, name) return 'sf:vc:' .. stream .. ':' .. name end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The last instance holding `viewer` let go: it no longer counts.
local function depart(stream, viewer)
  redis.call('HDEL', key(stream, 'holders'), viewer)
  local net = redis.call('HGET', key(stream, 'anon'), viewer)
  if net then
    redis.call('HDEL', key(stream, 'anon'), viewer)
    if redis.call('HINCRBY', key(stream, 'nets'), net, -1) <= 0 then
      redis.call('HDEL', key(stream, 'nets'), net)
    end
  end
  redis.call('ZREM', key(stream, 'since'), viewer)
  redis.call('ZREM', key(stream, 'dwell'), viewer)
end

-- Drop an instance's set of one stream; true when a viewer stopped counting.
local function reap(stream, instance)
  local set = key(stream, 'p:' .. instance)
  local departed = false
  for _, viewer in ipairs(redis.call('SMEMBERS', set)) do
    if redis.call('HINCRBY', key(stream, 'holders'), viewer, -1) <= 0 then
      depart(stream, viewer)
      departed = true
    end
  end
  redis.call('DEL', set)
  redis.call('SREM', key(stream, 'procs'), instance)
  redis.call('SREM', 'sf:vc:i:' .. instance, stream)
  return departed
end

-- A stream's {total, dwelled, peak}, after reaping instances whose heartbeat is gone. While
-- the stream is live the peak follows the total and dwelled viewers enter the unique count.
local function totals(stream, live, now, dwell_ms, unique_ttl)
  for _, instance in ipairs(redis.call('SMEMBERS', key(stream, 'procs'))) do
    if redis.call('EXISTS', 'sf:vc:alive:' .. instance) == 0 then reap(stream, instance) end
  end
  local viewers = redis.call('HLEN', key(stream, 'holders'))
  local cutoff = now - dwell_ms
  local dwelled = redis.call('ZCOUNT', key(stream, 'since'), '-inf', cutoff)
  local peak = tonumber(redis.call('GET', key(stream, 'peak')) or '0')
  if live then
    if viewers > peak then
      peak = viewers
      redis.call('SET', key(stream, 'peak'), peak, 'EX', unique_ttl)
    end
    local ready = redis.call('ZRANGEBYSCORE', key(stream, 'dwell'), '-inf', cutoff)
    if #ready > 0 then
      local unique = 'sf:uv:' .. stream
      for i = 1, #ready, 1000 do
        redis.call('PFADD', unique, unpack(ready, i, math.min(i + 999, #ready)))
      end
      redis.call('EXPIRE', unique, unique_ttl)
      redis.call('ZREMRANGEBYSCORE', key(stream, 'dwell'), '-inf', cutoff)
    end
  end
  return viewers, dwelled, peak
end
"""

# ARGV: instance ('' = none), fresh (1: a new instance's first call), anonymous per network,
# key TTL, heartbeat TTL, dwell (ms), unique TTL, channel, #retired instances, retired...,
# #streams changed, per stream: id, #changes, then (viewer id, network | '+' (signed in) |
# '-' (leaves)) pairs; #streams wanted, per stream: id, live (1/0).
# Returns {1} when the instance's heartbeat was gone (nothing applied), else {0, per changed
# stream: #refused, refused ids..., per wanted stream: total, dwelled, peak}.
_FLUSH = _COMMON + """
local instance, fresh, cap = ARGV[1], ARGV[2] == '1', tonumber(ARGV[3])
local key_ttl, alive_ttl, dwell_ms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local unique_ttl, channel = tonumber(ARGV[7]), ARGV[8]
local changed = {}
local n_retired = tonumber(ARGV[9])
local pos = 10 + n_retired
local result = {0}
if instance ~= '' then
  local alive = 'sf:vc:alive:' .. instance
  if not fresh and redis.call('EXISTS', alive) == 0 then return {1} end
  redis.call('SET', alive, 1, 'EX', alive_ttl)
end
local now = now_ms()
local index = 'sf:vc:i:' .. instance
local n_streams = tonumber(ARGV[pos])
pos = pos + 1
for s = 1, n_streams do
  local stream, n = ARGV[pos], tonumber(ARGV[pos + 1])
  pos = pos + 2
  local set, holders = key(stream, 'p:' .. instance), key(stream, 'holders')
  local refused, moved = {}, false
  for c = 1, n do
    local viewer, net = ARGV[pos], ARGV[pos + 1]
    pos = pos + 2
    if net == '-' then
      if redis.call('SREM', set, viewer) == 1
          and redis.call('HINCRBY', holders, viewer, -1) <= 0 then
        depart(stream, viewer)
        moved = true
      end
    elseif redis.call('SISMEMBER', set, viewer) == 0 then
      if redis.call('HEXISTS', holders, viewer) == 1 then
        redis.call('HINCRBY', holders, viewer, 1)       -- another tab, elsewhere: counted once
        redis.call('SADD', set, viewer)
      elseif net ~= '+' and tonumber(redis.call('HGET', key(stream, 'nets'), net) or '0') >= cap then
        refused[#refused + 1] = viewer
      else
        if net ~= '+' then
          redis.call('HINCRBY', key(stream, 'nets'), net, 1)
          redis.call('HSET', key(stream, 'anon'), viewer, net)
        end
        redis.call('HSET', holders, viewer, 1)
        redis.call('SADD', set, viewer)
        redis.call('ZADD', key(stream, 'since'), now, viewer)
        redis.call('ZADD', key(stream, 'dwell'), now, viewer)
        moved = true
      end
    end
  end
  if redis.call('EXISTS', set) == 1 then
    redis.call('SADD', key(stream, 'procs'), instance)
    redis.call('SADD', index, stream)
    for _, name in ipairs({'procs', 'holders', 'anon', 'nets', 'since', 'dwell'}) do
      redis.call('EXPIRE', key(stream, name), key_ttl)
    end
    redis.call('EXPIRE', set, key_ttl)
  else
    redis.call('SREM', key(stream, 'procs'), instance)
    redis.call('SREM', index, stream)
  end
  if moved then changed[#changed + 1] = stream end
  result[#result + 1] = #refused
  for _, viewer in ipairs(refused) do result[#result + 1] = viewer end
end
if instance ~= '' and redis.call('EXISTS', index) == 1 then
  redis.call('EXPIRE', index, key_ttl)
end
-- After the new instance took its viewers: one held by both never stops counting (its
-- first join, hence its dwell, is kept); one the new instance no longer holds departs.
for r = 10, 9 + n_retired do
  local retired = ARGV[r]
  local retired_index = 'sf:vc:i:' .. retired
  for _, stream in ipairs(redis.call('SMEMBERS', retired_index)) do
    if reap(stream, retired) then changed[#changed + 1] = stream end
  end
  redis.call('DEL', retired_index, 'sf:vc:alive:' .. retired)
end
if #changed > 0 then redis.call('PUBLISH', channel, '[' .. table.concat(changed, ',') .. ']') end
local n_wanted = tonumber(ARGV[pos])
pos = pos + 1
for w = 1, n_wanted do
  local viewers, dwelled, peak = totals(ARGV[pos], ARGV[pos + 1] == '1', now, dwell_ms,
                                        unique_ttl)
  pos = pos + 2
  result[#result + 1] = viewers
  result[#result + 1] = dwelled
  result[#result + 1] = peak
end
return result
"""

# ARGV: dwell (ms), unique TTL, then per stream: id, live (1/0). Returns total, dwelled, peak
# of each stream in turn.
_TOTALS = _COMMON + """
local dwell_ms, unique_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
local result = {}
for i = 3, #ARGV, 2 do
  local viewers, dwelled, peak = totals(ARGV[i], ARGV[i + 1] == '1', now, dwell_ms, unique_ttl)
  result[#result + 1] = viewers
  result[#result + 1] = dwelled
  result[#result + 1] = peak
end
return result
"""

SIGNED_IN = "+"  # the network of a signed-in viewer: never capped
LEAVES = "-"     # "this viewer left" in a change list


def viewer_network(address: str) -> str:
    """The network an anonymous viewer is counted in: the /24 of an IPv4 address, the /64 of
    an IPv6 one (an IPv4-mapped IPv6 address is its IPv4 address)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an address (a Unix socket peer): on its own
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


@dataclass(frozen=True)
class StreamTotal:
    """What Redis counts of one stream."""

    viewers: int   # distinct viewers now, over every live process and node
    dwelled: int   # of them, those connected at least the minimum dwell
    peak: int      # the highest total computed while the stream was live


@dataclass(frozen=True)
class FlushOutcome:
    """The answer to one `ViewerCounts.flush`."""

    lost: bool  # this instance's heartbeat was gone: nothing applied, start over
    refused: dict[int, list[str]]  # per stream, anonymous viewers over their network's cap
    totals: dict[int, StreamTotal]


# Per stream, viewer id → the network it joins from (`SIGNED_IN` for accounts) or `LEAVES`.
Changes = dict[int, dict[str, str]]


class ViewerCounts:
    """Reads and writes the cross-process viewer counts of streams."""

    def __init__(self, redis: Redis, node_id: str, *, anonymous_per_network: int,
                 min_dwell_seconds: float) -> None:
        self.redis = redis
        self.node_id = node_id
        self.anonymous_per_network = anonymous_per_network
        self.dwell_ms = int(min_dwell_seconds * 1000)
        self.channel = channel_name(redis, VIEWERS_CHANNEL)
        self.instance = ""
        self.new_incarnation()
        self._flush = redis.register_script(_FLUSH)
        self._totals = redis.register_script(_TOTALS)

    def new_incarnation(self) -> str:
        """Become a new instance (its sets start empty); the previous instance id."""
        previous = self.instance
        self.instance = f"{self.node_id}:{os.getpid()}:{os.urandom(4).hex()}"
        return previous

    async def flush(self, changes: Changes, wanted: dict[int, bool], *, fresh: bool = False,
                    retired: list[str] | None = None) -> FlushOutcome:
        """Apply this instance's joins and leaves, renew its heartbeat, and read the totals
        of the `wanted` streams (stream → live). `fresh`: the first call of a new instance
        (its heartbeat does not exist yet). `retired`: earlier instances of this process,
        whose sets are dropped once this instance's changes are in."""
        args: list[str | int] = [self.instance, 1 if fresh else 0, self.anonymous_per_network,
                                 KEY_TTL, NODE_TTL, self.dwell_ms, UNIQUE_TTL, self.channel,
                                 len(retired or ()), *(retired or ())]
        streams = list(changes)
        args.append(len(streams))
        for stream_id in streams:
            viewers = changes[stream_id]
            args += [stream_id, len(viewers)]
            for viewer_id, network in viewers.items():
                args += [viewer_id, network]
        wanted_ids = list(wanted)
        args.append(len(wanted_ids))
        for stream_id in wanted_ids:
            args += [stream_id, 1 if wanted[stream_id] else 0]
        reply = await self._flush(args=args)
        if int(reply[0]) == 1:
            return FlushOutcome(True, {}, {})
        refused: dict[int, list[str]] = {}
        pos = 1
        for stream_id in streams:
            count = int(reply[pos])
            if count:
                refused[stream_id] = [_text(item) for item in reply[pos + 1:pos + 1 + count]]
            pos += 1 + count
        return FlushOutcome(False, refused, _read_totals(wanted_ids, reply[pos:]))

    async def withdraw(self, instances: list[str]) -> None:
        """Drop these instances' viewers at once (a process stopping), not after the TTL."""
        if instances:
            previous, self.instance = self.instance, ""
            try:
                await self.flush({}, {}, retired=instances)
            finally:
                self.instance = previous

    async def totals(self, stream_ids: list[int], live: bool = True) -> dict[int, StreamTotal]:
        """Each stream's total over live processes (and, when `live`, the peak and unique
        count brought up to date)."""
        if not stream_ids:
            return {}
        args: list[str | int] = [self.dwell_ms, UNIQUE_TTL]
        for stream_id in stream_ids:
            args += [stream_id, 1 if live else 0]
        return _read_totals(stream_ids, await self._totals(args=args))

    async def unique(self, stream_ids: list[int]) -> dict[int, int]:
        """Distinct dwelled viewers seen per stream (HyperLogLog: exact for small sets)."""
        if not stream_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream_id in stream_ids:
                pipe.pfcount(UNIQUE_KEY.format(stream_id))
            values = await pipe.execute()
        return {sid: int(value) for sid, value in zip(stream_ids, values, strict=True)}

    async def peaks(self, stream_ids: list[int]) -> dict[int, int]:
        """The highest total computed for each stream while it was live."""
        if not stream_ids:
            return {}
        values = await self.redis.mget([PEAK_KEY.format(sid) for sid in stream_ids])
        return {sid: int(value or 0) for sid, value in zip(stream_ids, values, strict=True)}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _read_totals(stream_ids: list[int], values: list[int]) -> dict[int, StreamTotal]:
    return {sid: StreamTotal(int(values[3 * i]), int(values[3 * i + 1]), int(values[3 * i + 2]))
            for i, sid in enumerate(stream_ids)}
