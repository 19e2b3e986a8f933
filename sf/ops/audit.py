"""The audit log of operator commands that read or restore people's data: one JSON line per
command run (who, what, when, which account, how it ended), appended to SF_AUDIT_LOG_FILE
(`var/log/audit.jsonl`), fsynced before the command reports, and logged as well.

Any `sf` command that reads, exports, erases or restores a person's data calls `audit` (or
wraps its work in `audited`). "Who" is SF_OPERATOR when set, else the OS user running it;
both are written when they differ.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sf.config import Config

log = logging.getLogger("sf.audit")


def os_user() -> str:
    """The OS account running this process."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def audit(config: Config, action: str, account: int | str | None = None,
          details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Append one audit line (and log it); the line written.

    `account` is the account the command concerns (an id or user name), None for a command
    over every account (a backup); `details` say what else identifies the act (a file, a
    count, the outcome) and never hold personal data themselves.
    """
    user = os_user()
    entry: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "operator": config.operator or user, "os_user": user, "host": socket.gethostname(),
        "action": action, "account": account if account is not None else "*",
        "details": details or {}}
    append_line(config.audit_log_file, json.dumps(entry, ensure_ascii=False, sort_keys=True))
    log.info("audit", extra={"action": action, "operator": entry["operator"],
                             "account": entry["account"]})
    return entry


@contextlib.contextmanager
def audited(config: Config, action: str, account: int | str | None = None,
            details: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Audit a command's work: a `started` line before it (a log that cannot be written stops
    the command before it reads anything) and one when it ended, with `outcome` (`ok`, or
    the error's type) among the details; the caller may add details to the dict it is given."""
    found: dict[str, Any] = dict(details or {})
    audit(config, action, account, {**found, "outcome": "started"})
    try:
        yield found
    except BaseException as error:
        found["outcome"] = f"failed: {type(error).__name__}"
        audit(config, action, account, found)
        raise
    found["outcome"] = "ok"
    audit(config, action, account, found)


def append_line(path: Path, line: str) -> None:
    """Append `line` to an append-only file (mode 600, made with its directory), durably."""
    created = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, (line + "\n").encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    if created:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
