"""Redis clients of `SF_REDIS_URL`: one server (`redis://`, `rediss://`, `unix://`) or the
primary a Redis Sentinel group manages (`redis+sentinel://`, `rediss+sentinel://`).

    redis+sentinel://[user:password@]host1:26379,host2:26379,host3:26379/<service>/<db>
        ?sentinel_username=…&sentinel_password=…

`user:password` sign in to the Redis servers (the primary and its replicas), the
`sentinel_*` options to the sentinels (leave them out when the sentinels ask for no password).
`rediss+sentinel://` speaks TLS to both, with the `ssl_*` options of a `rediss://` URL.

A Sentinel client (redis-py's `SentinelConnectionPool`) asks the sentinels for the current
primary whenever it opens a connection, so after a failover every new connection goes to the
new primary; a connection still open to a demoted primary answers a write with READONLY,
which redis-py turns into a connection error (the connection is dropped, the command retried
once on a fresh one). The sentinels themselves disconnect the old primary's clients when they
demote it, so pub/sub subscribers notice and subscribe again on the new primary.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.exceptions
import redis.sentinel
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from sf.observability import REDIS_PRIMARY_CHANGES

log = logging.getLogger("sf.redis")

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
# TLS options as a rediss:// URL takes them (redis-py's names).
_SSL_OPTIONS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile",
                "ssl_check_hostname")
_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")
# Asking one sentinel must not stall a connection attempt: a dead one is skipped quickly.
SENTINEL_TIMEOUT = 0.5


@dataclass(frozen=True)
class SentinelTarget:
    """What a `redis+sentinel://` URL names."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False
    ssl_options: dict[str, Any] = field(default_factory=dict)

    def server_options(self) -> dict[str, Any]:
        """Connection options of the Redis servers (primary and replicas)."""
        options: dict[str, Any] = {"db": self.db, "username": self.username,
                                   "password": self.password}
        if self.ssl:
            options.update(ssl=True, **self.ssl_options)
        return options

    def sentinel_options(self) -> dict[str, Any]:
        """Connection options of the sentinels."""
        options: dict[str, Any] = {"username": self.sentinel_username,
                                   "password": self.sentinel_password,
                                   "socket_connect_timeout": SENTINEL_TIMEOUT,
                                   "socket_timeout": SENTINEL_TIMEOUT}
        if self.ssl:
            options.update(ssl=True, **self.ssl_options)
        return options


def is_sentinel_url(url: str) -> bool:
    return urlsplit(url).scheme in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The sentinels, service, database and credentials of a Sentinel URL (ValueError with
    what is wrong otherwise)."""
    parts = urlsplit(url)  # (ValueError for an unclosed [IPv6 address)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"not a {' or '.join(SENTINEL_SCHEMES)} URL")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinels = tuple(_host_port(item) for item in hosts.split(","))
    if not sentinels:
        raise ValueError("no sentinel named")
    path = [unquote(piece) for piece in parts.path.removeprefix("/").split("/")]
    if path and path[-1] == "" and len(path) > 1:  # a trailing slash
        path.pop()
    if not path[0] or len(path) > 2:
        raise ValueError("the path must be /<service name>[/<db>]")
    service = path[0]
    try:
        db = int(path[1]) if len(path) == 2 else 0
    except ValueError:
        raise ValueError(f"database {path[1]!r} is not a number") from None
    if db < 0:
        raise ValueError("the database number must not be negative")
    query: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in (*_SENTINEL_OPTIONS, *_SSL_OPTIONS):
            raise ValueError(f"unknown option {name!r}")
        if name in query:
            raise ValueError(f"option {name!r} given twice")
        query[name] = value
    ssl = parts.scheme == "rediss+sentinel"
    if not ssl and any(name in query for name in _SSL_OPTIONS):
        raise ValueError("ssl_* options need rediss+sentinel://")
    ssl_options: dict[str, Any] = {name: query[name] for name in _SSL_OPTIONS if name in query}
    if "ssl_check_hostname" in ssl_options:
        ssl_options["ssl_check_hostname"] = ssl_options["ssl_check_hostname"].lower() in (
            "1", "true", "yes")
    return SentinelTarget(
        sentinels=sentinels, service=service, db=db,
        username=unquote(username) or None, password=unquote(password) or None,
        sentinel_username=query.get("sentinel_username") or None,
        sentinel_password=query.get("sentinel_password") or None,
        ssl=ssl, ssl_options=ssl_options)


def _host_port(item: str) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [IPv6]:port
        host, _, rest = item[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError(f"sentinel {item!r} names no host")
    try:
        port = int(port_text) if port_text else SENTINEL_PORT
    except ValueError:
        raise ValueError(f"sentinel {item!r}: the port is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"sentinel {item!r}: no such port")
    return host, port


def url_problem(url: str) -> str | None:
    """What is wrong with a Sentinel URL, None when it is fine (or not a Sentinel URL)."""
    if not is_sentinel_url(url):
        return None
    try:
        parse_sentinel_url(url)
    except ValueError as error:
        return str(error)
    return None


class QuorumSentinel(redis.asyncio.sentinel.Sentinel):
    """Sentinels asked together, the primary the newest and widest view names.

    redis-py believes the first sentinel that answers. One with an older view (on the
    minority side of a partition, or not yet told of a failover) or monitoring something else
    under the same name would then send SF's connections to a server that is no longer the
    primary. Here every sentinel is asked at once; once a majority of them answered (or all
    that can), the primary is the one named with the highest configuration epoch (each
    failover raises it), then by the most sentinels. A sentinel that hangs is waited for only
    while no majority has answered (at most its socket timeout).
    """

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        asked = [asyncio.ensure_future(sentinel.sentinel_masters())
                 for sentinel in self.sentinels]
        majority = len(asked) // 2 + 1
        named: list[tuple[int, tuple[str, int]]] = []  # (epoch, address) of each answer
        errors: list[str] = []
        pending = set(asked)
        try:
            while pending and len(named) < majority:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    try:
                        masters = task.result()
                    except (redis.exceptions.ConnectionError, redis.exceptions.ResponseError,
                            redis.exceptions.TimeoutError) as error:
                        errors.append(f"{type(error).__name__}: {error}")
                        continue
                    state = masters.get(service_name) if isinstance(masters, dict) else None
                    if state and self.check_master_state(state, service_name):
                        named.append((int(state.get("config-epoch", 0)),
                                      (state["ip"], int(state["port"]))))
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if not named:
            raise redis.asyncio.sentinel.MasterNotFoundError(
                f"No master found for {service_name!r}: " + ("; ".join(errors) or "none named"))
        votes: dict[tuple[str, int], list[int]] = {}
        for epoch, address in named:
            votes.setdefault(address, []).append(epoch)
        return max(votes, key=lambda address: (max(votes[address]), len(votes[address])))


class SentinelRedis(redis.asyncio.Redis):
    """An asyncio client of a Sentinel-managed primary; closing it closes its sentinel
    clients too."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        pool = self.connection_pool
        try:
            await super().aclose(close_connection_pool)
        finally:
            if isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool):
                await pool.sentinel_manager.aclose()


