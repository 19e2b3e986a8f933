"""Viewer statistics of a stream and of a channel."""

from __future__ import annotations

from marshmallow import Schema, fields

from sf.schemas.common import StrictSchema
from sf.schemas.dump import UTCDateTime


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
