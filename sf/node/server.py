"""Running one API node: services, then the HTTP server; stopped in reverse order.

Mopidy `_app/server.py` style: each part is started only after the one it relies on, and a
`finally` stops whatever was started, last first, however the node ends.

A node runs SF_API_PROCESSES processes (one per core by default) under a small supervisor:
they share the public API socket, and process i also listens on its own private port
(SF_API_INTERNAL_PORT + i) for Prometheus, probes and, on process 0 only, nginx-rtmp's
callbacks. Process 0 is the node's ingest process: it holds the stream actors. The others
forward a callback that reaches them to it, and every process hears the others' stream changes
through the event bus, each under its own node id (`<node id>.<index>`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tornado.httpserver
import tornado.httputil
import tornado.iostream
import tornado.netutil
import tornado.web

from sf.config import Config
from sf.media.process import die_with_parent
from sf.node.gcpolicy import GcPolicy
from sf.services.container import RequestDrain, Services, start_services

log = logging.getLogger("sf")


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """The node's own TLS (when it serves HTTPS without nginx in front)."""
    if not config.tls_enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


class CountedRequest(tornado.httputil.HTTPMessageDelegate):
    """A request counts as in progress from its headers on (a body may still be arriving)
    until the application has it whole; the handler then counts it until it finishes."""

    def __init__(self, inner: tornado.httputil.HTTPMessageDelegate, drain: RequestDrain) -> None:
        self.inner = inner
        self.drain = drain
        self.counted = False

    def headers_received(self, start_line: Any, headers: tornado.httputil.HTTPHeaders) -> Any:
        self.counted = True
        self.drain.started()
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        try:
            self.inner.finish()
        finally:
            self._end()

    def on_connection_close(self) -> None:
        try:
            self.inner.on_connection_close()
        finally:
            self._end()

    def _end(self) -> None:
        if self.counted:
            self.counted = False
            self.drain.ended()


class DrainingHTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTPServer, counting requests whose body is still arriving as in progress."""

    drain: RequestDrain

    def start_request(self, server_conn: object, request_conn: tornado.httputil.HTTPConnection
                      ) -> tornado.httputil.HTTPMessageDelegate:
        return CountedRequest(super().start_request(server_conn, request_conn), self.drain)

    def handle_stream(self, stream: tornado.iostream.IOStream, address: tuple[Any, ...]) -> None:
        # Tornado turns TCP_NODELAY on to send each response and off again after it: two
        # setsockopt calls per request. Its responses go out in one write (headers and body
        # together), which Nagle's algorithm could only delay, so here it stays on.
        stream.set_nodelay(True)
        stream.set_nodelay = _nodelay_stays_on  # type: ignore[method-assign]
        super().handle_stream(stream, address)


def _nodelay_stays_on(value: bool) -> None:
    """`IOStream.set_nodelay` of the API's connections (`DrainingHTTPServer.handle_stream`)."""


# Builds the Tornado application from the node's services (`sf.app.make_app`).
AppFactory = Callable[[Services], tornado.web.Application]


async def serve_node(config: Config, sockets: list[Any], make_app: AppFactory,
                     ready: Callable[[], None] | None = None,
                     stop_event: asyncio.Event | None = None, *,
                     ingest_owner: bool = True) -> None:
    """Run one API node on `sockets` until `stop_event` is set (SIGINT/SIGTERM by default).

    `ingest_owner`: this process holds the node's stream actors (process 0 of a node).
    """
    services = await start_services(config, ingest=True, ingest_owner=ingest_owner)
    gc_policy = GcPolicy(config.gc_full_seconds)
    watchdog: threading.Timer | None = None
    try:
        await services.start()
        gc_policy.start()
        server = DrainingHTTPServer(
            make_app(services), ssl_options=ssl_context(config), xheaders=False,
            max_body_size=config.max_request_bytes, idle_connection_timeout=120,
        )
        server.drain = services.drain
        try:
            server.add_sockets(sockets)
            stop_event = stop_event or asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop_event.set)
            log.info("API node %s listening on %s:%s", config.node_id, config.api_host,
                     config.api_port)
            if ready:
                ready()
            await stop_event.wait()
            # Whatever happens while stopping, the process ends: a stop that hangs (a
            # dependency that never answers) must not leave it holding ports and locks.
            # Cancelled once the node has stopped (a test may run a node in its own process).
            watchdog = threading.Timer(config.shutdown_grace_seconds + STOP_TIMEOUT,
                                       os._exit, args=(70,))
            watchdog.daemon = True
            watchdog.start()
        finally:
            server.stop()  # no new connections; requests on the open ones are still served
            log.info("API node %s draining (%s requests in progress)", config.node_id,
                     services.drain.inflight)
            await services.drain.wait(config.shutdown_grace_seconds)
            await services.stop()  # WebSockets closed with 1001, actors and FFmpeg stopped
            await asyncio.wait_for(server.close_all_connections(), timeout=5)
    finally:
        await gc_policy.stop()
        await services.close()
        if watchdog is not None:
            watchdog.cancel()