def open_redis(url: str, **options: Any) -> redis.asyncio.Redis:
    """An asyncio client (not connected yet) of the Redis `url` names, with `options` for its
    connections (timeouts, pool size, retries)."""
    if not is_sentinel_url(url):
        return redis.asyncio.Redis.from_url(url, **options)
    target = parse_sentinel_url(url)
    manager = QuorumSentinel(target.sentinels, sentinel_kwargs=target.sentinel_options())
    client = manager.master_for(target.service, redis_class=SentinelRedis,
                                **target.server_options(), **options)
    assert isinstance(client, SentinelRedis)
    return client


def open_sync_redis(url: str, **options: Any) -> redis.Redis:
    """A blocking client (operator commands, tests) of the Redis `url` names."""
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **options)
    target = parse_sentinel_url(url)
    manager = redis.sentinel.Sentinel(target.sentinels, sentinel_kwargs=target.sentinel_options())
    return manager.master_for(target.service, **target.server_options(), **options)


def sentinel_status(url: str) -> str:
    """One line on a Sentinel group for `sf services status`: the primary each sentinel names
    (or why it names none)."""
    target = parse_sentinel_url(url)
    views = []
    for host, port in target.sentinels:
        try:
            with redis.Redis(host=host, port=port, **target.sentinel_options()) as sentinel:
                state = sentinel.sentinel_master(target.service)
            views.append(f"{host}:{port} names {state['ip']}:{state['port']}"
                         + (" (down)" if state["is_sdown"] or state["is_odown"] else ""))
        except redis.exceptions.RedisError as error:
            views.append(f"{host}:{port} {type(error).__name__}")
    return f"Sentinel group {target.service!r}: " + "; ".join(views)


def service_client(url: str) -> redis.asyncio.Redis:
    """The Redis client of a node's services (not yet connected)."""
    # After a Redis restart or a failover the pool still holds connections to the old server:
    # a command meeting one of those (or READONLY from a demoted primary) is retried once on a
    # new connection, which asks the sentinels for the primary, rather than failing the request.
    return open_redis(url, decode_responses=False,
                      max_connections=256, health_check_interval=30,
                      socket_connect_timeout=2, socket_timeout=5,
                      retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1),
                      retry_on_error=[redis.exceptions.ConnectionError])


class PrimaryWatch:
    """Asks the sentinels every `interval` seconds which server is the primary, and when that
    changed drops every connection to the one before (`on_change` drops the connections the
    pool does not hold, such as the gate's).

    A connection only asks the sentinels when it opens. A primary that the sentinels replaced
    while it stayed up (a forced failover, a network partition) keeps taking the writes of
    connections opened before, until the sentinels get to demote it, and those writes are
    lost when it becomes a replica of the new primary. Here they stop within `interval`.
    """

    def __init__(self, client: redis.asyncio.Redis, on_change: list[Callable[[], None]],
                 interval: float = 1.0) -> None:
        pool = client.connection_pool
        assert isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool)
        self.pool = pool
        self.on_change = on_change
        self.interval = interval
        self.primary: tuple[str, int] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def check(self) -> None:
        """One look at the sentinels (none answering, or none naming a primary: no change)."""
        try:
            primary = await self.pool.sentinel_manager.discover_master(self.pool.service_name)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            return
        before, self.primary = self.primary, primary
        if before is None or before == primary:
            return
        log.warning("Redis primary moved from %s:%s to %s:%s; reconnecting", *before, *primary)
        REDIS_PRIMARY_CHANGES.inc()
        self.pool.master_address = primary
        await self.pool.disconnect(inuse_connections=True)
        for callback in self.on_change:
            callback()

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                log.warning("could not check the Redis primary", exc_info=True)
            await asyncio.sleep(self.interval)


def watch_primary(client: redis.asyncio.Redis,
                  on_change: list[Callable[[], None]]) -> PrimaryWatch | None:
    """A started `PrimaryWatch` of a Sentinel client; None for one server's client."""
    if not isinstance(client.connection_pool, redis.asyncio.sentinel.SentinelConnectionPool):
        return None
    watch = PrimaryWatch(client, on_change)
    watch.start()
    return watch
