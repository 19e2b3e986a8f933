"""Chat moderation (API.md "Live socket and chat", REST): the channel a moderator acts on, bans
and timeouts, chat settings, and the moderation log."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates

from sf.schemas.chat import skeleton
from sf.schemas.common import Int32, Storable, StrictBoolean, StrictSchema, Text
from sf.schemas.dump import UTCDateTime
from sf.schemas.pagination import PageQuerySchema, PaginationSchema

MAX_TIMEOUT_SECONDS = 14 * 86400  # two weeks, as long as Twitch's longest timeout
MAX_BLOCKED_TERMS, MAX_BLOCKED_TERM_LENGTH = 200, 100

_CHANNEL_DESCRIPTION = ("the channel (its owner's user name) to act on: one you moderate; "
                        "your own channel when left out")


def Channel() -> fields.String:
    """The `?channel=` of the routes moderators use."""
    return Storable(1, 30, load_default=None, metadata={"description": _CHANNEL_DESCRIPTION})


class OwnChannelQuerySchema(StrictSchema):
    """No parameter: owner-only routes act on the caller's own channel, and a `?channel=`
    sent to one is refused (422) rather than ignored."""


class ChannelQuerySchema(StrictSchema):
    channel = Channel()


class ChannelPageQuerySchema(PageQuerySchema):
    channel = Channel()


class UserRefSchema(Schema):
    """A user as moderation answers name them; `username` is null once the account is being
    erased."""

    id = fields.Integer()
    username = fields.String(allow_none=True)
    avatar = fields.String(allow_none=True)


class BanRequestSchema(StrictSchema):
    duration_seconds = Int32(strict=True, load_default=None, allow_none=True,
                             validate=validate.Range(min=1, max=MAX_TIMEOUT_SECONDS),
                             metadata={"description": "a timeout of this many seconds; left "
                                                      "out or null: a ban until lifted"})
    reason = Text(500, load_default="")


class BanSchema(Schema):
    user = fields.Nested(UserRefSchema)
    kind = fields.String(validate=validate.OneOf(("ban", "timeout")))
    expires_at = UTCDateTime(allow_none=True, metadata={"description": "null for a ban"})
    reason = fields.String()
    created_by = fields.Nested(UserRefSchema, allow_none=True)
    created_at = UTCDateTime()


class BanListSchema(Schema):
    data = fields.List(fields.Nested(BanSchema))
    pagination = fields.Nested(PaginationSchema)


class ChatSettingsSchema(StrictSchema):
    """A channel's chat settings; a PUT changes the fields it sends. `blocked_terms` are kept
    as written and matched on their skeleton (`sf.schemas.chat.skeleton`: without invisible
    characters and combining marks, NFKC, case folded); terms with one skeleton are kept
    once."""

    enabled = StrictBoolean()
    slow_mode_seconds = Int32(strict=True, allow_none=True, validate=validate.Range(min=1, max=86400),
                              metadata={"description": "seconds between two messages of a "
                                                       "viewer; null: off"})
    followers_only_minutes = Int32(strict=True, allow_none=True, validate=validate.Range(min=0, max=525600),
                                   metadata={"description": "only followers of at least this "
                                                            "many minutes may send; null: off"})
    min_account_age_minutes = Int32(strict=True, validate=validate.Range(min=0, max=525600))
    blocked_terms = fields.List(Text(MAX_BLOCKED_TERM_LENGTH, min_length=1),
                                validate=validate.Length(max=MAX_BLOCKED_TERMS))
    updated_at = UTCDateTime(dump_only=True, allow_none=True)

    @validates("blocked_terms")
    def _terms_normalise_to_text(self, terms: list[str], **kwargs: Any) -> None:
        for term in terms:
            if not skeleton(term):
                raise ValidationError("a term must not be blank once normalised")


class ModerationLogEntrySchema(Schema):
    id = fields.Integer()
    action = fields.String(metadata={"description": "moderator_added, moderator_removed, ban, "
                                                    "timeout, unban, message_deleted or "
                                                    "settings_changed"})
    actor = fields.Nested(UserRefSchema, allow_none=True)
    target = fields.Nested(UserRefSchema, allow_none=True)
    details = fields.Dict(metadata={
        "description": "the action's parameters: `duration_seconds`, `reason`, "
                       "`messages_hidden` (ban, timeout); `message_id`, `stream_id` (message "
                       "deleted); `changed` (the settings' names)"})
    created_at = UTCDateTime()


class ModerationLogSchema(Schema):
    data = fields.List(fields.Nested(ModerationLogEntrySchema))
    pagination = fields.Nested(PaginationSchema)


# Stateless: one instance serves every request.
own_channel_query = OwnChannelQuerySchema()
channel_query = ChannelQuerySchema()
channel_page_query = ChannelPageQuerySchema()
ban_schema = BanSchema()
chat_settings_schema = ChatSettingsSchema()
moderation_log_entry = ModerationLogEntrySchema()
