"""E-mail for real: the outbox and its sender against a real SMTP server (harness/smtp.py),
e-mail verification, changes that wait for it, and password reset by mail."""

from __future__ import annotations

import asyncio
import statistics
import time
from email.utils import make_msgid

import aiosmtplib
import pytest

from harness.ports import release_ports, reserve_ports
from harness.smtp import token_of
from sf.db import outbox
from sf.db.users import User
from sf.errors import ValidationFailed
from sf.node.dev import start_mail_sink, stop_process
from sf.services.account_mail import verification_content
from sf.services.mail import MailContent, MailSender, compose

pytestmark = pytest.mark.gen_test(timeout=60)

BAD_TOKEN = {"token": ["is invalid, expired or already used"]}


async def profile(api, token):
    response = await api.get("/api/users/profile", token=token)
    assert response.status == 200, response
    return response.json


async def outbox_rows(services):
    """The outbox, each recipient opened ("" once blanked): rows hold it sealed."""
    rows = [dict(row) for row in await services.db.fetch(
        "SELECT kind, key_id, recipient, status, attempts FROM mail_outbox ORDER BY id")]
    for row in rows:
        sealed = bytes(row.pop("recipient"))
        row["recipient"] = services.email_cipher.open_bytes(
            row.pop("key_id"), sealed, 0, outbox.RECIPIENT).decode() if sealed else ""
    return rows


# --- verification ---------------------------------------------------------------------------

async def test_registration_mails_a_link_that_verifies_the_address_once(api, mailbox):
    """security.md#mail-link-token-reuse: a link works once, and a made-up, used or expired
    token gets the same answer."""
    tokens = await api.register("alice")
    assert tokens["user"]["email_verified"] is False and tokens["user"]["pending_email"] is None
    mail = await mailbox.wait_for("alice@example.com")
    assert mail.message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in mail.message.iter_parts()] == \
        ["text/plain", "text/html"]
    assert mail.message["Subject"] == "Confirm your e-mail address"
    link = mail.links[0]
    assert link.startswith("http://127.0.0.1:8080/account/verify-email#token=")
    token = token_of(mail)
    assert len(token) == 43
    used = await api.post("/api/auth/verify-email", {"token": token})
    assert used.status == 204, used
    assert (await profile(api, tokens["access_token"]))["email_verified"] is True
    for bad in (token, "x" * 43, token[:-1]):
        again = await api.post("/api/auth/verify-email", {"token": bad})
        assert again.status == 422 and again.json["error"]["fields"] == BAD_TOKEN


async def test_tokens_are_stored_only_as_their_digest(api, services, mailbox):
    await api.register("hash")
    token = token_of(await mailbox.wait_for("hash@example.com"))
    stored = await services.db.fetch("SELECT token_hash FROM mail_tokens")
    assert len(stored) == 1 and token.encode() not in bytes(stored[0]["token_hash"])
    # Once sent, the outbox row keeps neither the address nor the message (it held the link).
    await asyncio.sleep(0.3)
    row = await services.db.fetchrow("SELECT status, recipient, message FROM mail_outbox")
    assert row["status"] == "sent" and bytes(row["recipient"]) == b"" and bytes(row["message"]) == b""


async def test_an_expired_verification_link_fails_like_a_made_up_one(api, services, mailbox):
    await api.register("late")
    token = token_of(await mailbox.wait_for("late@example.com"))
    await services.db.execute("UPDATE mail_tokens SET expires_at = now() - interval '1 second'")
    response = await api.post("/api/auth/verify-email", {"token": token})
    assert response.status == 422 and response.json["error"]["fields"] == BAD_TOKEN


