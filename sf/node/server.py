"""Running one API node: services, then the HTTP server; stopped in reverse order.

Mopidy `_app/server.py` style: each part is started only after the one it relies on, and a
`finally` stops whatever was started, last first, however the node ends.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Callable
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.process
import tornado.web

from sf.config import Config
from sf.node.gcpolicy import GcPolicy
from sf.services.container import Services, start_services

log = logging.getLogger("sf")


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """The node's own TLS (when it serves HTTPS without nginx in front)."""
    if not config.tls_enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


# Builds the Tornado application from the node's services (`sf.app.make_app`).
AppFactory = Callable[[Services], tornado.web.Application]


async def serve_node(config: Config, sockets: list[Any], make_app: AppFactory,
                     ready: Callable[[], None] | None = None,
                     stop_event: asyncio.Event | None = None) -> None:
    """Run one API node on `sockets` until `stop_event` is set (SIGINT/SIGTERM by default)."""
    services = await start_services(config, ingest=True)
    gc_policy = GcPolicy(config.gc_full_seconds)
    try:
        await services.start()
        gc_policy.start()
        server = tornado.httpserver.HTTPServer(
            make_app(services), ssl_options=ssl_context(config), xheaders=False,
            max_body_size=config.max_request_bytes, idle_connection_timeout=120,
        )
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
        finally:
            server.stop()
            await services.stop()
            await asyncio.wait_for(server.close_all_connections(), timeout=5)
    finally:
        await gc_policy.stop()
        await services.close()


def run_serve(config: Config, make_app: AppFactory) -> int:
    """`sf serve`: bind, fork SF_API_PROCESSES processes, run a node in each."""
    sockets = tornado.netutil.bind_sockets(config.api_port, config.api_host)
    if config.api_processes != 1:
        tornado.process.fork_processes(config.api_processes or None)
    asyncio.run(serve_node(config, sockets, make_app))
    return 0
