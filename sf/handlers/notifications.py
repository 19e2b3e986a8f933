"""Notifications (API.md "Notifications and webhooks"): the list, marking read, settings per
type and channel, muted channels, the one-click e-mail unsubscribe, and the
`/ws/notifications` socket that pushes new notices and the unread count to every open tab."""

from __future__ import annotations

import logging
import time
from typing import Any

from sf.errors import validation_error
from sf.handlers.base import USERNAME_ROUTE, APIHandler
from sf.handlers.viewers import CLOSE_POLICY, ApiSocket, SocketHub
from sf.schemas import page, page_query, user_public
from sf.schemas.dump import encode_json
from sf.schemas.notifications import (
    MarkReadSchema,
    NotificationSettingsSchema,
    UnsubscribeSchema,
    channels_changes,
    notification_list_query,
    notification_schema,
    unsubscribe_query,
)
from sf.services.viewers import CLOSE_UNAUTHORIZED

log = logging.getLogger("sf.ws")


class NotificationsHandler(APIHandler):
    auth = "required"

    async def get(self) -> None:
        """The caller's notifications, newest first, with the unread count.
        ---
        summary: List notifications
        tags: [notifications]
        security: [{bearer: []}]
        parameters:
          - {in: query, schema: NotificationListQuerySchema}
        responses:
          200: {description: A page of notifications, content: {application/json: {schema: NotificationListSchema}}}
          401: {description: Not authenticated, content: {application/json: {schema: ErrorSchema}}}
        """
        query = self.parse_query(notification_list_query)
        items, cursor, unread = await self.services.notifications.page(
            self.user_id, query["limit"], query["cursor"], query["unread"])
        self.write_json({**page(items, cursor, notification_schema), "unread_count": unread})


class ReadHandler(APIHandler):
    auth = "required"

    async def post(self) -> None:
        """Mark some of the caller's notifications read (ids of others are ignored).
        ---
        summary: Mark notifications read
        tags: [notifications]
        security: [{bearer: []}]
        requestBody: {required: true, content: {application/json: {schema: MarkReadSchema}}}
        responses:
          204: {description: Read}
          401: {description: Not authenticated, content: {application/json: {schema: ErrorSchema}}}
        """
        body = self.parse_json(MarkReadSchema())
        await self.services.notifications.mark_read(self.user_id, body["ids"])
        self.set_status(204)
        self.finish()


class ReadAllHandler(APIHandler):
    auth = "required"

    async def post(self) -> None:
        """Mark every notification of the caller read.
        ---
        summary: Mark all notifications read
        tags: [notifications]
        security: [{bearer: []}]
        responses:
          204: {description: Read}
          401: {description: Not authenticated, content: {application/json: {schema: ErrorSchema}}}
        """
        await self.services.notifications.mark_read(self.user_id, None)
        self.set_status(204)
        self.finish()


class SettingsHandler(APIHandler):
    auth = "required"

    async def get(self) -> None:
        """The caller's channels per notification type.
        ---
        summary: Notification settings
        tags: [notifications]
        security: [{bearer: []}]
        responses:
          200: {description: Settings, content: {application/json: {schema: NotificationSettingsSchema}}}
          401: {description: Not authenticated, content: {application/json: {schema: ErrorSchema}}}
        """
        self.write_json(await self.services.notifications.settings(self.user_id))

    async def put(self) -> None:
        """Change channels of some types (those left out stay); the settings after.
        ---
        summary: Change notification settings
        tags: [notifications]
        security: [{bearer: []}]
        requestBody: {required: true, content: {application/json: {schema: NotificationSettingsSchema}}}
        responses:
          200: {description: Settings, content: {application/json: {schema: NotificationSettingsSchema}}}
          401: {description: Not authenticated, content: {application/json: {schema: ErrorSchema}}}
        """
        changes = channels_changes(self.parse_json(NotificationSettingsSchema()))
        self.write_json(await self.services.notifications.change_settings(self.user_id, changes))


class MutesHandler(APIHandler):
    auth = "required"

    async def get(self) -> None:
        """The channels the caller muted, newest first.
        ---
        summary: Muted channels
        tags: [notifications]
        security: [{bearer: []}]
        parameters:
          - {in: query, schema: PageQuerySchema}
        responses:
          200: {description: A page of users, content: {application/json: {schema: UserListSchema}}}
          401: {description: Not authenticated, content: {application/json: {schema: ErrorSchema}}}
        """
        query = self.parse_query(page_query)
        users, cursor = await self.services.notifications.mutes(
            self.user_id, query["limit"], query["cursor"])
        self.write_json(page(users, cursor, user_public))


