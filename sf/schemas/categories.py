"""Categories as answered, one and a page of them."""

from __future__ import annotations

from marshmallow import Schema, fields

from sf.schemas.dump import CompiledDump, UTCDateTime
from sf.schemas.pagination import PaginationSchema


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


category_schema = CategorySchema()
