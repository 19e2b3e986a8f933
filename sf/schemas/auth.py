"""Authentication: registering, logging in, refreshing, and the token pair and WebSocket ticket
answers."""

from __future__ import annotations

from typing import Any, ClassVar

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from sf.schemas.common import Storable, StrictBoolean, StrictSchema
from sf.schemas.users import (
    NEW_USERNAME_PATTERN,
    USERNAME_RE,
    Email,
    PolicyVersion,
    UserPrivateSchema,
    not_reserved,
)


class RegisterSchema(StrictSchema):
    username = fields.String(required=True, validate=[validate.Regexp(
        USERNAME_RE, error="3-30 characters: letters, digits, underscore"), not_reserved],
        metadata={"pattern": NEW_USERNAME_PATTERN})
    email = Email(required=True)
    password = Storable(8, 128, required=True, load_only=True)
    accept_privacy_policy = PolicyVersion(
        "the version of the privacy policy the user accepts: the current one "
        "(GET /api/legal/privacy-policy)", required=True, load_only=True)


class LoginSchema(StrictSchema):
    username = Storable(1, 254)
    email = Storable(1, 254)
    password = Storable(1, 128, required=True, load_only=True)
    restore = StrictBoolean(load_only=True, metadata={
        "description": "true: sign in to an account deleted within its grace period, which "
                       "cancels its erasure"})

    # Stated in the OpenAPI document next to the properties (docs.build_openapi).
    json_schema: ClassVar[dict[str, Any]] = {
        "oneOf": [{"required": ["username"]}, {"required": ["email"]}]}

    @validates_schema
    def one_identifier(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("username" in data) == ("email" in data):
            raise ValidationError("give exactly one of username or email", "username")


class MailTokenSchema(StrictSchema):
    """A token from a link in a mail (`#token=` of e-mail verification)."""

    token = Storable(1, 256, required=True, load_only=True)


class PasswordResetRequestSchema(StrictSchema):
    email = Email(required=True, load_only=True)


class PasswordResetConfirmSchema(StrictSchema):
    token = Storable(1, 256, required=True, load_only=True)
    new_password = Storable(8, 128, required=True, load_only=True)


class RefreshSchema(StrictSchema):
    refresh_token = Storable(1, 4096, required=True)


class TokenPairSchema(Schema):
    access_token = fields.String()
    refresh_token = fields.String()
    token_type = fields.String()
    expires_in = fields.Integer()
    user = fields.Nested(UserPrivateSchema)


class WsTicketSchema(Schema):
    ticket = fields.String()
    expires_in = fields.Integer()