class MuteHandler(APIHandler):
    auth = "required"

    async def put(self, username: str) -> None:
        """Hear nothing from one channel (still following it; idempotent).
        ---
        summary: Mute a channel
        tags: [notifications]
        security: [{bearer: []}]
        responses:
          204: {description: Muted}
          404: {description: No such user, content: {application/json: {schema: ErrorSchema}}}
          422: {description: Your own channel, content: {application/json: {schema: ErrorSchema}}}
        """
        await self.services.notifications.mute(self.user_id, username, True)
        self.set_status(204)
        self.finish()

    async def delete(self, username: str) -> None:
        """Hear from a muted channel again (idempotent).
        ---
        summary: Unmute a channel
        tags: [notifications]
        security: [{bearer: []}]
        responses:
          204: {description: Not muted}
          404: {description: No such user, content: {application/json: {schema: ErrorSchema}}}
        """
        await self.services.notifications.mute(self.user_id, username, False)
        self.set_status(204)
        self.finish()


class UnsubscribeHandler(APIHandler):
    auth = "public"

    async def post(self) -> None:
        """Stop one type of notification e-mail: the token of the mail's link, as JSON
        `{"token"}`, or in the query of the mail's `List-Unsubscribe` URL (RFC 8058 one-click:
        the mail client POSTs `List-Unsubscribe=One-Click` there). Idempotent.
        ---
        summary: Unsubscribe from notification e-mails
        tags: [notifications]
        parameters:
          - {in: query, schema: UnsubscribeQuerySchema}
        requestBody: {content: {application/json: {schema: UnsubscribeSchema}}}
        responses:
          204: {description: No more of these e-mails}
          422: {description: Not a valid token, content: {application/json: {schema: ErrorSchema}}}
        """
        token = self.parse_query(unsubscribe_query)["token"]
        if token is None and not self.request.body:
            raise validation_error("token", "is required (in the query or the body)")
        if token is None:
            token = self.parse_json(UnsubscribeSchema())["token"]
        await self.services.notifications.unsubscribe(token)
        self.set_status(204)
        self.finish()


class NotificationsSocket(ApiSocket):
    """One open tab of a signed-in user: `{"type": "unread_count", "count"}` on connect and
    whenever it changes, `{"type": "notification", "notification"}` for each new notice.
    A ticket is required (4401 without one, or once the session ends)."""

    def initialize(self) -> None:
        super().initialize()
        self.unread = 0
        self.joined = False

    @property
    def hub(self) -> SocketHub:
        return self.services.notifications.hub

    async def open(self) -> None:
        if self.refuse_after_open():
            return
        if self.account_id is None:
            self.close(CLOSE_UNAUTHORIZED, "a ticket is required")
            return
        notifications = self.services.notifications
        if not notifications.hub.join(self, self.client_address):
            self.close(CLOSE_POLICY, "too many notification sockets")
            return
        self.joined = True
        self.opened_at = time.monotonic()
        self.bound_buffers()
        # Joined first, so no notice is missed; one that came while counting is in the count.
        self.unread = await notifications.unread_count(self.account_id)
        self.send(encode_json({"type": "unread_count", "count": self.unread}))
        log.info("notification socket connected", extra=self.log_fields())

    def on_close(self) -> None:
        if self.joined:
            self.services.notifications.hub.leave(self, self.client_address)
            self.joined = False
            log.info("notification socket closed", extra=self.log_fields(
                close_code=self.close_code, seconds=round(time.monotonic() - self.opened_at, 1)))

    def log_fields(self, **more: Any) -> dict[str, Any]:
        return super().log_fields(socket="notifications", **more)


routes = [
    (r"/api/notifications", NotificationsHandler),
    (r"/api/notifications/read", ReadHandler),
    (r"/api/notifications/read-all", ReadAllHandler),
    (r"/api/notifications/settings", SettingsHandler),
    (r"/api/notifications/mutes", MutesHandler),
    (rf"/api/notifications/mutes/{USERNAME_ROUTE}", MuteHandler),
    (r"/api/notifications/unsubscribe", UnsubscribeHandler),
    (r"/ws/notifications", NotificationsSocket),
]
