"""Live chat on `/ws/streams/{id}/live`, in-process against real PostgreSQL and Redis: the
test's node and a second node (its own services and HTTP server, its own Redis subscription)
share them, as two API processes do. The send rules, each refusal code, order across nodes,
coalesced frames, floods, the history, retention and erasure."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import tornado.websocket

from harness.client import Viewer, connect
from harness.ports import release_ports, reserve_port
from sf.app import make_app
from sf.services.container import Services, start_services

ORIGIN = "https://app.example.com"  # allow-listed in the test configuration
CLOSE_NOT_FOUND, CLOSE_POLICY, CLOSE_TOO_BIG = 4404, 1008, 1009


@pytest.fixture
def chat_running(io_loop: Any, services: Services) -> Any:
    """The node's chat subscription and flush loop, as `Services.start` runs them."""
    io_loop.run_sync(services.chat.start)
    yield services.chat
    io_loop.run_sync(services.chat.stop)


@contextlib.asynccontextmanager
async def second_node(services: Services) -> AsyncIterator[tuple[str, Services]]:
    """Another API node over the same PostgreSQL and Redis, serving on a port of its own."""
    other = await start_services(services.config)
    await other.chat.start()
    port = reserve_port()
    server = make_app(other).listen(port, address="127.0.0.1")
    try:
        yield f"http://127.0.0.1:{port}", other
    finally:
        server.stop()
        await other.chat.stop()
        await other.close()
        release_ports([port])


async def streamer(api: Any, username: str, private: bool = False) -> tuple[dict[str, Any], int]:
    user = await api.register(username)
    response = await api.post("/api/streams", {"title": f"{username} live",
                                               "is_private": private},
                              token=user["access_token"])
    assert response.status == 201, response
    return user, response.json["id"]


async def ticket(api: Any, user: dict[str, Any]) -> str:
    response = await api.post("/api/ws/ticket", token=user["access_token"])
    assert response.status == 200, response
    return str(response.json["ticket"])


async def live(api: Any, base_url: str, stream_id: int,
               user: dict[str, Any] | None = None) -> Viewer:
    """A `/live` socket (signed in as `user` through a ticket), once its settings came."""
    query = f"?ticket={await ticket(api, user)}" if user else ""
    viewer = await connect(base_url, stream_id, origin=ORIGIN, query=query, socket="live")
    await viewer.until(lambda v: v.of_type("chat.settings") or v.closed.is_set(),
                       what="the chat settings")
    return viewer


async def refreshed(services: Services, channel_id: int) -> None:
    """Settings changed in the database: tell every node (what the settings endpoint does)."""
    await services.chat.publish(channel_id, {"type": "internal.settings"})
    await asyncio.sleep(0.2)


@pytest.mark.gen_test(timeout=60)
async def test_history_on_connect_ack_and_the_message_to_every_reader(
        api, services, base_url, chat_running):
    owner, stream_id = await streamer(api, "host")
    alice = await api.register("alice")
    sender = await live(api, base_url, stream_id, alice)
    assert sender.of_type("chat.history") == [{"type": "chat.history", "messages": []}]
    settings = sender.of_type("chat.settings")[0]
    assert settings == {"type": "chat.settings", "enabled": True, "slow_mode_seconds": None,
                        "followers_only_minutes": None, "min_account_age_minutes": 0}
    for number in range(55):
        await services.db.execute(
            "INSERT INTO chat_messages (stream_id, channel_id, user_id, text)"
            " VALUES ($1, $2, $3, $4)", stream_id, owner["user"]["id"], alice["user"]["id"],
            f"old {number}")
    await services.db.execute("UPDATE chat_messages SET hidden_at = now(), hidden_why ="
                              " 'deleted' WHERE text = 'old 54'")
    answer = await sender.say("  hello  ")
    assert answer["type"] == "chat.ack" and isinstance(answer["id"], int)
    await sender.until(lambda v: v.chat(), what="the message back")
    message = sender.chat()[0]
    assert message["id"] == answer["id"] and message["text"] == "hello"
    assert message["user"] == {"id": alice["user"]["id"], "username": "alice", "avatar": None,
                               "roles": []}
    assert message["stream_id"] == stream_id and message["sent_at"].endswith("Z")

    reader = await live(api, base_url, stream_id, owner)  # the owner sees the blocked terms
    history = reader.of_type("chat.history")[0]["messages"]
    assert len(history) == 50
    assert [m["text"] for m in history] == [f"old {n}" for n in range(5, 54)] + ["hello"]
    assert reader.of_type("chat.settings")[0]["blocked_terms"] == []
    # The REST history: newest first, keyset pages, the hidden message left out.
    page = await api.get(f"/api/streams/{stream_id}/chat/messages?limit=30")
    assert page.status == 200, page
    texts = [m["text"] for m in page.json["data"]]
    assert texts == ["hello"] + [f"old {n}" for n in range(53, 24, -1)]
    rest = await api.get(f"/api/streams/{stream_id}/chat/messages?limit=100&cursor="
                         f"{page.json['pagination']['next_cursor']}")
    assert [m["text"] for m in rest.json["data"]] == [f"old {n}" for n in range(24, -1, -1)]
    assert rest.json["pagination"]["next_cursor"] is None
    sender.close()
    reader.close()


