"""Notifications: a user's in-app list and settings, the go-live fan-out to a channel's
followers, and this process's `/ws/notifications` sockets.

Going live plans one fan-out per stream, in PostgreSQL (`notification_fanouts`), on the node
where the stream went live (a StreamService listener: each event happens on one node). Off the
request path, every API process runs a `FanoutWorker`; the one that claims the job
(`FOR UPDATE SKIP LOCKED` under a lease) works through the followers a batch at a time: each
batch's in-app notifications, its e-mails (into the outbox) and the job's cursor commit in one
transaction, then one Redis PUBLISH carries the batch to every process, which sends it to the
sockets of the followers connected there, and the followers who want it get a Web Push.

Debounce (as Owncast does it): an encoder that reconnects within the resume grace continues
its stream, which is announced once; a new stream within SF_NOTIFY_REPEAT_SECONDS of the last
announcement is not announced (the fan-out row says 'skipped').
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import time
from collections import defaultdict
from dataclasses import asdict
from typing import Any, Protocol

import asyncpg
from redis.asyncio import Redis

from sf.config import Config
from sf.db import notifications as db
from sf.db import outbox
from sf.db import users as users_db
from sf.db.notifications import Channels, Fanout, Notification, Told
from sf.errors import ValidationFailed, validation_error
from sf.observability import Outage
from sf.schemas.dump import encode_json, utc_iso
from sf.security import EmailCipher
from sf.services.events import StreamEvent, StreamListener, channel_name
from sf.services.mail import MailContent, MailSender, compose, html_text
from sf.services.sessions import SessionStore
from sf.services.viewers import FAN_OUT_SLICE, SESSION_CHECK_EVERY, close_ended_sessions
from sf.services.workers import QueueWorker

log = logging.getLogger("sf.notifications")

STREAM_ONLINE = "stream.online"
# The types a user sets channels for, and their defaults. E-mail is opt-in: following is not
# consent to mail (PeerTube sends go-live mail by default; SF does not). Push needs a browser
# subscription, itself an explicit act, so it is on once there is one.
SETTABLE: dict[str, Channels] = {STREAM_ONLINE: Channels(in_app=True, email=False, push=True)}
CHANNEL_NAMES = ("in_app", "email", "push")
BUS = "sf:notifications"
LEASE_SECONDS = 60.0
POLL_SECONDS = 1.0            # how often a worker looks for a fan-out nobody started
SOCKETS_PER_USER = 20         # open /ws/notifications of one account in one process
UNSUBSCRIBE_PURPOSE = b"sf-unsubscribe-v1"
TOKEN_USER = re.compile(r"[1-9][0-9]{0,17}")  # the id exactly as a token writes it (ASCII)


class PushSending(Protocol):
    """Web Push to users' browser subscriptions (sf/services/push.py)."""

    async def send_to_users(self, user_ids: list[int], payload: dict[str, Any]) -> Any: ...


class NotificationSocket(Protocol):
    account_id: int | None
    session_id: str | None
    unread: int

    def send(self, payload: bytes) -> None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


def notification_json(notification: Notification) -> dict[str, Any]:
    """API.md's Notification."""
    return {"id": notification.id, "type": notification.type,
            "created_at": utc_iso(notification.created_at),
            "read_at": utc_iso(notification.read_at),
            "data": notification.data}


def online_payload(data: dict[str, Any]) -> dict[str, Any]:
    """What a browser push of a go-live shows (the service worker opens `url`)."""
    return {"type": STREAM_ONLINE, "title": f"{data['username']} is live",
            "body": str(data.get("title") or ""), "url": f"/watch/{data['stream_id']}",
            "tag": f"stream-{data['stream_id']}"}


