"""A Lua script run over one pipelined Redis connection of its own (hiredis packs the commands
and parses the replies): the request gate's client, cheaper per call than redis-py."""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.asyncio.sentinel import SentinelConnectionPool, SentinelManagedConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


class PipelinedConnection(asyncio.Protocol):
    """One Redis connection whose commands are pipelined: each call writes its command at once
    and its reply is matched in order (RESP answers in the order it was asked)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.reader = hiredis.Reader()
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.timed_out = False
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                future = self.waiting.popleft()[0]
                if not future.done():  # its request may have gone (cancelled)
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError):  # not Redis, or a reply nobody asked for
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(
                    RedisTimeoutError("Redis: no reply in time") if self.timed_out
                    else RedisConnectionError(f"Redis connection lost ({exc})"))

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()  # connection_lost fails what is waiting

    def call(self, command: bytes) -> asyncio.Future[Any]:
        """The reply to a packed command, as a future (a ReplyError object for an error)."""
        if self.closed or self.transport is None:
            raise RedisConnectionError("Redis connection closed")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.transport.write(command)
        self.waiting.append((future, loop.time()))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout, self._check)
        return future

    def _check(self) -> None:
        """No reply within the timeout: the connection is dropped, failing every call on it
        (one timer per connection rather than one per call)."""
        self._watchdog = None
        if not self.waiting:
            return
        loop = asyncio.get_running_loop()
        left = self.waiting[0][1] + self.timeout - loop.time()  # of the oldest call's time
        if left <= 0:
            self.timed_out = True
            self.abort()
        else:
            self._watchdog = loop.call_later(left, self._check)


class PipelinedScript:
    """A Lua script run over one pipelined connection of its own.

    The gate runs on every API request; redis-py spends more CPU per call (connection pool,
    per-call timeouts, retry wrappers, command packing in Python) than the script itself costs
    Redis. Here a call is one write of a command packed by hiredis and one future resolved by
    hiredis' reply parser; calls from concurrent requests share the connection, in order. The
    connection is opened (with AUTH and SELECT from the URL) on first use and again after it is
    lost; a call that meets a dead connection is retried once on a new one, as redis-py does.
    A client of TLS connections (rediss://) runs the script through redis-py instead.
    """

    def __init__(self, redis: Redis, script: str) -> None:
        self.fallback = redis.register_script(script)
        self.script = script.encode()
        self.sha = hashlib.sha1(self.script).hexdigest().encode()
        pool = redis.connection_pool
        options = pool.connection_kwargs
        self.timeout = float(options.get("socket_timeout") or 5.0)
        self.connect_timeout = float(options.get("socket_connect_timeout") or 2.0)
        # The client's own server and credentials (or the primary its sentinels name); TLS
        # connections stay with redis-py.
        self.options = options if pool.connection_class in (
            Connection, UnixDomainSocketConnection, SentinelManagedConnection) else None
        self.sentinels = pool if isinstance(pool, SentinelConnectionPool) else None
        self._pipeline: PipelinedConnection | None = None
        self._connecting: asyncio.Task[PipelinedConnection] | None = None

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        if self.options is None:
            return await self.fallback(keys=keys, args=args)
        pipeline = self._pipeline
        fresh = pipeline is None or pipeline.closed
        if fresh:
            pipeline = await self._connect()
        assert pipeline is not None
        command = hiredis.pack_command(("EVALSHA", self.sha, len(keys), *keys, *args))
        try:
            reply = await self._call(pipeline, command)
        except RedisConnectionError:
            if fresh:
                raise
            # Redis restarted meanwhile, or a failover demoted the server this connection
            # went to (a new connection asks the sentinels for the primary).
            reply = await self._call(await self._connect(), command)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            reply = await self._call(await self._connect(), hiredis.pack_command(
                ("EVAL", self.script, len(keys), *keys, *args)))
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
        return reply

    @staticmethod
    async def _call(pipeline: PipelinedConnection, command: bytes) -> Any:
        """The reply to one command; a demoted primary's READONLY is a lost connection."""
        reply = await pipeline.call(command)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("READONLY"):
            pipeline.abort()
            raise RedisConnectionError("Redis: the server is a replica now (failover)")
        return reply

    async def _connect(self) -> PipelinedConnection:
        """The live connection, opened when there is none (concurrent callers share one)."""
        if self._pipeline is not None and not self._pipeline.closed:
            return self._pipeline
        if self._connecting is None or self._connecting.done():  # (a failed one is not kept)
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _open(self) -> PipelinedConnection:
        options = self.options
        assert options is not None
        loop = asyncio.get_running_loop()
        pipeline: PipelinedConnection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                if "path" in options:
                    _, pipeline = await loop.create_unix_connection(
                        lambda: PipelinedConnection(self.timeout), options["path"])
                else:
                    if self.sentinels is not None:  # the current primary, as they know it
                        host, port = await self.sentinels.get_master_address()
                    else:
                        host, port = options.get("host", "localhost"), options.get("port", 6379)
                    _, pipeline = await loop.create_connection(
                        lambda: PipelinedConnection(self.timeout), host, port)
                assert pipeline is not None
                handshake: list[tuple[Any, ...]] = []
                if options.get("password"):
                    handshake.append(("AUTH", *filter(None, [options.get("username")]),
                                      options["password"]))
                if options.get("db"):
                    handshake.append(("SELECT", options["db"]))
                for command in handshake:
                    reply = await pipeline.call(hiredis.pack_command(command))
                    # A password offered to a server that asks for none is no error, as for
                    # the redis-py client of the same URL.
                    if isinstance(reply, hiredis.ReplyError) and not str(reply).startswith(
                            "ERR AUTH <password> called without any password configured"):
                        raise ResponseError(f"{command[0]}: {reply}")
        except BaseException as error:
            if pipeline is not None:
                pipeline.abort()
            if isinstance(error, TimeoutError):
                raise RedisTimeoutError("Redis: connecting timed out") from error
            raise
        self._pipeline = pipeline
        return pipeline

    def close(self) -> None:
        if self._pipeline is not None:
            self._pipeline.abort()
            self._pipeline = None