@pytest.mark.gen_test(timeout=60)
async def test_anonymous_sockets_read_but_cannot_send(api, services, base_url, chat_running):
    owner, stream_id = await streamer(api, "host")
    anonymous = await live(api, base_url, stream_id)
    speaker = await live(api, base_url, stream_id, owner)
    answer = await anonymous.say("hi")
    assert answer == {"type": "chat.notice", "nonce": answer["nonce"], "code": "not_signed_in",
                      "message": "Sign in to chat"}
    assert (await speaker.say("welcome"))["type"] == "chat.ack"
    await anonymous.until(lambda v: v.chat(), what="the owner's message")
    assert anonymous.chat()[0]["user"]["roles"] == ["owner"]
    assert await services.db.fetchval("SELECT count(*) FROM chat_messages") == 1
    anonymous.close()
    speaker.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_private_streams_chat_is_for_the_owner_and_invited_viewers_only(
        api, services, base_url, chat_running):
    """security.md#chat-on-private-streams"""
    owner, stream_id = await streamer(api, "host", private=True)
    outsider = await api.register("outsider")
    guest = await api.register("invitee")
    assert (await api.put("/api/stream/allowed-viewers/invitee",
                          token=owner["access_token"])).status in (200, 201, 204)
    for who in (None, outsider):
        refused = await live(api, base_url, stream_id, who)
        assert await refused.until_closed() == CLOSE_NOT_FOUND
        assert not refused.of_type("chat.history")
    history = await api.get(f"/api/streams/{stream_id}/chat/messages",
                            token=outsider["access_token"])
    assert history.status == 404
    invited = await live(api, base_url, stream_id, guest)
    assert (await invited.say("thanks for the invite"))["type"] == "chat.ack"
    assert (await api.get(f"/api/streams/{stream_id}/chat/messages",
                          token=guest["access_token"])).status == 200
    invited.close()


@pytest.mark.gen_test(timeout=90)
async def test_two_nodes_two_senders_every_reader_sees_one_order(
        api, services, base_url, chat_running):
    owner, stream_id = await streamer(api, "host")
    alice, bob = await api.register("alice"), await api.register("bob")
    async with second_node(services) as (other_url, _):
        alice_socket = await live(api, base_url, stream_id, alice)        # node A
        bob_socket = await live(api, other_url, stream_id, bob)           # node B
        reader_a = await live(api, base_url, stream_id)
        reader_b = await live(api, other_url, stream_id)

        async def chatter(socket: Viewer, name: str) -> None:
            for number in range(15):
                assert (await socket.say(f"{name} {number}"))["type"] == "chat.ack"

        await asyncio.gather(chatter(alice_socket, "alice"), chatter(bob_socket, "bob"))
        for reader in (reader_a, reader_b, alice_socket, bob_socket):
            await reader.until(lambda v: len(v.chat()) == 30, what="all 30 messages")
        orders = [[m["text"] for m in reader.chat()]
                  for reader in (reader_a, reader_b, alice_socket, bob_socket)]
        assert orders[0] == orders[1] == orders[2] == orders[3]
        assert [t for t in orders[0] if t.startswith("alice")] == [f"alice {n}" for n in range(15)]
        for socket in (alice_socket, bob_socket, reader_a, reader_b):
            socket.close()


