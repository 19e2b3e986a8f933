"""`make_app` builds the Tornado application of one API node from the handler route tables;
`main` is the `sf` command (serve, dev, node, migrate, services, operator commands).

This module is the top of the package: it composes the application and hands `make_app` to
the node runners (`sf.node`), which therefore never import it back.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any

import tornado.web

from sf.config import (
    BACKUP_SECRET_NAMES,
    EDGE_SECRET_NAMES,
    SECRET_NAMES,
    Config,
    ConfigError,
    bootstrap_var_dir,
    ensure_secrets,
    load_config,
)
from sf.db.migrate import migrate
from sf.handlers import (
    account_mail,
    allowed_viewers,
    auth,
    categories,
    channel_chat,
    chat,
    docs,
    exports,
    follows,
    health,
    legal,
    media_hooks,
    notifications,
    push,
    statistics,
    stream_keys,
    streams,
    users,
    viewers,
    webhooks,
)
from sf.handlers.base import AUTH_MODES, NotFoundHandler
from sf.node import localservices
from sf.node.dev import run_dev, run_edge, run_node
from sf.node.server import run_serve
from sf.node.tls import write_self_signed
from sf.observability import configure_logging, log_request
from sf.ops import backup, commands, privacy
from sf.redis_client import is_sentinel_url, sentinel_status
from sf.security import EmailCipher
from sf.services.container import Services

# Every resource's handlers, in the order their routes are matched.
HANDLER_MODULES = (health, docs, auth, account_mail, legal, users, exports, follows, stream_keys,
                   allowed_viewers, streams, channel_chat, categories, statistics, viewers,
                   chat, notifications, push, webhooks, media_hooks)


def collect_routes(services: Services) -> list[Any]:
    """Every module's route table, `/api/...` also served as canonical `/api/v1/...`.

    A handler that does not declare its auth mode stops the node here, at start-up.
    """
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
    return table


def make_app(services: Services) -> tornado.web.Application:
    """The Tornado application of one API node, bound to its services."""
    routes = collect_routes(services)
    return tornado.web.Application(
        routes,
        services=services,
        openapi=docs.build_openapi(routes),
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        xsrf_cookies=False,  # Bearer tokens; the cookie refresh path has its own CSRF check
        compress_response=True,
        websocket_ping_interval=20,
        websocket_ping_timeout=20,
        websocket_max_message_size=4096,
        serve_traceback=False,
    )


# --- the `sf` command ----------------------------------------------------------------------

log = logging.getLogger("sf")


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    return run_serve(config, make_app)


def cmd_migrate(config: Config, args: argparse.Namespace) -> int:
    applied = asyncio.run(migrate(config.database_url, email_cipher=EmailCipher.of(config)))
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
    return 0


def cmd_services(config: Config, args: argparse.Namespace) -> int:
    if args.action == "start":
        started = localservices.start_all(config)
        print("started: " + (", ".join(started) or "nothing (already running)"))
    elif args.action == "stop":
        localservices.stop_all(config, args.only or None)
    else:
        for name, service in localservices.service_set(config).items():
            print(f"{name}: {'running' if service.running() else 'stopped'}")
        if is_sentinel_url(config.redis_url):  # not a local service: what the sentinels say
            print(f"redis: {sentinel_status(config.redis_url)}")
    return 0


def cmd_dev(config: Config, args: argparse.Namespace) -> int:
    return run_dev(config, make_app)


def cmd_node(config: Config, args: argparse.Namespace) -> int:
    return run_node(config, make_app, edge=not args.no_edge)


def cmd_edge(config: Config, args: argparse.Namespace) -> int:
    return run_edge(config)


def cmd_tls_cert(config: Config, args: argparse.Namespace) -> int:
    cert, key = write_self_signed(config.var_dir / "tls", config.public_host)
    print(f"SF_TLS_CERT={cert}\nSF_TLS_KEY={key}")
    return 0


COMMANDS: dict[str, Callable[[Config, argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "dev": cmd_dev,
    "node": cmd_node,
    "edge": cmd_edge,
    "migrate": cmd_migrate,
    "services": cmd_services,
    "tls-cert": cmd_tls_cert,
    "categories": commands.cmd_categories,
    "keys": commands.cmd_keys,
    "backup": backup.cmd_backup,
    "restore": backup.cmd_restore,
    "privacy": privacy.cmd_privacy,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sf", description="SF streaming platform")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run an API node (behind nginx)")
    sub.add_parser("dev", help="run everything locally: PostgreSQL, Redis, nginx, the API")
    node = sub.add_parser("node", help="run a node: the public edge nginx, the media nginx "
                          "(RTMP, HLS origin) and the API processes")
    node.add_argument("--no-edge", action="store_true",
                      help="a media node behind a separate edge (`sf edge`): no public HTTP port")
    sub.add_parser("edge", help="run only the public HTTP edge nginx (a gateway machine), in "
                   "front of SF_EDGE_API_SERVERS and SF_EDGE_MEDIA_ORIGINS")
    sub.add_parser("migrate", help="apply pending SQL migrations")
    services = sub.add_parser("services", help="local PostgreSQL and Redis under var/")
    services.add_argument("action", choices=["start", "stop", "status"])
    services.add_argument("--only", nargs="*", choices=["postgres", "redis"])
    secrets_parser = sub.add_parser("secrets", help="generate missing secrets under var/secrets")
    secrets_parser.add_argument("action", choices=["init"])
    sub.add_parser("tls-cert", help="create a self-signed certificate for local HTTPS")
    commands.add_parsers(sub)
    backup.add_parsers(sub)
    privacy.add_parsers(sub)
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
        # The edge checks playback signatures and holds no other secret; only the backup
        # commands need the backup key.
        config = load_config(secrets=EDGE_SECRET_NAMES if args.command == "edge" else
                             BACKUP_SECRET_NAMES if args.command in ("backup", "restore") else
                             SECRET_NAMES)
    except ConfigError as exc:
        print(f"sf: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, ip_mode=config.log_ip_mode,
                      ip_secret=config.internal_secret)
    for name in config.extra:
        log.warning("unknown setting %s ignored (see docs/configuration.md for the names)", name)
    return COMMANDS[args.command](config, args)


if __name__ == "__main__":
    sys.exit(main())
