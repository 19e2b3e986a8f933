"""Webhooks (API.md "Notifications and webhooks"): a webhook as made, changed and listed,
and its deliveries."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from sf.schemas.common import StrictBoolean, StrictSchema, Text
from sf.schemas.dump import UTCDateTime
from sf.schemas.pagination import PaginationSchema

# The event types a webhook may take.
WEBHOOK_EVENTS = ("stream.online", "stream.offline", "follow.created", "chat.message")
DELIVERY_STATUSES = ("pending", "sending", "delivered", "failed")
MAX_URL_LENGTH = 2000


def Url(**kwargs: Any) -> fields.String:
    """The receiver's URL: checked further (scheme, host, address) by the webhook service."""
    field = Text(MAX_URL_LENGTH, min_length=1, **kwargs)
    field.metadata = {**field.metadata, "description": (
        "where deliveries are POSTed: an https URL of a public address (http only to an "
        "address of SF_OUTBOUND_ALLOWED_NETWORKS)")}
    return field


def Events(**kwargs: Any) -> fields.List:
    return fields.List(fields.String(validate=validate.OneOf(WEBHOOK_EVENTS)),
                       validate=validate.Length(min=1, max=len(WEBHOOK_EVENTS) * 4),
                       metadata={"description": "the event types sent: "
                                                + ", ".join(WEBHOOK_EVENTS)}, **kwargs)


class WebhookCreateSchema(StrictSchema):
    url = Url(required=True)
    events = Events(required=True)


class WebhookUpdateSchema(StrictSchema):
    """The fields sent change; `"enabled": true` re-enables a disabled webhook and forgets its
    failures."""

    url = Url()
    events = Events()
    enabled = StrictBoolean()


class WebhookSchema(Schema):
    id = fields.Integer()
    url = fields.String()
    events = fields.List(fields.String())
    enabled = fields.Boolean()
    disabled_reason = fields.String(allow_none=True, metadata={
        "description": "why it is disabled: `too many failed deliveries`, `disabled by its "
                       "owner`, `account deleted`; null while enabled"})
    consecutive_failures = fields.Integer()
    created_at = UTCDateTime()
    updated_at = UTCDateTime()
    disabled_at = UTCDateTime(allow_none=True)


class WebhookCreatedSchema(WebhookSchema):
    secret = fields.String(metadata={
        "description": "the signing secret (HMAC-SHA256 key of `SF-Webhook-Signature`): "
                       "shown in this answer only"})


class WebhookListSchema(Schema):
    data = fields.List(fields.Nested(WebhookSchema))


class WebhookDeliverySchema(Schema):
    id = fields.Integer()
    event_id = fields.UUID(metadata={"description": "the `SF-Webhook-Id` and body `id`, the "
                                                    "same on every attempt and redelivery"})
    type = fields.String()
    status = fields.String(validate=validate.OneOf(DELIVERY_STATUSES))
    attempts = fields.Integer()
    response_code = fields.Integer(allow_none=True)
    last_error = fields.String(allow_none=True)
    created_at = UTCDateTime()
    last_attempt_at = UTCDateTime(allow_none=True)
    next_attempt_at = UTCDateTime(allow_none=True, metadata={
        "description": "when the next attempt is due (pending deliveries only)"})
    delivered_at = UTCDateTime(allow_none=True)


class WebhookDeliveryListSchema(Schema):
    data = fields.List(fields.Nested(WebhookDeliverySchema))
    pagination = fields.Nested(PaginationSchema)


webhook_create = WebhookCreateSchema()
webhook_schema = WebhookSchema()
webhook_created = WebhookCreatedSchema()
webhook_delivery = WebhookDeliverySchema()
