"""`sf node` runs one node (nginx with RTMP + an API node); `sf dev` (what `make run` runs)
adds local PostgreSQL and Redis and the migrations. Both stop what they started on Ctrl-C."""

from __future__ import annotations

import asyncio
import logging

from sf.config import Config
from sf.db.migrate import migrate
from sf.media import nginx
from sf.node import localservices
from sf.node.server import AppFactory, NodeProcesses

log = logging.getLogger("sf.dev")


def run_node(config: Config, make_app: AppFactory) -> int:
    """The public edge nginx in front of the node's API processes and its media nginx (RTMP,
    HLS origin), until SIGINT/SIGTERM."""
    # nginx terminates TLS; the API processes behind it speak plain HTTP on loopback.
    processes = NodeProcesses(config.replace(tls_cert="", tls_key=""), make_app)
    for port in (config.http_port, config.rtmp_port, config.media_control_port,
                 config.media_http_port):
        if localservices.port_open(port, config.http_host):
            raise SystemExit(f"port {port} is taken: see SF_HTTP_PORT, SF_RTMP_PORT, "
                             "SF_MEDIA_CONTROL_PORT, SF_MEDIA_HTTP_PORT")
    front = nginx.Front(config).start()
    try:
        scheme = "https" if config.tls_enabled else "http"
        log.info("SF is up: %s://%s:%s/api/docs, RTMP %s", scheme, config.http_host,
                 config.http_port, config.rtmp_url)
        return processes.run()
    except KeyboardInterrupt:
        return 0
    finally:
        front.stop()


def run_dev(config: Config, make_app: AppFactory) -> int:
    """Local PostgreSQL + Redis (reused when already running), migrations, then `run_node`."""
    started = localservices.start_all(config)
    try:
        applied = asyncio.run(migrate(config.database_url))
        log.info("migrations applied: %s", ", ".join(applied) or "none pending")
        return run_node(config, make_app)
    finally:
        localservices.stop_all(config, started)
        log.info("stopped nginx%s", "".join(f", {name}" for name in started))
