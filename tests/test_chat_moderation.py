"""Chat moderation over REST (API.md "Live socket and chat"): moderators appointed by the owner,
bans and timeouts by the owner and moderators (hiding the user's messages at once), chat
settings, deleting a message, and the moderation log listed to the owner; who may do what on
which channel; what an erased account leaves behind."""

from __future__ import annotations

from typing import Any

import pytest

from sf.errors import Forbidden
from sf.services.chat_moderation import ChatModerationService

pytestmark = pytest.mark.gen_test(timeout=90)

OK_BAN = {"reason": "spam"}


async def users(api: Any, *names: str) -> dict[str, str]:
    """Registered users' access tokens by name."""
    return {name: (await api.register(name))["access_token"] for name in names}


async def stream_of(api: Any, token: str) -> int:
    created = await api.post("/api/streams", {"title": "chat here"}, token=token)
    assert created.status == 201, created
    return int(created.json["id"])


async def say(services: Any, stream_id: int, username: str, text: str) -> int:
    """A chat message in a stream (written as the send path writes it)."""
    return int(await services.db.fetchval(
        """INSERT INTO chat_messages (stream_id, channel_id, user_id, text)
           SELECT s.id, s.user_id, u.id, $3 FROM streams s, users u
            WHERE s.id = $1 AND u.username = $2 RETURNING id""", stream_id, username, text))


async def visible(services: Any, stream_id: int) -> list[str]:
    rows = await services.db.fetch(
        "SELECT text FROM chat_messages WHERE stream_id = $1 AND hidden_at IS NULL ORDER BY id",
        stream_id)
    return [row["text"] for row in rows]


async def log_of(api: Any, token: str) -> list[dict[str, Any]]:
    answer = await api.get("/api/channel/moderation-log?limit=100", token=token)
    assert answer.status == 200, answer
    return answer.json["data"]  # type: ignore[no-any-return]


async def test_the_owner_appoints_and_removes_moderators_idempotently(api):
    tokens = await users(api, "alice", "bob")
    for _ in range(2):
        assert (await api.put("/api/channel/moderators/bob", token=tokens["alice"])).status == 204
    listed = await api.get("/api/channel/moderators", token=tokens["alice"])
    assert [user["username"] for user in listed.json["data"]] == ["bob"]
    assert listed.headers["Cache-Control"] == "no-store"
    assert (await api.get("/api/channel/moderators", token=tokens["bob"])).json["data"] == []
    for _ in range(2):
        assert (await api.delete("/api/channel/moderators/BOB", token=tokens["alice"])).status == 204
    assert (await api.get("/api/channel/moderators", token=tokens["alice"])).json["data"] == []
    own = await api.put("/api/channel/moderators/alice", token=tokens["alice"])
    assert own.status == 422 and "username" in own.json["error"]["fields"]
    assert (await api.put("/api/channel/moderators/ghost", token=tokens["alice"])).status == 404
    assert (await api.put("/api/channel/moderators/bob")).status == 401
    # Logged once each, however often asked.
    entries = await log_of(api, tokens["alice"])
    assert [(e["action"], e["actor"]["username"], e["target"]["username"]) for e in entries] == [
        ("moderator_removed", "alice", "bob"), ("moderator_added", "alice", "bob")]


