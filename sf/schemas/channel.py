"""A channel owner's own resources under /api/stream: the stream key and the settings the next
stream starts with."""

from __future__ import annotations

from marshmallow import Schema, fields

from sf.schemas.common import ROW_ID_RANGE, Int64, StrictBoolean, StrictSchema, Text
from sf.schemas.dump import UTCDateTime


class StreamKeySchema(Schema):
    stream_key = fields.String()
    rtmp_url = fields.String()
    updated_at = UTCDateTime()


class StreamSettingsSchema(StrictSchema):
    title = Text(140)
    description = Text(5000)
    category_id = Int64(allow_none=True, validate=ROW_ID_RANGE)
    is_private = StrictBoolean()
    source_passthrough = StrictBoolean()
    updated_at = UTCDateTime(dump_only=True)