@pytest.mark.gen_test(timeout=90)
async def test_each_rule_refuses_with_its_code(api, services, base_url, chat_running):
    owner, stream_id = await streamer(api, "host")
    channel_id = owner["user"]["id"]
    alice = await api.register("alice")
    alice_id = alice["user"]["id"]
    socket = await live(api, base_url, stream_id, alice)

    async def code(text: str, **extra: Any) -> str:
        answer = await socket.say(text, **extra)
        return str(answer.get("code", answer["type"]))

    assert await code("x" * 501) == "too_long"
    assert await code("é" * 500) == "chat.ack"  # 500 characters, 1000 bytes
    assert await code("   ") == "invalid_message"
    assert await code("bad \u202e override") == "invalid_message"
    assert await code("bell \x07") == "invalid_message"
    # Duplicates: the same text within the window, whatever the case.
    assert await code("same old") == "chat.ack"
    assert await code("SAME OLD") == "duplicate"

    # Chat off.
    await services.db.execute("INSERT INTO chat_settings (channel_id, enabled) VALUES ($1, false)",
                              channel_id)
    await refreshed(services, channel_id)
    assert await code("anyone?") == "chat_disabled"
    await services.db.execute("UPDATE chat_settings SET enabled = true WHERE channel_id = $1",
                              channel_id)
    await refreshed(services, channel_id)

    # Account age.
    await services.db.execute(
        "UPDATE chat_settings SET min_account_age_minutes = 15 WHERE channel_id = $1", channel_id)
    await refreshed(services, channel_id)
    answer = await socket.say("too young")
    assert answer["code"] == "account_too_new" and 800 < answer["retry_after"] <= 901
    await services.db.execute(
        "UPDATE users SET created_at = now() - interval '1 hour' WHERE id = $1", alice_id)
    assert await code("old enough") == "chat.ack"

    # Followers only, for at least 10 minutes.
    await services.db.execute(
        "UPDATE chat_settings SET followers_only_minutes = 10 WHERE channel_id = $1", channel_id)
    await refreshed(services, channel_id)
    assert "retry_after" not in await socket.say("not following")
    assert await code("still not") == "followers_only"
    assert (await api.post("/api/users/host/follow", token=alice["access_token"])).status == 204
    answer = await socket.say("just followed")
    assert answer["code"] == "followers_only" and 500 < answer["retry_after"] <= 601
    await services.db.execute(
        "UPDATE follows SET created_at = now() - interval '11 minutes' WHERE follower_id = $1",
        alice_id)
    assert await code("a loyal follower") == "chat.ack"

    # Blocked terms, matched on the skeleton (NFKC, case folded, without invisibles and marks).
    await services.db.execute(
        "UPDATE chat_settings SET blocked_terms = '{spoiler, Straße}' WHERE channel_id = $1",
        channel_id)
    await refreshed(services, channel_id)
    assert await code("no spoilers please") == "blocked_term"
    assert await code("big SpOiLeR here") == "blocked_term"
    assert await code("ｓｐｏｉｌｅｒ in full width") == "blocked_term"
    assert await code("on the STRASSE") == "blocked_term"
    assert await code("s p o i l e r") == "chat.ack"

    # Slow mode: one message per 30 s.
    await services.db.execute(
        "UPDATE chat_settings SET slow_mode_seconds = 30 WHERE channel_id = $1", channel_id)
    await refreshed(services, channel_id)
    assert await code("first in slow mode") == "chat.ack"
    answer = await socket.say("second in slow mode")
    assert answer["code"] == "slow_mode" and 25 <= answer["retry_after"] <= 30

    # A moderator is exempt from slow mode, followers-only and the blocked terms.
    moderator = await api.register("marymod")
    await services.db.execute("INSERT INTO chat_moderators (channel_id, user_id) VALUES ($1, $2)",
                              channel_id, moderator["user"]["id"])
    mod_socket = await live(api, base_url, stream_id, moderator)
    assert mod_socket.of_type("chat.settings")[0]["blocked_terms"] == ["spoiler", "Straße"]
    assert "blocked_terms" not in socket.of_type("chat.settings")[0]
    for text in ("mod one", "mod two", "a spoiler, as moderator"):
        assert (await mod_socket.say(text))["type"] == "chat.ack"
    await mod_socket.until(lambda v: v.chat() and v.chat()[-1]["text"].startswith("a spoiler"),
                           what="the moderator's message")
    assert mod_socket.chat()[-1]["user"]["roles"] == ["moderator"]

    # Timeout, then ban: read at each send, so at once.
    await services.db.execute(
        "INSERT INTO chat_bans (channel_id, user_id, expires_at) VALUES ($1, $2,"
        " now() + interval '10 minutes')", channel_id, alice_id)
    answer = await socket.say("timed out?")
    assert answer["code"] == "timed_out" and 590 < answer["retry_after"] <= 601
    await services.db.execute("UPDATE chat_bans SET expires_at = NULL WHERE user_id = $1",
                              alice_id)
    answer = await socket.say("banned?")
    assert answer["code"] == "banned" and "retry_after" not in answer
    await services.db.execute(
        "UPDATE chat_bans SET expires_at = now() - interval '1 second' WHERE user_id = $1",
        alice_id)
    await services.db.execute("DELETE FROM chat_settings WHERE channel_id = $1", channel_id)
    await refreshed(services, channel_id)
    assert await code("an expired timeout is no ban") == "chat.ack"
    socket.close()
    mod_socket.close()