async def test_who_may_act_on_which_channel(api):
    """security.md#moderator-on-another-channel: a moderator of one channel (carol, of dave's)
    and a stranger (eve) get 403 on alice's channel; alice's moderator bob gets through."""
    tokens = await users(api, "alice", "bob", "carol", "dave", "eve")
    assert (await api.put("/api/channel/moderators/bob", token=tokens["alice"])).status == 204
    assert (await api.put("/api/channel/moderators/carol", token=tokens["dave"])).status == 204
    for name, status in (("alice", 200), ("bob", 200), ("carol", 403), ("eve", 403)):
        bans = await api.get("/api/channel/bans?channel=alice", token=tokens[name])
        assert bans.status == status, (name, bans)
        settings = await api.get("/api/channel/chat/settings?channel=alice", token=tokens[name])
        assert settings.status == status, (name, settings)
        ban = await api.put("/api/channel/bans/eve?channel=alice", {"duration_seconds": 5},
                            token=tokens[name])
        assert ban.status == (200 if status == 200 else 403), (name, ban)
        lift = await api.delete("/api/channel/bans/eve?channel=alice", token=tokens[name])
        assert lift.status == (204 if status == 200 else 403), (name, lift)
    assert (await api.get("/api/channel/bans?channel=alice")).status == 401
    assert (await api.get("/api/channel/bans?channel=ghost", token=tokens["bob"])).status == 404
    # A moderator's own routes are their own channel's: bob's settings, log and moderators.
    changed = await api.put("/api/channel/chat/settings", {"slow_mode_seconds": 9},
                            token=tokens["bob"])
    assert changed.status == 200 and changed.json["slow_mode_seconds"] == 9
    alices = await api.get("/api/channel/chat/settings", token=tokens["alice"])
    assert alices.json["slow_mode_seconds"] is None
    assert [entry["action"] for entry in await log_of(api, tokens["bob"])] == ["settings_changed"]
    # The owner's channel is never named by a parameter on owner-only routes.
    assert (await api.get("/api/channel/moderation-log?channel=alice",
                          token=tokens["bob"])).status == 422
    assert (await api.put("/api/channel/chat/settings?channel=alice", {"enabled": False},
                          token=tokens["bob"])).status == 422


async def test_timeout_then_ban_hide_the_users_messages_in_that_channel_only(api, services):
    tokens = await users(api, "alice", "bob", "eve", "dave")
    assert (await api.put("/api/channel/moderators/bob", token=tokens["alice"])).status == 204
    alices, daves = await stream_of(api, tokens["alice"]), await stream_of(api, tokens["dave"])
    await say(services, alices, "eve", "first")
    await say(services, alices, "bob", "hello")
    await say(services, alices, "eve", "second")
    await say(services, daves, "eve", "elsewhere")

    timeout = await api.put("/api/channel/bans/eve?channel=alice",
                            {"duration_seconds": 600, "reason": "spam"}, token=tokens["bob"])
    assert timeout.status == 200, timeout
    assert timeout.json["kind"] == "timeout" and timeout.json["expires_at"] is not None
    assert timeout.json["user"]["username"] == "eve" and timeout.json["reason"] == "spam"
    assert timeout.json["created_by"]["username"] == "bob"
    assert await visible(services, alices) == ["hello"]
    assert await visible(services, daves) == ["elsewhere"]
    assert await services.db.fetchval(
        "SELECT array_agg(DISTINCT hidden_why) FROM chat_messages WHERE hidden_at IS NOT NULL"
    ) == ["cleared"]

    ban = await api.put("/api/channel/bans/eve", {}, token=tokens["alice"])
    assert ban.status == 200 and ban.json["kind"] == "ban" and ban.json["expires_at"] is None
    listed = await api.get("/api/channel/bans", token=tokens["alice"])
    assert [(b["user"]["username"], b["kind"]) for b in listed.json["data"]] == [("eve", "ban")]
    assert (await api.delete("/api/channel/bans/eve", token=tokens["alice"])).status == 204
    assert (await api.delete("/api/channel/bans/eve", token=tokens["alice"])).status == 204
    assert (await api.get("/api/channel/bans", token=tokens["alice"])).json["data"] == []
    assert (await api.put("/api/channel/bans/ghost", {}, token=tokens["alice"])).status == 404

    entries = await log_of(api, tokens["alice"])
    assert [(e["action"], e["actor"]["username"], e["target"]["username"], e["details"])
            for e in entries[:3]] == [
        ("unban", "alice", "eve", {}),
        ("ban", "alice", "eve", {"messages_hidden": 0}),
        ("timeout", "bob", "eve", {"messages_hidden": 2, "duration_seconds": 600,
                                   "reason": "spam"})]


