"""Chat moderation use cases: an owner's moderators, bans and timeouts by the owner and the
moderators, chat settings, deleting messages, and the moderation log listed to the owner.

Who acts where: a channel is its owner's account. The owner acts on their own channel; a
moderator acts on a channel that appointed them, named by `?channel=<username>` (their own
channel when left out). A signed-in user naming a channel they do not moderate gets 403
(channel names are public); a message of a channel they do not moderate is a 404, like a
message that does not exist (security.md#moderator-on-another-channel).

Every change is recorded in the moderation log in the same transaction, and told to the chat
on every node after it committed (`ChatEvents.publish`): sockets hear `chat.deleted`,
`chat.user_cleared` and `chat.settings`; the send path drops what it cached of a user's
standing (`internal.standing`) or of the settings (`internal.settings`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg

from sf.db import chat as chat_db
from sf.db import chat_moderation as moderation_db
from sf.db import users as users_db
from sf.db.chat import ChatSettings
from sf.db.chat_moderation import Ban, LogEntry
from sf.db.users import User
from sf.errors import Forbidden, NotFound, validation_error
from sf.schemas.chat import skeleton
from sf.schemas.chat_moderation import chat_settings_schema


class ChatEvents(Protocol):
    """What moderation tells the chat (`sf.services.chat.ChatService.publish`): one event to
    every socket of the channel's streams (or of one stream) on every node."""

    async def publish(self, channel_id: int, event: dict[str, Any],
                      stream_id: int | None = None) -> None: ...


@dataclass(frozen=True)
class Channel:
    """The channel an action is on, and what the acting user is in it."""

    id: int
    username: str
    role: str  # moderation_db.OWNER or MODERATOR


def settings_event(settings: ChatSettings) -> dict[str, Any]:
    """The `chat.settings` event of a channel's settings; the chat strips `blocked_terms`
    from it for every socket but the owner's and moderators'."""
    return {"type": "chat.settings", **chat_settings_schema.dump(settings)}


def distinct_terms(terms: list[str]) -> list[str]:
    """Blocked terms as written, each kept once by its skeleton (how messages are matched:
    `Spoiler`, `ＳＰＯＩＬＥＲ` and `spo\u00adiler` are one term)."""
    seen: set[str] = set()
    kept = []
    for term in terms:
        key = skeleton(term)
        if key not in seen:
            seen.add(key)
            kept.append(term)
    return kept


