"""marshmallow schemas: every request body and query is loaded through one, every answer
dumped through one; the OpenAPI document is generated from them."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from sf.media.hls import public_playback, sign_playback, sign_thumbnail
from sf.schemas.dump import CompiledDump, UTCDateTime, utc_iso

# \A...\Z, not ^...$: `$` also matches before a trailing newline ("alice\n").
USERNAME_RE = re.compile(r"\A[A-Za-z0-9_]{3,30}\Z")
# Names that collide with routes, roles or placeholders (compared case-insensitively); refused at
# registration only, so an account that already has one keeps working.
RESERVED_USERNAMES = frozenset({
    "about", "abuse", "account", "accounts", "admin", "administrator", "anonymous", "api", "app",
    "assets", "auth", "avatar", "avatars", "billing", "categories", "category", "channel",
    "channels", "contact", "dashboard", "default", "delete", "docs", "everyone", "follow",
    "followers", "following", "guest", "healthz", "help", "hls", "home", "info", "internal",
    "legal", "live", "login", "logout", "me", "media", "metrics", "mod", "moderator", "none",
    "nobody", "null", "official", "openapi", "privacy", "profile", "readyz", "refresh",
    "register", "root", "rtmp", "search", "security", "settings", "signin", "signout", "signup",
    "sf", "staff", "static", "stats", "statistics", "status", "stream", "streams", "support",
    "sysadmin", "system", "terms", "undefined", "user", "users", "v1", "watch",
    "webmaster", "ws", "self", "true", "false", "nil", "www", "mail",
})
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,20}")
# Control characters (other than tab/newline) have no place in text fields, nor do the
# bidirectional overrides that make a title display as something it is not.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u202a-\u202e\u2066-\u2069]")


def no_control_chars(value: str) -> None:
    if _CONTROL.search(value):
        raise ValidationError("must not contain control characters")


def not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("must not be blank")


def Text(max_length: int, required: bool = False, min_length: int = 0, **kwargs: Any) -> fields.String:
    """A text field with length bounds and no control characters; when it may not be empty,
    whitespace alone does not count."""
    checks: list[Callable[[Any], Any]] = [validate.Length(min=min_length, max=max_length),
                                          no_control_chars]
    if min_length:
        checks.append(not_blank)
    return fields.String(required=required, validate=checks, **kwargs)


class StrictBoolean(fields.Boolean):
    """A JSON true or false, not "yes", 1 or "on"."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


def not_reserved(value: str) -> None:
    if value.lower() in RESERVED_USERNAMES:
        raise ValidationError("is reserved")


class Int64(fields.Integer):
    """An integer that fits a PostgreSQL bigint: out of range is a 422, never an overflow in
    the database. Strings (query values) must be plain ASCII digits; booleans and fractions
    are refused rather than coerced."""

    minimum, maximum = INT64_MIN, INT64_MAX

    def __init__(self, **kwargs: Any) -> None:
        extra = kwargs.pop("validate", None)
        validators = [] if extra is None else list(extra) if isinstance(extra, list | tuple) else [extra]
        super().__init__(validate=[validate.Range(min=self.minimum, max=self.maximum), *validators],
                         **kwargs)

    def _validated(self, value: Any) -> int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()) \
                or (isinstance(value, str) and not _INTEGER_TEXT.fullmatch(value)):
            raise self.make_error("invalid", input=value)
        return super()._validated(value)


class Int32(Int64):
    """An integer that fits a PostgreSQL integer."""

    minimum, maximum = INT32_MIN, INT32_MAX


class StrictSchema(Schema):
    """Rejects unknown fields (422)."""

    class Meta:
        unknown = RAISE


# --- requests ----------------------------------------------------------------------------------

class RegisterSchema(StrictSchema):
    username = fields.String(required=True, validate=[validate.Regexp(
        USERNAME_RE, error="3-30 characters: letters, digits, underscore"), not_reserved])
    email = fields.Email(required=True, validate=validate.Length(max=254))
    password = fields.String(required=True, validate=validate.Length(min=8, max=128), load_only=True)


