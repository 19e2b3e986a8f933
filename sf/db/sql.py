"""Small SQL-building helpers shared by the repositories."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeAlias

import asyncpg

# What a repository function runs its SQL on: the pool, or a connection in a transaction.
Executor: TypeAlias = asyncpg.Connection | asyncpg.Pool

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


def set_clause(changes: Mapping[str, object], first_param: int) -> str:
    """`a = $2, b = $3, updated_at = now()` for an UPDATE of the given columns.

    Column names come from validated schemas; anything not a plain identifier is refused so
    a name can never smuggle SQL in.
    """
    names = list(changes)
    for name in names:
        if not _IDENTIFIER.match(name):
            raise ValueError(f"not a column name: {name!r}")
    pairs = [f"{name} = ${index}" for index, name in enumerate(names, start=first_param)]
    return ", ".join([*pairs, "updated_at = now()"])
