"""Structured JSON logs (one object a line, secrets redacted) and Prometheus metrics."""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import sys
import threading
import time
import urllib.request
from collections import deque
from datetime import UTC, datetime, timedelta
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


ACCESS_FIELDS = ("request_id", "method", "path", "status", "duration_ms", "user_id", "client_ip")


class RedactingJsonFormatter(JsonFormatter):
    """python-json-logger's formatter with every string field passed through `redact`.

    The access log line of every request takes a direct path to the same JSON (same keys, same
    order, same redaction; tests/test_edge.py compares the two): the generic one walks every
    attribute of the record and formats the time anew, a tenth of a cheap request's cost."""

    _second: tuple[int, str] = (-1, "")

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
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
        return json.dumps(line)


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


ALERT_LOGGER = "sf.alerts"
alerts_log = logging.getLogger(ALERT_LOGGER)


class AlertWebhook(logging.Handler):
    """ERROR log events posted to a webhook as Alertmanager-compatible JSON (a list of alerts
    with labels, annotations, startsAt and endsAt: Alertmanager's own `/api/v2/alerts` takes it
    as it is).

    `emit` only queues, so logging an error never waits on the network, on the loop thread or
    an actor's; one sender thread of this process posts. An event (logger + message template)
    goes out at most once per `dedup_seconds`, and at most `max_per_minute` alerts a minute in
    all; the rest are counted in sf_alert_webhook_events_total. Texts pass through `redact`,
    and the URL (a chat webhook's URL is itself a credential) is never logged.
    """

    QUEUE_SIZE = 100
    BATCH = 50

    def __init__(self, url: str, *, node: str, dedup_seconds: float = 300.0,
                 max_per_minute: int = 10, timeout: float = 5.0) -> None:
        super().__init__(logging.ERROR)
        self.url = url
        self.node = node
        self.dedup_seconds = dedup_seconds
        self.max_per_minute = max_per_minute
        self.timeout = timeout
        self.outage = Outage(alerts_log, "The alert webhook", "ERROR events are not delivered")
        self._pid = 0
        self._queue: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(self.QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._last_sent: dict[tuple[str, str], float] = {}
        self._sent_at: deque[float] = deque()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == ALERT_LOGGER:
            return  # the webhook's own trouble is logged, never posted to itself
        now = time.monotonic()
        key = (record.name, str(record.msg))
        last = self._last_sent.get(key)
        if last is not None and now - last < self.dedup_seconds:
            ALERT_WEBHOOK.labels("duplicate").inc()
            return
        while self._sent_at and now - self._sent_at[0] >= 60:
            self._sent_at.popleft()
        if len(self._sent_at) >= self.max_per_minute:
            ALERT_WEBHOOK.labels("rate_limited").inc()
            return
        self._ensure_sender()
        try:
            self._queue.put_nowait([self.alert_for(record)])
        except queue.Full:
            ALERT_WEBHOOK.labels("dropped").inc()
            return
        self._sent_at.append(now)
        self._last_sent[key] = now
        if len(self._last_sent) > 1000:  # forget events older than the window
            self._last_sent = {k: t for k, t in self._last_sent.items()
                               if now - t < self.dedup_seconds}

    def alert_for(self, record: logging.LogRecord) -> dict[str, Any]:
        """The Alertmanager alert of one log record (no secret: every text is redacted)."""
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        started = datetime.fromtimestamp(record.created, UTC)
        annotations = {"summary": redact(message)[:500]}
        if record.exc_info and record.exc_info[0] is not None:
            annotations["exception"] = record.exc_info[0].__name__
        for name in ("request_id", "stream_id"):
            value = getattr(record, name, None)
            if value not in (None, ""):
                annotations[name] = redact(str(value))
        return {
            "labels": {"alertname": "SFErrorLogged", "severity": "error", "service": "sf",
                       "node": self.node, "logger": record.name,
                       "event": redact(str(record.msg))[:120]},
            "annotations": annotations,
            "startsAt": started.isoformat(),
            # Resolves by itself unless the event repeats after the dedup window.
            "endsAt": (started + timedelta(seconds=max(self.dedup_seconds, 60))).isoformat(),
        }

    def _ensure_sender(self) -> None:
        """Start this process's sender thread (a forked API process has none of its parent's)."""
        if self._pid == os.getpid() and self._thread is not None:
            return
        self._pid = os.getpid()
        self._queue = queue.Queue(self.QUEUE_SIZE)
        self._thread = threading.Thread(target=self._send_forever, name="sf-alert-webhook",
                                        daemon=True)
        self._thread.start()

    def _send_forever(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch, stop = list(item), False
            while len(batch) < self.BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.extend(more)
            self._post(batch)
            if stop:
                return

    def _post(self, alerts: list[dict[str, Any]]) -> None:
        request = urllib.request.Request(
            self.url, data=json.dumps(alerts).encode(), method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "sf-alerts"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except (OSError, ValueError) as error:  # HTTPError and URLError are OSErrors
            ALERT_WEBHOOK.labels("failed").inc(len(alerts))
            self.outage.lost(error)
            return
        ALERT_WEBHOOK.labels("sent").inc(len(alerts))
        self.outage.back()

    def close(self) -> None:
        """Deliver what is queued (for a few seconds at most), then stop the sender."""
        thread, self._thread = self._thread, None
        if thread is not None and self._pid == os.getpid():
            try:
                self._queue.put(None, timeout=1)
            except queue.Full:
                pass
            thread.join(timeout=self.timeout + 1)
        super().close()


def install_alert_webhook(url: str, *, node: str, dedup_seconds: float,
                          max_per_minute: int) -> AlertWebhook | None:
    """Send this process's ERROR events to `url` too (nothing when it is empty)."""
    if not url:
        return None
    handler = AlertWebhook(url, node=node, dedup_seconds=dedup_seconds,
                           max_per_minute=max_per_minute)
    logging.getLogger().addHandler(handler)
    return handler


def remove_alert_webhook(handler: AlertWebhook | None) -> None:
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()