async def test_an_email_change_waits_for_the_new_address_to_be_verified(api, mailbox):
    tokens = await api.register("bob")
    access = tokens["access_token"]
    changed = await api.put("/api/users/profile", {"email": "bob2@example.com",
                                                   "current_password": "password123"}, token=access)
    assert changed.status == 200, changed
    assert changed.json["email"] == "bob@example.com"
    assert changed.json["pending_email"] == "bob2@example.com"
    token = token_of(await mailbox.wait_for("bob2@example.com"))
    # Until then the old address is the one that signs in.
    assert (await api.post("/api/auth/login", {"email": "bob2@example.com",
                                               "password": "password123"})).status == 401
    assert (await api.post("/api/auth/login", {"email": "bob@example.com",
                                               "password": "password123"})).status == 200
    assert (await api.post("/api/auth/verify-email", {"token": token})).status == 204
    now = await profile(api, access)
    assert (now["email"], now["email_verified"], now["pending_email"]) == \
        ("bob2@example.com", True, None)
    assert (await api.post("/api/auth/login", {"email": "bob2@example.com",
                                               "password": "password123"})).status == 200
    notice = await mailbox.wait_for("bob@example.com", count=2)  # after the registration's
    assert notice.message["Subject"] == "Your e-mail address was changed"
    assert "bob2@example.com" in notice.text and not notice.links


async def test_a_second_change_voids_the_first_link(api, mailbox):
    access = (await api.register("cleo"))["access_token"]
    for address in ("first@example.com", "second@example.com"):
        response = await api.put("/api/users/profile", {
            "email": address, "current_password": "password123"}, token=access)
        assert response.status == 200
    first = token_of(await mailbox.wait_for("first@example.com"))
    second = token_of(await mailbox.wait_for("second@example.com"))
    assert (await api.post("/api/auth/verify-email", {"token": first})).status == 422
    assert (await api.post("/api/auth/verify-email", {"token": second})).status == 204
    assert (await profile(api, access))["email"] == "second@example.com"


async def test_a_confirmed_change_checks_again_that_the_address_is_free(api, mailbox):
    access = (await api.register("dave"))["access_token"]
    response = await api.put("/api/users/profile", {"email": "wanted@example.com",
                                                    "current_password": "password123"}, token=access)
    assert response.status == 200
    token = token_of(await mailbox.wait_for("wanted@example.com"))
    await api.register("erin", email="Wanted@example.com")  # takes it meanwhile
    taken = await api.post("/api/auth/verify-email", {"token": token})
    assert taken.status == 409 and "email" in taken.json["error"]["fields"]
    assert (await profile(api, access))["email"] == "dave@example.com"


async def test_resending_the_verification_mail(api, mailbox):
    access = (await api.register("finn"))["access_token"]
    first = token_of(await mailbox.wait_for("finn@example.com"))
    again = await api.post("/api/users/profile/verify-email", token=access)
    assert again.status == 202, again
    second = token_of(await mailbox.wait_for("finn@example.com", count=2))
    assert first != second
    assert (await api.post("/api/auth/verify-email", {"token": first})).status == 422
    assert (await api.post("/api/auth/verify-email", {"token": second})).status == 204
    done = await api.post("/api/users/profile/verify-email", token=access)
    assert done.status == 409
    assert (await api.post("/api/users/profile/verify-email")).status == 401


async def test_resending_is_rate_limited_per_account(api, services, mailbox):
    access = (await api.register("gus"))["access_token"]
    statuses = [(await api.post("/api/users/profile/verify-email", token=access)).status
                for _ in range(services.config.rate_limit_mail + 1)]
    assert statuses == [202] * services.config.rate_limit_mail + [429]


# --- password reset -------------------------------------------------------------------------