async def chatter(api: Any, services: Services, base_url: str,
                  blocked_terms: tuple[str, ...] = ()) -> Viewer:
    """A viewer's socket on a fresh stream whose channel blocks `blocked_terms`, as the
    outside attacker had it."""
    owner, stream_id = await streamer(api, "host")
    await services.db.execute("INSERT INTO chat_settings (channel_id, blocked_terms)"
                              " VALUES ($1, $2)", owner["user"]["id"], list(blocked_terms))
    return await live(api, base_url, stream_id, await api.register("attacker"))


async def code_of(socket: Viewer, text: str) -> str:
    answer = await socket.say(text)
    return str(answer.get("code", answer["type"]))


# How the outside attack wrote `badword` so that it displayed as the word yet passed.
HIDDEN_BADWORDS = [
    "bad\u200bword", "bad\u200cword", "bad\u200dword", "bad\u2060word", "bad\ufeffword",
    "bad\u00adword", "bad\u034fword", "bad\ufe0fword", "bad\U000e0020word", "bad\u2062word",
    "bad\u180eword", "bad\u3164word", "ba\u0301dword",
    # The second attack: format characters browsers draw as nothing (interlinear annotation,
    # Egyptian and Arabic format controls) were kept by the skeleton.
    "bad\ufff9word", "bad\ufffbword", "bad\U00013430word", "bad\u0600word",
]


@pytest.mark.parametrize("text", HIDDEN_BADWORDS, ids=ascii)
@pytest.mark.gen_test(timeout=60)
async def test_invisible_characters_and_accents_do_not_hide_a_blocked_term(
        api, services, base_url, chat_running, text):
    """security.md#chat-invisible-terms"""
    socket = await chatter(api, services, base_url, ("badword",))
    assert await code_of(socket, text) == "blocked_term"
    assert await code_of(socket, f"so {text.upper()} here") == "blocked_term"
    assert await code_of(socket, "bad word") == "chat.ack"  # a space is no invisible character
    assert await services.db.fetchval("SELECT count(*) FROM chat_messages") == 1
    socket.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_term_written_with_invisible_characters_matches_the_plain_word(
        api, services, base_url, chat_running):
    """security.md#chat-invisible-terms: terms are matched on the same skeleton as messages."""
    socket = await chatter(api, services, base_url, ("evil\u200bth\u00ecng", "two  words"))
    assert await code_of(socket, "an EVILTHING") == "blocked_term"
    assert await code_of(socket, "two\u3000words") == "blocked_term"
    assert await code_of(socket, "evil thing") == "chat.ack"
    socket.close()


@pytest.mark.parametrize("separator", ["\n", "\r", "\t", "\r\n", "\u2028", "\u2029",
                                       "\u00a0\n\t ", "\u2800", "\u2800\uffa0"],
                         ids=ascii)
