"""Categories (API.md "Categories"): public reads only; admins use `sf categories`."""

from __future__ import annotations

from typing import Any

from sf.db import categories as categories_db
from sf.handlers.base import APIHandler
from sf.handlers.streams import StreamListMixin
from sf.schemas import PageQuerySchema, category_schema, page


def category_page(items: list[Any], cursor: str | None) -> dict[str, Any]:
    return page(items, cursor, category_schema)


class CategoriesHandler(APIHandler):
    auth = "optional"

    async def get(self) -> None:
        """Categories, most watched first, then by name.
        ---
        summary: List categories
        tags: [categories]
        parameters:
          - {in: query, name: limit, schema: {type: integer, minimum: 1, maximum: 100}}
          - {in: query, name: cursor, schema: {type: string, pattern: '^[A-Za-z0-9_-]{0,200}$'}, description: the `next_cursor` of the previous page (opaque; it belongs to one sort order)}
        responses:
          200: {description: A page of categories, content: {application/json: {schema: CategoryListSchema}}}
        """
        query = self.parse_query(PageQuerySchema())
        self.write_json(await self.services.channels.list_categories(
            query["limit"], query["cursor"], category_page))


class CategoryHandler(APIHandler):
    auth = "optional"

    async def get(self, category_id: str) -> None:
        """One category.
        ---
        summary: Get category
        tags: [categories]
        responses:
          200: {description: Category, content: {application/json: {schema: CategorySchema}}}
          404: {description: No such category, content: {application/json: {schema: ErrorSchema}}}
        """
        category = await categories_db.get_category(self.db, int(category_id))
        self.write_json(category_schema.dump(category))


class CategoryStreamsHandler(StreamListMixin):
    auth = "optional"

    async def get(self, category_id: str) -> None:
        """Live streams in a category (same filters as GET /api/streams).
        ---
        summary: Streams of a category
        tags: [categories]
        responses:
          200: {description: A page of streams, content: {application/json: {schema: StreamListSchema}}}
          404: {description: No such category, content: {application/json: {schema: ErrorSchema}}}
        """
        await categories_db.get_category(self.db, int(category_id))
        await self.write_stream_list(category_id=int(category_id))


CATEGORY_ID = r"(?P<category_id>\d{1,18})"

routes = [
    (r"/api/categories", CategoriesHandler),
    (rf"/api/categories/{CATEGORY_ID}", CategoryHandler),
    (rf"/api/categories/{CATEGORY_ID}/streams", CategoryStreamsHandler),
]
