"""Input checks: what every request body, query string and path parameter must satisfy before
a marshmallow schema sees it (no NUL, no lone surrogate, finite numbers, strict JSON, a body
within its limit), and the memo of parsed query strings."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from typing import Any

import tornado.httputil
from marshmallow import Schema, ValidationError

from sf.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from sf.schemas import flatten_messages


def is_row_id(text: str) -> bool:
    """A decimal id in bigserial's range (1..2^63-1)."""
    return text.isascii() and text.isdigit() and len(text) <= 19 and 0 < int(text) <= 2**63 - 1


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored or echoed (NUL, lone surrogate), or None.

    PostgreSQL text refuses NUL, and a lone surrogate (JSON "\\ud800") has no UTF-8 encoding:
    both would fail deep in the database driver or the JSON writer instead of as a 422.
    """
    if "\x00" in text:
        return "must not contain NUL characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (no lone surrogates)"
    return None


def unstorable_input(data: Any) -> dict[str, list[str]]:
    """{field path: [message]} for every string (key or value) that `text_problem` refuses and
    every non-finite number, anywhere in a parsed body or query; walked without recursion."""
    problems: dict[str, list[str]] = {}
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, path = stack.pop()
        problem = None
        if isinstance(value, str):
            problem = text_problem(value)
        elif isinstance(value, float) and not math.isfinite(value):
            problem = "must be a finite number"
        elif isinstance(value, dict):
            for key, item in value.items():
                key_text = str(key)
                if text_problem(key_text):
                    problems.setdefault(path or "_body", ["field names must be valid text"])
                    continue
                stack.append((item, f"{path}.{key_text}" if path else key_text))
        elif isinstance(value, list):
            stack.extend((item, f"{path}.{index}" if path else str(index))
                         for index, item in enumerate(value))
        if problem:
            problems.setdefault(path or "_body", [problem])
    return problems


def _reject_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (RFC 8259), whatever Python's json module accepts."""
    raise ValueError(f"{name} is not JSON")


def check_body_size(request: tornado.httputil.HTTPServerRequest, limit: int) -> None:
    """PayloadTooLarge (413) for a body, read or announced, over `limit` bytes."""
    length = request.headers.get("Content-Length")
    size = len(request.body or b"")
    if length and length.isdigit():
        size = max(size, int(length))
    if size > limit:
        raise PayloadTooLarge(f"Request body exceeds {limit} bytes")


def load(schema: Schema, data: Any) -> dict[str, Any]:
    """`data` through `schema`; first, whatever no field may hold is refused (422)."""
    problems = unstorable_input(data)
    if problems:
        raise ValidationFailed("Invalid input", fields=problems)
    try:
        loaded: dict[str, Any] = schema.load(data)
        return loaded
    except ValidationError as exc:
        raise ValidationFailed("Invalid input", fields=flatten_messages(exc.messages)) from None


def parse_json(request: tornado.httputil.HTTPServerRequest, schema: Schema) -> dict[str, Any]:
    """The body as JSON, validated by `schema`: 415, 400 or 422 when it is not right."""
    content_type = request.headers.get("Content-Type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType("Expected Content-Type: application/json")
    try:
        data = json.loads(request.body or b"", parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("Request body is not valid JSON") from None
    except RecursionError:
        raise BadRequest("Request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise ValidationFailed("Invalid input", fields={"_body": ["expected a JSON object"]})
    return load(schema, data)


# Parsed query strings by (schema instance, query string): schemas are module-level instances.
_QUERIES: OrderedDict[tuple[Schema, str], dict[str, Any]] = OrderedDict()
_QUERIES_KEPT = 4096
# Only short ones: a request is parsed before its rate limit is counted, and thousands of
# long valid queries held ~33 MB a process (security.md#query-memo-memory). Pages' queries are short.
_QUERY_KEPT_LENGTH = 256


def parse_query(request: tornado.httputil.HTTPServerRequest, schema: Schema) -> dict[str, Any]:
    """The query string, validated by `schema` (repeated parameters are an error).

    Loaded once per (schema, query string) and remembered: a few query strings make most
    list requests (a directory's pages; `cache_reads` and the handler both ask), and a
    marshmallow load was 4% of one. Refused queries are not remembered; they raise each
    time."""
    key = (schema, request.query)
    loaded = _QUERIES.get(key)
    if loaded is not None:
        _QUERIES.move_to_end(key)
        return dict(loaded)
    loaded = _load_query(request, schema)
    if len(request.query) <= _QUERY_KEPT_LENGTH:
        _QUERIES[key] = loaded
        if len(_QUERIES) > _QUERIES_KEPT:
            _QUERIES.popitem(last=False)
    return dict(loaded)


def _load_query(request: tornado.httputil.HTTPServerRequest, schema: Schema) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, values in request.query_arguments.items():
        if len(values) > 1:
            raise ValidationFailed("Invalid input", fields={name: ["given more than once"]})
        try:
            data[name] = values[0].decode("utf-8")
        except UnicodeDecodeError:
            # Not text (%FF, or an encoded lone surrogate like %ED%A0%80): refused as in a body,
            # never turned into U+FFFD and searched for.
            raise ValidationFailed("Invalid input", fields={
                name: ["must be valid UTF-8 text (no lone surrogates)"]}) from None
    return load(schema, data)
