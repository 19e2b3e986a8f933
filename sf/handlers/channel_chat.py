"""Chat moderation (API.md "Live socket and chat", REST): moderators, bans and timeouts, chat
settings, deleting a message, the moderation log. Moderators name the channel they act on
with `?channel=<username>` (their own when left out)."""

from __future__ import annotations

from sf.handlers.base import USERNAME_ROUTE, APIHandler
from sf.handlers.streams import STREAM_ID
from sf.schemas import page, page_query, user_public
from sf.schemas.chat_moderation import (
    BanRequestSchema,
    ChatSettingsSchema,
    ban_schema,
    channel_page_query,
    channel_query,
    chat_settings_schema,
    moderation_log_entry,
    own_channel_query,
)

MESSAGE_ID = r"(?P<message_id>\d{1,18})"


class ModeratorsHandler(APIHandler):
    auth = "required"

    async def get(self) -> None:
        """The moderators of the caller's channel, newest appointment first (owner only).
        ---
        summary: List chat moderators
        tags: [chat]
        security: [{bearer: []}]
        parameters:
          - {in: query, schema: PageQuerySchema}
        responses:
          200: {description: A page of users, content: {application/json: {schema: UserListSchema}}}
          422: {description: Bad limit or cursor, content: {application/json: {schema: ErrorSchema}}}
        """
        query = self.parse_query(page_query)
        users, cursor = await self.services.chat_moderation.moderators(
            self.user_id, query["limit"], query["cursor"])
        self.write_json(page(users, cursor, user_public))


class ModeratorHandler(APIHandler):
    auth = "required"

    async def put(self, username: str) -> None:
        """Appoint a moderator of the caller's channel (idempotent).
        ---
        summary: Add a chat moderator
        tags: [chat]
        security: [{bearer: []}]
        responses:
          204: {description: A moderator}
          404: {description: No such user, content: {application/json: {schema: ErrorSchema}}}
          422: {description: Appointing yourself, content: {application/json: {schema: ErrorSchema}}}
        """
        self.parse_query(own_channel_query)
        await self.services.chat_moderation.add_moderator(self.user_id, username)
        self.set_status(204)
        self.finish()

    async def delete(self, username: str) -> None:
        """Remove a moderator of the caller's channel (idempotent).
        ---
        summary: Remove a chat moderator
        tags: [chat]
        security: [{bearer: []}]
        responses:
          204: {description: Not a moderator (any more)}
          404: {description: No such user, content: {application/json: {schema: ErrorSchema}}}
          422: {description: Removing yourself, content: {application/json: {schema: ErrorSchema}}}
        """
        self.parse_query(own_channel_query)
        await self.services.chat_moderation.remove_moderator(self.user_id, username)
        self.set_status(204)
        self.finish()


class BansHandler(APIHandler):
    auth = "required"

    async def get(self) -> None:
        """The bans and timeouts in force in a channel, newest first (owner and moderators).
        ---
        summary: List chat bans
        tags: [chat]
        security: [{bearer: []}]
        parameters:
          - {in: query, schema: ChannelPageQuerySchema}
        responses:
          200: {description: A page of bans, content: {application/json: {schema: BanListSchema}}}
          403: {description: You do not moderate that channel, content: {application/json: {schema: ErrorSchema}}}
          404: {description: No such channel, content: {application/json: {schema: ErrorSchema}}}
          422: {description: Bad limit or cursor, content: {application/json: {schema: ErrorSchema}}}
        """
        query = self.parse_query(channel_page_query)
        bans, cursor = await self.services.chat_moderation.bans(
            self.user_id, query["channel"], query["limit"], query["cursor"])
        self.write_json(page(bans, cursor, ban_schema))


class BanHandler(APIHandler):
    auth = "required"

    async def put(self, username: str) -> None:
        """Ban (no duration) or time out a user in a channel; their visible messages there
        are hidden at once (owner and moderators; a moderator cannot ban the owner or another
        moderator; the owner banning a moderator also removes them as moderator).
        ---
        summary: Ban or time out a user
        tags: [chat]
        security: [{bearer: []}]
        parameters:
          - {in: query, schema: ChannelQuerySchema}
        requestBody: {required: true, content: {application/json: {schema: BanRequestSchema}}}
        responses:
          200: {description: The ban or timeout, content: {application/json: {schema: BanSchema}}}
          403: {description: You do not moderate that channel, or may not ban that user, content: {application/json: {schema: ErrorSchema}}}
          404: {description: No such user or channel, content: {application/json: {schema: ErrorSchema}}}
          422: {description: Banning yourself, or invalid fields, content: {application/json: {schema: ErrorSchema}}}
        """
        query = self.parse_query(channel_query)
        body = self.parse_json(BanRequestSchema())
        ban = await self.services.chat_moderation.ban(
            self.user_id, query["channel"], username, body["duration_seconds"], body["reason"])
        self.write_json(ban_schema.dump(ban))

    async def delete(self, username: str) -> None:
        """Lift a ban or timeout (idempotent; owner and moderators).
        ---
        summary: Lift a ban
        tags: [chat]
        security: [{bearer: []}]
        parameters:
          - {in: query, schema: ChannelQuerySchema}
        responses:
          204: {description: Not banned (any more)}
          403: {description: You do not moderate that channel, content: {application/json: {schema: ErrorSchema}}}
          404: {description: No such user or channel, content: {application/json: {schema: ErrorSchema}}}
        """
        query = self.parse_query(channel_query)
        await self.services.chat_moderation.unban(self.user_id, query["channel"], username)
        self.set_status(204)
        self.finish()