async def test_password_reset_by_mail_ends_every_session(api, mailbox):
    tokens = await api.register("hank")
    other = (await api.post("/api/auth/login", {"username": "hank",
                                                "password": "password123"})).json
    asked = await api.post("/api/auth/password-reset", {"email": "HANK@example.com"})
    assert asked.status == 202 and asked.body == b"" and "Content-Type" not in asked.headers
    mail = await mailbox.wait_for("hank@example.com", count=2)  # after the verification mail
    assert mail.message["Subject"] == "Reset your password"
    assert mail.links[0].startswith("http://127.0.0.1:8080/account/reset-password#token=")
    token = token_of(mail)
    done = await api.post("/api/auth/password-reset/confirm",
                          {"token": token, "new_password": "brand-new-secret"})
    assert done.status == 204, done
    for session in (tokens, other):
        assert (await api.get("/api/users/profile",
                              token=session["access_token"])).status == 401
        assert (await api.post("/api/auth/refresh-token",
                               {"refresh_token": session["refresh_token"]})).status == 401
    assert (await api.post("/api/auth/login", {"username": "hank",
                                               "password": "password123"})).status == 401
    login = await api.post("/api/auth/login", {"username": "hank",
                                               "password": "brand-new-secret"})
    assert login.status == 200 and login.json["user"]["email_verified"] is True
    reused = await api.post("/api/auth/password-reset/confirm",
                            {"token": token, "new_password": "yet-another-one"})
    assert reused.status == 422 and reused.json["error"]["fields"] == BAD_TOKEN


async def test_a_new_reset_link_voids_the_previous_one_and_links_expire(api, services, mailbox):
    """security.md#mail-link-token-reuse"""
    await api.register("ivy")
    for count in (2, 3):
        assert (await api.post("/api/auth/password-reset",
                               {"email": "ivy@example.com"})).status == 202
        await mailbox.wait_for("ivy@example.com", count=count)
    old, new = (token_of(mail) for mail in mailbox.to("ivy@example.com")[1:3])
    body = {"new_password": "brand-new-secret"}
    refused = await api.post("/api/auth/password-reset/confirm", {"token": old, **body})
    assert refused.status == 422 and refused.json["error"]["fields"] == BAD_TOKEN
    await services.db.execute("UPDATE mail_tokens SET expires_at = now() - interval '1 second'"
                              " WHERE purpose = 'password_reset'")
    expired = await api.post("/api/auth/password-reset/confirm", {"token": new, **body})
    assert expired.status == 422 and expired.json["error"]["fields"] == BAD_TOKEN


async def test_reset_of_an_unknown_address_answers_alike_and_mails_nothing(api, services, mailbox):
    await api.register("jade")
    known = await api.post("/api/auth/password-reset", {"email": "jade@example.com"})
    unknown = await api.post("/api/auth/password-reset", {"email": "nobody@example.com"})
    assert (known.status, known.body) == (unknown.status, unknown.body) == (202, b"")
    await mailbox.wait_for("jade@example.com", count=2)
    await asyncio.sleep(0.5)
    assert mailbox.to("nobody@example.com") == []
    rows = await outbox_rows(services)
    assert "nobody@example.com" not in [row["recipient"] for row in rows]
    assert [row["status"] for row in rows if row["kind"] == "password_reset"] == ["sent", "skipped"]


async def test_reset_requests_are_limited_per_address(api, services):
    await api.register("kim")
    limit = services.config.rate_limit_mail
    statuses = []
    for index in range(limit + 1):  # from different client addresses, the same account
        response = await api.post("/api/auth/password-reset", {"email": " Kim@Example.com"[1:]},
                                  headers={"X-Forwarded-For": f"198.51.100.{index + 1}"})
        statuses.append(response.status)
    assert statuses == [202] * limit + [429]
    other = await api.post("/api/auth/password-reset", {"email": "someone@example.com"},
                           headers={"X-Forwarded-For": "198.51.100.99"})
    assert other.status == 202


def trimmed_mean(values: list[float]) -> float:
    """The mean of the middle 80 %: a request that met a busy machine says nothing of SF."""
    ordered = sorted(values)
    cut = len(ordered) // 10
    return statistics.mean(ordered[cut:len(ordered) - cut])