@pytest.mark.gen_test(timeout=60)
async def test_chat_text_is_one_line(api, services, base_url, chat_running, separator):
    """security.md#chat-one-line: a message cannot fake a line from someone else, nor be a
    wall of empty lines; whitespace runs are one space, and so are runs of blank letters (the
    braille blank and Hangul fillers made 470 px walls and pushed a fake line of its own)."""
    socket = await chatter(api, services, base_url)
    assert await code_of(socket, f"gg{separator}owner: fake line") == "chat.ack"
    assert await code_of(socket, "." + separator * 498 + ".") == "chat.ack"
    await socket.until(lambda v: len(v.chat()) == 2, what="both messages")
    assert [m["text"] for m in socket.chat()] == ["gg owner: fake line", ". ."]
    stored = await services.db.fetch("SELECT text FROM chat_messages ORDER BY id")
    assert [row["text"] for row in stored] == ["gg owner: fake line", ". ."]
    # Hangul fillers alone between two dots are dropped: nothing to make a wall of.
    assert await code_of(socket, "." + "\u3164" * 249 + "\uffa0" * 249 + ".") == "chat.ack"
    await socket.until(lambda v: len(v.chat()) == 3, what="the third message")
    assert socket.chat()[-1]["text"] == ".."
    socket.close()


@pytest.mark.gen_test(timeout=60)
async def test_zalgo_and_whitespace_controls_are_refused(api, services, base_url, chat_running):
    """security.md#chat-one-line: more than 4 combining marks in a row tower over the lines
    around them; control characters that Python counts as whitespace stay refused."""
    socket = await chatter(api, services, base_url)
    assert await code_of(socket, "h\u0336\u0337\u0338\u0339\u033allo") == "invalid_message"
    assert await code_of(socket, "z\u0489" * 3 + "\u0489" * 5) == "invalid_message"
    assert await code_of(socket, "a\u0336\u0337\u200b\u0338\u0339\u033a") == "invalid_message"
    # Counted after NFC: e + U+0301 is one letter, é, so 4 marks are left on it: fine.
    assert await code_of(socket, "ye\u0301\u0302\u0303\u0304\u0305s") == "chat.ack"
    assert await code_of(socket, "Vi\u1ec7t Nam, cre\u0300me bru\u0302le\u0301e") == "chat.ack"
    for control in ("\x0b", "\x0c", "\x1c", "\x1f", "\x85"):
        assert await code_of(socket, f"line{control}next") == "invalid_message"
    socket.close()


# Messages of invisible characters alone that the outside attack had acknowledged.
INVISIBLE_ONLY = ["\u3164", "\uffa0", "\u2800", "\u115f", "\u180e", "\u2062", "\u00ad",
                  "\u034f", "\U000e0020", "\ufe0f", "\u0301",
                  # and what the second attack found: format, private-use, unassigned
                  "\ufff9", "\U00013430", "\u0600", "\ue000", "\u0378", "\uffff"]


@pytest.mark.parametrize("text", INVISIBLE_ONLY, ids=ascii)
@pytest.mark.gen_test(timeout=60)
async def test_a_message_of_invisible_characters_alone_is_refused(
        api, services, base_url, chat_running, text):
    """security.md#chat-invisible-only"""
    socket = await chatter(api, services, base_url)
    assert await code_of(socket, text) == "invalid_message"
    assert await code_of(socket, f" {text * 3} \u200b {text}") == "invalid_message"
    assert await code_of(socket, f"{text}a") == "chat.ack"  # one visible letter will do
    assert await services.db.fetchval("SELECT count(*) FROM chat_messages") == 1
    socket.close()


@pytest.mark.parametrize("variant", [
    "buy  followers now", "buy\tfollowers now", "buy\nfollowers now", "buy followers now\u200b",
    "buy follow\u00aders now", "buy followers now\ufe0f", "BUY FOLLOWERS NOW \u200b",
    "buy followers now\u2800", "buy followers now\ufff9", "buy followers now\U00013430",
    "buy followers now\u0600",
], ids=ascii)
@pytest.mark.gen_test(timeout=60)
async def test_a_duplicate_is_a_duplicate_whatever_whitespace_or_invisibles_it_adds(
        api, services, base_url, chat_running, variant):
    """security.md#chat-duplicate-variants"""
    socket = await chatter(api, services, base_url)
    assert await code_of(socket, "buy followers now") == "chat.ack"
    assert await code_of(socket, variant) == "duplicate"
    assert await code_of(socket, "buy followers later") == "chat.ack"
    socket.close()


