"""Live chat: the send path (the rules, in order), one Redis publish per message, and this
process's fan-out of a channel's events to its own sockets, coalesced into batches.

How a message travels: a `/live` socket's `chat.send` → `ChatService.send` (normalise, the
rules, INSERT) → one PUBLISH on the channel's Redis channel after the commit → every API
process's one pattern subscription → the pending items of that stream in this process →
at most every `FLUSH_EVERY` one frame per socket (a `batch` when several items wait), built
once per stream and audience, not per socket. Redis hands one channel's messages to every
subscriber in the order it took them, and nothing here reorders them, so every reader of a
stream sees its messages in one order.

The moderation endpoints publish through `publish` too: client events (`chat.deleted`,
`chat.user_cleared`, `chat.settings`) go to the sockets like messages; internal events
(`internal.standing`, `internal.settings`) refresh what this process keeps per channel (the
settings, a socket's moderator flag). Bans, timeouts and follows are read fresh from
PostgreSQL at every send, so a ban stops its user on every node as soon as it is committed.

Who is exempt (as on Twitch): the owner and the channel's moderators skip slow mode,
followers-only, the minimum account age and the blocked terms, may send while chat is off,
and have the higher rate limit; duplicates are refused for everyone.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg
from marshmallow import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from sf.config import Config
from sf.db import chat as chat_db
from sf.db.chat import ChatSettings
from sf.schemas.chat import MAX_CHAT_TEXT, chat_message, chat_settings, invisible, normalised, skeleton, zalgo
from sf.schemas.common import no_control_chars, not_blank
from sf.schemas.dump import encode_json
from sf.services.events import channel_name
from sf.services.sessions import session_key
from sf.services.viewers import fan_out

log = logging.getLogger("sf.chat")

FLUSH_EVERY = 0.2           # seconds: at most 5 chat frames a second per socket
# A process holding many chat sockets writes one frame to each of them per flush (and the edge
# relays each): past BUSY_SOCKETS it flushes every FLUSH_EVERY_BUSY, 3.3 frames a second. At
# 10,000 readers and 50 messages/s on 2 cores (bench/chat.py, docs/benchmarks.md) that kept p99
# send → receive at 0.69 s; every 0.5 s it was 1.3 s (the wait for the flush is most of it,
# and fewer, larger frames saved less CPU than they cost in waiting).
BUSY_SOCKETS = 2000
FLUSH_EVERY_BUSY = 0.3
SETTINGS_TTL = 60.0         # a channel's cached settings are read again after this at most
RETENTION_BATCH = 5000      # messages deleted per statement by the retention job
INTERNAL = "internal."      # events for the processes, never sent to a socket

# The sender's session, rate limit, slow mode and duplicates in one round trip, counted and
# set atomically: KEYS = rate window, slow mode, duplicate[, session]; ARGV = limit, window,
# slow seconds (0: off), duplicate seconds. Returns {code, retry after}; code "" when the
# message may go, "session_ended" when the session it was sent under is gone (logout,
# password change: security.md#chat-after-logout).
_GATE = """
if KEYS[4] and redis.call('EXISTS', KEYS[4]) == 0 then return {'session_ended', 0} end
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if count > tonumber(ARGV[1]) then
  return {'rate_limited', redis.call('TTL', KEYS[1])}
