"""Live viewer totals across nodes, in Redis.

Each node writes its own per-stream count under its node id (`sf:viewers:<stream id>` hash,
field = node id) and keeps a heartbeat key (`sf:node:<node id>`, TTL `NODE_TTL`). A stream's
total is the sum over nodes whose heartbeat is alive, so a node that dies stops counting
within the TTL; the script also drops the dead node's fields. Unique viewers of a stream are a
HyperLogLog (`sf:uv:<stream id>`) of viewer ids.
"""

from __future__ import annotations

from redis.asyncio import Redis

NODE_TTL = 10  # seconds
COUNTS_KEY = "sf:viewers:{}"
NODE_KEY = "sf:node:{}"
UNIQUE_KEY = "sf:uv:{}"
UNIQUE_TTL = 7 * 86400  # statistics read it while the stream lives and when it ends

# KEYS: the streams' count hashes. Returns each stream's total over live nodes.
_TOTALS = """
local totals = {}
for i, key in ipairs(KEYS) do
  local fields = redis.call('HGETALL', key)
  local total = 0
  for j = 1, #fields, 2 do
    if redis.call('EXISTS', 'sf:node:' .. fields[j]) == 1 then
      total = total + tonumber(fields[j + 1])
    else
      redis.call('HDEL', key, fields[j])
    end
  end
  totals[i] = total
end
return totals
"""


class ViewerCounts:
    """Reads and writes the cross-node viewer counts of streams."""

    def __init__(self, redis: Redis, node_id: str) -> None:
        self.redis = redis
        self.node_id = node_id
        self._totals = redis.register_script(_TOTALS)

    async def publish_local(self, counts: dict[int, int]) -> None:
        """This node's counts of these streams (0 removes it), plus the node heartbeat."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(NODE_KEY.format(self.node_id), 1, ex=NODE_TTL)
            for stream_id, count in counts.items():
                key = COUNTS_KEY.format(stream_id)
                if count > 0:
                    pipe.hset(key, self.node_id, count)
                    pipe.expire(key, 86400)
                else:
                    pipe.hdel(key, self.node_id)
            await pipe.execute()

    async def heartbeat(self) -> None:
        await self.redis.set(NODE_KEY.format(self.node_id), 1, ex=NODE_TTL)

    async def totals(self, stream_ids: list[int]) -> dict[int, int]:
        """Each stream's viewers summed over live nodes."""
        if not stream_ids:
            return {}
        values = await self._totals(keys=[COUNTS_KEY.format(sid) for sid in stream_ids])
        return {sid: int(value) for sid, value in zip(stream_ids, values, strict=True)}

    async def add_unique(self, stream_id: int, viewer_id: str) -> None:
        key = UNIQUE_KEY.format(stream_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.pfadd(key, viewer_id)
            pipe.expire(key, UNIQUE_TTL)
            await pipe.execute()

    async def unique(self, stream_ids: list[int]) -> dict[int, int]:
        """Distinct viewer ids seen per stream (HyperLogLog: exact for small sets)."""
        if not stream_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream_id in stream_ids:
                pipe.pfcount(UNIQUE_KEY.format(stream_id))
            values = await pipe.execute()
        return {sid: int(value) for sid, value in zip(stream_ids, values, strict=True)}