async def test_an_expired_timeout_is_no_longer_listed(api, services):
    tokens = await users(api, "alice", "eve")
    assert (await api.put("/api/channel/bans/eve", {"duration_seconds": 30},
                          token=tokens["alice"])).status == 200
    await services.db.execute("UPDATE chat_bans SET expires_at = now() - interval '1 second'")
    assert (await api.get("/api/channel/bans", token=tokens["alice"])).json["data"] == []


async def test_a_moderator_cannot_ban_the_owner_or_another_moderator(api):
    """security.md#moderator-bans-owner: refused (403), nothing changes; the owner banning a
    moderator removes them as moderator."""
    tokens = await users(api, "alice", "bob", "carol")
    for name in ("bob", "carol"):
        assert (await api.put(f"/api/channel/moderators/{name}", token=tokens["alice"])).status == 204
    owner = await api.put("/api/channel/bans/alice?channel=alice", {}, token=tokens["bob"])
    assert owner.status == 403, owner
    other = await api.put("/api/channel/bans/carol?channel=alice", {}, token=tokens["bob"])
    assert other.status == 403, other
    self_ban = await api.put("/api/channel/bans/bob?channel=alice", {}, token=tokens["bob"])
    assert self_ban.status == 422
    assert (await api.put("/api/channel/bans/alice", {}, token=tokens["alice"])).status == 422
    for duration in ("60", 60.5, True):  # security.md#chat-numbers-as-text
        as_text = await api.put("/api/channel/bans/carol", {"duration_seconds": duration},
                                token=tokens["alice"])
        assert as_text.status == 422 and "duration_seconds" in as_text.json["error"]["fields"]
    assert (await api.get("/api/channel/bans", token=tokens["alice"])).json["data"] == []

    assert (await api.put("/api/channel/bans/carol", {}, token=tokens["alice"])).status == 200
    moderators = await api.get("/api/channel/moderators", token=tokens["alice"])
    assert [user["username"] for user in moderators.json["data"]] == ["bob"]
    # Carol, banned and no longer a moderator, cannot act on alice's channel any more.
    assert (await api.get("/api/channel/bans?channel=alice", token=tokens["carol"])).status == 403
    actions = [e["action"] for e in await log_of(api, tokens["alice"])]
    assert actions[:2] == ["ban", "moderator_removed"]


@pytest.mark.parametrize("body", [
    {"slow_mode_seconds": 0}, {"slow_mode_seconds": 86401}, {"slow_mode_seconds": 1.5},
    {"followers_only_minutes": -1}, {"min_account_age_minutes": None},
    {"min_account_age_minutes": 525601}, {"enabled": "yes"}, {"enabled": None},
    {"blocked_terms": "bad"}, {"blocked_terms": [""]}, {"blocked_terms": ["  "]},
    {"blocked_terms": ["a" * 101]}, {"blocked_terms": ["x\u202ey"]},
    {"blocked_terms": ["\u0301\u0302"]}, {"blocked_terms": ["\u3164\u2800"]},  # nothing to match
    {"blocked_terms": [f"t{i}" for i in range(201)]}, {"blocked_terms": None},
    {"colour": "red"},
    # security.md#chat-numbers-as-text: numbers written as text were taken as numbers.
    {"followers_only_minutes": "5"}, {"slow_mode_seconds": "30"}, {"blocked_terms": ["\ufff9"]},
    {"min_account_age_minutes": "10"}, {"slow_mode_seconds": 30.5},
])
async def test_settings_refuse_what_is_out_of_bounds(api, body):
    tokens = await users(api, "alice")
    refused = await api.put("/api/channel/chat/settings", body, token=tokens["alice"])
    assert refused.status == 422, (body, refused)
    settings = await api.get("/api/channel/chat/settings", token=tokens["alice"])
    assert settings.json == {"enabled": True, "slow_mode_seconds": None,
                             "followers_only_minutes": None, "min_account_age_minutes": 0,
                             "blocked_terms": [], "updated_at": None}


