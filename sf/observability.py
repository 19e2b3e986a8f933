"""Structured JSON logs (one object a line, secrets redacted) and Prometheus metrics."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import re
import sys
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from pythonjsonlogger.json import JsonFormatter

# Anything that looks like a secret is replaced before a line is written.
_REDACT = [
    (re.compile(r"live_\d+_[A-Za-z0-9_\-]{16,}"), "live_[REDACTED]"),
    (re.compile(r"eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+"), "[JWT REDACTED]"),
    (re.compile(r"(?i)(password|passwd|secret|token|key|ticket|signature|sig)=([^&\s]+)"),
     r"\1=[REDACTED]"),
    # A private stream's signed HLS prefix (/hls/<id>/<expires>-<signature>/) is a credential.
    (re.compile(r"(/hls/\d+/)\d+-[A-Za-z0-9_\-]{16,}/"), r"\1[signed]/"),
]

REQUESTS = Counter("sf_http_requests_total", "API requests", ["method", "handler", "status"])
LATENCY = Histogram(
    "sf_http_request_duration_seconds", "API request latency", ["handler", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5),
)
RATE_LIMITED = Counter("sf_rate_limit_rejections_total", "Requests refused by a rate limit (429)",
                       ["bucket"])
LIVE_STREAMS = Gauge("sf_live_streams", "Live streams ingested on this node")
WS_CONNECTIONS = Gauge("sf_ws_connections", "Open viewer WebSockets on this node")
WS_OPENED = Counter("sf_ws_connections_opened_total", "Viewer WebSockets opened")
WS_MESSAGES = Counter("sf_ws_messages_sent_total", "Messages sent to viewer WebSockets")
WS_MESSAGES_RECEIVED = Counter("sf_ws_messages_received_total",
                               "Messages and control frames received from viewer WebSockets")
VIEWERS = Gauge("sf_viewers", "Distinct viewers of the streams watched through this process")
TRANSCODER_EXITS = Counter("sf_transcoder_exits_total",
                           "FFmpeg transcoder exits while its stream was live (crashes, kills)")
REDIS_PRIMARY_CHANGES = Counter("sf_redis_primary_changes_total",
                                "Times this process saw the Sentinel group's primary move")
REDIS_UNREPLICATED = Counter("sf_redis_unreplicated_revocations_total",
                             "Revocations (logouts, password changes) no replica acknowledged "
                             "in time: a failover now would undo them")
# Read at scrape time (sf/services/monitoring.py).
DEPENDENCY_UP = Gauge("sf_dependency_up", "1 when the dependency answered the scrape's probe",
                      ["dependency"])
DEPENDENCY_LATENCY = Gauge("sf_dependency_probe_seconds", "How long the scrape's probe took",
                           ["dependency"])
DB_POOL_CONNECTIONS = Gauge("sf_db_pool_connections", "asyncpg pool connections by state",
                            ["state"])
DB_POOL_MAX = Gauge("sf_db_pool_max_connections", "asyncpg pool size limit")
MEDIA_DISK_FREE = Gauge("sf_media_disk_free_bytes", "Free bytes (for unprivileged users) on the "
                        "file system of the media dir")
MEDIA_DISK_SIZE = Gauge("sf_media_disk_size_bytes", "Size of the file system of the media dir")
BACKUP_LAST_SUCCESS = Gauge("sf_backup_last_success_timestamp_seconds",
                            "Time of the newest backup in SF_BACKUP_DIR whose checksum matches "
                            "(0: none)")
ALERT_WEBHOOK = Counter("sf_alert_webhook_events_total",
                        "ERROR log events seen by the alert webhook, by outcome", ["outcome"])
TRANSCODER_SPEED = Gauge("sf_transcoder_speed", "FFmpeg speed (x real time)", ["stream_id"])
TRANSCODER_FPS = Gauge("sf_transcoder_fps", "FFmpeg output frames per second", ["stream_id"])
TRANSCODER_RESTARTS = Gauge("sf_transcoder_restarts", "FFmpeg restarts of a live stream",
                            ["stream_id"])
TRANSCODER_DEGRADED = Gauge("sf_transcoder_degraded", "1 when a stream's FFmpeg keeps failing",
                            ["stream_id"])
# Transcoder admission and media node liveness (issue 19), from a media node's ingest process.
TRANSCODERS_RUNNING = Gauge("sf_transcoders_running",
                            "Transcoded ladders running on this media node (source-only excluded)")
TRANSCODER_CAPACITY = Gauge("sf_transcoder_capacity",
                            "Ladders this media node admits at most (SF_MAX_TRANSCODERS)")
NODE_CPU_BUSY = Gauge("sf_node_cpu_busy_ratio",
                      "Share of the media node's CPU busy over the last seconds (admission's guard)")
TRANSCODER_ADMISSIONS = Counter("sf_transcoder_admissions_total",
                                "Publishes by what admission gave them (ladder, source_only, "
                                "refused) and why", ["decision", "reason"])
STREAMS_TAKEN_OFFLINE = Counter("sf_streams_taken_offline_total",
                                "Live streams taken offline because their media node died")
MEDIA_NODES_ALIVE = Gauge("sf_media_nodes_alive",
                          "Media nodes with a current heartbeat, as this media node sees them")


# Text none of the patterns can match (no "live_<digit>", "eyJ", "=" or "/hls/<digit>") is
# returned at once: one scan instead of four, for nearly every string logged.
_MAYBE_SECRET = re.compile(r"live_\d|eyJ|=|/hls/\d")


def redact(text: str) -> str:
    """`text` with stream keys, JWTs and key=value secrets masked."""
    if _MAYBE_SECRET.search(text) is None:
        return text
    for pattern, replacement in _REDACT:
        text = pattern.sub(replacement, text)
    return text


class AddressMinimiser:
    """How logs write a client address (SF_LOG_IP_MODE): `raw` as it is; `truncate` its /24
    (IPv4) or /48 (IPv6) network; `hash` a keyed HMAC-SHA256 prefix (the same address gives
    the same text within a deployment, so lines of one client can still be followed, but the
    address cannot be read back or confirmed without the key)."""

    PURPOSE = b"sf log address v1"

    def __init__(self, mode: str = "raw", secret: str = "") -> None:
        if mode not in ("raw", "truncate", "hash"):
            raise ValueError(f"not a log address mode: {mode!r}")
        self.mode = mode
        self._key = hmac.new(secret.encode(), self.PURPOSE, hashlib.sha256).digest()

    def __call__(self, address: str) -> str:
        if self.mode == "raw" or not address:
            return address
        if self.mode == "hash":
            digest = hmac.new(self._key, address.encode(), hashlib.sha256).hexdigest()
            return "h:" + digest[:16]
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return "-"  # not an address (a Unix socket peer): nothing worth keeping
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        prefix = 24 if ip.version == 4 else 48
        return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


    def in_text(self, text: str) -> str:
        """`text` with every IP address in it minimised (Tornado's own messages name the
        peer: "Malformed HTTP message from 203.0.113.7")."""
        if self.mode == "raw" or _MAYBE_ADDRESS.search(text) is None:
            return text
        return _ADDRESS_IN_TEXT.sub(self._replace_match, text)

    def _replace_match(self, match: re.Match[str]) -> str:
        try:
            ipaddress.ip_address(match.group(0))
        except ValueError:
            return match.group(0)  # a time of day, a version: not an address
        return self(match.group(0))


# Candidates only: each is checked with `ipaddress` before it is replaced.
_ADDRESS_IN_TEXT = re.compile(
    r"(?<![\w:.])(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}"
    r"|[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.[0-9]{1,3}){0,3}(?:%\w+)?)(?![\w:.])")
_MAYBE_ADDRESS = re.compile(r"[0-9]\.[0-9]|:[0-9A-Fa-f]*:")
ADDRESS_FIELDS = ("client_ip",)  # log record fields that hold a client's address
ACCESS_FIELDS = ("request_id", "method", "path", "status", "duration_ms", "user_id", "client_ip")


class RedactingJsonFormatter(JsonFormatter):
    """python-json-logger's formatter with every string field passed through `redact`.

    The access log line of every request takes a direct path to the same JSON (same keys, same
    order, same redaction; tests/test_edge.py compares the two): the generic one walks every
    attribute of the record and formats the time anew, a tenth of a cheap request's cost."""

    _second: tuple[int, str] = (-1, "")
    # SF_LOG_IP_MODE, applied to every field of ADDRESS_FIELDS; None: addresses as they are.
    minimise_address: AddressMinimiser | None = None

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        minimise = self.minimise_address
        if minimise is not None:
            for name in ADDRESS_FIELDS:
                if isinstance(log_data.get(name), str):
                    log_data[name] = minimise(log_data[name])
            if isinstance(log_data.get("message"), str):
                log_data["message"] = minimise.in_text(log_data["message"])
        return {key: redact(value) if isinstance(value, str) else value
                for key, value in log_data.items() if key != "access_fields"}

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        if record.name != "sf.access" or record.exc_info or record.stack_info \
                or record.args or "access_fields" not in fields:
            return super().format(record)
        second = int(record.created)
        if self._second[0] != second:  # the time format has whole seconds
            self._second = (second, self.formatTime(record, self.datefmt))
        line: dict[str, Any] = {"time": self._second[1], "level": record.levelname,
                                "logger": record.name, "message": redact(record.msg)}
        for name in ACCESS_FIELDS:
            value = fields[name]
            line[name] = redact(value) if isinstance(value, str) else value
        if self.minimise_address is not None and isinstance(line["client_ip"], str):
            line["client_ip"] = self.minimise_address(line["client_ip"])
        return json.dumps(line)


