"""Streams: creating, changing and listing them, and a stream as answered (with its signed
playback URL when private)."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from sf.media.hls import public_playback, sign_playback, sign_thumbnail
from sf.schemas.common import ROW_ID_RANGE, Int64, Storable, StrictBoolean, StrictSchema, Text
from sf.schemas.dump import CompiledDump, UTCDateTime, utc_iso
from sf.schemas.pagination import PageQuerySchema, PaginationSchema


class StreamCreateSchema(StrictSchema):
    title = Text(140, required=True, min_length=1)
    description = Text(5000)
    category_id = Int64(allow_none=True, validate=ROW_ID_RANGE)
    is_private = StrictBoolean()


class StreamUpdateSchema(StrictSchema):
    title = Text(140, min_length=1)
    description = Text(5000)
    category_id = Int64(allow_none=True, validate=ROW_ID_RANGE)
    is_private = StrictBoolean()


class StreamListQuerySchema(PageQuerySchema):
    category_id = Int64(validate=ROW_ID_RANGE)
    username = Storable(1, 30)
    q = Storable(1, 100, metadata={"description": "title search"})
    is_live = fields.Boolean(load_default=True)
    sort = fields.String(load_default="viewers",
                         validate=validate.OneOf(["viewers", "started_at", "created_at"]))


class CategoryStreamListQuerySchema(StreamListQuerySchema):
    """The stream-list query of a category's streams: the category is the path's."""

    class Meta(StreamListQuerySchema.Meta):
        exclude = ("category_id",)


# Query schemas are stateless: one instance serves every request.
stream_list_query = StreamListQuerySchema()
category_stream_list_query = CategoryStreamListQuerySchema()


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