async def test_settings_change_the_fields_sent_and_keep_terms_as_written(api):
    tokens = await users(api, "alice")
    first = await api.put("/api/channel/chat/settings",
                          {"slow_mode_seconds": 30, "followers_only_minutes": 0,
                           "blocked_terms": ["Spoiler", "ＳＰＯＩＬＥＲ", "spoiler", "scam",
                                             "spo\u00adiler", "S\u200bPOIL\u00c9R", "sc  am"]},
                          token=tokens["alice"])
    assert first.status == 200, first
    # One per skeleton, as messages are matched (security.md#chat-invisible-terms).
    assert first.json["blocked_terms"] == ["Spoiler", "scam", "sc  am"]
    second = await api.put("/api/channel/chat/settings",
                           {"enabled": False, "slow_mode_seconds": None,
                            "min_account_age_minutes": 15}, token=tokens["alice"])
    assert second.json == {**first.json, "enabled": False, "slow_mode_seconds": None,
                           "min_account_age_minutes": 15, "updated_at": second.json["updated_at"]}
    entries = await log_of(api, tokens["alice"])
    assert [(e["action"], e["target"], e["details"]) for e in entries] == [
        ("settings_changed", None, {"changed": ["enabled", "min_account_age_minutes",
                                                "slow_mode_seconds"]}),
        ("settings_changed", None, {"changed": ["blocked_terms", "followers_only_minutes",
                                                "slow_mode_seconds"]})]


async def test_deleting_a_message(api, services):
    """security.md#message-of-another-channel: a message is named by its stream and id; one
    of a channel you do not moderate, or under another stream's id, is a 404."""
    tokens = await users(api, "alice", "bob", "carol", "dave", "eve")
    assert (await api.put("/api/channel/moderators/bob", token=tokens["alice"])).status == 204
    assert (await api.put("/api/channel/moderators/carol", token=tokens["alice"])).status == 204
    assert (await api.put("/api/channel/moderators/dave", token=tokens["eve"])).status == 204
    alices, eves = await stream_of(api, tokens["alice"]), await stream_of(api, tokens["eve"])
    spam = await say(services, alices, "eve", "spam")
    owners = await say(services, alices, "alice", "welcome")
    carols = await say(services, alices, "carol", "rules")
    bobs = await say(services, alices, "bob", "hi")
    path = f"/api/streams/{alices}/chat/messages"

    for name in ("dave", "eve"):  # a moderator of another channel, a stranger
        assert (await api.delete(f"{path}/{spam}", token=tokens[name])).status == 404
    assert (await api.delete(f"/api/streams/{eves}/chat/messages/{spam}",
                             token=tokens["alice"])).status == 404
    assert (await api.delete(f"{path}/{spam}")).status == 401
    assert (await api.delete(f"{path}/99999999", token=tokens["alice"])).status == 404
    for message in (owners, carols):
        assert (await api.delete(f"{path}/{message}", token=tokens["bob"])).status == 403
    assert (await api.delete(f"{path}/{bobs}", token=tokens["bob"])).status == 204  # own
    for _ in range(2):
        assert (await api.delete(f"{path}/{spam}", token=tokens["bob"])).status == 204
    assert (await api.delete(f"{path}/{carols}", token=tokens["alice"])).status == 204
    assert await visible(services, alices) == ["welcome"]
    assert await services.db.fetchval(
        "SELECT array_agg(DISTINCT hidden_why) FROM chat_messages WHERE hidden_at IS NOT NULL"
    ) == ["deleted"]
    entries = [e for e in await log_of(api, tokens["alice"]) if e["action"] == "message_deleted"]
    assert [(e["actor"]["username"], e["target"]["username"], e["details"]) for e in entries] == [
        ("alice", "carol", {"message_id": carols, "stream_id": alices}),
        ("bob", "eve", {"message_id": spam, "stream_id": alices}),
        ("bob", "bob", {"message_id": bobs, "stream_id": alices})]