async def test_reset_takes_the_same_time_for_known_and_unknown_addresses(api, services):
    """security.md#reset-enumeration-by-timing: the same lookup, limit and statements either
    way; over 20 requests each, interleaved, the means (of the middle 80 %) and the median of
    the paired differences stay within 2.5 ms. An early return for unknown addresses (no
    transaction to commit) made them 3-7 ms apart, in every round."""
    tries, rounds = 20, 3
    for index in range(tries * rounds):
        await services.accounts.register(f"timed{index}", f"timed{index}@example.com",
                                         "password123", services.consents.policy.version)

    async def timed(client: int, email: str) -> float:
        started = time.perf_counter()
        response = await api.post("/api/auth/password-reset", {"email": email},
                                  headers={"X-Forwarded-For": f"10.0.{client // 250}.{client % 250}"})
        elapsed = time.perf_counter() - started
        assert (response.status, response.body) == (202, b"")
        return elapsed

    for index in range(5):  # warm up connections and prepared statements
        await timed(1000 + index, f"warm{index}@example.com")
    seen = []
    for round_ in range(rounds):  # a machine busy with other work gets more than one chance
        known, unknown = [], []
        for index in range(round_ * tries, (round_ + 1) * tries):
            known.append(await timed(index, f"timed{index}@example.com"))
            unknown.append(await timed(500 + index, f"ghost{index}@example.com"))
        difference = trimmed_mean(known) - trimmed_mean(unknown)
        paired = statistics.median(k - u for k, u in zip(known, unknown, strict=True))
        seen.append((round(difference * 1000, 2), round(paired * 1000, 2)))
        if abs(difference) < 0.0025 and abs(paired) < 0.0025:
            break
    else:
        pytest.fail(f"known and unknown addresses apart by (ms, mean and paired): {seen}")
    queued = [row["status"] for row in await outbox_rows(services)
              if row["kind"] == "password_reset"]
    assert queued.count("pending") == len(seen) * tries
    assert queued.count("skipped") == len(seen) * tries + 5


# --- mail safety ----------------------------------------------------------------------------

def test_no_header_takes_a_line_break_from_the_recipient(base_config):
    """security.md#mail-header-injection: a recipient that would end its header and add one
    (a Bcc to anyone) is refused before any message is built."""
    content = MailContent("Hello", "text", "<p>html</p>")
    for address in ("victim@example.com\r\nBcc: everyone@evil.example",
                    "victim@example.com\nSubject: spoofed", "victim@example.com\x00"):
        with pytest.raises(ValidationFailed):
            compose(base_config.mail_from, address, content)
    message = compose(base_config.mail_from, "victim@example.com", content)
    assert b"Bcc" not in message


async def test_line_breaks_in_an_address_never_reach_a_mail(api, services):
    """security.md#mail-header-injection"""
    injected = "mallory@example.com\r\nBcc: everyone@evil.example"
    register = await api.post("/api/auth/register", {
        "username": "mallory", "email": injected, "password": "password123"})
    assert register.status == 422 and "email" in register.json["error"]["fields"]
    reset = await api.post("/api/auth/password-reset", {"email": injected})
    assert reset.status == 422 and "email" in reset.json["error"]["fields"]
    access = (await api.register("nora"))["access_token"]
    change = await api.put("/api/users/profile", {"email": injected,
                                                  "current_password": "password123"}, token=access)
    assert change.status == 422
    assert [row["recipient"] for row in await outbox_rows(services)] == ["nora@example.com"]


async def test_values_in_a_mail_are_escaped_in_its_html(api, base_config, mailbox):
    """security.md#html-injection-in-mail: the address (which may hold ' and &) and the link
    are text in the HTML part, never markup."""
    address = "o'hara&sons@example.com"
    await api.register("ohara", email=address)
    mail = await mailbox.wait_for(address)
    assert address in mail.text
    assert "o&#x27;hara&amp;sons@example.com" in mail.html and address not in mail.html
    hostile = "https://sf.example.com/\"><script>alert(1)</script>#token=x"
    user = User(1, "pat", "p@example.com", "", None, "", 0, None, None, False)
    content = verification_content(user, address, hostile, 24)
    assert "<script>" not in content.html and "&lt;script&gt;" in content.html
    assert 'href="https://sf.example.com/&quot;&gt;&lt;script&gt;' in content.html


