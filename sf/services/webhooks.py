"""Webhooks: a user's endpoints for their own channel's events (`stream.online`,
`stream.offline`, `follow.created`), and the sender that delivers them, signed.

Events never wait on a receiver: their source INSERTs one delivery per subscribed webhook
(`sf.db.webhooks.enqueue`: one cheap look-up when the user has none, and a failure is logged,
never passed to the request that caused the event). Every API process runs a
`WebhookSender`, like the `MailSender`: it claims due deliveries with `FOR UPDATE SKIP LOCKED`
under a lease and POSTs each through `sf.outbound.guarded_session` (public addresses only,
checked on the address connected to; no redirects; a short timeout; the answer read up to
64 KiB). A 2xx delivers; anything else is retried with doubling waits until the give-up time,
and a webhook that keeps failing is disabled and its owner told (docs/api.md#webhooks).
Delivery is at least once, with the same event id (`SF-Webhook-Id`) every time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg

from sf.config import Config
from sf.db import outbox
from sf.db import users as users_db
from sf.db import webhooks as webhooks_db
from sf.db.webhooks import ClaimedDelivery, Delivery, Webhook
from sf.errors import validation_error
from sf.observability import Outage
from sf.outbound import (
    RESPONSE_CAP_BYTES,
    BlockedAddress,
    check_destination,
    failure_reason,
    guarded_session,
    read_capped,
    request_options,
    vet,
)
from sf.schemas.webhooks import WEBHOOK_EVENTS
from sf.security import EmailCipher
from sf.services.events import StreamEvent, StreamListener
from sf.services.mail import MailContent, MailSender, compose, html_text
from sf.services.notifications import NotificationService
from sf.services.workers import QueueWorker

log = logging.getLogger("sf.webhooks")

EVENT_TYPES = WEBHOOK_EVENTS
CHAT_EVENT = "chat.message"
# How long a process trusts its list of the channels whose webhooks take chat messages (the
# chat's send path looks there, not in the database); a change made through this process
# counts at once, one made elsewhere within this.
CHAT_SUBSCRIBERS_TTL = 5.0
# Event ids of events whose source can fire twice for one thing (an encoder reconnecting
# tells "live" again) are derived from the thing: the same id, so queued once.
EVENT_NAMESPACE = uuid.UUID("5f0d2a4e-8a53-4c61-9a3c-2f1f7f6b9d21")
CONCURRENCY = 16  # deliveries one sender has in flight at most
PER_WEBHOOK = 2   # of them, for one webhook (security.md#webhook-slow-receiver)
HOUSEKEEPING_SECONDS = 3600.0
DISABLED_REASON = "too many failed deliveries"
MAIL_KIND = "webhook_disabled"
NOTIFICATION_TYPE = "webhook.disabled"


def new_secret() -> str:
    """A signing secret: 256 random bits."""
    return "whsec_" + secrets.token_urlsafe(32)


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """`v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`, the `SF-Webhook-Signature` header."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def event_id_of(event_type: str, subject: object) -> uuid.UUID:
    """The id of the one event of this type about `subject` (a stream id)."""
    return uuid.uuid5(EVENT_NAMESPACE, f"{event_type}:{subject}")


def event_body(event_id: uuid.UUID, event_type: str, created_at: float,
               data: dict[str, Any]) -> bytes:
    """The JSON each delivery of the event sends, byte for byte (and signs)."""
    moment = datetime.fromtimestamp(created_at, UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"id": str(event_id), "type": event_type, "created_at": moment,
                       "data": data}, separators=(",", ":"), ensure_ascii=False).encode()


def backoff_seconds(first: float, most: float, attempts: int) -> float:
    """The wait before the next attempt after `attempts` failed ones: doubling, capped."""
    return float(min(most, first * 2 ** max(0, attempts - 1)))


def disabled_content(username: str, url: str, failures: int) -> MailContent:
    """The mail telling an owner one of their webhooks was disabled."""
    text = (f"Hello {username},\n\nYour SF webhook to {url} failed {failures} times in a row "
            "and was disabled; events are no longer sent to it. Once the receiver works again, "
            "enable it in your webhook settings (`\"enabled\": true`).\n")
    body = (f"<p>Hello {html_text(username)},</p><p>Your SF webhook to <b>{html_text(url)}</b> "
            f"failed {failures} times in a row and was disabled; events are no longer sent to "
            "it. Once the receiver works again, enable it in your webhook settings.</p>")
    return MailContent("Your webhook was disabled", text, f"<html><body>{body}</body></html>")