async def test_the_moderation_log_pages_newest_first(api):
    tokens = await users(api, "alice", *(f"fan{i}" for i in range(5)))
    for i in range(5):
        assert (await api.put(f"/api/channel/bans/fan{i}", {"duration_seconds": 60 + i},
                              token=tokens["alice"])).status == 200
    seen, cursor = [], None
    while True:
        answer = await api.get("/api/channel/moderation-log?limit=2"
                               + (f"&cursor={cursor}" if cursor else ""), token=tokens["alice"])
        assert answer.status == 200 and len(answer.json["data"]) <= 2
        seen += [entry["target"]["username"] for entry in answer.json["data"]]
        cursor = answer.json["pagination"]["next_cursor"]
        if not cursor:
            break
    assert seen == [f"fan{i}" for i in reversed(range(5))]
    bans, cursor = [], None
    while True:
        answer = await api.get("/api/channel/bans?limit=3"
                               + (f"&cursor={cursor}" if cursor else ""), token=tokens["alice"])
        bans += [ban["user"]["username"] for ban in answer.json["data"]]
        cursor = answer.json["pagination"]["next_cursor"]
        if not cursor:
            break
    assert sorted(bans) == [f"fan{i}" for i in range(5)] and len(bans) == 5
    assert (await api.get("/api/channel/moderation-log?cursor=bogus",
                          token=tokens["alice"])).status == 422
    assert (await api.get("/api/channel/moderation-log")).status == 401


async def test_an_erased_account_leaves_ids_only(api, services):
    tokens = await users(api, "alice", "bob", "eve")
    assert (await api.put("/api/channel/moderators/bob", token=tokens["alice"])).status == 204
    assert (await api.put("/api/channel/moderators/alice", token=tokens["bob"])).status == 204
    assert (await api.put("/api/channel/bans/eve?channel=alice", {"reason": "eve is rude"},
                          token=tokens["bob"])).status == 200
    assert (await api.put("/api/channel/chat/settings", {"blocked_terms": ["bobby"]},
                          token=tokens["bob"])).status == 200
    bob_id = await services.db.fetchval("SELECT id FROM users WHERE username = 'bob'")

    deleted = await api.request("DELETE", "/api/users/profile", {"password": "password123"},
                                token=tokens["bob"])
    assert deleted.status == 202
    # At once: bob moderates nothing, and his channel has no moderators.
    assert await services.db.fetchval(
        "SELECT count(*) FROM chat_moderators WHERE $1 IN (channel_id, user_id)", bob_id) == 0
    entries = await log_of(api, tokens["alice"])
    assert entries[0]["action"] == "ban" and entries[0]["actor"] == {
        "id": bob_id, "username": None, "avatar": None}

    await services.db.execute(
        "UPDATE users SET erase_after = now() - interval '1 second' WHERE id = $1", bob_id)
    assert await services.erasure.purge_due() == 1
    # His channel's settings, bans and log are gone; the ban he made stays, by id; the log
    # entries naming him elsewhere keep ids and no text.
    for table in ("chat_settings", "chat_bans", "chat_moderation_log"):
        assert await services.db.fetchval(
            f"SELECT count(*) FROM {table} WHERE channel_id = $1", bob_id) == 0, table
    assert await services.db.fetchval(
        "SELECT created_by FROM chat_bans WHERE user_id = (SELECT id FROM users"
        " WHERE username = 'eve')") == bob_id
    named = await services.db.fetch(
        "SELECT details FROM chat_moderation_log WHERE $1 IN (actor_id, target_user_id)", bob_id)
    assert named and all("reason" not in row["details"] for row in named)


