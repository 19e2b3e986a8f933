"""The files of `sf backup`: PostgreSQL dumps named by the time they were taken, each with a
SHA-256 checksum beside it. Shared by the backup commands (sf/ops/backup.py) and the freshness
metric every API process exports (sf/services/monitoring.py).
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path

BACKUP_NAME = re.compile(r"^sf-(\d{8}T\d{6}\.\d{3})Z\.dump$")  # sf-20250101T033000.123Z.dump
CHECKSUM_SUFFIX = ".sha256"  # beside each dump, in `sha256sum` format
_SHA256 = re.compile(r"[0-9a-f]{64}")


def backup_time(name: str) -> float | None:
    """When the backup file `name` was taken (Unix time), or None if it is not a backup's name."""
    match = BACKUP_NAME.match(name)
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%S.%f").replace(tzinfo=UTC).timestamp()


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_path(dump: Path) -> Path:
    """The `sha256sum`-format file beside a dump."""
    return dump.with_name(dump.name + CHECKSUM_SUFFIX)


def recorded_sha256(dump: Path) -> str | None:
    """The digest written beside `dump`, or None when its checksum file is missing or malformed."""
    try:
        words = checksum_path(dump).read_text().split()
    except (OSError, UnicodeDecodeError):
        return None
    digest = words[0].lower() if words else ""
    return digest if _SHA256.fullmatch(digest) else None
