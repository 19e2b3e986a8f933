"""`sf node` runs one node (the public edge nginx, the media nginx with RTMP, the API
processes; `--no-edge`: a media node behind a separate edge); `sf edge` runs the edge alone (a
gateway machine); `sf dev` (what `make run` runs) adds local PostgreSQL and Redis, the
migrations and a local SMTP sink (mails kept under `var/mail/`) to `sf node`. Each stops what it
started on Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

from sf.config import Config
from sf.db.migrate import migrate
from sf.media import nginx
from sf.node import localservices
from sf.node.server import AppFactory, NodeProcesses
from sf.security import EmailCipher

log = logging.getLogger("sf.dev")


def run_node(config: Config, make_app: AppFactory, edge: bool = True) -> int:
    """The public edge nginx in front of the node's API processes and its media nginx (RTMP,
    HLS origin), until SIGINT/SIGTERM. Without `edge`, a media node behind a separate edge
    (`sf edge`): its media nginx and API processes only."""
    # nginx terminates TLS; the API processes behind it speak plain HTTP on loopback.
    processes = NodeProcesses(config.replace(tls_cert="", tls_key=""), make_app)
    ports = [config.rtmp_port, config.media_control_port, config.media_http_port]
    if edge:
        ports.insert(0, config.http_port)
    for port in ports:
        if localservices.port_open(port, config.http_host):
            raise SystemExit(f"port {port} is taken: see SF_HTTP_PORT, SF_RTMP_PORT, "
                             "SF_MEDIA_CONTROL_PORT, SF_MEDIA_HTTP_PORT")
    front = nginx.Front(config, edge=edge).start()
    try:
        if edge:
            scheme = "https" if config.tls_enabled else "http"
            log.info("SF is up: %s://%s:%s/api/docs, RTMP %s", scheme, config.http_host,
                     config.http_port, config.rtmp_url)
        else:
            log.info("SF media node is up (no edge): RTMP %s, origin %s:%s, API port %s",
                     config.rtmp_url, config.media_control_host, config.media_http_port,
                     config.api_port)
        return processes.run()
    except KeyboardInterrupt:
        return 0
    finally:
        front.stop()


EDGE_LOOKUP_SECONDS = 5.0  # how often `sf edge` looks its upstream names up again


def run_edge(config: Config) -> int:
    """Only the public edge nginx, in the foreground until SIGINT/SIGTERM (a gateway machine or
    container in front of API and media nodes elsewhere). Its upstream names are looked up
    again every few seconds and nginx reloaded when their addresses change (nginx.Edge)."""
    if localservices.port_open(config.http_port, config.http_host):
        raise SystemExit(f"port {config.http_port} is taken: see SF_HTTP_PORT")
    stopping: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, _: stopping.append(signum))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    edge = nginx.Edge(config)
    try:
        edge.start()
        scheme = "https" if config.tls_enabled else "http"
        log.info("SF edge is up: %s://%s:%s", scheme, config.http_host, config.http_port)
        next_lookup = time.monotonic() + EDGE_LOOKUP_SECONDS
        while True:
            time.sleep(0.2)
            if stopping:  # (Ctrl-C reaches nginx too: it may be gone already)
                return 0
            if not edge.running():
                log.error("the edge nginx exited (see %s)",
                          config.var_dir / "log" / "edge-error.log")
                return 1
            if time.monotonic() >= next_lookup:
                edge.refresh()
                next_lookup = time.monotonic() + EDGE_LOOKUP_SECONDS
    finally:
        edge.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def start_mail_sink(config: Config, quiet: bool = False) -> subprocess.Popen[bytes] | None:
    """The local SMTP sink (`python -m sf.node.mail_sink`, a process of its own: the API
    processes are forked and must not inherit its thread) when `SF_SMTP_URL` is plain SMTP on
    this machine and nothing listens there yet; None otherwise (mail goes to that server).
    `quiet`: the links it prints on stdout go nowhere (the mails stay in var/mail)."""
    url = urlsplit(config.smtp_url)
    host, port = url.hostname or "", url.port or 25
    if url.scheme != "smtp" or host not in ("127.0.0.1", "localhost") \
            or localservices.port_open(port, host):
        return None
    sink = subprocess.Popen([sys.executable, "-m", "sf.node.mail_sink", host, str(port),
                             str(config.var_dir / "mail"), "--log-level", config.log_level],
                            stdout=subprocess.DEVNULL if quiet else None)
    deadline = time.monotonic() + 10
    while not localservices.port_open(port, host):
        if sink.poll() is not None or time.monotonic() > deadline:
            stop_process(sink)
            raise SystemExit(f"the local SMTP sink did not start on {host}:{port}")
        time.sleep(0.05)
    return sink


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_dev(config: Config, make_app: AppFactory) -> int:
    """Local PostgreSQL + Redis (reused when already running), migrations, the local SMTP sink,
    then `run_node`."""
    started = localservices.start_all(config)
    sink = None
    try:
        applied = asyncio.run(migrate(config.database_url, email_cipher=EmailCipher.of(config)))
        log.info("migrations applied: %s", ", ".join(applied) or "none pending")
        sink = start_mail_sink(config)
        return run_node(config, make_app)
    finally:
        if sink is not None:
            stop_process(sink)
        localservices.stop_all(config, started)
        log.info("stopped nginx%s", "".join(f", {name}" for name in started))
