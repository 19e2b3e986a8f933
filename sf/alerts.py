"""Alert sending: this process's ERROR log events posted to a webhook (Alertmanager's JSON)."""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import urllib.request
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

from sf.observability import ALERT_WEBHOOK, Outage, redact

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