end
local slow = tonumber(ARGV[3])
if slow > 0 then
  local left = redis.call('TTL', KEYS[2])
  if left > 0 then return {'slow_mode', left} end
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {'duplicate', redis.call('TTL', KEYS[3])}
end
if slow > 0 then redis.call('SET', KEYS[2], 1, 'EX', slow) end
redis.call('SET', KEYS[3], 1, 'EX', ARGV[4])
return {'', 0}
"""

NOTICES = {
    "not_signed_in": "Sign in to chat",
    "invalid_message": "That is not a chat message this server accepts",
    "too_long": f"Messages are 1 to {MAX_CHAT_TEXT} characters",
    "chat_disabled": "Chat is off for this channel",
    "banned": "You are banned from this chat",
    "timed_out": "You are timed out in this chat",
    "account_too_new": "Your account is too new to chat here",
    "followers_only": "Only followers can chat here",
    "slow_mode": "Slow mode is on: wait before sending again",
    "rate_limited": "You are sending too fast",
    "duplicate": "You sent the same message a moment ago",
    "blocked_term": "Your message contains a term this channel blocks",
    "unavailable": "Chat is unavailable for a moment: try again",
}


def notice(code: str, nonce: str | None = None, retry_after: int | None = None) -> dict[str, Any]:
    """A `chat.notice` for the sender."""
    body: dict[str, Any] = {"type": "chat.notice", "code": code, "message": NOTICES[code]}
    if nonce is not None:
        body["nonce"] = nonce
    if retry_after is not None:
        body["retry_after"] = max(1, retry_after)
    return body


def _seconds_until(moment: datetime, now: datetime) -> int:
    return int((moment - now).total_seconds()) + 1


class ChatSocket(Protocol):
    """What the chat needs of a `/live` WebSocket."""

    account_id: int | None

    def send(self, payload: bytes) -> None: ...


@dataclass(eq=False)  # one per socket: hashed by identity
class Member:
    """A socket in a stream's chat. Until its history is sent (`backlog` is not None) the
    items for it wait in the backlog, so that the history comes first."""

    socket: ChatSocket
    stream_id: int
    channel_id: int
    moderator: bool = False  # the owner or a moderator: gets `blocked_terms`
    backlog: list[dict[str, Any]] | None = field(default_factory=list)


@dataclass(frozen=True)
class _CachedSettings:
    settings: ChatSettings
    terms: tuple[str, ...]  # the blocked terms' skeletons
    read_at: float


class ChatEvents(Protocol):
    """Hears of each chat message sent (sf/services/webhooks.py); must not wait on I/O."""

    def chat_message(self, channel_id: int, message: dict[str, Any]) -> None: ...


class ChatService:
    """Chat of this process: sends, publishes, and the fan-out to its sockets."""

    def __init__(self, config: Config, db: asyncpg.Pool, redis: Redis,
                 events: ChatEvents | None = None) -> None:
        self.config = config
        self.db = db
        self.redis = redis
        self.events = events  # told of each message sent (webhooks), without waiting
        self.prefix = channel_name(redis, "sf:chat")  # a channel: f"{prefix}:{channel id}"
        self.gate = redis.register_script(_GATE)
        self.members: dict[ChatSocket, Member] = {}
        self.streams: dict[int, set[Member]] = defaultdict(set)     # stream → its members
        self.channels: dict[int, set[int]] = defaultdict(set)       # channel → its streams here
        self.pending: dict[int, list[dict[str, Any]]] = {}          # stream → items to send
        self._settings: dict[int, _CachedSettings] = {}
        self._settings_generation: dict[int, int] = defaultdict(int)
        self._tasks: list[asyncio.Task[None]] = []
        self._outage = False

    # --- publishing ---------------------------------------------------------------------------

    def channel_of(self, channel_id: int) -> str:
        """The Redis pub/sub channel of a chat channel (`sf:chat:db<n>:<owner id>`)."""
        return f"{self.prefix}:{channel_id}"

    async def publish(self, channel_id: int, event: dict[str, Any],
                      stream_id: int | None = None) -> None:
        """One Redis publish: every process delivers `event` to its sockets of `stream_id`
        (of every stream of the channel when None), batched with messages; an event whose
        type starts with `internal.` is for the processes only (`internal.standing` with
        `user_id`, `internal.settings`). Call it after the change is committed."""
        envelope = json.dumps({"stream_id": stream_id, "event": event}, separators=(",", ":"))
        await self.redis.publish(self.channel_of(channel_id), envelope)

    # --- settings and standing ----------------------------------------------------------------

    async def _cached_settings(self, channel_id: int) -> _CachedSettings:
        cached = self._settings.get(channel_id)
        if cached is not None and time.monotonic() - cached.read_at < SETTINGS_TTL:
            return cached
        generation = self._settings_generation[channel_id]
        settings = await chat_db.get_settings(self.db, channel_id)
        terms = (skeleton(term) for term in settings.blocked_terms)
        cached = _CachedSettings(settings, tuple(term for term in terms if term),
                                 time.monotonic())
        # A change announced while we read may not be in what we read: keep it uncached.
        if self._settings_generation[channel_id] == generation:
            self._settings[channel_id] = cached
        return cached

    async def settings(self, channel_id: int) -> ChatSettings:
        """A channel's chat settings (cached in this process until they change)."""
        return (await self._cached_settings(channel_id)).settings

    def _forget_settings(self, channel_id: int) -> None:
        self._settings_generation[channel_id] += 1
        self._settings.pop(channel_id, None)

    @staticmethod
    def settings_message(settings: ChatSettings, moderator: bool) -> dict[str, Any]:
        """The `chat.settings` a socket gets (`blocked_terms` for the owner and moderators)."""
        body: dict[str, Any] = {"type": "chat.settings", **chat_settings.dump(settings)}
        if not moderator:
            body.pop("blocked_terms", None)
        return body

    async def _moderates(self, channel_id: int, user_id: int | None) -> bool:
        if user_id is None:
            return False
        return user_id == channel_id or await chat_db.is_moderator(self.db, channel_id, user_id)

    # --- the send path ------------------------------------------------------------------------

    async def send(self, user_id: int | None, stream_id: int, channel_id: int, text: str,
                   nonce: str | None, session_id: str | None = None) -> dict[str, Any]:
        """Apply the rules to a message and, when it passes, store and publish it; the answer
        for the sender: a `chat.ack` with its id, or a `chat.notice` saying why not
        (`not_signed_in` when `session_id`, the session the socket was opened under, ended)."""
        if user_id is None:
            return notice("not_signed_in", nonce)
        sent, text = text, normalised(text)
        if len(text) > MAX_CHAT_TEXT:
            return notice("too_long", nonce)
        try:
            not_blank(text)
            # As sent: the control characters that are whitespace (U+0085, U+001C-U+001F,
            # U+000B, U+000C) are refused, not made spaces.
            no_control_chars(sent)
        except ValidationError:
            return notice("invalid_message", nonce)
        shape = skeleton(text)  # blocked terms and duplicates (security.md#chat-invisible-terms)
        if invisible(text, shape) or zalgo(text):
            return notice("invalid_message", nonce)
        cached = await self._cached_settings(channel_id)
        settings = cached.settings
        standing = await chat_db.standing(self.db, channel_id, user_id)
        if standing is None:  # the account was deleted since the socket opened
            return notice("not_signed_in", nonce)
        exempt = standing.is_owner or standing.is_moderator
        now = datetime.now(UTC)
        if not settings.enabled and not exempt:
            return notice("chat_disabled", nonce)
        if standing.banned:
            if standing.banned_until is None:
                return notice("banned", nonce)
            return notice("timed_out", nonce, _seconds_until(standing.banned_until, now))
        if not exempt:
            old_enough = standing.created_at + timedelta(minutes=settings.min_account_age_minutes)
            if old_enough > now:
                return notice("account_too_new", nonce, _seconds_until(old_enough, now))
            if settings.followers_only_minutes is not None:
                if standing.followed_at is None:
                    return notice("followers_only", nonce)
                long_enough = standing.followed_at + timedelta(
                    minutes=settings.followers_only_minutes)
                if long_enough > now:
                    return notice("followers_only", nonce, _seconds_until(long_enough, now))
            if cached.terms:
                if any(term in shape for term in cached.terms):
                    return notice("blocked_term", nonce)
        config = self.config
        limit = config.chat_rate_moderator_messages if exempt else config.chat_rate_messages
        slow = 0 if exempt else settings.slow_mode_seconds or 0
        digest = hashlib.sha256(shape.encode()).hexdigest()[:32]
        base = f"sf:chat:{channel_id}:{user_id}"
        try:
            keys = [f"{base}:rate", f"{base}:slow", f"{base}:dup:{digest}"]
            if session_id is not None:
                keys.append(session_key(session_id))
            code, retry_after = await self.gate(
                keys=keys,
                args=[limit, config.chat_rate_window_seconds, slow, config.chat_duplicate_seconds])
        except RedisError:
            # Without Redis no limit can be counted and nothing would reach the readers.
            return notice("unavailable", nonce, 1)
        if code:
            code = code.decode() if isinstance(code, bytes) else code
            if code == "session_ended":
                return notice("not_signed_in", nonce)
            return notice(code, nonce, int(retry_after))
        message_id, sent_at = await chat_db.insert_message(self.db, stream_id, channel_id,
                                                           user_id, text)
        message = chat_db.ChatMessage(message_id, stream_id, chat_db.ChatAuthor(
            user_id, standing.username, standing.avatar, standing.roles), text, sent_at)
        dumped = chat_message.dump(message)
        try:
            await self.publish(channel_id, {"type": "chat.message", **dumped}, stream_id)
        except RedisError:
            # Stored: it is in the history readers get when they reconnect.
            log.warning("could not publish chat message %s", message_id)
        if self.events is not None:
            self.events.chat_message(channel_id, dumped)
        return {"type": "chat.ack", "nonce": nonce, "id": message_id}

    # --- reads --------------------------------------------------------------------------------

    async def history_page(self, stream_id: int, limit: int,
                           cursor: str | None) -> tuple[list[chat_db.ChatMessage], str | None]:
        """A page of a stream's visible messages, newest first (the stream's visibility is
        the caller's to check)."""
        return await chat_db.message_page(self.db, stream_id, limit, cursor)

    # --- sockets ------------------------------------------------------------------------------

    async def join(self, socket: ChatSocket, stream_id: int, channel_id: int) -> None:
        """A socket joins a stream's chat: it gets the history and the settings first, then
        every item published since it joined, in order."""
        member = Member(socket, stream_id, channel_id)
        self.members[socket] = member
        self.streams[stream_id].add(member)
        self.channels[channel_id].add(stream_id)
        member.moderator = await self._moderates(channel_id, socket.account_id)
        history = await chat_db.recent_messages(self.db, stream_id)
        settings = await self.settings(channel_id)
        if self.members.get(socket) is not member:
            return  # left while we read
        socket.send(encode_json({"type": "chat.history",
                                 "messages": chat_message.dump(history, many=True)}))
        socket.send(encode_json(self.settings_message(settings, member.moderator)))
        newest = history[-1].id if history else 0
        backlog, member.backlog = member.backlog or [], None
        # Published while we read: the messages the history already holds are not sent twice.
        items = [item for item in backlog
                 if item.get("type") != "chat.message" or item.get("id", 0) > newest]
        if items:
            socket.send(self._payload(items))

    def leave(self, socket: ChatSocket) -> None:
        member = self.members.pop(socket, None)
        if member is None:
            return
        members = self.streams.get(member.stream_id)
        if members is not None:
            members.discard(member)
            if not members:
                del self.streams[member.stream_id]
                self.pending.pop(member.stream_id, None)
                streams = self.channels.get(member.channel_id)
                if streams is not None:
                    streams.discard(member.stream_id)
                    if not streams:
                        del self.channels[member.channel_id]

    # --- delivery -----------------------------------------------------------------------------

    async def _deliver(self, channel_id: int, raw: bytes) -> None:
        """One published event of a channel: queued for this process's sockets, or acted on."""
        try:
            envelope = json.loads(raw)
            event, stream_id = envelope["event"], envelope["stream_id"]
            kind = event["type"]
        except (ValueError, TypeError, KeyError):
            log.warning("ignored a malformed chat event")
            return
        if kind == "internal.settings" or kind == "chat.settings":
            self._forget_settings(channel_id)
        if kind == "internal.standing":
            await self._standing_changed(channel_id, event.get("user_id"))
        if kind.startswith(INTERNAL):
            return
        targets = [stream_id] if stream_id is not None else list(self.channels.get(channel_id, ()))
        for target in targets:
            if target in self.streams:
                self.pending.setdefault(target, []).append(event)

    async def _standing_changed(self, channel_id: int, user_id: Any) -> None:
        """A user became or stopped being a moderator (or was banned): their sockets here get
        the settings as their role may see them."""
        if not isinstance(user_id, int):
            return
        affected = [member for stream_id in self.channels.get(channel_id, ())
                    for member in self.streams.get(stream_id, ())
                    if member.socket.account_id == user_id]
        if not affected:
            return
        moderator = await self._moderates(channel_id, user_id)
        settings = await self.settings(channel_id)
        for member in affected:
            if member.moderator != moderator:
                member.moderator = moderator
                item = self.settings_message(settings, moderator)
                if member.backlog is not None:
                    member.backlog.append(item)
                else:
                    member.socket.send(encode_json(item))

    @staticmethod
    def _payload(items: list[dict[str, Any]]) -> bytes:
        return encode_json(items[0] if len(items) == 1 else {"type": "batch", "items": items})

    @staticmethod
    def _for_viewers(item: dict[str, Any]) -> dict[str, Any]:
        if item.get("type") == "chat.settings" and "blocked_terms" in item:
            return {key: value for key, value in item.items() if key != "blocked_terms"}
        return item

    async def flush(self) -> None:
        """Send each stream's waiting items: one frame per socket, its bytes built once per
        stream (and once more for moderators when what they see differs)."""
        pending, self.pending = self.pending, {}
        for stream_id, items in pending.items():
            members = list(self.streams.get(stream_id, ()))
            if not members:
                continue
            public = [self._for_viewers(item) for item in items]
            differs = any(a is not b for a, b in zip(public, items, strict=True))
            everyone = self._payload(public)
            moderators = self._payload(items) if differs else everyone
            ready, ready_moderators = [], []
            for member in members:
                if member.backlog is not None:
                    member.backlog.extend(items if member.moderator else public)
                elif member.moderator and differs:
                    ready_moderators.append(member.socket)
                else:
                    ready.append(member.socket)
            await fan_out(everyone, ready)
            if ready_moderators:
                await fan_out(moderators, ready_moderators)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY_BUSY if len(self.members) > BUSY_SOCKETS
                                else FLUSH_EVERY)
            try:
                await self.flush()
            except Exception:
                log.exception("chat flush failed")

    async def _listen(self) -> None:
        """Every channel's events, through one pattern subscription per process."""
        pattern = f"{self.prefix}:*"
        start = len(self.prefix) + 1
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.psubscribe(pattern)
                    if self._outage:
                        log.info("chat events flow again")
                        self._outage = False
                    async for message in pubsub.listen():
                        try:
                            channel_id = int(message["channel"][start:])
                        except (ValueError, TypeError):
                            continue
                        await self._deliver(channel_id, message["data"])
            except asyncio.CancelledError:
                raise
            except Exception:
                if not self._outage:
                    log.warning("chat subscription lost; retrying", exc_info=True)
                    self._outage = True
                await asyncio.sleep(1)

    # --- retention and lifecycle --------------------------------------------------------------

    async def purge_expired(self, now: datetime | None = None) -> dict[str, Any]:
        """Delete messages and moderation log entries older than SF_CHAT_RETENTION_DAYS, a
        batch at a time (a job)."""
        before = (now or datetime.now(UTC)) - timedelta(days=self.config.chat_retention_days)
        report = {}
        for name, delete in (("chat_messages", chat_db.delete_sent_before),
                             ("moderation_log", chat_db.delete_moderation_log_before)):
            deleted = 0
            while True:
                count = await delete(self.db, before, RETENTION_BATCH)
                deleted += count
                if count < RETENTION_BATCH:
                    break
            report[name] = deleted
        return report

    async def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._listen()),
                       asyncio.ensure_future(self._flush_forever())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