class ChatModerationService:
    """A channel's moderation: roles, bans, settings, message deletion and its log."""

    def __init__(self, db: asyncpg.Pool, chat: ChatEvents) -> None:
        self.db = db
        self.chat = chat

    async def _tell(self, channel_id: int, *events: dict[str, Any],
                    stream_id: int | None = None) -> None:
        """Tell the chat on every node (after the change committed)."""
        for event in events:
            await self.chat.publish(channel_id, event, stream_id)

    # --- the channel acted on --------------------------------------------------------------

    async def channel_for(self, user_id: int, channel: str | None) -> Channel:
        """The channel `user_id` acts on: their own (None, or their own name), or one they
        moderate; NotFound for an unknown channel, Forbidden for one they do not moderate."""
        if channel is None:
            return Channel(user_id, "", moderation_db.OWNER)
        owner = await users_db.get_user_by_username(self.db, channel)
        role = await moderation_db.role_in(self.db, owner.id, user_id)
        if role is None:
            raise Forbidden("You do not moderate this channel")
        return Channel(owner.id, owner.username, role)

    async def _recheck(self, connection: asyncpg.Connection, channel: Channel,
                       user_id: int) -> None:
        """The role again, under the channel's lock (a removal may have just committed)."""
        await moderation_db.lock_channel(connection, channel.id)
        if await moderation_db.role_in(connection, channel.id, user_id) is None:
            raise Forbidden("You do not moderate this channel")

    # --- moderators (owner only) -----------------------------------------------------------

    async def moderators(self, owner_id: int, limit: int,
                         cursor: str | None) -> tuple[list[User], str | None]:
        return await moderation_db.list_moderators(self.db, owner_id, limit, cursor)

    async def add_moderator(self, owner_id: int, username: str) -> None:
        """Appoint a moderator of the owner's channel (idempotent; logged when it changed)."""
        await self._set_moderator(owner_id, username, appoint=True)

    async def remove_moderator(self, owner_id: int, username: str) -> None:
        """Remove a moderator (idempotent; logged when it changed)."""
        await self._set_moderator(owner_id, username, appoint=False)

    async def _set_moderator(self, owner_id: int, username: str, appoint: bool) -> None:
        target = await users_db.get_user_by_username(self.db, username)
        if target.id == owner_id:
            raise validation_error("username", "you own your channel")
        change, action = ((moderation_db.add_moderator, moderation_db.MODERATOR_ADDED) if appoint
                          else (moderation_db.remove_moderator, moderation_db.MODERATOR_REMOVED))
        async with self.db.acquire() as connection, connection.transaction():
            await moderation_db.lock_channel(connection, owner_id)
            changed = await change(connection, owner_id, target.id)
            if changed:
                await moderation_db.record(connection, owner_id, owner_id, target.id, action)
        if changed:
            await self._tell(owner_id, {"type": "internal.standing", "user_id": target.id})

    # --- bans and timeouts (owner and moderators) ------------------------------------------

    async def bans(self, user_id: int, channel: str | None, limit: int,
                   cursor: str | None) -> tuple[list[Ban], str | None]:
        where = await self.channel_for(user_id, channel)
        return await moderation_db.list_bans(self.db, where.id, limit, cursor)

    async def ban(self, user_id: int, channel: str | None, username: str,
                  duration_seconds: int | None, reason: str) -> Ban:
        """Ban (no duration) or time out a user in a channel, hiding their visible messages
        there at once. A moderator cannot ban the owner or another moderator; the owner
        banning a moderator also removes them as moderator."""
        where = await self.channel_for(user_id, channel)
        target = await users_db.get_user_by_username(self.db, username)
        if target.id == user_id:
            raise validation_error("username", "you cannot ban yourself")
        if target.id == where.id:
            raise Forbidden("The channel's owner cannot be banned from it")
        async with self.db.acquire() as connection, connection.transaction():
            await self._recheck(connection, where, user_id)
            target_role = await moderation_db.role_in(connection, where.id, target.id)
            if target_role == moderation_db.MODERATOR:
                if where.role != moderation_db.OWNER:
                    raise Forbidden("Only the channel's owner can ban a moderator")
                await moderation_db.remove_moderator(connection, where.id, target.id)
                await moderation_db.record(connection, where.id, user_id, target.id,
                                           moderation_db.MODERATOR_REMOVED)
            ban = await moderation_db.put_ban(connection, where.id, target.id, duration_seconds,
                                              reason, user_id)
            hidden = await moderation_db.hide_messages_of(connection, where.id, target.id)
            details: dict[str, Any] = {"messages_hidden": hidden}
            if duration_seconds is not None:
                details["duration_seconds"] = duration_seconds
            if reason:
                details["reason"] = reason
            await moderation_db.record(connection, where.id, user_id, target.id, ban.kind,
                                       details)
        await self._tell(where.id, {"type": "internal.standing", "user_id": target.id},
                         {"type": "chat.user_cleared", "user_id": target.id})
        return ban

    async def unban(self, user_id: int, channel: str | None, username: str) -> None:
        """Lift a ban or timeout (idempotent; logged when one was in force)."""
        where = await self.channel_for(user_id, channel)
        target = await users_db.get_user_by_username(self.db, username)
        async with self.db.acquire() as connection, connection.transaction():
            await self._recheck(connection, where, user_id)
            lifted = await moderation_db.lift_ban(connection, where.id, target.id)
            if lifted:
                await moderation_db.record(connection, where.id, user_id, target.id,
                                           moderation_db.UNBAN)
        await self._tell(where.id, {"type": "internal.standing", "user_id": target.id})

    # --- settings --------------------------------------------------------------------------

    async def settings(self, user_id: int, channel: str | None) -> ChatSettings:
        """A channel's chat settings, blocked terms included (owner and moderators)."""
        where = await self.channel_for(user_id, channel)
        return await chat_db.get_settings(self.db, where.id)

    async def update_settings(self, owner_id: int, changes: dict[str, Any]) -> ChatSettings:
        """Change the owner's chat settings; every socket of the channel hears the new ones."""
        changes = {name: value for name, value in changes.items()
                   if name in chat_db.SETTINGS_FIELDS}
        if "blocked_terms" in changes:
            changes["blocked_terms"] = distinct_terms(changes["blocked_terms"])
        if not changes:
            return await chat_db.get_settings(self.db, owner_id)
        async with self.db.acquire() as connection, connection.transaction():
            await moderation_db.lock_channel(connection, owner_id)
            settings = await moderation_db.update_settings(connection, owner_id, changes)
            await moderation_db.record(connection, owner_id, owner_id, None,
                                       moderation_db.SETTINGS_CHANGED,
                                       {"changed": sorted(changes)})
        await self._tell(owner_id, {"type": "internal.settings"}, settings_event(settings))
        return settings

    # --- messages --------------------------------------------------------------------------

    async def delete_message(self, user_id: int, stream_id: int, message_id: int) -> None:
        """Hide one chat message of a stream (idempotent). The owner may delete any; a
        moderator any but the owner's and other moderators'. Not found for everyone else."""
        async with self.db.acquire() as connection, connection.transaction():
            message = await moderation_db.message_for_moderation(connection, stream_id,
                                                                 message_id)
            if message is None:
                raise NotFound("Message not found")
            await moderation_db.lock_channel(connection, message.channel_id)
            role = await moderation_db.role_in(connection, message.channel_id, user_id)
            if role is None:
                raise NotFound("Message not found")
            if role == moderation_db.MODERATOR and message.user_id is not None \
                    and message.user_id != user_id and await moderation_db.role_in(
                        connection, message.channel_id, message.user_id) is not None:
                raise Forbidden("Only the channel's owner can delete this message")
            if message.hidden or not await moderation_db.hide_message(connection, message.id):
                return
            await moderation_db.record(connection, message.channel_id, user_id,
                                       message.user_id, moderation_db.MESSAGE_DELETED,
                                       {"message_id": message.id, "stream_id": stream_id})
        await self._tell(message.channel_id, {"type": "chat.deleted", "id": message.id},
                         stream_id=stream_id)

    # --- the log (owner only) --------------------------------------------------------------

    async def log(self, owner_id: int, limit: int,
                  cursor: str | None) -> tuple[list[LogEntry], str | None]:
        return await moderation_db.list_log(self.db, owner_id, limit, cursor)
