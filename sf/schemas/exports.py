"""Personal data exports: as requested, as listed, and the signed download link's query."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, post_dump, validate

from sf.schemas.common import END, Int64, StrictSchema
from sf.schemas.dump import UTCDateTime
from sf.schemas.pagination import PaginationSchema

EXPORT_STATUSES = ("pending", "ready", "failed")


class ExportCreatedSchema(Schema):
    """A requested export: built in the background, then listed as `ready` with its link."""

    id = fields.Integer()
    status = fields.String(validate=validate.OneOf(EXPORT_STATUSES))


class ExportSchema(ExportCreatedSchema):
    """An export as its owner sees it; `download_url` only while it is ready."""

    created_at = UTCDateTime()
    expires_at = UTCDateTime(allow_none=True, metadata={
        "description": "when a ready (or failed) export and its file are deleted"})
    download_url = fields.String(metadata={
        "description": "signed link to the ZIP (JSON files and the avatar), valid until "
                       "`expires_at`; present only when `status` is `ready`"})

    @post_dump
    def _without_missing_link(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if data.get("download_url") is None:
            data.pop("download_url", None)
        return data


class ExportListSchema(Schema):
    data = fields.List(fields.Nested(ExportSchema))
    pagination = fields.Nested(PaginationSchema)


class ExportDownloadQuerySchema(StrictSchema):
    """The query of a signed download link, exactly as the export list gave it."""

    expires = Int64(required=True, validate=validate.Range(min=0, max=2**40),
                    metadata={"description": "the link's expiry (Unix seconds)"})
    signature = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9_-]{43}\Z"),
                              metadata={"pattern": rf"^[A-Za-z0-9_-]{{43}}{END}"})


export_created = ExportCreatedSchema()
export_schema = ExportSchema()
export_download_query = ExportDownloadQuerySchema()
