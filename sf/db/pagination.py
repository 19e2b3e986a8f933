"""Opaque keyset cursors: (sort name, sort value, row id), base64url-encoded JSON."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from sf.errors import validation_error


def encode_cursor(sort: str, value: Any, row_id: int) -> str:
    if isinstance(value, datetime):
        value = value.isoformat()
    raw = json.dumps([sort, value, row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# Sort values and ids go straight into SQL parameters: a forged cursor must fail here (422),
# not overflow an integer or bigint column, or a timestamp, in the database driver (500).
ROW_ID_RANGE = (1, 2**63 - 1)          # bigserial
COUNT_RANGE = (0, 2**31 - 1)           # integer counters (viewers_count)


def _plain_int(value: Any, bounds: tuple[int, int]) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not bounds[0] <= value <= bounds[1]:
        raise ValueError
    return value


def decode_cursor(cursor: str, sort: str, kind: type,
                  value_range: tuple[int, int] = COUNT_RANGE) -> tuple[Any, int]:
    """(sort value, id) of a cursor made for this sort; a 422 on anything else.

    `kind` is `datetime` (an aware ISO 8601 time, returned in UTC) or `int` (within
    `value_range`, an integer column's by default).
    """
    try:
        raw = base64.urlsafe_b64decode(cursor.encode("ascii") + b"=" * (-len(cursor) % 4))
        decoded = json.loads(raw, parse_constant=_reject)
        if not isinstance(decoded, list) or len(decoded) != 3:
            raise ValueError
        cursor_sort, value, row_id = decoded
        if cursor_sort != sort:
            raise ValueError
        row_id = _plain_int(row_id, ROW_ID_RANGE)
        if kind is datetime:
            if not isinstance(value, str) or len(value) > 40 or not value.isascii() \
                    or not value.isprintable():
                raise ValueError
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None or moment.utcoffset() is None:
                raise ValueError
            value = moment.astimezone(UTC)
        else:
            value = _plain_int(value, value_range)
        return value, row_id
    except (ValueError, TypeError, OverflowError, RecursionError, binascii.Error,
            UnicodeError):
        raise validation_error("cursor", "invalid cursor") from None


def _reject(name: str) -> Any:
    raise ValueError(name)
