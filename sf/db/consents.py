"""Consents: each acceptance of a versioned document (the privacy policy), kept as given."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sf.db.sql import Executor

PRIVACY_POLICY = "privacy_policy"


@dataclass(frozen=True)
class Consent:
    """One acceptance: who, of which document (`purpose`) in which version, when."""

    user_id: int
    purpose: str
    version: str
    accepted_at: datetime


async def record_consent(db: Executor, user_id: int, purpose: str, version: str) -> Consent:
    """Keep one acceptance (every acceptance is a row: the history stays)."""
    row = await db.fetchrow(
        "INSERT INTO consents (user_id, purpose, version) VALUES ($1, $2, $3)"
        " RETURNING user_id, purpose, version, accepted_at", user_id, purpose, version)
    return Consent(**dict(row))


async def consents_of(db: Executor, user_id: int) -> list[Consent]:
    """Every acceptance of a user, newest first (for an export)."""
    rows = await db.fetch(
        "SELECT user_id, purpose, version, accepted_at FROM consents WHERE user_id = $1"
        " ORDER BY accepted_at DESC, id DESC", user_id)
    return [Consent(**dict(row)) for row in rows]
