"""Answers, fast: marshmallow answer schemas compiled into plain per-field steps, and JSON as
bytes (cached answers are written as they are).

The schemas stay the one description of every answer (the OpenAPI document is generated from
them); only *how* they dump changes. marshmallow's generic dump walks hooks, accessors and
field machinery for every attribute of every item: in bench/api.py's profile of a logged-in
stream list it was 16% of the API process. `CompiledDump.dump` gives exactly what
`Schema.dump` gives (tests/test_fast_dump.py compares them field for field) for the field
kinds answers use; any other field kind falls back to the field's own `serialize`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import tornado.escape
from marshmallow import Schema, fields

_MISSING = object()
Step = tuple[str, Callable[[Any], Any]]


def utc_iso(value: datetime | None) -> str | None:
    """The API's time format (ISO 8601 in UTC with a `Z` suffix)."""
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class UTCDateTime(fields.DateTime):
    """ISO 8601 in UTC with a `Z` suffix."""

    def _serialize(self, value: Any, attr: Any, obj: Any, **kwargs: Any) -> str | None:
        return utc_iso(value)


def encode_json(value: Any) -> bytes:
    """An answer as JSON bytes, exactly as Tornado's `json_encode` writes it (the answers stay
    byte for byte what they were; orjson would write compact JSON with raw UTF-8): `</` is
    written `<\\/` so that no text in an answer can close a script element it is embedded in."""
    return tornado.escape.json_encode(value).encode()


def _attribute(attribute: str) -> Callable[[Any], Any]:
    def get(obj: Any) -> Any:
        if isinstance(obj, dict):
            return obj.get(attribute, _MISSING)
        return getattr(obj, attribute, _MISSING)
    return get


def _converter(field: fields.Field) -> Callable[[Any], Any] | None:
    """How a present, non-None value of this field kind is dumped; None: the field decides."""
    if isinstance(field, UTCDateTime):
        return utc_iso
    if isinstance(field, fields.Integer) and not field.as_string:
        return int
    if isinstance(field, fields.Float) and not field.as_string:
        return float
    if isinstance(field, fields.Boolean):
        return lambda value: (True if value in field.truthy else
                              False if value in field.falsy else bool(value))
    if type(field) is fields.String:
        return str
    if (isinstance(field, fields.Nested) and isinstance(field.schema, CompiledDump)
            and not field.only and not field.exclude):
        nested = field.schema
        return lambda value: nested.dump(value, many=field.many)
    return None


def _step(schema: Schema, name: str, field: fields.Field) -> Step:
    key = field.data_key or name
    if isinstance(field, fields.Method):
        method = getattr(schema, str(field.serialize_method_name))
        return key, method
    convert = _converter(field)
    if convert is None:
        return key, lambda obj: field.serialize(name, obj, accessor=schema.get_attribute)
    get = _attribute(field.attribute or name)

    def step(obj: Any) -> Any:
        value = get(obj)
        if value is None or value is _MISSING:
            return value
        return convert(value)
    return key, step


class CompiledDump(Schema):
    """A marshmallow schema whose `dump` runs precompiled steps (no hooks on these schemas:
    `_compile` refuses a schema with pre/post-dump hooks rather than skip them)."""

    _steps: list[Step] | None = None

    def _compile(self) -> list[Step]:
        if self._hooks.get("pre_dump") or self._hooks.get("post_dump"):
            raise TypeError(f"{type(self).__name__} has dump hooks; CompiledDump would skip them")
        self._steps = [_step(self, name, field) for name, field in self.dump_fields.items()]
        return self._steps

    def dump(self, obj: Any, *, many: bool | None = None) -> Any:
        steps = self._steps or self._compile()
        if many if many is not None else self.many:
            return [self._dump_one(steps, item) for item in obj]
        return self._dump_one(steps, obj)

    @staticmethod
    def _dump_one(steps: list[Step], obj: Any) -> dict[str, Any]:
        out = {}
        for key, step in steps:
            value = step(obj)
            if value is not _MISSING:
                out[key] = value
        return out