@pytest.mark.gen_test(timeout=60)
async def test_the_rate_limit_is_per_user_and_higher_for_moderators(
        api, services, base_url, chat_running):
    """security.md#chat-message-flood"""
    owner, stream_id = await streamer(api, "host")
    alice = await api.register("alice")
    socket = await live(api, base_url, stream_id, alice)
    codes = []
    for number in range(22):
        codes.append((await socket.say(f"message {number}")).get("code", "ack"))
    assert codes[:20] == ["ack"] * 20 and codes[20:] == ["rate_limited"] * 2
    answer = await socket.say("more")
    assert 1 <= answer["retry_after"] <= 30
    # The owner has the higher limit (100 per window).
    owner_socket = await live(api, base_url, stream_id, owner)
    for number in range(25):
        assert (await owner_socket.say(f"owner {number}"))["type"] == "chat.ack"
    socket.close()
    owner_socket.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_burst_is_coalesced_into_a_few_frames_a_second(
        api, services, base_url, chat_running):
    owner, stream_id = await streamer(api, "host")
    senders = [await live(api, base_url, stream_id, await api.register(f"fan{n}"))
               for n in range(5)]
    reader = await live(api, base_url, stream_id)
    start = len(reader.frame_times)

    async def burst(socket: Viewer, number: int) -> None:
        for index in range(12):
            socket.send_chat(f"fan{number} says {index}")
            await asyncio.sleep(0.01)

    await asyncio.gather(*(burst(socket, n) for n, socket in enumerate(senders)))
    await reader.until(lambda v: len(v.chat()) == 60, what="all 60 messages")
    times = reader.frame_times[start:]
    assert len(times) < 30, f"{len(times)} frames for 60 messages"
    assert reader.of_type("chat.message") and any(m["type"] == "batch" for m in reader.messages)
    # No second holds more than ~5 frames (one flush every 0.2 s).
    for index, first in enumerate(times):
        assert sum(1 for t in times[index:] if t - first < 1.0) <= 6
    for socket in (*senders, reader):
        socket.close()


@pytest.mark.gen_test(timeout=60)
async def test_frame_floods_and_oversized_frames_close_the_socket(
        api, services, base_url, chat_running):
    """security.md#chat-frame-flood, security.md#oversized-chat-frames"""
    owner, stream_id = await streamer(api, "host")
    flooder = await live(api, base_url, stream_id)
    for _ in range(60):
        flooder.connection.write_message("{}")
    assert await flooder.until_closed() == CLOSE_POLICY
    pinger = await live(api, base_url, stream_id)
    for _ in range(60):
        pinger.connection.ping(b"x")
    assert await pinger.until_closed() == CLOSE_POLICY
    big = await live(api, base_url, stream_id, owner)
    big.connection.write_message(json.dumps({"type": "chat.send", "nonce": "a",
                                             "text": "x" * 9000}))
    assert await big.until_closed() == CLOSE_TOO_BIG
    assert await services.db.fetchval("SELECT count(*) FROM chat_messages") == 0


def masked(opcode: int, payload: bytes, final: bool) -> bytes:
    """A client's frame (masked, as RFC 6455 asks of clients), fragment or whole."""
    mask = b"\x01\x02\x03\x04"
    assert len(payload) < 126
    return (bytes(((0x80 if final else 0) | opcode, 0x80 | len(payload))) + mask
            + bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload)))


