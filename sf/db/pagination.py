"""Opaque keyset cursors: (sort name, sort value, row id), base64url-encoded JSON."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from sf.errors import validation_error


def encode_cursor(sort: str, value: Any, row_id: int) -> str:
    if isinstance(value, datetime):
        value = value.isoformat()
    raw = json.dumps([sort, value, row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str, kind: type) -> tuple[Any, int]:
    """(sort value, id) of a cursor made for this sort; a 422 on anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        cursor_sort, value, row_id = json.loads(raw)
        if cursor_sort != sort or not isinstance(row_id, int):
            raise ValueError
        if kind is datetime:
            value = datetime.fromisoformat(value)
        elif not isinstance(value, int) or isinstance(value, bool):
            raise ValueError
        return value, row_id
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise validation_error("cursor", "invalid cursor") from None
