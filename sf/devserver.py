"""`sf dev` (what `make run` runs): the whole platform on one machine, stopped by Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import socket

import tornado.netutil

from sf import localservices
from sf.config import Config
from sf.db.migrate import migrate
from sf.media import nginx

log = logging.getLogger("sf.dev")


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) != 0


def run_dev(config: Config) -> int:
    """Start PostgreSQL, Redis, nginx and one API node; stop what we started on exit."""
    from sf.app import serve_node

    started = localservices.start_all(config)
    nginx_process = None
    try:
        applied = asyncio.run(migrate(config.database_url))
        log.info("migrations applied: %s", ", ".join(applied) or "none pending")
        sockets = tornado.netutil.bind_sockets(config.api_port, config.api_host)
        if not _port_free(config.http_host, config.http_port):
            raise SystemExit(f"port {config.http_port} is taken: set SF_HTTP_PORT")
        nginx_process = nginx.start(config, nginx.render(config))
        scheme = "https" if config.tls_enabled else "http"
        log.info("SF is up: %s://%s:%s/api/docs, RTMP %s", scheme, config.http_host,
                 config.http_port, config.rtmp_url)
        # nginx terminates TLS; the API node behind it speaks plain HTTP on loopback.
        asyncio.run(serve_node(config.replace(tls_cert="", tls_key=""), sockets))
    except KeyboardInterrupt:
        pass
    finally:
        if nginx_process is not None:
            nginx.stop(nginx_process)
        localservices.stop_all(config, started)
        log.info("stopped: nginx%s", "".join(f", {name}" for name in started))
    return 0