class LoginSchema(StrictSchema):
    username = fields.String(validate=validate.Length(min=1, max=254))
    email = fields.String(validate=validate.Length(min=1, max=254))
    password = fields.String(required=True, validate=validate.Length(min=1, max=128), load_only=True)

    @validates_schema
    def one_identifier(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("username" in data) == ("email" in data):
            raise ValidationError("give exactly one of username or email", "username")


class RefreshSchema(StrictSchema):
    refresh_token = fields.String(required=True, validate=validate.Length(min=1, max=4096))


class ProfileUpdateSchema(StrictSchema):
    email = fields.Email(validate=validate.Length(max=254))
    bio = Text(1000)
    avatar = fields.String(allow_none=True, validate=[validate.Length(min=1, max=2048),
                                                      no_control_chars], metadata={
        "description": "null (remove), the URL path of an avatar you uploaded "
                       "(/media/avatars/...), or an https URL on an allow-listed host"})
    current_password = fields.String(load_only=True, validate=validate.Length(min=1, max=128),
                                     metadata={"description": "required to change the email"})


class ChangePasswordSchema(StrictSchema):
    current_password = fields.String(required=True, validate=validate.Length(min=1, max=128))
    new_password = fields.String(required=True, validate=validate.Length(min=8, max=128))


class PageQuerySchema(StrictSchema):
    limit = Int32(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(load_default=None, validate=validate.Length(max=200))


# --- answers -----------------------------------------------------------------------------------

class ErrorBodySchema(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    # `fields` would shadow Schema.fields: declare it under another name, dump it as "fields".
    field_errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()),
                               data_key="fields")


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBodySchema, required=True)


class UserPublicSchema(CompiledDump):
    id = fields.Integer()
    username = fields.String()
    avatar = fields.String(allow_none=True)
    bio = fields.String()
    followers_count = fields.Integer()
    created_at = UTCDateTime()
    is_live = fields.Boolean()


class UserPrivateSchema(UserPublicSchema):
    email = fields.String()
    updated_at = UTCDateTime()


class TokenPairSchema(Schema):
    access_token = fields.String()
    refresh_token = fields.String()
    token_type = fields.String()
    expires_in = fields.Integer()
    user = fields.Nested(UserPrivateSchema)


class PaginationSchema(Schema):
    next_cursor = fields.String(allow_none=True)


class UserListSchema(Schema):
    data = fields.List(fields.Nested(UserPublicSchema))
    pagination = fields.Nested(PaginationSchema)


