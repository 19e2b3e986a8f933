"""What every request schema is built from: the strict base schema, field types with their
limits, the validators behind them, and the JSON Schema patterns that state those validators in
the OpenAPI document (tests/test_openapi_constraints.py holds each pattern to its validator)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,20}")
# Control characters (C0 other than tab/newline, DEL, C1) have no place in text fields, nor
# do the bidirectional controls (embeddings, overrides, isolates and the invisible marks) that
# make a title display as something it is not (security.md#bidi-and-invisible-text).
_CONTROL_CHARS = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(rf"[{_CONTROL_CHARS}]")
# Invisible characters that are not whitespace to `str.strip`: text of these alone is blank.
# Unicode's default-ignorable characters of the BMP that are not refused above (soft hyphen,
# grapheme joiner, Hangul fillers, Khmer and Mongolian invisibles, zero-width spaces and
# joiners, invisible operators, variation selectors, the BOM), and the braille blank U+2800
# (security.md#bidi-and-invisible-text, security.md#chat-invisible-only). BMP only: the pattern
# below must read alike in every regex engine.
_INVISIBLE_CHARS = (r"\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200d\u2060-\u2065"
                    r"\u206a-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8")
_INVISIBLE = re.compile(rf"[{_INVISIBLE_CHARS}]")

# --- JSON Schema patterns ----------------------------------------------------------------------
# Written so that ECMA-262 (what OpenAPI names), Python's `re` (the server, schemathesis) and
# Rust's fancy-regex (jsonschema-rs, which schemathesis also uses) read them alike: `\uXXXX`
# escapes outside the surrogate range (Rust refuses `\ud800`) and `(?![\s\S])` for the end of
# the text, because Python's `$` also matches before a trailing newline ("alice\n"). Lone
# surrogates, which the API edge also refuses, are no Unicode scalar values, so no valid JSON
# string of a JSON Schema instance holds one.
END = r"(?![\s\S])"
# Any character a string may hold anywhere in a request: not NUL, which PostgreSQL text cannot
# store (the API edge refuses it in every string: handlers/inputs.py, `text_problem`).
STORABLE_CHAR = r"[^\x00]"
# A character of a text field (`no_control_chars`).
TEXT_CHAR = rf"[^{_CONTROL_CHARS}]"
STORABLE_PATTERN = rf"^{STORABLE_CHAR}*{END}"
TEXT_PATTERN = rf"^{TEXT_CHAR}*{END}"
# Not blank: at least one character that `str.strip` keeps (Python's `\S` is its complement)
# and that is not invisible.
NOT_BLANK_TEXT_PATTERN = rf"^(?=[\s\S]*[^\s{_INVISIBLE_CHARS}]){TEXT_CHAR}*{END}"


def no_control_chars(value: str) -> None:
    if _CONTROL.search(value):
        raise ValidationError("must not contain control characters")


def not_blank(value: str) -> None:
    if not _INVISIBLE.sub("", value).strip():
        raise ValidationError("must not be blank")


def case_insensitive_alternatives(words: Iterable[str]) -> str:
    """`(?:[aA][dD]...|...)`: ECMA-262 has no inline flag for ignoring case."""
    return "(?:" + "|".join(
        "".join(f"[{char.lower()}{char.upper()}]" if char.isalpha() else re.escape(char)
                for char in word)
        for word in sorted(words)) + ")"


def Storable(min_length: int, max_length: int, **kwargs: Any) -> fields.String:
    """A string with length bounds and nothing more than the API edge asks of every string."""
    return fields.String(validate=validate.Length(min=min_length, max=max_length),
                         metadata={"pattern": STORABLE_PATTERN, **kwargs.pop("metadata", {})},
                         **kwargs)


def Text(max_length: int, required: bool = False, min_length: int = 0, **kwargs: Any) -> fields.String:
    """A text field with length bounds and no control characters; when it may not be empty,
    whitespace alone does not count."""
    checks: list[Callable[[Any], Any]] = [validate.Length(min=min_length, max=max_length),
                                          no_control_chars]
    pattern = TEXT_PATTERN
    if min_length:
        checks.append(not_blank)
        pattern = NOT_BLANK_TEXT_PATTERN
    return fields.String(required=required, validate=checks, metadata={"pattern": pattern},
                         **kwargs)


class StrictBoolean(fields.Boolean):
    """A JSON true or false, not "yes", 1 or "on"."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class Int64(fields.Integer):
    """An integer that fits a PostgreSQL bigint: out of range is a 422, never an overflow in
    the database. Strings (query values) must be plain ASCII digits; booleans and fractions
    are refused rather than coerced."""

    minimum, maximum = INT64_MIN, INT64_MAX

    def __init__(self, **kwargs: Any) -> None:
        extra = kwargs.pop("validate", None)
        validators = [] if extra is None else list(extra) if isinstance(extra, list | tuple) else [extra]
        super().__init__(validate=[validate.Range(min=self.minimum, max=self.maximum), *validators],
                         **kwargs)

    def _validated(self, value: Any) -> int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()) \
                or (isinstance(value, str) and not _INTEGER_TEXT.fullmatch(value)):
            raise self.make_error("invalid", input=value)
        return super()._validated(value)


class Int32(Int64):
    """An integer that fits a PostgreSQL integer."""

    minimum, maximum = INT32_MIN, INT32_MAX


# A row id: positive, and at most 2**62 (a bigint with room to spare).
ROW_ID_RANGE = validate.Range(min=1, max=2**62)


class StrictSchema(Schema):
    """Rejects unknown fields (422)."""

    class Meta:
        unknown = RAISE
