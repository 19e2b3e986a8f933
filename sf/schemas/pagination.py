"""Keyset pagination: the page query (`limit`, `cursor`) and the list answer shape."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from sf.schemas.common import END, Int32, StrictSchema


class PageQuerySchema(StrictSchema):
    limit = Int32(load_default=20, validate=validate.Range(min=1, max=100))
    # A cursor is an opaque token the previous page handed out (URL-safe base64); one made up
    # or from another sort order is refused (422), which no schema can state.
    cursor = fields.String(load_default=None, validate=validate.Length(max=200), metadata={
        "pattern": rf"^[A-Za-z0-9_-]{{0,200}}{END}",
        "description": "the `next_cursor` of the previous page (opaque; it belongs to one sort "
                       "order; any other value is refused with 422)"})


class PaginationSchema(Schema):
    next_cursor = fields.String(allow_none=True)


def page(items: list[Any], next_cursor: str | None, schema: Schema) -> dict[str, Any]:
    """The API.md list shape."""
    return {"data": schema.dump(items, many=True), "pagination": {"next_cursor": next_cursor}}


# Query schemas are stateless: one instance serves every request.
page_query = PageQuerySchema()
