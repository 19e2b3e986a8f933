"""Operator commands: `sf categories ...` and `sf keys rotate` (no public write endpoints)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from sf.cache import Cache
from sf.channels import CATEGORIES_NAMESPACE, STREAMS_NAMESPACE
from sf.config import Config
from sf.db import categories as categories_db
from sf.db import stream_keys as keys_db
from sf.db.pool import create_pool
from sf.schemas import category_schema
from sf.security import StreamKeyCipher


def add_parsers(sub: Any) -> None:
    categories = sub.add_parser("categories", help="manage categories")
    actions = categories.add_subparsers(dest="action", required=True)
    actions.add_parser("list")
    add = actions.add_parser("add")
    add.add_argument("name")
    add.add_argument("--description", default="")
    add.add_argument("--thumbnail")
    update = actions.add_parser("update")
    update.add_argument("id", type=int)
    update.add_argument("--name")
    update.add_argument("--description")
    update.add_argument("--thumbnail")
    remove = actions.add_parser("remove")
    remove.add_argument("id", type=int)
    keys = sub.add_parser("keys", help="stream key encryption")
    keys.add_argument("action", choices=["rotate"],
                      help="re-encrypt every stream key with the first SF_STREAM_KEY_ENCRYPTION_KEYS key")


async def run_categories(config: Config, args: argparse.Namespace) -> Any:
    """Carry out one categories action; returns what it prints."""
    from redis.asyncio import Redis

    db = await create_pool(config.replace(database_pool_min=1, database_pool_max=2))
    redis = Redis.from_url(config.redis_url)
    try:
        if args.action == "list":
            items, _ = await categories_db.list_categories(db, 100, None)
            result: Any = category_schema.dump(items, many=True)
        elif args.action == "add":
            result = category_schema.dump(await categories_db.add_category(
                db, args.name, args.description, args.thumbnail))
        elif args.action == "update":
            changes = {k: v for k, v in (("name", args.name), ("description", args.description),
                                         ("thumbnail", args.thumbnail)) if v is not None}
            result = category_schema.dump(
                await categories_db.update_category(db, args.id, changes))
        else:
            moved = await categories_db.remove_category(db, args.id)
            result = {"removed": args.id, "streams_moved_to_no_category": moved}
        cache = Cache(redis, config.cache_ttl)
        await cache.bump(CATEGORIES_NAMESPACE)
        await cache.bump(STREAMS_NAMESPACE)
        return result
    finally:
        await db.close()
        await redis.aclose()


async def rotate_keys(config: Config) -> int:
    db = await create_pool(config.replace(database_pool_min=1, database_pool_max=2))
    try:
        cipher = StreamKeyCipher(config.stream_key_encryption_keys, config.stream_key_lookup_secret)
        return await keys_db.rotate_encryption(db, cipher)
    finally:
        await db.close()


def cmd_categories(config: Config, args: argparse.Namespace) -> int:
    print(json.dumps(asyncio.run(run_categories(config, args)), indent=2, ensure_ascii=False))
    return 0


def cmd_keys(config: Config, args: argparse.Namespace) -> int:
    changed = asyncio.run(rotate_keys(config))
    print(f"re-encrypted {changed} stream key(s)")
    return 0
