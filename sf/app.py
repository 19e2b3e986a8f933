"""`make_app` builds the Tornado application; `main` is the `sf` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.process
import tornado.web

from sf import admin
from sf.config import Config, ConfigError, bootstrap_var_dir, ensure_secrets, load_config
from sf.handlers import (
    allowed_viewers,
    auth,
    categories,
    docs,
    follows,
    health,
    media_hooks,
    stream_keys,
    streams,
    users,
)
from sf.handlers.base import AUTH_MODES, NotFoundHandler
from sf.observability import configure_logging, log_request

log = logging.getLogger("sf")

HANDLER_MODULES: list[ModuleType] = [
    health, docs, auth, users, follows, stream_keys, allowed_viewers, streams, categories,
    media_hooks,
]


class MediaFileHandler(tornado.web.StaticFileHandler):
    """Avatars and thumbnails straight from the media dir (nginx serves them in front)."""

    auth = "public"

    def set_extra_headers(self, path: str) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "public, max-age=86400")


def register_handler_modules(*modules: ModuleType) -> None:
    """Later parts of the platform add their handler modules here (before make_app)."""
    for module in modules:
        if module not in HANDLER_MODULES:
            HANDLER_MODULES.append(module)


def collect_routes(config: Config) -> list[Any]:
    """Every module's route table, `/api/...` also served as canonical `/api/v1/...`."""
    table: list[Any] = []
    for module in HANDLER_MODULES:
        for route in module.routes:
            pattern, handler = route[0], route[1]
            mode = getattr(handler, "auth", None)
            modes = mode.values() if isinstance(mode, dict) else [mode]
            if not all(m in AUTH_MODES for m in modes):
                raise RuntimeError(f"{handler.__name__} ({pattern}) does not declare its auth mode")
            if pattern.startswith("/api/"):
                table.append(("/api/v1/" + pattern[len("/api/"):], *route[1:]))
            table.append(route)
    table.append((r"/media/((?:avatars|thumbnails)/.*)", MediaFileHandler,
                  {"path": str(config.media_dir)}))
    return table


def make_app(services: Any) -> tornado.web.Application:
    """The Tornado application of one API node, bound to its services."""
    config: Config = services.config
    routes = collect_routes(config)
    return tornado.web.Application(
        routes,
        services=services,
        openapi=docs.build_openapi(routes),
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        xsrf_cookies=False,  # Bearer tokens; the cookie refresh path has its own CSRF check
        compress_response=True,
        websocket_ping_interval=20,
        websocket_ping_timeout=30,
        serve_traceback=False,
    )


def _ssl_context(config: Config) -> ssl.SSLContext | None:
    if not config.tls_enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


def max_request_bytes(config: Config) -> int:
    """The server-level cap; handlers enforce their own tighter limit with a JSON 413."""
    return max(config.max_body_bytes, config.max_avatar_bytes) + 1024 * 1024


async def serve_node(config: Config, sockets: list[Any], ready: Callable[[], None] | None = None,
                     stop_event: asyncio.Event | None = None) -> None:
    """Run one API node on `sockets` until `stop_event` is set (SIGINT/SIGTERM by default)."""
    from sf.context import start_services
    from sf.ingest import start_ingest, stop_ingest
    from sf.lifecycle import NodeLifecycle, register_component

    register_component("ingest", start_ingest, stop_ingest)

    services = await start_services(config)
    lifecycle = NodeLifecycle(services)
    await lifecycle.start()
    server = tornado.httpserver.HTTPServer(
        make_app(services), ssl_options=_ssl_context(config), xheaders=False,
        max_body_size=max_request_bytes(config), idle_connection_timeout=120,
    )
    server.add_sockets(sockets)
    stop_event = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop_event.set)
    log.info("API node %s listening on %s:%s", config.node_id, config.api_host, config.api_port)
    if ready:
        ready()
    try:
        await stop_event.wait()
    finally:
        server.stop()
        await lifecycle.stop()
        await asyncio.wait_for(server.close_all_connections(), timeout=5)
        await services.close()


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    sockets = tornado.netutil.bind_sockets(config.api_port, config.api_host)
    if config.api_processes != 1:
        tornado.process.fork_processes(config.api_processes or None)
    asyncio.run(serve_node(config, sockets))
    return 0


def cmd_migrate(config: Config, args: argparse.Namespace) -> int:
    from sf.db.migrate import migrate

    applied = asyncio.run(migrate(config.database_url))
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
    return 0


def cmd_services(config: Config, args: argparse.Namespace) -> int:
    from sf import localservices

    if args.action == "start":
        started = localservices.start_all(config)
        print("started: " + (", ".join(started) or "nothing (already running)"))
    elif args.action == "stop":
        localservices.stop_all(config, args.only or None)
    else:
        for name, service in localservices.service_set(config).items():
            print(f"{name}: {'running' if service.running() else 'stopped'}")
    return 0


def cmd_dev(config: Config, args: argparse.Namespace) -> int:
    from sf.devserver import run_dev

    return run_dev(config)


def cmd_node(config: Config, args: argparse.Namespace) -> int:
    from sf.devserver import run_node

    return run_node(config)


def cmd_tls_cert(config: Config, args: argparse.Namespace) -> int:
    from sf.tls import write_self_signed

    cert, key = write_self_signed(config.var_dir / "tls", config.public_host)
    print(f"SF_TLS_CERT={cert}\nSF_TLS_KEY={key}")
    return 0


COMMANDS: dict[str, Callable[[Config, argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "dev": cmd_dev,
    "node": cmd_node,
    "migrate": cmd_migrate,
    "services": cmd_services,
    "tls-cert": cmd_tls_cert,
    "categories": admin.cmd_categories,
    "keys": admin.cmd_keys,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sf", description="SF streaming platform")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run an API node (behind nginx)")
    sub.add_parser("dev", help="run everything locally: PostgreSQL, Redis, nginx, the API")
    sub.add_parser("node", help="run a media + API node: nginx (HTTP, RTMP, HLS) and an API node")
    sub.add_parser("migrate", help="apply pending SQL migrations")
    services = sub.add_parser("services", help="local PostgreSQL and Redis under var/")
    services.add_argument("action", choices=["start", "stop", "status"])
    services.add_argument("--only", nargs="*", choices=["postgres", "redis"])
    secrets_parser = sub.add_parser("secrets", help="generate missing secrets under var/secrets")
    secrets_parser.add_argument("action", choices=["init"])
    sub.add_parser("tls-cert", help="create a self-signed certificate for local HTTPS")
    admin.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sf` console script."""
    args = build_parser().parse_args(argv)
    configure_logging("INFO")
    if args.command in ("secrets", "dev", "services"):
        created = ensure_secrets(bootstrap_var_dir())
        if created:
            log.info("generated secrets: %s", ", ".join(created))
        if args.command == "secrets":
            return 0
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"sf: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    for name in config.extra:
        log.warning("unknown setting %s ignored (see conf/sf.toml for the names)", name)
    return COMMANDS[args.command](config, args)


if __name__ == "__main__":
    sys.exit(main())
