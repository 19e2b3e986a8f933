"""The compiled answer dumpers (sf/schemas/dump.py) give exactly what marshmallow's own dump
gives, and JSON bytes decode to the same document the standard library would write."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from itertools import product

import pytest
import tornado.escape
from marshmallow import Schema, fields

from sf.db.categories import Category
from sf.db.streams import Stream
from sf.db.users import User
from sf.schemas import (
    CategorySchema,
    StreamSchema,
    UserPrivateSchema,
    UserPublicSchema,
)
from sf.schemas.dump import CompiledDump, encode_json

WHEN = [datetime(2026, 11, 27, 5, 0, 1, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=3)))]


def streams() -> list[Stream]:
    found = []
    for live, private, category, started, thumbnail in product(
            (True, False), (True, False), (None, 7), (None, WHEN[1]), (None, "/media/t.jpg")):
        found.append(Stream(
            id=42, user_id=3, title="Ünïcode </script> \"q\"", description="", thumbnail=thumbnail,
            category_id=category, category_name="Games" if category else None, is_live=live,
            viewers_count=12, is_private=private, started_at=started, ended_at=None,
            created_at=WHEN[0], updated_at=WHEN[1], username="alice", user_avatar=None,
            user_bio="bio", user_followers_count=5, user_created_at=WHEN[0], user_is_live=live))
    return found


def users() -> list[User]:
    return [User(id=1, username="bob", email="bob@example.com", password_hash="x", avatar=avatar,
                 bio="\u2603", followers_count=0, created_at=WHEN[1], updated_at=WHEN[0],
                 is_live=live)
            for avatar, live in product((None, "/media/avatars/1.png"), (True, False))]


def categories() -> list[Category]:
    return [Category(id=1, name="Just Chatting", description="", thumbnail=thumbnail,
                     viewers_count=count, created_at=WHEN[0], updated_at=WHEN[1])
            for thumbnail, count in product((None, "/c.png"), (0, 10**9))]


CASES = [
    (StreamSchema(playback_secret="s3cret", playback_ttl=300), streams()),
    (UserPublicSchema(), users()),
    (UserPrivateSchema(), users()),
    (CategorySchema(), categories()),
]


@pytest.mark.parametrize("schema,items", CASES, ids=lambda c: type(c).__name__)
def test_compiled_dump_equals_marshmallow_dump(schema, items, monkeypatch):
    monkeypatch.setattr("time.time", lambda: 1_800_000_000)  # signed URLs depend on the clock
    assert isinstance(schema, CompiledDump)
    for item in items:
        assert schema.dump(item) == Schema.dump(schema, item)
    assert schema.dump(items, many=True) == Schema.dump(schema, items, many=True)


def test_dict_input_and_missing_attributes_match_too():
    schema = UserPublicSchema()
    partial = {"id": 1, "username": "x", "created_at": WHEN[1], "avatar": None}
    assert schema.dump(partial) == Schema.dump(schema, partial)


def test_a_schema_with_dump_hooks_is_refused_not_silently_wrong():
    from marshmallow import post_dump

    class Hooked(CompiledDump):
        name = fields.String()

        @post_dump
        def shout(self, data, **kwargs):
            return {k: v.upper() for k, v in data.items()}

    with pytest.raises(TypeError):
        Hooked().dump({"name": "a"})


def test_json_bytes_decode_to_the_standard_librarys_document_and_escape_script_ends():
    document = {"t": "</script><b>\u2603\U0001F600", "n": None, "x": [1, 2.5, True], "5": {}}
    raw = encode_json(document)
    assert b"</" not in raw
    assert raw == tornado.escape.json_encode(document).encode()  # the answers' bytes as before
    assert json.loads(raw) == document
    assert encode_json({7: "int key"}) == b'{"7": "int key"}'