def run_serve(config: Config, make_app: AppFactory) -> int:
    """`sf serve`: bind, run SF_API_PROCESSES processes of this node until SIGINT/SIGTERM."""
    return NodeProcesses(config, make_app).run()


def process_count(config: Config) -> int:
    return config.api_processes or os.cpu_count() or 1


# Seconds a node may take to stop after draining before it exits regardless.
STOP_TIMEOUT = 20.0

# A child that dies this soon after starting is crash-looping: wait before the next start.
QUICK_EXIT_SECONDS = 5.0
MAX_RESTART_DELAY = 30.0


@dataclass
class Child:
    index: int
    started: float = field(default_factory=time.monotonic)
    restart_delay: float = 0.0


class NodeProcesses:
    """The node's API processes: bound sockets, then one forked child per process.

    With one process the node runs in this process. With more, this process only supervises:
    it restarts a child that dies (after a delay when it keeps dying), forwards SIGTERM/SIGINT
    to the children and returns once they have all stopped. A child that fails before any
    child has ever become ready (bad configuration, database unreachable) fails the node
    instead, as a single process would.
    """

    def __init__(self, config: Config, make_app: AppFactory) -> None:
        self.config = config
        self.make_app = make_app
        self.count = process_count(config)
        self.shared = tornado.netutil.bind_sockets(config.api_port, config.api_host)
        self.private = [tornado.netutil.bind_sockets(config.api_internal_port + index,
                                                     config.api_host)
                        for index in range(self.count)]
        self.children: dict[int, Child] = {}
        self.stopping = False
        self.ever_ready = False
        self._ready_reader, self._ready_writer = os.pipe()

    def process_config(self, index: int) -> Config:
        if self.count == 1:
            return self.config
        return self.config.replace(node_id=f"{self.config.node_id}.{index}")

    def serve(self, index: int, ready: Callable[[], None] | None = None) -> None:
        """Run process `index` of the node in this process until SIGINT/SIGTERM."""
        sockets = self.shared + self.private[index]
        asyncio.run(serve_node(self.process_config(index), sockets, self.make_app, ready=ready,
                               ingest_owner=index == 0))

    def run(self) -> int:
        if self.count == 1:
            self.serve(0)
            return 0
        previous = {signum: signal.signal(signum, self._forward) for signum in
                    (signal.SIGINT, signal.SIGTERM)}
        try:
            for index in range(self.count):
                self._spawn(index)
            return self._supervise()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _forward(self, signum: int, frame: object) -> None:
        if not self.stopping:
            # Let go of the listening sockets at once: once the children have closed theirs,
            # a new connection is refused (the proxy then tries another node) rather than
            # left waiting in a backlog that nobody accepts from.
            for sock in self.shared + [sock for group in self.private for sock in group]:
                sock.close()
        self.stopping = True
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _spawn(self, index: int, restart_delay: float = 0.0) -> None:
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: run process `index`, never return into the supervisor
            code = 0
            try:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(signum, signal.SIG_DFL)
                # Killed supervisor (even SIGKILL): stop as on SIGTERM, actors and FFmpeg too.
                die_with_parent(signal.SIGTERM)
                if os.getppid() != supervisor:  # it died before the line above took effect
                    os._exit(0)
                os.close(self._ready_reader)
                for other, sockets in enumerate(self.private):
                    if other != index:
                        for sock in sockets:
                            sock.close()
                self.serve(index, ready=self._tell_ready)
            except BaseException:  # noqa: BLE001 (logged; the supervisor sees the exit code)
                log.exception("API process %s failed", index)
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = Child(index, restart_delay=restart_delay)
        log.info("API process %s started (pid %s)", index, pid)

    def _tell_ready(self) -> None:
        os.write(self._ready_writer, b"r")

    def _supervise(self) -> int:
        status = 0
        while self.children:
            pid, wait_status = os.waitpid(-1, 0)
            child = self.children.pop(pid, None)
            if child is None:
                continue
            self._drain_ready()
            code = os.waitstatus_to_exitcode(wait_status)
            if self.stopping:
                continue
            if not self.ever_ready:
                log.error("API process %s exited (%s) before the node was ready", child.index, code)
                status = 1
                self._forward(signal.SIGTERM, None)
                continue
            quick = time.monotonic() - child.started < QUICK_EXIT_SECONDS
            delay = min(max(child.restart_delay * 2, 1.0), MAX_RESTART_DELAY) if quick else 0.0
            log.error("API process %s exited (%s); restarting it%s", child.index, code,
                      f" in {delay:.0f} s" if delay else "")
            if delay:
                time.sleep(delay)  # a signal meanwhile still stops the node: checked below
                if self.stopping:
                    continue
            self._spawn(child.index, restart_delay=delay)
        return status

    def _drain_ready(self) -> None:
        os.set_blocking(self._ready_reader, False)
        try:
            if os.read(self._ready_reader, 4096):
                self.ever_ready = True
        except BlockingIOError:
            pass
