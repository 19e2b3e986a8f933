"""`sf privacy purge`: one round of the scheduled personal data jobs (address retention,
expired and stale exports, erasure) from the command line, under the same lock as the nodes'
runners, printed as JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from sf.config import Config
from sf.ops.audit import audited
from sf.services.container import start_services


def add_parsers(sub: Any) -> None:
    privacy = sub.add_parser("privacy", help="personal data jobs")
    actions = privacy.add_subparsers(dest="action", required=True)
    purge = actions.add_parser(
        "purge", help="run the scheduled jobs once now (retention, expired exports, erasure)")
    purge.add_argument("--wait", type=float, default=120.0,
                       help="seconds to wait for a round running on a node to finish")


async def purge(config: Config, wait: float) -> dict[str, Any]:
    """One round of every scheduled job; what each did, or why none ran."""
    services = await start_services(config.replace(database_pool_min=1, database_pool_max=2))
    try:
        started = datetime.now(UTC)
        report = await services.jobs.run_round_waiting(wait)
        if report is None:
            return {"ran": False, "error": f"another round held the jobs lock for {wait:g} s"}
        return {"ran": True, "started_at": started.isoformat(), "jobs": report}
    finally:
        await services.exports.stop()
        await services.close()


def cmd_privacy(config: Config, args: argparse.Namespace) -> int:
    # Destroys people's data (erasures, addresses, archives): audited like backup and restore.
    with audited(config, "privacy_purge") as details:
        result = asyncio.run(purge(config, args.wait))
        if result["ran"]:
            details["erased"] = (result["jobs"].get("erasure") or {}).get("erased")
    print(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    return 0 if result["ran"] and not any(
        isinstance(done, dict) and "error" in done for done in result["jobs"].values()) else 1