class NotificationService(StreamListener):
    """The REST side (list, read, settings, mutes, unsubscribe), the go-live planning, and
    this process's sockets (`hub`) and fan-out worker."""

    def __init__(self, config: Config, pool: asyncpg.Pool, redis: Redis, sessions: SessionStore,
                 cipher: EmailCipher, mail: MailSender, push: PushSending | None = None) -> None:
        self.config = config
        self.db = pool
        self.redis = redis
        self.cipher = cipher
        self.mail = mail
        self.push = push  # Web Push to the followers who want it
        self.hub = NotificationHub(config, redis, sessions)
        self.worker = FanoutWorker(self)
        self._unsubscribe_key = hmac.new(config.jwt_secret.encode(), UNSUBSCRIBE_PURPOSE,
                                         hashlib.sha256).digest()

    async def start(self) -> None:
        await self.hub.start()
        await self.worker.start()

    async def stop(self) -> None:
        await self.worker.stop()
        await self.hub.stop()

    # --- planning (a StreamService listener) ----------------------------------------------

    async def stream_live(self, event: StreamEvent) -> None:
        """Announce a stream that went live, once per stream, debounced (module doc)."""
        planned = await db.plan_fanout(self.db, event.user_id, event.stream_id, STREAM_ONLINE,
                                       event.is_private, self.config.notify_repeat_seconds)
        if planned is not None:
            log.info("go-live announcement planned", extra={
                "stream_id": event.stream_id, "fanout_id": planned.id})
            self.worker.wake()

    # --- one user's notifications ---------------------------------------------------------

    async def tell(self, user_id: int, type_: str, data: dict[str, Any],
                   channel_id: int | None = None) -> Notification:
        """One notification for one user (e.g. a webhook was disabled): stored, and pushed to
        their open sockets on every node."""
        notification = await db.add(self.db, user_id, type_, data, channel_id)
        await self.hub.publish({"k": "one", "user": user_id,
                                "n": notification_json(notification)})
        return notification

    async def page(self, user_id: int, limit: int, cursor: str | None,
                   unread_only: bool) -> tuple[list[Notification], str | None, int]:
        items, next_cursor = await db.list_page(self.db, user_id, limit, cursor, unread_only)
        return items, next_cursor, await db.unread_count(self.db, user_id)

    async def mark_read(self, user_id: int, ids: list[int] | None) -> None:
        """Mark read (these, or all); every open tab of the user gets the new count."""
        marked, count = await db.mark_read(self.db, user_id, ids)
        if marked:  # the count changed
            await self.hub.publish({"k": "count", "user": user_id, "count": count})

    async def unread_count(self, user_id: int) -> int:
        return await db.unread_count(self.db, user_id)

    # --- settings and mutes ---------------------------------------------------------------

    async def settings(self, user_id: int) -> dict[str, dict[str, bool]]:
        stored = await db.settings_of(self.db, user_id)
        return {type_: asdict(stored.get(type_, default)) for type_, default in SETTABLE.items()}

    async def change_settings(self, user_id: int,
                              changes: dict[str, dict[str, bool]]) -> dict[str, dict[str, bool]]:
        """Change some channels of some types (the rest stay); the settings after."""
        current = await self.settings(user_id)
        unknown = sorted(set(changes) - set(SETTABLE))
        if unknown:
            raise validation_error(unknown[0], "is not a notification type")
        merged = {type_: Channels(**{**current[type_], **channels})
                  for type_, channels in changes.items()}
        await db.save_settings(self.db, user_id, merged)
        return await self.settings(user_id)

    async def mute(self, user_id: int, username: str, muted: bool) -> None:
        channel = await users_db.get_user_by_username(self.db, username)  # 404 when unknown
        if channel.id == user_id:
            raise validation_error("username", "is your own channel")
        if muted:
            await db.mute(self.db, user_id, channel.id)
        else:
            await db.unmute(self.db, user_id, channel.id)

    async def mutes(self, user_id: int, limit: int,
                    cursor: str | None) -> tuple[list[users_db.User], str | None]:
        return await db.muted_page(self.db, user_id, limit, cursor)

    # --- e-mail and the one-click unsubscribe ---------------------------------------------

    def unsubscribe_token(self, user_id: int, type_: str) -> str:
        """A token that stops one type of e-mail for one user; it never expires (a mail read
        months later still works) and says nothing but the user id and type."""
        return f"{user_id}.{type_}.{self._sign(user_id, type_)}"

    def _sign(self, user_id: int, type_: str) -> str:
        mac = hmac.new(self._unsubscribe_key, f"{user_id}:{type_}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()[:20]).decode().rstrip("=")

    async def unsubscribe(self, token: str) -> None:
        """Stop the e-mails a token names (RFC 8058 one-click; idempotent)."""
        user_part, _, rest = token.partition(".")
        type_, _, signature = rest.rpartition(".")
        if not (TOKEN_USER.fullmatch(user_part) and type_ in SETTABLE
                and hmac.compare_digest(signature.encode(), self._sign(int(user_part),
                                                                       type_).encode())):
            raise validation_error("token", "is not a valid unsubscribe token")
        await db.stop_email(self.db, int(user_part), type_, SETTABLE[type_])

    def online_mail(self, username: str, address: str, user_id: int,
                    data: dict[str, Any]) -> bytes:
        """The go-live mail to one follower, with List-Unsubscribe (RFC 2369, 8058)."""
        base = self.config.public_base_url
        token = self.unsubscribe_token(user_id, STREAM_ONLINE)
        watch = f"{base}/watch/{data['stream_id']}"
        page = f"{base}/account/unsubscribe#token={token}"
        one_click = f"{base}/api/notifications/unsubscribe?token={token}"
        channel, title = str(data["username"]), str(data.get("title") or "")
        text = (f"Hello {username},\n\n{channel} is live on SF: {title}\n\nWatch: {watch}\n\n"
                f"You get this because you follow {channel}. Stop these e-mails: {page}\n")
        body = "".join(f"<p>{line}</p>" for line in (
            f"Hello {html_text(username)},",
            f"<b>{html_text(channel)}</b> is live on SF: {html_text(title)}",
            f'<a href="{html_text(watch)}">Watch now</a>',
            f"You get this because you follow {html_text(channel)}. "
            f'<a href="{html_text(page)}">Stop these e-mails</a>'))
        content = MailContent(f"{channel} is live on SF", text,
                              f"<html><body>{body}</body></html>",
                              headers=(("List-Unsubscribe", f"<{one_click}>"),
                                       ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")))
        return compose(self.config.mail_from, address, content)

    async def queue_mails(self, connection: asyncpg.Connection, fanout: Fanout,
                          told: list[Told]) -> int:
        """The batch's go-live mails into the outbox, in its transaction (verified addresses
        only); how many."""
        rows = await db.verified_addresses(connection, [t.user_id for t in told if t.email])
        for row in rows:
            address = self.cipher.decrypt(row["email_key_id"], row["email_ciphertext"], row["id"])
            try:
                message = self.online_mail(row["username"], address, row["id"], fanout.data)
            except ValidationFailed:
                continue  # an address no mail can go to: nothing to send
            await outbox.enqueue(connection, self.cipher, "stream_online", address, message)
        return len(rows)

    async def purge_expired(self) -> dict[str, int]:
        """The retention job: notifications older than SF_NOTIFICATIONS_RETENTION_DAYS."""
        deleted = await db.purge_older_than(self.db, self.config.notifications_retention_days)
        return {"deleted": deleted}


class FanoutWorker(QueueWorker):
    """Works through planned fan-outs, one at a time per process, any process of any node."""

    def __init__(self, service: NotificationService) -> None:
        super().__init__("notification fan-out", log, Outage(
            log, "the notification fan-out", "announcements wait until it is back"),
            POLL_SECONDS)
        self.service = service
        self._pushes: set[asyncio.Task[Any]] = set()

    async def stop(self) -> None:
        await super().stop()
        pushes, self._pushes = self._pushes, set()
        for push in pushes:
            push.cancel()
        await asyncio.gather(*pushes, return_exceptions=True)

    async def work(self) -> None:
        while await self.run_one():
            pass

    async def run_one(self) -> bool:
        """Claim one pending fan-out and finish it; False when there was none."""
        service = self.service
        fanout = await db.claim_fanout(service.db, LEASE_SECONDS)
        if fanout is None:
            return False
        started = time.monotonic()
        defaults = SETTABLE[fanout.type]
        after, told_in_app, mails = fanout.after_user_id, 0, 0
        while True:
            async with service.db.acquire() as connection, connection.transaction():
                told = await db.fanout_batch(connection, fanout, after,
                                             service.config.notify_fanout_batch, defaults)
                mails += await service.queue_mails(connection, fanout, told)
                in_app = [t for t in told if t.notification_id is not None]
                done = len(told) < service.config.notify_fanout_batch
                last = told[-1].user_id if told else after
                if not await db.advance_fanout(connection, fanout.id, after, last, len(in_app),
                                               done, LEASE_SECONDS):
                    # Our lease lapsed and another worker took over: this batch is rolled back.
                    raise LeaseLost(fanout.id)
            told_in_app += len(in_app)
            if in_app:
                await service.hub.publish_batch(fanout, in_app)
            self._push(fanout, [t.user_id for t in told if t.push])
            after = last
            if done:
                break
            await asyncio.sleep(0)  # requests between batches
        if mails:
            service.mail.wake()
        log.info("go-live announced", extra={
            "fanout_id": fanout.id, "stream_id": fanout.stream_id, "in_app": told_in_app,
            "mails": mails, "seconds": round(time.monotonic() - started, 3)})
        return True

    def _push(self, fanout: Fanout, user_ids: list[int]) -> None:
        """Web Push to those of the batch who want it, in the background (at most once: a
        push lost with its node is not sent again)."""
        push = self.service.push
        if push is None or not user_ids:
            return
        task = asyncio.ensure_future(push.send_to_users(user_ids, online_payload(fanout.data)))
        self._pushes.add(task)
        task.add_done_callback(self._pushed)

    def _pushed(self, task: asyncio.Task[Any]) -> None:
        self._pushes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("web push of a go-live failed", exc_info=task.exception())


class LeaseLost(RuntimeError):
    """Another worker took over a fan-out this one held too long."""


class NotificationHub:
    """This process's `/ws/notifications` sockets by account, fed from one Redis
    subscription; sockets whose session ended are closed (4401) within seconds."""

    def __init__(self, config: Config, redis: Redis, sessions: SessionStore) -> None:
        self.config = config
        self.redis = redis
        self.sessions = sessions
        self.channel = channel_name(redis, BUS)
        self.sockets: dict[int, set[NotificationSocket]] = defaultdict(set)
        self.per_address: dict[str, int] = defaultdict(int)
        self.closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._outage = Outage(log, "the notification bus", "open sockets miss new notices")

    # --- sockets ---------------------------------------------------------------------------

    def admits(self, address: str) -> bool:
        return self.per_address[address] < self.config.ws_connections_per_address

    def join(self, socket: NotificationSocket, address: str) -> bool:
        """A signed-in socket opened; False when its account has too many open here."""
        assert socket.account_id is not None
        sockets = self.sockets[socket.account_id]
        if len(sockets) >= SOCKETS_PER_USER:
            return False
        sockets.add(socket)
        self.per_address[address] += 1
        return True

    def leave(self, socket: NotificationSocket, address: str) -> None:
        if socket.account_id is None:
            return
        sockets = self.sockets.get(socket.account_id)
        if sockets is None or socket not in sockets:
            return
        sockets.discard(socket)
        if not sockets:
            del self.sockets[socket.account_id]
        self.per_address[address] -= 1
        if self.per_address[address] <= 0:
            del self.per_address[address]

    def connected(self) -> int:
        return sum(len(sockets) for sockets in self.sockets.values())

    # --- the bus ---------------------------------------------------------------------------

    async def publish(self, message: dict[str, Any]) -> None:
        try:
            await self.redis.publish(self.channel, json.dumps(message, separators=(",", ":")))
        except Exception as error:  # the notice is stored; open tabs see it on reconnect
            self._outage.lost(error)

    async def publish_batch(self, fanout: Fanout, told: list[Told]) -> None:
        await self.publish({"k": "batch", "type": fanout.type,
                            "created_at": utc_iso(fanout.created_at), "data": fanout.data,
                            "users": [t.user_id for t in told],
                            "ids": [t.notification_id for t in told]})

    async def deliver(self, raw: bytes | str) -> None:
        """One bus message to the sockets of this process it concerns."""
        message = json.loads(raw)
        kind = message.get("k")
        if kind == "batch":
            await self._deliver_batch(message)
        elif kind == "one":
            for socket in list(self.sockets.get(int(message["user"]), ())):
                socket.unread += 1
                self._send_notification(socket, message["n"])
        elif kind == "count":
            for socket in list(self.sockets.get(int(message["user"]), ())):
                socket.unread = int(message["count"])
                socket.send(encode_json({"type": "unread_count", "count": socket.unread}))

    async def _deliver_batch(self, message: dict[str, Any]) -> None:
        """A fan-out batch: each connected follower's notification (its own id) and count,
        yielding to the loop after every millisecond of sending (as `viewers.fan_out`)."""
        template = {"type": message["type"], "created_at": message["created_at"],
                    "read_at": None, "data": message["data"]}
        clock = time.perf_counter
        slice_end = clock() + FAN_OUT_SLICE
        for user, notification_id in zip(message["users"], message["ids"], strict=True):
            sockets = self.sockets.get(user)
            if not sockets:
                continue
            notification = {"id": notification_id, **template}
            for socket in list(sockets):
                socket.unread += 1
                self._send_notification(socket, notification)
            if clock() >= slice_end:
                await asyncio.sleep(0)
                slice_end = clock() + FAN_OUT_SLICE

    def _send_notification(self, socket: NotificationSocket, notification: dict[str, Any]) -> None:
        socket.send(encode_json({"type": "notification", "notification": notification}))
        socket.send(encode_json({"type": "unread_count", "count": socket.unread}))

    async def _listen(self) -> None:
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    self._outage.back()
                    async for message in pubsub.listen():
                        try:
                            await self.deliver(message["data"])
                        except (ValueError, KeyError, TypeError):
                            log.warning("ignored a malformed notification bus message")
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._outage.lost(error)
                await asyncio.sleep(1)

    async def close_ended_sessions(self) -> int:
        """Close (4401) the sockets whose session ended (logout, password change)."""
        try:
            return await close_ended_sessions(
                self.sessions, [socket for sockets in self.sockets.values() for socket in sockets])
        except Exception as error:  # Redis unreachable: checked next time
            self._outage.lost(error)
            return 0

    async def _check_sessions(self) -> None:
        while True:
            await asyncio.sleep(SESSION_CHECK_EVERY)
            await self.close_ended_sessions()

    async def start(self) -> None:
        self.closing = False
        if not self._tasks:
            self._tasks = [asyncio.ensure_future(self._listen()),
                           asyncio.ensure_future(self._check_sessions())]

    async def stop(self) -> None:
        self.closing = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
