"""Consent use-cases: the operator's privacy policy (a versioned document under conf/) and
each user's acceptance of it, kept in the consents table."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from sf.cache import STREAMS_NAMESPACE, Cache
from sf.config import ConfigError
from sf.db import consents as consents_db
from sf.db.consents import PRIVACY_POLICY
from sf.db.sql import Executor
from sf.errors import validation_error
from sf.schemas.users import POLICY_VERSION_RE

_FRONT_MATTER = re.compile(r"\A---\n(?P<head>.*?)\n---\n(?P<text>.*)\Z", re.DOTALL)


@dataclass(frozen=True)
class PrivacyPolicy:
    """One version of the operator's privacy policy."""

    version: str
    effective_at: datetime
    text: str


def load_privacy_policy(path: Path) -> PrivacyPolicy:
    """Read the policy file: a front matter of `key: value` lines (`version`, `effective_at`
    in ISO 8601) between `---` lines, then the text. ConfigError, naming the file, otherwise:
    a node must not start with a policy nobody can accept."""
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"SF_PRIVACY_POLICY_FILE: cannot read {path}: {exc}") from None
    match = _FRONT_MATTER.match(content.replace("\r\n", "\n"))
    if not match:
        raise ConfigError(f"SF_PRIVACY_POLICY_FILE: {path} does not start with a front matter "
                          "(---, version: ..., effective_at: ..., ---)")
    head = {}
    for line in match.group("head").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            head[key.strip()] = value.strip()
    version = head.get("version", "")
    if not POLICY_VERSION_RE.match(version):
        raise ConfigError(f"SF_PRIVACY_POLICY_FILE: {path}: `version` must be 1-64 letters, "
                          "digits, dots, dashes or underscores")
    effective_at: datetime | None
    try:
        effective_at = datetime.fromisoformat(head.get("effective_at", "").replace("Z", "+00:00"))
    except ValueError:
        effective_at = None
    if effective_at is None or effective_at.tzinfo is None:
        raise ConfigError(f"SF_PRIVACY_POLICY_FILE: {path}: `effective_at` must be an ISO 8601 "
                          "time with its zone (e.g. 2026-12-01T00:00:00Z)")
    return PrivacyPolicy(version, effective_at, match.group("text").strip() + "\n")


class ConsentService:
    """The current privacy policy, and the acceptances of it users give."""

    def __init__(self, db: asyncpg.Pool, cache: Cache, policy: PrivacyPolicy) -> None:
        self.db = db
        self.cache = cache
        self.policy = policy

    def check_current(self, version: str, field: str) -> None:
        """422 on `field` unless `version` is the current policy's (it names the current one)."""
        if version != self.policy.version:
            raise validation_error(
                field, f"must be the current privacy policy version, {self.policy.version!r} "
                       "(GET /api/legal/privacy-policy)")

    async def record_acceptance(self, db: Executor, user_id: int, version: str,
                                field: str) -> None:
        """Keep the user's acceptance of the current policy (on `db`: registration passes its
        transaction's connection)."""
        self.check_current(version, field)
        await consents_db.record_consent(db, user_id, PRIVACY_POLICY, version)

    async def accept_privacy_policy(self, user_id: int, version: str) -> None:
        """A signed-in user accepts the current policy; their cached profile changes with it."""
        await self.record_acceptance(self.db, user_id, version, "privacy_policy")
        await self.cache.bump(STREAMS_NAMESPACE)  # the own profile is cached under it
