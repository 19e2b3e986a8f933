"""Media node registry: which media nodes are alive, where they are, how loaded (issue 19).

Each media node's ingest process (`IngestService`, process 0 of `sf serve`/`sf node`) writes a
heartbeat into Redis every third of SF_MEDIA_NODE_HEARTBEAT_TTL, expiring after that TTL: its
control URL (what streams record as `media_node`), its HLS origin, its RTMP URL and its
transcoder load. Anyone reads `alive()`. A node that heartbeated once and then fell silent
for the TTL is dead: the sweepers of the surviving nodes take its streams offline. An encoder
that reconnects to another node sooner takes its stream over at once when the node it left is
`gone` (a missed heartbeat and a refused control port).

Redis decides nothing by its absence: when it cannot be read, or this process's own view of it
is not trustworthy yet (see `MediaNodeRegistry.trusted`), no node is judged dead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from redis.asyncio import Redis

log = logging.getLogger("sf.media_nodes")

NODE_KEY = "sf:media:node:{}"   # → the node's MediaNode as JSON; expires with its heartbeat
NODES_KEY = "sf:media:nodes"    # sorted set: control URL → time of its last heartbeat
FORGET_AFTER = 86400.0          # a node silent this long is forgotten, no longer "dead"


@dataclass(frozen=True)
class MediaNode:
    """One media node as its last heartbeat described it."""

    url: str                 # its control URL (SF_MEDIA_NODE_URL): what streams record
    node_id: str
    origin: str              # host:port of its nginx HTTP listener (SF_MEDIA_ORIGIN)
    rtmp_url: str            # where encoders publish to it
    transcoders: int         # transcoded ladders running
    capacity: int            # ladders it admits at most (SF_MAX_TRANSCODERS)
    cpu_busy: float | None   # share of its CPU busy over the last seconds (None: not known yet)
    has_room: bool           # it would admit one more ladder now

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> MediaNode:
        data = json.loads(raw)
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


class MediaNodeRegistry:
    """The media nodes' heartbeats in Redis: written by each media node, read by any node."""

    def __init__(self, redis: Redis, ttl: float) -> None:
        self.redis = redis
        self.ttl = ttl
        self._healthy_since: float | None = None

    @property
    def interval(self) -> float:
        """Seconds between two heartbeats: three fit in the TTL."""
        return self.ttl / 3

    def trusted(self) -> bool:
        """Whether this process may judge other nodes dead: its own heartbeats have reached
        Redis without a failure for a whole TTL. After an outage (or at start) every node
        first gets a TTL to write its heartbeat again."""
        since = self._healthy_since
        return since is not None and time.monotonic() - since >= self.ttl

    async def beat(self, node: MediaNode) -> bool:
        """Write this node's heartbeat; False (logged once per outage) when Redis fails."""
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(NODE_KEY.format(node.url), node.to_json(), px=int(self.ttl * 1000))
                pipe.zadd(NODES_KEY, {node.url: time.time()})
                pipe.zremrangebyscore(NODES_KEY, "-inf", time.time() - FORGET_AFTER)
                await pipe.execute()
        except Exception as exc:  # any failure: this process's view of Redis is unreliable
            if self._healthy_since is not None:
                log.warning("media node heartbeat failed (%s): judging no node dead until "
                            "Redis is back", type(exc).__name__)
            self._healthy_since = None
            return False
        if self._healthy_since is None:
            self._healthy_since = time.monotonic()
        return True

    async def withdraw(self, url: str) -> None:
        """A node stopping on purpose leaves the registry: it is gone, not dead (its
        publishers disconnect and their streams end as usual)."""
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(NODE_KEY.format(url))
                pipe.zrem(NODES_KEY, url)
                await pipe.execute()
        except Exception:
            log.warning("could not withdraw media node %s from the registry; it will look dead "
                        "to the other nodes", url, exc_info=True)

    async def alive(self) -> dict[str, MediaNode]:
        """Every media node whose heartbeat is current, by control URL (raises when Redis
        fails: the caller decides what not knowing means)."""
        return (await self.snapshot())[0]

    async def snapshot(self) -> tuple[dict[str, MediaNode], set[str]]:
        """(the nodes alive, by URL; every node that heartbeated within FORGET_AFTER)."""
        known = [url.decode() if isinstance(url, bytes) else str(url)
                 for url in await self.redis.zrange(NODES_KEY, 0, -1)]
        alive: dict[str, MediaNode] = {}
        if known:
            values = await self.redis.mget([NODE_KEY.format(url) for url in known])
            for url, raw in zip(known, values, strict=True):
                if raw is None:
                    continue
                try:
                    alive[url] = MediaNode.from_json(raw)
                except (ValueError, KeyError, TypeError):
                    log.warning("ignored a malformed heartbeat of media node %s", url)
                    alive[url] = MediaNode(url, "", "", "", 0, 0, None, False)
        return alive, set(known)

    async def dead_among(self, urls: list[str], own_url: str) -> list[str]:
        """The nodes among `urls` that heartbeated once and no longer do.

        Empty whenever the answer could be wrong: Redis failing, this process not trusted
        yet, or its own heartbeat missing from what Redis returns (a flushed or replaced
        Redis: every node would look dead). A node never seen is not judged either (a node of
        a version without heartbeats, a rolling upgrade).
        """
        if not urls or not self.trusted():
            return []
        try:
            alive, known = await self.snapshot()
        except Exception:
            return []
        if own_url not in alive:
            return []
        return [url for url in urls if url != own_url and url in known and url not in alive]

    async def gone(self, url: str, own_url: str) -> bool:
        """Whether a node is dead beyond doubt before its heartbeat expires: it missed a
        heartbeat (silent for an interval and half a second more) and its control port refuses
        connections (its processes are gone, the machine answers). A node that does not
        answer at all (a machine down, a partition) waits for the TTL, as does anything
        while this process's view of Redis is not trusted."""
        if url == own_url or not self.trusted():
            return False
        try:
            last = await self.redis.zscore(NODES_KEY, url)
        except Exception:
            return False
        if last is None or time.time() - float(last) < self.interval + 0.5:
            return False
        return await refuses_connections(url)


async def refuses_connections(url: str, timeout: float = 0.5) -> bool:
    """Whether the host of `url` refuses a TCP connection to its port (no timeout, no other
    error: an active refusal)."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(parts.hostname, port)
    except ConnectionRefusedError:
        return True
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    return False


class CpuMonitor:
    """How busy the machine's CPUs were over the last `window` seconds, from /proc/stat.

    `sample()` reads the file in an executor (never on the loop thread); `busy` is None until
    two samples span at least a second, or where /proc/stat does not exist.
    """

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, int, int]] = deque()

    @staticmethod
    def read_jiffies() -> tuple[int, int] | None:
        """(busy, total) jiffies of all CPUs since boot; None when unknown."""
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                fields = stat.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu":
            return None
        values = [int(value) for value in fields[1:9]]  # user … steal (guest is in user)
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        total = sum(values)
        return total - idle, total

    async def sample(self) -> None:
        jiffies = await asyncio.get_running_loop().run_in_executor(None, self.read_jiffies)
        if jiffies is None:
            return
        now = time.monotonic()
        self._samples.append((now, *jiffies))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()

    @property
    def busy(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (start, busy0, total0), (end, busy1, total1) = self._samples[0], self._samples[-1]
        if end - start < 1.0 or total1 <= total0:
            return None
        return min(1.0, max(0.0, (busy1 - busy0) / (total1 - total0)))


def usable_cores() -> int:
    """The CPUs this process may run on (a container's or cgroup's share, where it shows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