class Told:
    """What moderation tells the chat (`ChatEvents`), in order: the chat's own delivery across
    processes is tests/test_chat.py's (the live socket)."""

    def __init__(self) -> None:
        self.events: list[tuple[int, dict[str, Any], int | None]] = []

    async def publish(self, channel_id: int, event: dict[str, Any],
                      stream_id: int | None = None) -> None:
        self.events.append((channel_id, event, stream_id))


async def test_each_change_is_told_to_the_chat_after_it_committed(api, services):
    tokens = await users(api, "alice", "bob", "eve")
    ids = {row["username"]: row["id"] for row in await services.db.fetch(
        "SELECT id, username FROM users")}
    told = Told()
    moderation = ChatModerationService(services.db, told)
    alice, bob, eve = ids["alice"], ids["bob"], ids["eve"]
    stream = await stream_of(api, tokens["alice"])
    message = await say(services, stream, "eve", "spam")

    await moderation.add_moderator(alice, "bob")
    await moderation.add_moderator(alice, "bob")  # no change: nothing to tell
    await moderation.ban(bob, "alice", "eve", 60, "")
    settings = await moderation.update_settings(alice, {"blocked_terms": ["ｂａｄ"],
                                                        "enabled": False})
    await moderation.delete_message(bob, stream, message)
    await moderation.unban(alice, None, "eve")
    await moderation.remove_moderator(alice, "bob")
    assert told.events == [
        (alice, {"type": "internal.standing", "user_id": bob}, None),
        (alice, {"type": "internal.standing", "user_id": eve}, None),
        (alice, {"type": "chat.user_cleared", "user_id": eve}, None),
        (alice, {"type": "internal.settings"}, None),
        (alice, {"type": "chat.settings", "enabled": False, "slow_mode_seconds": None,
                 "followers_only_minutes": None, "min_account_age_minutes": 0,
                 "blocked_terms": ["ｂａｄ"],
                 "updated_at": settings.updated_at.isoformat().replace("+00:00", "Z")}, None),
        # The message was hidden by the ban already: deleting it changes nothing.
        (alice, {"type": "internal.standing", "user_id": eve}, None),
        (alice, {"type": "internal.standing", "user_id": bob}, None),
    ]
    fresh = await say(services, stream, "eve", "again")
    await moderation.delete_message(alice, stream, fresh)
    assert told.events[-1] == (alice, {"type": "chat.deleted", "id": fresh}, stream)
    # A refused action tells nothing.
    before = len(told.events)
    with pytest.raises(Forbidden):
        await moderation.ban(eve, "alice", "bob", None, "")
    assert len(told.events) == before


async def test_a_moderator_not_invited_to_a_private_stream_cannot_delete_its_messages(api,
                                                                                     services):
    """security.md#chat-private-stream-moderation: a moderator the owner had not invited got
    404 for the private stream, its history and its socket, yet 204 for deleting its
    messages (hiding them blindly, and telling which ids were that stream's)."""
    tokens = await users(api, "alice", "bob", "carol")
    assert (await api.put("/api/channel/moderators/bob", token=tokens["alice"])).status == 204
    created = await api.post("/api/streams", {"title": "invited only", "is_private": True},
                             token=tokens["alice"])
    assert created.status == 201, created
    private = int(created.json["id"])
    assert (await api.put("/api/stream/allowed-viewers/carol", token=tokens["alice"])).status == 204
    message = await say(services, private, "carol", "just us")
    path = f"/api/streams/{private}/chat/messages/{message}"
    assert (await api.get(f"/api/streams/{private}", token=tokens["bob"])).status == 404
    refused = await api.delete(path, token=tokens["bob"])
    assert refused.status == 404 and refused.json["error"]["code"] == "not_found"
    assert await visible(services, private) == ["just us"]
    assert (await api.put("/api/stream/allowed-viewers/bob", token=tokens["alice"])).status == 204
    assert (await api.delete(path, token=tokens["bob"])).status == 204  # invited: moderates it
    assert await visible(services, private) == []