@pytest.mark.gen_test(timeout=60)
async def test_a_message_in_fragments_counts_every_fragment(api, services, base_url,
                                                           chat_running):
    """security.md#chat-fragment-flood: one message of 8,000 one-byte continuation frames
    counted as one frame of the budget, and six sockets so fragmenting kept the API at a
    full core. Each fragment counts: past the budget the socket closes with 1008."""
    _, stream_id = await streamer(api, "host")
    fragmenter = await live(api, base_url, stream_id)
    text = json.dumps({"type": "chat.send", "nonce": "f", "text": "x" * 100}).encode()
    frames = [masked(0x1 if index == 0 else 0x0, text[index:index + 1], index == len(text) - 1)
              for index in range(len(text))]
    stream = fragmenter.connection.protocol.stream
    await stream.write(b"".join(frames))
    assert await fragmenter.until_closed() == CLOSE_POLICY
    # A client that fragments within the budget is served.
    sender = await live(api, base_url, stream_id)
    short = json.dumps({"type": "chat.send", "nonce": "g", "text": "hi"}).encode()
    await sender.connection.protocol.stream.write(
        masked(0x1, short[:10], False) + masked(0x0, short[10:], True))
    await sender.until(lambda v: v.answer("g") is not None, what="an answer to the fragments")
    assert sender.answer("g")["code"] == "not_signed_in" and sender.close_code is None
    sender.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_client_that_sends_on_after_its_1008_loses_the_connection_at_once(
        api, services, base_url, chat_running):
    """security.md#chat-fragment-flood: after the 1008 the handler's close() had dropped its
    connection object, so the check meant to cut a client that sends on never held, and
    Tornado read (and paid for) its frames for 5 s more, waiting for its close frame."""
    _, stream_id = await streamer(api, "host")
    address = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET /ws/streams/{stream_id}/live HTTP/1.1\r\nHost: {address.netloc}\r\n"
                 "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nOrigin: {ORIGIN}\r\n\r\n".encode())
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    started = asyncio.get_running_loop().time()
    writer.write(b"".join(masked(0x9, b"x", True) for _ in range(60)))  # never a close reply
    received = await asyncio.wait_for(reader.read(), 10)  # to EOF
    cut_after = asyncio.get_running_loop().time() - started
    assert bytes((0x88, 0x13)) + CLOSE_POLICY.to_bytes(2, "big") in received  # 1008 first
    assert cut_after < 2, cut_after
    writer.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_socket_whose_session_ended_sends_nothing_more(api, services, base_url,
                                                               chat_running):
    """security.md#chat-after-logout: after a logout or password change elsewhere, the
    session's open socket still had messages acked until the session check closed it
    (every 5 s). The send itself checks the session: refused, and the socket closes."""
    _, stream_id = await streamer(api, "host")
    mallory = await api.register("mallory")
    socket = await live(api, base_url, stream_id, mallory)
    assert (await socket.say("before"))["type"] == "chat.ack"
    assert (await api.post("/api/auth/logout", token=mallory["access_token"])).status == 204
    answer = await socket.say("after")
    assert answer["type"] == "chat.notice" and answer["code"] == "not_signed_in"
    assert await socket.until_closed() == 4401
    texts = [row["text"] for row in await services.db.fetch("SELECT text FROM chat_messages")]
    assert texts == ["before"]


@pytest.mark.gen_test(timeout=60)
async def test_the_sender_is_the_tickets_account_and_text_stays_text(
        api, services, base_url, chat_running):
    """security.md#chat-impersonation, security.md#chat-html"""
    owner, stream_id = await streamer(api, "host")
    mallory = await api.register("mallory")
    socket = await live(api, base_url, stream_id, mallory)
    for extra in ({"user_id": owner["user"]["id"]}, {"user": {"username": "host"}},
                  {"roles": ["owner"]}):
        assert (await socket.say("I am the host", **extra))["code"] == "invalid_message"
    script = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    assert (await socket.say(script))["type"] == "chat.ack"
    await socket.until(lambda v: v.chat(), what="the message")
    assert socket.chat()[0]["text"] == script and socket.chat()[0]["user"]["username"] == "mallory"
    raw = next(frame for frame in socket.raw if "onerror" in str(frame))
    assert "</script>" not in str(raw) and "<\\/script>" in str(raw)
    assert await services.db.fetchval("SELECT text FROM chat_messages") == script
    socket.close()