class WebhookService:
    """The owner's webhooks and their deliveries, and the events queued for them."""

    def __init__(self, db: asyncpg.Pool, config: Config, cipher: EmailCipher,
                 sender: WebhookSender) -> None:
        self.db = db
        self.config = config
        self.cipher = cipher
        self.sender = sender
        self._chat_channels: frozenset[int] = frozenset()
        self._chat_channels_at = -math.inf
        self._chat_refresh: asyncio.Future[None] | None = None
        self._chat_emits: set[asyncio.Future[Any]] = set()

    # --- the owner's API ----------------------------------------------------------------------

    async def check_url(self, url: str) -> str:
        """The URL when SF may send to it (422 on `url` otherwise): `sf.outbound.vet` —
        https (http only to an allowed network's address), no credentials, no literal
        non-public address, and a name that resolves to public addresses only, now (checked
        again at every send)."""
        try:
            return await vet(url, self.config.outbound_allowed_networks,
                             self.config.outbound_nameservers)
        except ValueError as error:
            raise validation_error("url", str(error)) from None

    async def create(self, user_id: int, url: str, events: list[str]) -> tuple[Webhook, str]:
        """A new webhook and its signing secret (shown this once)."""
        await self.check_url(url)
        secret = new_secret()
        webhook = await webhooks_db.create(self.db, self.cipher, user_id, url,
                                           sorted(set(events)), secret,
                                           self.config.webhooks_per_user)
        self._chat_channels_at = -math.inf
        return webhook, secret

    async def list_for(self, user_id: int) -> list[Webhook]:
        """The user's webhooks, oldest first."""
        return await webhooks_db.list_for_user(self.db, user_id)

    async def get(self, user_id: int, webhook_id: int) -> Webhook:
        """One of the user's webhooks (NotFound for anyone else's)."""
        return await webhooks_db.get(self.db, user_id, webhook_id)

    async def update(self, user_id: int, webhook_id: int, changes: dict[str, Any]) -> Webhook:
        """Change url, events, enabled (those given); NotFound for another user's webhook
        (looked at before the URL, so an id says nothing about whose it is)."""
        await webhooks_db.get(self.db, user_id, webhook_id)
        url = changes.get("url")
        if url is not None:
            await self.check_url(url)
        events = changes.get("events")
        webhook = await webhooks_db.update(
            self.db, user_id, webhook_id, url,
            sorted(set(events)) if events is not None else None, changes.get("enabled"))
        if changes.get("enabled"):
            self.sender.wake()  # its pending deliveries are due again
        self._chat_channels_at = -math.inf
        return webhook

    async def delete(self, user_id: int, webhook_id: int) -> None:
        await webhooks_db.delete(self.db, user_id, webhook_id)
        self._chat_channels_at = -math.inf

    async def deliveries(self, user_id: int, webhook_id: int, limit: int,
                         cursor: str | None) -> tuple[list[Delivery], str | None]:
        return await webhooks_db.list_deliveries(self.db, user_id, webhook_id, limit, cursor)

    async def redeliver(self, user_id: int, webhook_id: int, delivery_id: int) -> Delivery:
        delivery = await webhooks_db.redeliver(self.db, user_id, webhook_id, delivery_id,
                                               self.config.webhook_give_up_seconds)
        self.sender.wake()
        return delivery

    # --- events in ----------------------------------------------------------------------------

    async def emit(self, user_id: int, event_type: str, event_id: uuid.UUID, at: float,
                   data: dict[str, Any], dedup_key: str | None = None,
                   dedup_seconds: float = 0) -> int:
        """Queue an event of `user_id`'s channel for their webhooks that take it; how many
        deliveries were queued. Never raises: the event's source (a publish, a follow) must
        not fail because of a webhook (logged instead)."""
        try:
            username = await webhooks_db.subscribed_username(self.db, user_id, event_type)
            if username is None:
                return 0
            body = event_body(event_id, event_type, at,
                              {"user_id": user_id, "username": username, **data})
            queued = await webhooks_db.enqueue(
                self.db, user_id, event_type, event_id, body,
                self.config.webhook_give_up_seconds, dedup_key, dedup_seconds)
        except Exception:
            log.warning("could not queue a %s webhook event", event_type, exc_info=True,
                        extra={"user_id": user_id})
            return 0
        if queued:
            self.sender.wake()
        return queued

    async def follow_created(self, channel_id: int, follower_id: int) -> None:
        """`follow.created` for the followed channel's webhooks: once per follower within
        SF_WEBHOOK_FOLLOW_DEDUP_SECONDS (an unfollow and follow again sends nothing new)."""
        try:
            follower = await webhooks_db.username_of(self.db, follower_id)
        except Exception:
            log.warning("could not queue a follow.created webhook event", exc_info=True)
            return
        await self.emit(channel_id, "follow.created", uuid.uuid4(), time.time(),
                        {"follower": {"id": follower_id, "username": follower}},
                        dedup_key=f"follower:{follower_id}",
                        dedup_seconds=self.config.webhook_follow_dedup_seconds)

    def chat_message(self, channel_id: int, message: dict[str, Any]) -> None:
        """A chat message was sent in `channel_id` (the chat's send path calls this): queued
        for the channel's webhooks that take `chat.message`, in the background. The common
        case — a channel without such a webhook, in a fresh list — costs a set look-up."""
        fresh = time.monotonic() - self._chat_channels_at < CHAT_SUBSCRIBERS_TTL
        if fresh and channel_id not in self._chat_channels:
            return
        task = asyncio.ensure_future(self._chat_message(channel_id, message))
        self._chat_emits.add(task)
        task.add_done_callback(self._chat_emits.discard)

    async def _chat_message(self, channel_id: int, message: dict[str, Any]) -> None:
        if time.monotonic() - self._chat_channels_at >= CHAT_SUBSCRIBERS_TTL:
            if self._chat_refresh is None:
                self._chat_refresh = asyncio.ensure_future(self._refresh_chat_channels())
            await asyncio.shield(self._chat_refresh)
        if channel_id in self._chat_channels:
            await self.emit(channel_id, CHAT_EVENT, event_id_of(CHAT_EVENT, message["id"]),
                            time.time(), {"message": message})

    async def _refresh_chat_channels(self) -> None:
        try:
            self._chat_channels = frozenset(await webhooks_db.subscribers(self.db, CHAT_EVENT))
            self._chat_channels_at = time.monotonic()
        except Exception:
            log.warning("could not read which channels' webhooks take chat messages",
                        exc_info=True)
        finally:
            self._chat_refresh = None

    async def purge_old(self) -> int:
        """The scheduled job: deliveries older than SF_WEBHOOK_DELIVERIES_RETENTION_DAYS go."""
        return await webhooks_db.purge_old(
            self.db, self.config.webhook_deliveries_retention_days * 86400.0)