# --- the sender -----------------------------------------------------------------------------

async def test_an_smtp_outage_delays_mail_but_never_a_request(api, services, mailbox):
    mailbox.stop()
    try:
        started = time.perf_counter()
        await api.register("olga")
        assert time.perf_counter() - started < 1.0
        deadline = time.monotonic() + 5
        while (await outbox_rows(services))[0]["attempts"] < 2:  # tried, failed, retried
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        row = (await outbox_rows(services))[0]
        assert row["status"] in ("pending", "sending") and mailbox.to("olga@example.com") == []
    finally:
        mailbox.start()
    mail = await mailbox.wait_for("olga@example.com", timeout=15)
    assert token_of(mail)
    await asyncio.sleep(0.5)
    assert len(mailbox.to("olga@example.com")) == 1


async def test_a_mail_left_sending_by_a_dead_sender_is_sent_once_its_lease_ends(
        api, services, mail_receiver, io_loop):
    mail_receiver.start()
    mail_receiver.clear()
    await services.accounts.register("pete", "pete@example.com", "password123",
                                     services.consents.policy.version)
    # A sender claims the mail and dies before sending it.
    claimed = await outbox.claim(services.db, services.email_cipher, 10, lease_seconds=1.5)
    assert [mail.recipient for mail in claimed] == ["pete@example.com"]
    await services.mail.start()
    try:
        await asyncio.sleep(1.0)
        assert mail_receiver.to("pete@example.com") == []  # still leased to the dead one
        mail = await mail_receiver.wait_for("pete@example.com", timeout=10)
        assert token_of(mail)
        row = (await outbox_rows(services))[0]
        assert (row["status"], row["attempts"]) == ("sent", 2)
    finally:
        await services.mail.stop()


async def test_two_senders_never_send_one_mail_twice(services, mail_receiver):
    mail_receiver.start()
    mail_receiver.clear()
    content = MailContent("Hello", "text", "<p>html</p>")
    ids = []
    async with services.db.acquire() as connection, connection.transaction():
        for index in range(40):
            message = compose(services.config.mail_from, f"bulk{index}@example.com", content)
            ids.append(message.split(b"Message-ID: ")[1].split(b"\r\n")[0])
            await outbox.enqueue(connection, services.email_cipher, "test",
                                 f"bulk{index}@example.com", message)
    senders = [MailSender(services.db, services.config, services.email_cipher)
               for _ in range(3)]
    delivered = await asyncio.gather(*(sender.send_due() for sender in senders))
    assert sum(delivered) == 40
    received = [mail.message["Message-ID"].encode() for mail in mail_receiver.mails]
    assert sorted(received) == sorted(ids)  # each once
    assert {row["status"] for row in await outbox_rows(services)} == {"sent"}
    assert make_msgid()  # (the ids above are make_msgid's)


async def test_a_mail_is_given_up_after_the_last_attempt(services, caplog):
    content = MailContent("Hello", "text", "<p>html</p>")
    await outbox.enqueue(services.db, services.email_cipher, "test", "quinn@example.com",
                         compose(services.config.mail_from, "quinn@example.com", content))
    nowhere = services.config.replace(smtp_url="smtp://127.0.0.1:9", mail_max_attempts=2,
                                      mail_retry_seconds=0.01)
    sender = MailSender(services.db, nowhere, services.email_cipher)
    for _ in range(20):
        await sender.send_due()
        if (await outbox_rows(services))[0]["status"] == "failed":
            break
        await asyncio.sleep(0.02)
    row = (await outbox_rows(services))[0]
    assert (row["status"], row["attempts"], row["recipient"]) == ("failed", 2, "")
    assert any(record.message == "mail given up" for record in caplog.records)


