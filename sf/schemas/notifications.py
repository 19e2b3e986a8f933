"""Notifications (API.md "Notifications and webhooks"): the list and its query, marking read,
the settings per type and channel, and the one-click unsubscribe."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from sf.schemas.common import ROW_ID_RANGE, Int64, StrictBoolean, StrictSchema
from sf.schemas.dump import UTCDateTime
from sf.schemas.pagination import PageQuerySchema, PaginationSchema

MAX_READ_IDS = 100


class NotificationListQuerySchema(PageQuerySchema):
    unread = fields.Boolean(truthy={"true"}, falsy={"false"}, load_default=False,
                            metadata={"description": "`true`: unread notifications only"})


class NotificationSchema(Schema):
    id = fields.Integer()
    type = fields.String(metadata={"description": "`stream.online`; `webhook.disabled`"})
    created_at = UTCDateTime()
    read_at = UTCDateTime(allow_none=True)
    data = fields.Dict(metadata={
        "description": "for `stream.online`: `stream_id`, `username`, `title`, `thumbnail`; "
                       "for `webhook.disabled`: `webhook_id`, `url`, `reason`"})


class NotificationListSchema(Schema):
    data = fields.List(fields.Nested(NotificationSchema))
    pagination = fields.Nested(PaginationSchema)
    unread_count = fields.Integer()


class MarkReadSchema(StrictSchema):
    ids = fields.List(Int64(strict=True, validate=ROW_ID_RANGE), required=True,
                      validate=validate.Length(min=1, max=MAX_READ_IDS))


class ChannelsSchema(StrictSchema):
    """Where one type of notification goes; a PUT changes the channels it sends."""

    in_app = StrictBoolean()
    email = StrictBoolean(metadata={"description": "only to a verified address"})
    push = StrictBoolean(metadata={"description": "to the browsers subscribed to Web Push"})


class NotificationSettingsSchema(StrictSchema):
    """Per type, its channels (`stream.online` is the one type a user sets)."""

    stream_online = fields.Nested(ChannelsSchema, data_key="stream.online")


class UnsubscribeSchema(StrictSchema):
    token = fields.String(required=True, validate=validate.Length(min=1, max=200))


class UnsubscribeQuerySchema(StrictSchema):
    """RFC 8058: the mail client POSTs `List-Unsubscribe=One-Click` to the URL of the header,
    which carries the token."""

    token = fields.String(load_default=None, validate=validate.Length(min=1, max=200))


def channels_changes(loaded: dict[str, Any]) -> dict[str, dict[str, bool]]:
    """A loaded settings body as {type: {channel: on}}."""
    return {name.replace("_", "."): dict(channels) for name, channels in loaded.items()}


# Stateless: one instance serves every request.
notification_list_query = NotificationListQuerySchema()
notification_schema = NotificationSchema()
mark_read_schema = MarkReadSchema()
notification_settings_schema = NotificationSettingsSchema()
unsubscribe_schema = UnsubscribeSchema()
unsubscribe_query = UnsubscribeQuerySchema()
