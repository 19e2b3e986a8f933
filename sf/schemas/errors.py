"""The error answer (`{"error": {"code", "message", "fields"?}}`) and marshmallow's messages
flattened into its `fields`."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields


class ErrorBodySchema(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    # `fields` would shadow Schema.fields: declare it under another name, dump it as "fields".
    field_errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()),
                               data_key="fields")


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBodySchema, required=True)


def flatten_messages(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested error dict as {"field" or "a.b": ["message", ...]}."""
    flat: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = "_body" if key == "_schema" else str(key)
            flat.update(flatten_messages(value, f"{prefix}{name}" if not prefix else f"{prefix}.{name}"))
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        flat[prefix or "_body"] = [str(m) for m in messages]
    elif isinstance(messages, list):
        for index, value in enumerate(messages):
            flat.update(flatten_messages(value, f"{prefix}.{index}"))
    else:
        flat[prefix or "_body"] = [str(messages)]
    return flat
