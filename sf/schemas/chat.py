"""Chat: a message as readers get it (the live socket and the history), a page of them, a
channel's chat settings as sockets get them, and the `chat.send` frame a client sends."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from sf.schemas.common import Storable, StrictSchema
from sf.schemas.dump import CompiledDump, UTCDateTime
from sf.schemas.pagination import PaginationSchema

CHAT_ROLES = ("owner", "moderator")
MAX_CHAT_TEXT = 500     # characters, after normalisation (NFC, trimmed)
MAX_NONCE = 64          # characters of a client's nonce, echoed back in its ack or notice


class ChatAuthorSchema(CompiledDump):
    """Who sent a message; `roles` are their roles in the channel now."""

    id = fields.Integer()
    username = fields.String()
    avatar = fields.String(allow_none=True)
    roles = fields.List(fields.String(validate=validate.OneOf(CHAT_ROLES)))


class ChatMessageSchema(CompiledDump):
    """A chat message; `user` is null when its author's account was erased."""

    id = fields.Integer()
    stream_id = fields.Integer()
    user = fields.Nested(ChatAuthorSchema, allow_none=True)
    text = fields.String(metadata={"description": "plain text (never HTML), 1-500 characters"})
    sent_at = UTCDateTime()


class ChatMessageListSchema(Schema):
    data = fields.List(fields.Nested(ChatMessageSchema))
    pagination = fields.Nested(PaginationSchema)


class ChatSettingsSchema(CompiledDump):
    """A channel's chat settings as the live socket sends them (`chat.settings`);
    `blocked_terms` only to the owner and the channel's moderators."""

    enabled = fields.Boolean()
    slow_mode_seconds = fields.Integer(allow_none=True, metadata={
        "description": "seconds between two messages of one viewer (null: off)"})
    followers_only_minutes = fields.Integer(allow_none=True, metadata={
        "description": "only followers of at least this long may send (null: off)"})
    min_account_age_minutes = fields.Integer()
    blocked_terms = fields.List(fields.String())


class ChatSendSchema(StrictSchema):
    """`{"type": "chat.send", "text", "nonce"}` from a client of the live socket. The text's
    own rules (normalised, 1-500 characters, no control characters) are the send path's, so
    that each refusal has its notice code; here only a bound on what is read."""

    type = fields.String(required=True, validate=validate.Equal("chat.send"))
    text = Storable(0, 4 * MAX_CHAT_TEXT, required=True)
    nonce = Storable(0, MAX_NONCE, load_default=None, allow_none=True)


chat_message = ChatMessageSchema()
chat_settings = ChatSettingsSchema()
chat_send = ChatSendSchema()
