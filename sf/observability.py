"""Structured JSON logs (one object a line, secrets redacted) and Prometheus metrics."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from pythonjsonlogger.json import JsonFormatter

# Anything that looks like a secret is replaced before a line is written.
_REDACT = [
    (re.compile(r"live_\d+_[A-Za-z0-9_\-]{16,}"), "live_[REDACTED]"),
    (re.compile(r"eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+"), "[JWT REDACTED]"),
    (re.compile(r"(?i)(password|passwd|secret|token|key)=([^&\s]+)"), r"\1=[REDACTED]"),
]

REQUESTS = Counter("sf_http_requests_total", "API requests", ["method", "handler", "status"])
LATENCY = Histogram(
    "sf_http_request_duration_seconds", "API request latency", ["handler"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5),
)
LIVE_STREAMS = Gauge("sf_live_streams", "Live streams ingested on this node")
WS_CONNECTIONS = Gauge("sf_ws_connections", "Open viewer WebSockets on this node")
WS_MESSAGES = Counter("sf_ws_messages_sent_total", "Messages sent to viewer WebSockets")
TRANSCODER_SPEED = Gauge("sf_transcoder_speed", "FFmpeg speed (x real time)", ["stream_id"])
TRANSCODER_FPS = Gauge("sf_transcoder_fps", "FFmpeg output frames per second", ["stream_id"])
TRANSCODER_RESTARTS = Gauge("sf_transcoder_restarts", "FFmpeg restarts of a live stream",
                            ["stream_id"])
TRANSCODER_DEGRADED = Gauge("sf_transcoder_degraded", "1 when a stream's FFmpeg keeps failing",
                            ["stream_id"])


def redact(text: str) -> str:
    """`text` with stream keys, JWTs and key=value secrets masked."""
    for pattern, replacement in _REDACT:
        text = pattern.sub(replacement, text)
    return text


class RedactingJsonFormatter(JsonFormatter):
    """python-json-logger's formatter with every string field passed through `redact`."""

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {key: redact(value) if isinstance(value, str) else value
                for key, value in log_data.items()}


def configure_logging(level: str = "INFO", stream: Any = None) -> None:
    """Route every logger (ours, tornado's, asyncio's) to one JSON stream."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(RedactingJsonFormatter(
        "{asctime}{levelname}{name}{message}", style="{",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("tornado.access").setLevel(logging.INFO)


access_log = logging.getLogger("sf.access")
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def log_request(handler: Any) -> None:
    """Tornado `log_function`: one JSON line per request, plus the metrics."""
    request = handler.request
    status = handler.get_status()
    duration = request.request_time()
    route = type(handler).__name__
    # Label values must be few: a client may send any method name.
    method = request.method if request.method in KNOWN_METHODS else "other"
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(route).observe(duration)
    claims = getattr(handler, "claims", None)
    level = logging.ERROR if status >= 500 else logging.INFO
    access_log.log(level, "request", extra={
        "request_id": getattr(handler, "request_id", ""),
        "method": request.method,
        "path": request.path,  # never the query string: it may carry an access token
        "status": status,
        "duration_ms": round(duration * 1000, 2),
        "user_id": claims.user_id if claims else None,
        "client_ip": handler.client_ip if hasattr(handler, "client_ip") else request.remote_ip,
    })


class Outage:
    """Logs a dependency's outage once when it starts and once when it ends, however many
    requests run into it meanwhile."""

    def __init__(self, logger: logging.Logger, what: str, consequence: str) -> None:
        self.logger = logger
        self.what = what
        self.consequence = consequence
        self.down = False

    def lost(self, error: BaseException) -> None:
        if not self.down:
            self.down = True
            self.logger.warning("%s unreachable (%s): %s", self.what, type(error).__name__,
                                self.consequence)

    def back(self) -> None:
        if self.down:
            self.down = False
            self.logger.info("%s reachable again", self.what)
