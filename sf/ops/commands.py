"""Operator commands: `sf categories ...` and `sf keys rotate` (no public write endpoints).

`sf keys rotate` re-encrypts the stream keys and the e-mail addresses (one key ring).

They run on the same services as a node, so caches are invalidated the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from sf.config import Config
from sf.ops.audit import audited
from sf.schemas import category_schema
from sf.services.container import start_services


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
                      help="re-encrypt every stream key and e-mail address with the first "
                           "SF_STREAM_KEY_ENCRYPTION_KEYS key")


async def run_categories(config: Config, args: argparse.Namespace) -> Any:
    """Carry out one categories action through the category service; what it prints."""
    services = await start_services(config.replace(database_pool_min=1, database_pool_max=2))
    try:
        categories = services.categories
        if args.action == "list":
            result: Any = json.loads(await categories.list_categories(
                100, None, lambda items, _: category_schema.dump(items, many=True)))
        elif args.action == "add":
            result = category_schema.dump(await categories.add_category(
                args.name, args.description, args.thumbnail))
        elif args.action == "update":
            changes = {k: v for k, v in (("name", args.name), ("description", args.description),
                                         ("thumbnail", args.thumbnail)) if v is not None}
            result = category_schema.dump(await categories.update_category(args.id, changes))
        else:
            moved = await categories.remove_category(args.id)
            result = {"removed": args.id, "streams_moved_to_no_category": moved}
        return result
    finally:
        await services.close()


async def rotate_keys(config: Config) -> tuple[int, int]:
    """Re-encrypt under the first key; (stream keys, e-mail addresses) changed."""
    services = await start_services(config.replace(database_pool_min=1, database_pool_max=2))
    try:
        return (await services.stream_keys.rotate_key_encryption(),
                await services.accounts.rotate_email_encryption())
    finally:
        await services.close()


def cmd_categories(config: Config, args: argparse.Namespace) -> int:
    print(json.dumps(asyncio.run(run_categories(config, args)), indent=2, ensure_ascii=False))
    return 0


def cmd_keys(config: Config, args: argparse.Namespace) -> int:
    # Opens every stored address to seal it again: audited as a read of everyone's data.
    with audited(config, "keys_rotate") as details:
        keys, emails = asyncio.run(rotate_keys(config))
        details.update(stream_keys=keys, emails=emails)
    print(f"re-encrypted {keys} stream key(s) and {emails} e-mail address(es)")
    return 0
