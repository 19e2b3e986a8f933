"""The OpenAPI document states the server's input rules: each pattern it carries accepts exactly
what the marshmallow validator behind it accepts (checked on hand-picked edge cases and on
generated text, with Python's `re` and jsonschema-rs), login says "exactly one of username or
email", and the query parameters come from the query schemas. No platform needed; the live
agreement is checked by tests/test_contract_fuzz.py (schemathesis' positive and negative data
checks)."""

from __future__ import annotations

import re

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from sf.app import collect_routes
from sf.handlers import docs
from sf.handlers.inputs import text_problem
from sf.schemas import LoginSchema, ProfileUpdateSchema, RegisterSchema, StreamCreateSchema
from sf.schemas.common import NOT_BLANK_TEXT_PATTERN, STORABLE_PATTERN, TEXT_PATTERN

DOCUMENT = docs.build_openapi(collect_routes(None))
COMPONENTS = DOCUMENT["components"]["schemas"]


def accepted(schema: type, field: str, value: str, **others: str) -> bool:
    """Whether the server takes `value` for `field` (the API edge's check, then the schema's)."""
    if text_problem(value):
        return False
    try:
        schema(partial=True).load({field: value, **others})
    except ValidationError as error:
        return field not in error.messages
    return True


def documented(schema: type, field: str, value: str) -> bool:
    """Whether the document calls `value` valid for `field`, read by Python (as the server and
    schemathesis read it); Rust's reading agrees on ASCII (`\\w` and `\\d` in the e-mail
    pattern are Unicode classes whose members differ between regex engines)."""
    rules = COMPONENTS[schema.__name__]["properties"][field]
    by_python = re.search(rules["pattern"], value) is not None \
        and rules.get("minLength", 0) <= len(value) <= rules.get("maxLength", 10**9)
    by_rust = jsonschema_rs.validator_for(rules).is_valid(value)
    assert by_python == by_rust or not value.isascii(), (field, value)
    return by_python


FIELDS = [(RegisterSchema, "username"), (RegisterSchema, "email"), (RegisterSchema, "password"),
          (LoginSchema, "username"), (ProfileUpdateSchema, "bio"), (ProfileUpdateSchema, "avatar"),
          (StreamCreateSchema, "title"), (StreamCreateSchema, "description")]
EDGE_CASES = [
    "", " ", "alice", "alice\n", "ADMIN", "Admin", "admins", "v1", "al", "a" * 30, "a" * 31,
    "chess\x00", "\x00", "tab\there", "line\nbreak", "bell\x07", "\x7f", "rtl\u202e", "\u2066x",
    "rlm\u200f", "\u061c", "csi\u009b", "nel\u0085", "\u200b", "\ufeff\u2060 ", "zw\u200bj",
    "\u3164", "\uffa0\u115f", "\u2800 ", "\u00ad\u034f", "\ufe0f\u180e\u2062", "\u2065",
    "a\u00ad", "\U000e0020", "\u0301",
    "\u00e9t\u00e9", "emoji \U0001f600", "  \t ", "a@b.co", "a@localhost", "a@[127.0.0.1]",
    "a@[256.0.0.1]", "\"quoted\\ \"@x.org", "a.b@x-y.example", ".a@x.org", "a..b@x.org",
    "a@x", "a@-x.org", "\u00fc@\u00fc.de", "a@x.\u00fc\u00fc", "\u212a@x.org", "\"\u212a\"@x.org",
    "/media/avatars/1-abc.webp", "/media/avatars/x.webp", "https://cdn.example/a.png",
    "HTTPS://cdn.example/a", "http://cdn.example/a", "https://a b", "https://a\\b",
]


@pytest.mark.parametrize(("schema", "field"), FIELDS, ids=lambda item: getattr(item, "__name__", item))
def test_each_pattern_accepts_what_the_server_accepts_on_edge_cases(schema, field):
    for value in EDGE_CASES:
        if (schema, field) == (ProfileUpdateSchema, "avatar") and accepted(schema, field, value):
            continue  # which uploads and hosts are allowed is a rule no schema states
        assert documented(schema, field, value) == accepted(schema, field, value), value


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=40))
def test_text_patterns_agree_with_the_checks_on_generated_text(value):
    assert documented(StreamCreateSchema, "description", value) \
        == accepted(StreamCreateSchema, "description", value)
    assert documented(StreamCreateSchema, "title", value) \
        == accepted(StreamCreateSchema, "title", value)
    assert documented(RegisterSchema, "password", value + "12345678") \
        == accepted(RegisterSchema, "password", value + "12345678")


# 100 generated addresses, not 300 (a third of the time); the hand-picked e-mail edge cases
# are in EDGE_CASES above, checked on every run.
@settings(max_examples=100, deadline=None)
@given(st.emails() | st.from_regex(COMPONENTS["RegisterSchema"]["properties"]["email"]["pattern"]))
def test_the_email_pattern_is_the_servers_check(value):
    assert documented(RegisterSchema, "email", value) == accepted(RegisterSchema, "email", value)


def test_patterns_are_built_from_one_place():
    login = COMPONENTS["LoginSchema"]["properties"]
    assert {login[name]["pattern"] for name in ("username", "email", "password")} \
        == {STORABLE_PATTERN}
    assert TEXT_PATTERN == COMPONENTS["StreamCreateSchema"]["properties"]["description"]["pattern"]
    assert NOT_BLANK_TEXT_PATTERN == COMPONENTS["StreamCreateSchema"]["properties"]["title"]["pattern"]


def test_login_takes_exactly_one_of_username_or_email():
    login = COMPONENTS["LoginSchema"]
    assert login["oneOf"] == [{"required": ["username"]}, {"required": ["email"]}]
    validator = jsonschema_rs.validator_for(login)
    for body, valid in [({"username": "a", "password": "p"}, True),
                        ({"email": "a", "password": "p"}, True),
                        ({"username": "a", "email": "a", "password": "p"}, False),
                        ({"password": "p"}, False)]:
        assert validator.is_valid(body) == valid
        with pytest.raises(ValidationError) if not valid else _nothing():
            LoginSchema().load(body)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_query_parameters_come_from_the_query_schemas():
    streams = {p["name"]: p for p in DOCUMENT["paths"]["/api/v1/streams"]["get"]["parameters"]}
    assert set(streams) == {"limit", "cursor", "category_id", "username", "q", "is_live", "sort"}
    assert streams["sort"]["schema"]["enum"] == ["viewers", "started_at", "created_at"]
    assert streams["limit"]["schema"] | {} == {"type": "integer", "minimum": 1, "maximum": 100,
                                                "default": 20}
    assert "nullable" not in streams["cursor"]["schema"] and "required" not in streams["cursor"]
    follows = DOCUMENT["paths"]["/api/v1/users/{username}/followers"]["get"]["parameters"]
    assert {p["name"] for p in follows if p["in"] == "query"} == {"limit", "cursor"}
