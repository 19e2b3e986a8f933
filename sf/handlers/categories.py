"""Categories (API.md "Categories"): public reads only; admins use `sf categories`."""

from __future__ import annotations

from typing import Any

from sf.db import categories as categories_db
from sf.handlers.base import APIHandler
from sf.handlers.streams import StreamListMixin
from sf.schemas import category_schema, category_stream_list_query, page, page_query
from sf.security import TokenClaims


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
          - {in: query, schema: PageQuerySchema}
        responses:
          200: {description: A page of categories, content: {application/json: {schema: CategoryListSchema}}}
        """
        query = self.parse_query(page_query)
        self.write_json(await self.services.categories.list_categories(
            query["limit"], query["cursor"], category_page, self.prefetched))

    def cache_reads(self, claims: TokenClaims | None) -> tuple[str | None, tuple[str, ...]]:
        query = self.parse_query(page_query)
        return self.services.categories.category_list_reads(query["limit"], query["cursor"])


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
    query_schema = category_stream_list_query

    async def get(self, category_id: str) -> None:
        """Live streams in a category (same filters as GET /api/streams).
        ---
        summary: Streams of a category
        tags: [categories]
        parameters:
          - {in: query, schema: CategoryStreamListQuerySchema}
        responses:
          200: {description: A page of streams, content: {application/json: {schema: StreamListSchema}}}
          404: {description: No such category, content: {application/json: {schema: ErrorSchema}}}
          422: {description: Bad filter or cursor, content: {application/json: {schema: ErrorSchema}}}
        """
        await self.write_stream_list()

    def fixed_filters(self) -> dict[str, Any]:
        return {"category_id": int(self.path_kwargs["category_id"])}

    async def check_listing(self) -> None:
        """404 for a category that does not exist (checked when a page is computed: a cached
        page was computed after the check, and removing a category empties the cache)."""
        await categories_db.get_category(self.db, int(self.path_kwargs["category_id"]))


CATEGORY_ID = r"(?P<category_id>\d{1,18})"

routes = [
    (r"/api/categories", CategoriesHandler),
    (rf"/api/categories/{CATEGORY_ID}", CategoryHandler),
    (rf"/api/categories/{CATEGORY_ID}/streams", CategoryStreamsHandler),
]
