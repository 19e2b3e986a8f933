"""Category use-cases: the category pages shared through the cache, and the operator's
changes to categories (`sf categories`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg

from sf.cache import CATEGORIES_NAMESPACE, Cache, Prefetched
from sf.db import categories as categories_db
from sf.db.categories import Category
from sf.schemas.dump import encode_json


class CategoryService:
    """The categories streams are filed under."""

    def __init__(self, db: asyncpg.Pool, cache: Cache) -> None:
        self.db = db
        self.cache = cache

    @staticmethod
    def category_list_reads(limit: int, cursor: str | None) -> tuple[str, tuple[str, ...]]:
        """The cache entry `list_categories` answers from, to read ahead (`Cache.reads`)."""
        return CATEGORIES_NAMESPACE, (f"{limit}:{cursor}",)

    async def list_categories(self, limit: int, cursor: str | None,
                              loader: Callable[[list[Any], str | None], Any],
                              prefetched: Prefetched | None = None) -> bytes:
        """A page of categories rendered by `loader`, as JSON shared through the cache."""
        async def compute() -> bytes:
            return encode_json(loader(*await categories_db.list_categories(self.db, limit, cursor)))

        namespace, (key,) = self.category_list_reads(limit, cursor)
        return await self.cache.get_or_set_in(namespace, key, compute, prefetched)

    async def add_category(self, name: str, description: str = "",
                           thumbnail: str | None = None) -> Category:
        category = await categories_db.add_category(self.db, name, description, thumbnail)
        await self.cache.forget_public_views()
        return category

    async def update_category(self, category_id: int, changes: dict[str, object]) -> Category:
        category = await categories_db.update_category(self.db, category_id, changes)
        await self.cache.forget_public_views()
        return category

    async def remove_category(self, category_id: int) -> int:
        """Remove a category; its streams move to none. How many streams moved."""
        moved = await categories_db.remove_category(self.db, category_id)
        await self.cache.forget_public_views()
        return moved