class ChatSettingsHandler(APIHandler):
    auth = "required"

    async def get(self) -> None:
        """A channel's chat settings, blocked terms included (owner and moderators).
        ---
        summary: Get chat settings
        tags: [chat]
        security: [{bearer: []}]
        parameters:
          - {in: query, schema: ChannelQuerySchema}
        responses:
          200: {description: Settings, content: {application/json: {schema: ChatSettingsSchema}}}
          403: {description: You do not moderate that channel, content: {application/json: {schema: ErrorSchema}}}
          404: {description: No such channel, content: {application/json: {schema: ErrorSchema}}}
        """
        query = self.parse_query(channel_query)
        settings = await self.services.chat_moderation.settings(self.user_id, query["channel"])
        self.write_json(chat_settings_schema.dump(settings))

    async def put(self) -> None:
        """Change the caller's chat settings (the fields sent; owner only). Every socket of
        the channel's streams gets the new `chat.settings`.
        ---
        summary: Update chat settings
        tags: [chat]
        security: [{bearer: []}]
        requestBody: {required: true, content: {application/json: {schema: ChatSettingsSchema}}}
        responses:
          200: {description: Settings, content: {application/json: {schema: ChatSettingsSchema}}}
        """
        self.parse_query(own_channel_query)
        changes = self.parse_json(ChatSettingsSchema())
        settings = await self.services.chat_moderation.update_settings(self.user_id, changes)
        self.write_json(chat_settings_schema.dump(settings))


class ChatMessageHandler(APIHandler):
    auth = "required"

    async def delete(self, stream_id: str, message_id: str) -> None:
        """Delete (hide) a chat message (idempotent; the channel's owner and moderators, who
        cannot delete the owner's or another moderator's messages).
        ---
        summary: Delete a chat message
        tags: [chat]
        security: [{bearer: []}]
        responses:
          204: {description: Hidden}
          403: {description: A moderator deleting the owner's or another moderator's message, content: {application/json: {schema: ErrorSchema}}}
          404: {description: No such message in that stream, not one you moderate, or a private stream you are not invited to, content: {application/json: {schema: ErrorSchema}}}
        """
        # A private stream does not exist for a moderator it does not invite, here as
        # everywhere else (security.md#chat-private-stream-moderation).
        await self.services.streams.get_stream(int(stream_id), self.user_id)
        await self.services.chat_moderation.delete_message(self.user_id, int(stream_id),
                                                           int(message_id))
        self.set_status(204)
        self.finish()


class ModerationLogHandler(APIHandler):
    auth = "required"

    async def get(self) -> None:
        """The moderation log of the caller's channel, newest first (owner only): who did
        what to whom, when.
        ---
        summary: Moderation log
        tags: [chat]
        security: [{bearer: []}]
        parameters:
          - {in: query, schema: PageQuerySchema}
        responses:
          200: {description: A page of log entries, content: {application/json: {schema: ModerationLogSchema}}}
          422: {description: Bad limit or cursor, content: {application/json: {schema: ErrorSchema}}}
        """
        query = self.parse_query(page_query)
        entries, cursor = await self.services.chat_moderation.log(
            self.user_id, query["limit"], query["cursor"])
        self.write_json(page(entries, cursor, moderation_log_entry))


routes = [
    (r"/api/channel/moderators", ModeratorsHandler),
    (rf"/api/channel/moderators/{USERNAME_ROUTE}", ModeratorHandler),
    (r"/api/channel/bans", BansHandler),
    (rf"/api/channel/bans/{USERNAME_ROUTE}", BanHandler),
    (r"/api/channel/chat/settings", ChatSettingsHandler),
    (r"/api/channel/moderation-log", ModerationLogHandler),
    (rf"/api/streams/{STREAM_ID}/chat/messages/{MESSAGE_ID}", ChatMessageHandler),
]
