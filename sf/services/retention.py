"""Address retention: client addresses stored with login records and streams' publish ranges
are erased once older than SF_IP_RETENTION_DAYS (a scheduled job, `sf/services/jobs.py`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from sf.db import login_records
from sf.db import streams as streams_db


class AddressRetention:
    """Erases client addresses older than the retention period."""

    def __init__(self, db: asyncpg.Pool, days: int) -> None:
        self.db = db
        self.days = days

    async def erase_expired(self, now: datetime | None = None) -> dict[str, Any]:
        """Erase what is older than the retention at `now` (the present by default); how many
        of each were erased."""
        before = (now or datetime.now(UTC)) - timedelta(days=self.days)
        return {
            "login_record_addresses": await login_records.erase_addresses_before(self.db, before),
            "stream_publish_ranges": await streams_db.erase_publish_ranges_before(self.db, before),
        }
