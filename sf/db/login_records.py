"""Login records: one row per sign-in of a session (where from, with what), for the owner's
export; their addresses are erased after SF_IP_RETENTION_DAYS (`erase_addresses_before`)."""

from __future__ import annotations

import ipaddress
from datetime import datetime

from sf.db.sql import Executor

KINDS = ("register", "login", "password_reset")
USER_AGENT_MAX = 512  # the column's CHECK


async def record(db: Executor, user_id: int, session_id: str, kind: str, ip: str | None,
                 user_agent: str) -> None:
    """Note that session `session_id` of the user signed in (`kind`) from `ip` with
    `user_agent` (cut to the column's 512 characters). An `ip` PostgreSQL cannot read as an
    address (a Unix socket peer) is stored as NULL."""
    if kind not in KINDS:
        raise ValueError(f"not a sign-in kind: {kind!r}")
    try:
        address: str | None = str(ipaddress.ip_address(ip or ""))
    except ValueError:
        address = None
    await db.execute(
        "INSERT INTO login_records (user_id, session_id, kind, ip, user_agent)"
        " VALUES ($1, $2, $3, $4::inet, $5)",
        user_id, session_id, kind, address, user_agent.replace("\x00", "")[:USER_AGENT_MAX])


async def erase_addresses_before(db: Executor, before: datetime) -> int:
    """Set the address of every record made before `before` to NULL; how many were erased."""
    result = await db.execute(
        "UPDATE login_records SET ip = NULL WHERE ip IS NOT NULL AND created_at < $1", before)
    return int(result.split()[-1])