async def test_housekeeping_deletes_expired_tokens_and_old_finished_mail(api, services,
                                                                         mailbox):
    await api.register("rosa")
    await mailbox.wait_for("rosa@example.com")
    await api.post("/api/auth/password-reset", {"email": "ghost@example.com"})
    await services.db.execute("UPDATE mail_tokens SET expires_at = now() - interval '1 second'")
    await services.db.execute("UPDATE mail_outbox SET created_at = now() - interval '8 days'")
    await services.accounts.register("sam", "sam@example.com", "password123",  # new: stays
                                     services.consents.policy.version)
    await MailSender(services.db, services.config, services.email_cipher)._housekeeping()
    assert await services.db.fetchval("SELECT count(*) FROM mail_tokens") == 1
    assert len(await outbox_rows(services)) == 1  # sam's (perhaps sent already)


# --- make run's sink ------------------------------------------------------------------------

async def test_the_development_sink_keeps_each_mail_and_prints_its_links(tmp_path, base_config,
                                                                         capfd):
    """`sf dev` starts `python -m sf.node.mail_sink` on SF_SMTP_URL: each mail a .eml under
    var/mail, its links on the console."""
    port = reserve_ports(1)[0]
    config = base_config.replace(smtp_url=f"smtp://127.0.0.1:{port}", var_dir=tmp_path)
    sink = start_mail_sink(config)
    assert sink is not None
    try:
        assert start_mail_sink(config) is None  # something listens there already
        link = "http://127.0.0.1:8080/account/verify-email#token=abc"
        message = compose(base_config.mail_from, "dev@example.com",
                          MailContent("Confirm", f"Open {link}\n", "<p>html</p>"))
        await aiosmtplib.send(message, sender="no-reply@localhost",
                              recipients=["dev@example.com"], hostname="127.0.0.1", port=port)
        deadline = time.monotonic() + 10
        while not list((tmp_path / "mail").glob("*.eml")):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        [kept] = list((tmp_path / "mail").glob("*.eml"))
        assert kept.read_bytes() == message
    finally:
        stop_process(sink)
        release_ports([port])
    assert sink.returncode == 0
    assert f"  {link}" in capfd.readouterr().out.splitlines()


# --- outside attack on issue 21 (regressions) -------------------------------------------------

async def test_a_reset_link_dies_when_the_password_or_the_address_changes(api, mailbox):
    """security.md#reset-link-after-change: a reset link mailed before a password change, or
    to an address the account then left, took the account over for its 30 minutes."""
    tokens = await api.register("olga")
    body = {"new_password": "taken-over-123"}
    assert (await api.post("/api/auth/password-reset", {"email": "olga@example.com"})).status == 202
    before_password = token_of(await mailbox.wait_for("olga@example.com", count=2))
    changed = await api.post("/api/users/change-password", {
        "current_password": "password123", "new_password": "olga-new-pass"},
        token=tokens["access_token"])
    assert changed.status == 204
    refused = await api.post("/api/auth/password-reset/confirm", {"token": before_password, **body})
    assert refused.status == 422 and refused.json["error"]["fields"] == BAD_TOKEN

    assert (await api.post("/api/auth/password-reset", {"email": "olga@example.com"})).status == 202
    to_old_address = token_of(await mailbox.wait_for("olga@example.com", count=3))
    moved = await api.put("/api/users/profile", {"email": "olga.new@example.com",
                                                 "current_password": "olga-new-pass"},
                          token=tokens["access_token"])
    assert moved.status == 200
    verify = token_of(await mailbox.wait_for("olga.new@example.com"))
    assert (await api.post("/api/auth/verify-email", {"token": verify})).status == 204
    refused = await api.post("/api/auth/password-reset/confirm", {"token": to_old_address, **body})
    assert refused.status == 422 and refused.json["error"]["fields"] == BAD_TOKEN
    assert (await api.post("/api/auth/login", {"username": "olga",
                                               "password": "olga-new-pass"})).status == 200