class WebhookEvents(StreamListener):
    """Turns this node's stream events into webhook events (a local listener: each stream
    event happens on exactly one node)."""

    def __init__(self, webhooks: WebhookService) -> None:
        self.webhooks = webhooks

    @staticmethod
    def _data(event: StreamEvent) -> dict[str, Any]:
        return {"stream_id": event.stream_id, "title": event.title,
                "thumbnail": event.thumbnail, "category_id": event.category_id,
                "is_private": event.is_private}

    async def stream_live(self, event: StreamEvent) -> None:
        """`stream.online`, once per stream (a reconnect continuing it tells "live" again)."""
        await self.webhooks.emit(event.user_id, "stream.online",
                                 event_id_of("stream.online", event.stream_id), event.ts,
                                 self._data(event))

    async def stream_ended(self, event: StreamEvent) -> None:
        await self.webhooks.emit(event.user_id, "stream.offline",
                                 event_id_of("stream.offline", event.stream_id), event.ts,
                                 self._data(event))


class WebhookSender(QueueWorker):
    """Delivers due webhook deliveries, one per API process (see the module): at once when
    this process queued one, else within SF_MAIL_POLL_SECONDS (the outbox's polling)."""

    def __init__(self, db: asyncpg.Pool, config: Config, cipher: EmailCipher,
                 mail: MailSender, notifications: NotificationService) -> None:
        self.db = db
        self.config = config
        self.cipher = cipher
        self.mail = mail
        self.notifications = notifications  # tells an owner in the app that a webhook stopped
        # Each batch is sent concurrently: one attempt's time, and room to record it.
        self.lease_seconds = config.webhook_timeout_seconds + 30.0
        super().__init__("webhook sender", log, Outage(
            log, "the webhook queue", "deliveries wait until it is back"),
            config.mail_poll_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = guarded_session(self.config.outbound_allowed_networks,
                                            nameservers=self.config.outbound_nameservers,
                                            timeout=self.config.webhook_timeout_seconds)
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def work(self) -> None:
        await self.send_due()

    async def send_due(self) -> int:
        """Send due deliveries until none is left; how many were delivered. Up to CONCURRENCY
        at a time, at most PER_WEBHOOK of one webhook, and a new claim whenever one ends or
        this process queues one: a receiver that answers slowly holds two places, never the
        other webhooks' turn (security.md#webhook-slow-receiver)."""
        session = self._session
        if session is None:
            raise RuntimeError("the webhook sender is not started")
        delivered = 0
        running: set[asyncio.Future[bool]] = set()
        woken: asyncio.Future[Any] | None = None
        try:
            while True:
                while len(running) < CONCURRENCY:
                    claimed = await webhooks_db.claim(self.db, self.cipher, 1,
                                                      self.lease_seconds, PER_WEBHOOK)
                    if not claimed:
                        break
                    running.add(asyncio.ensure_future(self._attempt(session, claimed[0])))
                if not running:
                    return delivered
                self._wake.clear()
                if woken is None or woken.done():
                    woken = asyncio.ensure_future(self._wake.wait())
                done, _ = await asyncio.wait({*running, woken},
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done - {woken}:
                    running.discard(task)
                    delivered += task.result()
        finally:
            for task in (*running, *([woken] if woken is not None else [])):
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _attempt(self, session: aiohttp.ClientSession, delivery: ClaimedDelivery) -> bool:
        """One POST of a claimed delivery, recorded; True when it was delivered."""
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json",
                   "SF-Webhook-Id": str(delivery.event_id),
                   "SF-Webhook-Timestamp": timestamp,
                   "SF-Webhook-Signature": signature(delivery.secret, timestamp, delivery.body)}
        allowed = self.config.outbound_allowed_networks
        code: int | None = None
        try:
            # Again at send time: the resolver checks names, this the literal addresses
            # (which aiohttp connects to without resolving) under today's settings.
            check_destination(delivery.url, allowed)
            async with session.post(delivery.url, data=delivery.body, headers=headers,
                                    **request_options()) as response:
                code = response.status
                await read_capped(response, RESPONSE_CAP_BYTES)
        except BlockedAddress as error:
            return await self._failed(delivery, None, failure_reason(error))
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as error:
            if code is None:
                return await self._failed(delivery, None, failure_reason(error))
        if code is not None and 200 <= code < 300:
            await webhooks_db.mark_delivered(self.db, delivery, code)
            log.info("webhook delivered", extra={"delivery_id": delivery.id,
                                                 "webhook_id": delivery.webhook_id,
                                                 "attempt": delivery.attempts, "status": code})
            return True
        reason = f"redirect ({code}) not followed" if code is not None and 300 <= code < 400 \
            else f"answered {code}"
        return await self._failed(delivery, code, reason)

    async def _failed(self, delivery: ClaimedDelivery, code: int | None, reason: str) -> bool:
        """Record a failed attempt; disable the webhook once it has failed long enough, and
        tell its owner. Always False (not delivered)."""
        config = self.config
        delay = backoff_seconds(config.webhook_retry_seconds, config.webhook_retry_max_seconds,
                                delivery.attempts)
        disabled: Webhook | None = None
        owner_mail = False
        async with self.db.acquire() as connection, connection.transaction():
            run = await webhooks_db.record_failure(connection, delivery, code, reason, delay)
            if run is not None and run.enabled \
                    and run.consecutive_failures >= config.webhook_disable_after_failures \
                    and run.failing_seconds >= config.webhook_disable_after_seconds:
                disabled = await webhooks_db.disable_failing(connection, delivery.webhook_id,
                                                              DISABLED_REASON)
                if disabled is not None:
                    owner_mail = await self._queue_disabled_mail(connection, disabled,
                                                                 run.consecutive_failures)
        log.warning("webhook delivery failed", extra={
            "delivery_id": delivery.id, "webhook_id": delivery.webhook_id,
            "attempt": delivery.attempts, "retry_in": delay, "reason": reason})
        if disabled is not None:
            log.warning("webhook disabled", extra={"webhook_id": disabled.id,
                                                   "user_id": disabled.user_id})
            if owner_mail:
                self.mail.wake()
            await self._tell_owner(disabled, run.consecutive_failures if run else 0)
        return False

    async def _tell_owner(self, webhook: Webhook, failures: int) -> None:
        """The in-app notice of a disabled webhook (after the commit: the webhook stays
        disabled, and the mail queued, should this fail)."""
        try:
            await self.notifications.tell(webhook.user_id, NOTIFICATION_TYPE, {
                "webhook_id": webhook.id, "url": webhook.url,
                "reason": webhook.disabled_reason, "consecutive_failures": failures})
        except Exception:
            log.warning("could not tell the owner of a disabled webhook", exc_info=True,
                        extra={"webhook_id": webhook.id})

    async def _queue_disabled_mail(self, connection: asyncpg.Connection, webhook: Webhook,
                                   failures: int) -> bool:
        """The owner's mail, in the transaction that disabled the webhook, when their address
        is verified; whether one was queued."""
        owner = await users_db.get_user(connection, webhook.user_id, self.cipher)
        if not owner.email or not owner.email_verified:
            return False
        message = compose(self.config.mail_from, owner.email,
                          disabled_content(owner.username, webhook.url, failures))
        await outbox.enqueue(connection, self.cipher, MAIL_KIND, owner.email, message)
        return True