@pytest.mark.gen_test(timeout=60)
async def test_published_events_reach_every_nodes_sockets_and_settings_hide_terms(
        api, services, base_url, chat_running):
    owner, stream_id = await streamer(api, "host")
    channel_id = owner["user"]["id"]
    async with second_node(services) as (other_url, other):
        viewer = await live(api, other_url, stream_id, await api.register("viewer"))
        owner_socket = await live(api, base_url, stream_id, owner)
        await services.chat.publish(channel_id, {"type": "chat.deleted", "id": 7}, stream_id)
        await services.chat.publish(channel_id, {"type": "chat.user_cleared", "user_id": 3})
        await other.chat.publish(channel_id, {
            "type": "chat.settings", "enabled": True, "slow_mode_seconds": 5,
            "followers_only_minutes": None, "min_account_age_minutes": 0,
            "blocked_terms": ["secret"]})
        for socket in (viewer, owner_socket):
            await socket.until(lambda v: len(v.of_type("chat.settings")) == 2,
                               what="the new settings")
            assert socket.of_type("chat.deleted") == [{"type": "chat.deleted", "id": 7}]
            assert socket.of_type("chat.user_cleared") == [{"type": "chat.user_cleared",
                                                            "user_id": 3}]
        assert "blocked_terms" not in viewer.of_type("chat.settings")[1]
        assert owner_socket.of_type("chat.settings")[1]["blocked_terms"] == ["secret"]
        assert "secret" not in "".join(str(frame) for frame in viewer.raw)
        # A new moderator's sockets get the settings with the terms, on every node.
        await services.db.execute(
            "INSERT INTO chat_moderators (channel_id, user_id) SELECT $1, id FROM users"
            " WHERE username = 'viewer'", channel_id)
        viewer_id = await services.db.fetchval("SELECT id FROM users WHERE username = 'viewer'")
        await services.chat.publish(channel_id, {"type": "internal.standing",
                                                 "user_id": viewer_id})
        await viewer.until(lambda v: "blocked_terms" in v.of_type("chat.settings")[-1],
                           what="the moderator's settings")
        viewer.close()
        owner_socket.close()


@pytest.mark.gen_test(timeout=60)
async def test_retention_job_deletes_old_messages(api, services, base_url):
    owner, stream_id = await streamer(api, "host")
    channel_id = owner["user"]["id"]
    await services.db.execute(
        "INSERT INTO chat_messages (stream_id, channel_id, user_id, text, sent_at)"
        " SELECT $1, $2, $2, 'old ' || n, now() - interval '31 days' FROM generate_series(1, 7) n",
        stream_id, channel_id)
    await services.db.execute(
        "INSERT INTO chat_messages (stream_id, channel_id, user_id, text, sent_at)"
        " VALUES ($1, $2, $2, 'recent', now() - interval '29 days')", stream_id, channel_id)
    await services.db.execute(
        "INSERT INTO chat_moderation_log (channel_id, action, created_at) VALUES"
        " ($1, 'ban', now() - interval '31 days'), ($1, 'timeout', now())", channel_id)
    report = await services.jobs.run_round()
    assert report is not None
    assert report["chat_retention"] == {"chat_messages": 7, "moderation_log": 1}
    assert await services.db.fetchval("SELECT array_agg(text) FROM chat_messages") == ["recent"]
    assert await services.db.fetchval(
        "SELECT array_agg(action) FROM chat_moderation_log") == ["timeout"]


@pytest.mark.gen_test(timeout=60)
async def test_an_erased_accounts_messages_lose_their_author(api, services, base_url):
    owner, stream_id = await streamer(api, "host")
    alice = await api.register("alice")
    await services.db.execute(
        "INSERT INTO chat_messages (stream_id, channel_id, user_id, text) VALUES ($1, $2, $3,"
        " 'remember me')", stream_id, owner["user"]["id"], alice["user"]["id"])
    deleted = await api.request("DELETE", "/api/users/profile", {"password": "password123"},
                                token=alice["access_token"])
    assert deleted.status == 202, deleted
    # Hidden at once: the message stays, without its author.
    page = await api.get(f"/api/streams/{stream_id}/chat/messages")
    assert [(m["text"], m["user"]) for m in page.json["data"]] == [("remember me", None)]
    assert await services.db.fetchval("SELECT user_id FROM chat_messages") == alice["user"]["id"]
    await services.db.execute(
        "UPDATE users SET erase_after = now() - interval '1 second' WHERE id = $1",
        alice["user"]["id"])
    assert await services.erasure.purge_due() == 1
    assert await services.db.fetchval("SELECT user_id FROM chat_messages") is None
    assert await services.db.fetchval("SELECT text FROM chat_messages") == "remember me"


@pytest.mark.gen_test(timeout=30)
async def test_the_viewers_socket_has_no_chat(api, services, base_url, chat_running):
    owner, stream_id = await streamer(api, "host")
    viewer = await connect(base_url, stream_id, origin=ORIGIN)
    await asyncio.sleep(0.5)
    assert not viewer.of_type("chat.history")
    with contextlib.suppress(tornado.websocket.WebSocketClosedError):
        viewer.send_chat("hello?")
    await asyncio.sleep(0.5)
    assert await services.db.fetchval("SELECT count(*) FROM chat_messages") == 0
    viewer.close()