def flatten_messages(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested error dict as {"field" or "a.b": ["message", ...]}."""
    flat: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = "_body" if key == "_schema" else str(key)
            flat.update(flatten_messages(value, f"{prefix}{name}" if not prefix else f"{prefix}.{name}"))
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        flat[prefix or "_body"] = [str(m) for m in messages]
    elif isinstance(messages, list):
        for index, value in enumerate(messages):
            flat.update(flatten_messages(value, f"{prefix}.{index}"))
    else:
        flat[prefix or "_body"] = [str(messages)]
    return flat


user_public = UserPublicSchema()
user_private = UserPrivateSchema()


# --- channel: stream key, settings, streams, categories ----------------------------------------

class StreamKeySchema(Schema):
    stream_key = fields.String()
    rtmp_url = fields.String()
    updated_at = UTCDateTime()


class StreamSettingsSchema(StrictSchema):
    title = Text(140)
    description = Text(5000)
    category_id = Int64(allow_none=True, validate=validate.Range(min=1, max=2**62))
    is_private = StrictBoolean()
    source_passthrough = StrictBoolean()
    updated_at = UTCDateTime(dump_only=True)


class StreamCreateSchema(StrictSchema):
    title = Text(140, required=True, min_length=1)
    description = Text(5000)
    category_id = Int64(allow_none=True, validate=validate.Range(min=1, max=2**62))
    is_private = StrictBoolean()


class StreamUpdateSchema(StrictSchema):
    title = Text(140, min_length=1)
    description = Text(5000)
    category_id = Int64(allow_none=True, validate=validate.Range(min=1, max=2**62))
    is_private = StrictBoolean()


class StreamListQuerySchema(PageQuerySchema):
    category_id = Int64(validate=validate.Range(min=1, max=2**62))
    username = fields.String(validate=validate.Length(min=1, max=30))
    q = fields.String(validate=validate.Length(min=1, max=100))
    is_live = fields.Boolean(load_default=True)
    sort = fields.String(load_default="viewers",
                         validate=validate.OneOf(["viewers", "started_at", "created_at"]))


# Query schemas are stateless: one instance serves every request.
page_query = PageQuerySchema()
stream_list_query = StreamListQuerySchema()


class CategoryRefSchema(CompiledDump):
    id = fields.Integer()
    name = fields.String()


class PlaybackSchema(Schema):
    hls = fields.String()


class StreamSchema(CompiledDump):
    """A stream; a live private stream's playback URL is signed and expires (nginx secure_link)."""

    id = fields.Integer()
    user = fields.Method("dump_user")
    title = fields.String()
    description = fields.String()
    thumbnail = fields.Method("dump_thumbnail", allow_none=True)
    category = fields.Method("dump_category")
    is_live = fields.Boolean()
    viewers_count = fields.Integer()
    is_private = fields.Boolean()
    started_at = UTCDateTime(allow_none=True)
    ended_at = UTCDateTime(allow_none=True)
    created_at = UTCDateTime()
    updated_at = UTCDateTime()
    playback = fields.Method("dump_playback")

    def __init__(self, *args: Any, playback_secret: str = "", playback_ttl: int = 21600,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.playback_secret = playback_secret
        self.playback_ttl = playback_ttl

    def dump_user(self, stream: Any) -> dict[str, Any]:
        return {"id": stream.user_id, "username": stream.username, "avatar": stream.user_avatar,
                "bio": stream.user_bio, "followers_count": stream.user_followers_count,
                "created_at": utc_iso(stream.user_created_at), "is_live": stream.user_is_live}

    def dump_thumbnail(self, stream: Any) -> str | None:
        if stream.is_private:
            return sign_thumbnail(stream.thumbnail, stream.id, self.playback_secret,
                                  self.playback_ttl)
        return stream.thumbnail

    def dump_category(self, stream: Any) -> dict[str, Any] | None:
        if stream.category_id is None:
            return None
        return {"id": stream.category_id, "name": stream.category_name}

    def dump_playback(self, stream: Any) -> dict[str, str] | None:
        if not stream.is_live:
            return None
        if stream.is_private:
            return {"hls": sign_playback(stream.id, self.playback_secret, self.playback_ttl)}
        return {"hls": public_playback(stream.id)}


class StreamListSchema(Schema):
    data = fields.List(fields.Nested(StreamSchema))
    pagination = fields.Nested(PaginationSchema)


class CategorySchema(CompiledDump):
    id = fields.Integer()
    name = fields.String()
    description = fields.String()
    thumbnail = fields.String(allow_none=True)
    viewers_count = fields.Integer()
    created_at = UTCDateTime()
    updated_at = UTCDateTime()


class CategoryListSchema(Schema):
    data = fields.List(fields.Nested(CategorySchema))
    pagination = fields.Nested(PaginationSchema)


def page(items: list[Any], next_cursor: str | None, schema: Schema) -> dict[str, Any]:
    """The API.md list shape."""
    return {"data": schema.dump(items, many=True), "pagination": {"next_cursor": next_cursor}}


category_schema = CategorySchema()


class WsTicketSchema(Schema):
    ticket = fields.String()
    expires_in = fields.Integer()


# --- statistics --------------------------------------------------------------------------------

class StatisticsQuerySchema(StrictSchema):
    """The statistics endpoints take no query parameters (an unknown one is a 422)."""


class ViewerSampleSchema(Schema):
    ts = UTCDateTime()
    viewers = fields.Integer()


class StreamStatisticsSchema(Schema):
    """A stream's statistics; `timeline` (one sample about every 10 s) only for its owner."""

    stream_id = fields.Integer()
    peak_viewers = fields.Integer()
    average_viewers = fields.Float(metadata={"description": "mean of the samples"})
    unique_viewers = fields.Integer(metadata={"description": "distinct viewers (estimate)"})
    watch_time_seconds = fields.Integer(metadata={"description": "viewer-seconds"})
    duration_seconds = fields.Integer(metadata={"description": "started_at to ended_at (or now)"})
    followers_gained = fields.Integer(metadata={"description": "net new followers while live"})
    timeline = fields.List(fields.Nested(ViewerSampleSchema))


class UserStatisticsSchema(Schema):
    """A channel's totals over its streams that went live (public ones, unless your own)."""

    username = fields.String()
    followers_count = fields.Integer()
    total_streams = fields.Integer()
    total_stream_seconds = fields.Integer()
    total_watch_time_seconds = fields.Integer()
    peak_viewers = fields.Integer()
    average_viewers = fields.Float()
    last_stream_at = UTCDateTime(allow_none=True)