def configure_logging(level: str = "INFO", stream: Any = None, ip_mode: str = "raw",
                      ip_secret: str = "") -> None:
    """Route every logger (ours, tornado's, asyncio's) to one JSON stream, client addresses
    written as `ip_mode` says (`AddressMinimiser`; `ip_secret` keys the `hash` mode)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = RedactingJsonFormatter(
        "{asctime}{levelname}{name}{message}", style="{",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )
    if ip_mode != "raw":
        formatter.minimise_address = AddressMinimiser(ip_mode, ip_secret)
    handler.setFormatter(formatter)
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
    LATENCY.labels(route, str(status)).observe(duration)
    claims = getattr(handler, "claims", None)
    level = logging.ERROR if status >= 500 else logging.INFO
    access_log.log(level, "request", extra={
        "access_fields": True,
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
    requests run into it meanwhile.

    `since` is when it began as far as this process can tell: a failure after `QUIET` seconds
    without any starts it again, as the dependency may have come back and gone again unseen
    (an idle process between two failovers would otherwise count the second outage from the
    first's start)."""

    QUIET = 1.0

    def __init__(self, logger: logging.Logger, what: str, consequence: str) -> None:
        self.logger = logger
        self.what = what
        self.consequence = consequence
        self.down = False
        self.since: float | None = None  # time.monotonic() when the outage began
        self._last_failure = 0.0

    def lost(self, error: BaseException) -> None:
        now = time.monotonic()
        if not self.down:
            self.down = True
            self.since = now
            self.logger.warning("%s unreachable (%s): %s", self.what, type(error).__name__,
                                self.consequence)
        elif now - self._last_failure > self.QUIET:
            self.since = now
        self._last_failure = now

    def back(self) -> None:
        if self.down:
            self.down = False
            self.since = None
            self.logger.info("%s reachable again", self.what)