async def test_an_address_change_tells_nothing_of_other_accounts_and_is_limited(api, services,
                                                                                mailbox):
    """security.md#address-change-oracle: a taken address answered 409 and a free one 200 (an
    oracle of registered addresses, 780 probes a minute), and every change mailed a link with
    no limit (a mail cannon at someone's inbox)."""
    await api.register("pia")
    access = (await api.register("quentin"))["access_token"]
    change = {"current_password": "password123"}
    taken = await api.put("/api/users/profile", {"email": "pia@example.com", **change},
                          token=access)
    assert taken.status == 200 and taken.json["pending_email"] == "pia@example.com"
    token = token_of(await mailbox.wait_for("pia@example.com", count=2))
    assert (await api.post("/api/auth/verify-email", {"token": token})).status == 409
    free = await api.put("/api/users/profile", {"email": "nobody.yet@example.com", **change},
                         token=access)
    assert free.status == 200 and set(taken.json) == set(free.json)
    for index in range(services.config.rate_limit_mail):
        await api.put("/api/users/profile", {"email": f"flood{index}@example.com", **change},
                      token=access)
    limited = await api.put("/api/users/profile", {"email": "victim@example.com", **change},
                            token=access)
    assert limited.status == 429 and "Retry-After" in limited.headers
    assert (await profile(api, access))["email"] == "quentin@example.com"


async def test_addresses_sf_cannot_mail_are_refused_before_anything_is_stored(api, services):
    """security.md#encoded-word-recipient: RFC 2047 encoded words in an address were decoded
    into the To: header (`a, evil@attacker.test@…`: two recipients), one of them was a 500, and
    a non-ASCII address queued a mail no attempt could send."""
    for email in ("=?utf-8?q?mrk0kf=2C_evil=40attacker.test?=@example.com",
                  "=?utf-8?b?PHNjcmlwdD4=?=abc@example.com", "\u00e4xyz@ex\u00e4mple.com",
                  "a@localhost", "a@[127.0.0.1]", '"quoted"@example.com'):
        register = await api.post("/api/auth/register",
                                  await api.registration("rolf", email=email))
        assert register.status == 422 and "email" in register.json["error"]["fields"], email
        reset = await api.post("/api/auth/password-reset", {"email": email})
        assert reset.status == 422, email
    assert await services.db.fetchval("SELECT count(*) FROM users") == 0
    assert await services.db.fetchval("SELECT count(*) FROM mail_outbox") == 0
    with pytest.raises(ValidationFailed):
        compose("SF <no-reply@example.com>", "=?utf-8?b?PHNjcmlwdD4=?=abc@example.com",
                MailContent("Hello", "text", "<p>html</p>"))


async def test_a_mail_no_attempt_can_send_is_given_up_at_once(services, mail_receiver, caplog):
    """security.md#poisoned-mail: a mail the SMTP client could not encode raised past the
    sender's handler, was re-claimed lease after lease (an ERROR every few minutes, forever)
    and never given up."""
    mail_receiver.start()
    mail_receiver.clear()
    content = MailContent("Hello", "text", "<p>html</p>")
    good = compose(services.config.mail_from, "fine@example.com", content)
    await outbox.enqueue(services.db, services.email_cipher, "test", "\u00e4x@ex\u00e4mple.com",
                         good)
    await outbox.enqueue(services.db, services.email_cipher, "test", "fine@example.com", good)
    sender = MailSender(services.db, services.config, services.email_cipher)
    assert await sender.send_due() == 1
    rows = await outbox_rows(services)
    assert [(row["status"], row["attempts"]) for row in rows] == [("failed", 1), ("sent", 1)]
    assert [mail.message["To"] for mail in mail_receiver.mails] == ["fine@example.com"]
    assert any(record.message == "mail given up" for record in caplog.records)
