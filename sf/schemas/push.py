"""Web Push: the server's VAPID key, a browser's `PushSubscription` as it subscribes, and the
subscriptions as their owner lists them (where they point, never the capability URL)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec
from marshmallow import Schema, ValidationError, fields, post_load, validate

from sf.schemas.common import END, Int64, StrictSchema
from sf.schemas.dump import UTCDateTime
from sf.schemas.pagination import PaginationSchema

MAX_ENDPOINT_LENGTH = 2048
MAX_EXPIRATION_MS = 253402300799999  # the end of year 9999 (what a datetime can hold)
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")
# base64url of 65 bytes (an uncompressed P-256 point) and of 16 bytes (the auth secret),
# unpadded as browsers write them, or padded.
P256DH_PATTERN = rf"^[A-Za-z0-9_-]{{87}}=?{END}"
AUTH_PATTERN = rf"^[A-Za-z0-9_-]{{22}}(==)?{END}"


def base64url_bytes(text: str) -> bytes:
    """The bytes of base64url text, padded or not (ValidationError otherwise)."""
    if not _BASE64URL.fullmatch(text):
        raise ValidationError("must be base64url")
    try:
        return base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))
    except (ValueError, binascii.Error):
        raise ValidationError("must be base64url") from None


def unpadded(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def p256_point(text: str) -> None:
    """A browser's p256dh: an uncompressed point on P-256 (65 bytes, 0x04 first)."""
    raw = base64url_bytes(text)
    if len(raw) != 65 or raw[0] != 4:
        raise ValidationError("must be an uncompressed P-256 public key (65 bytes)")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        raise ValidationError("is not a point on the P-256 curve") from None


def auth_secret(text: str) -> None:
    if len(base64url_bytes(text)) != 16:
        raise ValidationError("must be 16 bytes")


def push_endpoint(text: str) -> None:
    """An absolute URL with a host; which ones SF sends to is the service's check
    (sf.outbound)."""
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError:  # "Invalid IPv6 URL": brackets around what is no IPv6 address
        raise ValidationError("is not a valid URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ValidationError("must be an https URL")


class PushKeySchema(Schema):
    public_key = fields.String(metadata={
        "description": "the VAPID public key: base64url of the uncompressed P-256 point, what "
                       "`pushManager.subscribe` takes as `applicationServerKey`"})


class PushKeysSchema(StrictSchema):
    p256dh = fields.String(required=True, validate=p256_point,
                           metadata={"pattern": P256DH_PATTERN,
                                     "description": "the browser's P-256 public key"})
    auth = fields.String(required=True, validate=auth_secret,
                         metadata={"pattern": AUTH_PATTERN,
                                   "description": "the browser's 16-byte auth secret"})


class PushSubscriptionRequestSchema(StrictSchema):
    """What `PushSubscription.toJSON()` gives in a browser, as it is."""

    endpoint = fields.String(required=True,
                             validate=[validate.Length(min=1, max=MAX_ENDPOINT_LENGTH),
                                       push_endpoint],
                             metadata={"description": "the push service's URL for this "
                                                      "browser (https)"})
    expirationTime = Int64(  # noqa: N815 (the browser's name)
        load_default=None, allow_none=True, validate=validate.Range(min=0, max=MAX_EXPIRATION_MS),
        metadata={"description": "when the subscription ends (ms since the epoch), or null"})
    keys = fields.Nested(PushKeysSchema, required=True)

    @post_load
    def _normalized(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Keys stored unpadded, as the browser and the encryption take them."""
        data["keys"] = {name: unpadded(base64url_bytes(value))
                        for name, value in data["keys"].items()}
        return data


class PushSubscriptionCreatedSchema(Schema):
    id = fields.Integer()


class PushSubscriptionSchema(Schema):
    """A subscription as its owner lists it: where it points (the push service's origin), not
    the endpoint itself, which is a capability URL."""

    id = fields.Integer()
    origin = fields.Method("_origin", metadata={
        "description": "the push service the browser uses, e.g. https://fcm.googleapis.com"})
    created_at = UTCDateTime()
    last_success_at = UTCDateTime(allow_none=True, metadata={
        "description": "when the push service last took a push for it; null: never yet"})

    def _origin(self, subscription: Any) -> str:
        parts = urlsplit(subscription.endpoint)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


class PushSubscriptionListSchema(Schema):
    data = fields.List(fields.Nested(PushSubscriptionSchema))
    pagination = fields.Nested(PaginationSchema)


push_key = PushKeySchema()
push_subscription_created = PushSubscriptionCreatedSchema()
push_subscription = PushSubscriptionSchema()
