"""Contract fuzzing: schemathesis drives every documented operation of a live node (nginx in
front of `sf serve`) from /api/openapi.json and fails on any 5xx.

The run is bounded for CI: every phase schemathesis runs by default (examples, coverage,
fuzzing, stateful when links exist), at most MAX_EXAMPLES generated cases per operation in
the fuzzing phase, no Hypothesis deadline, a fixed seed, no cache between runs. Set
SFTEST_FUZZ_SEED / SFTEST_FUZZ_EXAMPLES to explore further. Only `not_a_server_error` is
the answers are held to the document: every check schemathesis has (status codes each operation
documents, response schemas and content types, `Allow` on 405, negative data refused, valid
data accepted), the last one allowing, per operation, the refusals of BUSINESS_RULES below.

Authenticated operations run with a Bearer token of a registered user that owns a stream. The
operations that end sessions (logout revokes the token, change-password revokes every other
session, deleting the account all of them) get a fresh user per call instead, so they run for
real without logging the shared user out.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import schemathesis
import schemathesis.engine
from schemathesis.engine import events

from harness.platform import Platform

MAX_EXAMPLES = int(os.environ.get("SFTEST_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("SFTEST_FUZZ_SEED", "20240611"))
SESSION_ENDING = {("POST", "/api/v1/auth/logout"), ("POST", "/api/v1/users/change-password"),
                  ("DELETE", "/api/v1/users/profile")}

# Mixed into generated values: what reached the database or the JSON writer as a 500 before.
HOSTILE_TEXT = ["\x00", "chess\x00", "alice\n", "ADMIN", "9223372036854775808", "-1", "1e400",
                "NaN", "../../etc/passwd", "%00", "\u202e", "0"]
HOSTILE_INTEGERS = [0, -1, 2**31, -(2**31) - 1, 2**63, -(2**63) - 1, 10**30]

pytestmark = [pytest.mark.platform, pytest.mark.timeout(600)]

# `positive_data_acceptance` sends requests the document calls valid and expects them taken.
# Some valid-looking requests are refused by rules no JSON Schema can state; each operation
# below may give those refusals, and only those, besides schemathesis' defaults.
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
CURSOR = {"422": "a cursor is an opaque token handed out by the previous page; a made-up one "
                 "is refused"}
BUSINESS_RULES: dict[str, dict[str, str]] = {
    "GET /api/v1/categories": CURSOR,
    "GET /api/v1/categories/{category_id}/streams": CURSOR,
    "GET /api/v1/streams": CURSOR,
    "GET /api/v1/stream/allowed-viewers": CURSOR,
    "GET /api/v1/users/{username}/followers": CURSOR,
    "GET /api/v1/users/{username}/following": CURSOR,
    "GET /api/v1/users/{username}/streams": CURSOR,
    "GET /api/v1/users/profile/exports": CURSOR,
    "GET /api/v1/channel/moderators": CURSOR,
    "GET /api/v1/channel/bans": CURSOR,
    "GET /api/v1/channel/moderation-log": CURSOR,
    "GET /api/v1/notifications": CURSOR,
    "GET /api/v1/notifications/mutes": CURSOR,
    "PUT /api/v1/notifications/mutes/{username}": {"422": "not yourself"},
    "POST /api/v1/notifications/unsubscribe": {"422": "a token from a mail's unsubscribe link"},
    "PUT /api/v1/channel/moderators/{username}": {"422": "not yourself"},
    "DELETE /api/v1/channel/moderators/{username}": {"422": "not yourself"},
    "PUT /api/v1/channel/bans/{username}": {"422": "not yourself"},
    "PUT /api/v1/channel/chat/settings": {
        "422": "blocked terms with something left to match once reduced to their skeleton"},
    # A mailed link's token is one SF handed out; a made-up one is refused like a used one.
    "POST /api/v1/auth/verify-email": {"422": "a token from a verification link"},
    "POST /api/v1/auth/password-reset/confirm": {"422": "a token from a reset link"},
    # The coverage phase also sends this body as text/plain (415) and as multipart/form-data
    # without a boundary, which Tornado refuses (400) before the handler could answer 415: a
    # Content-Type the operation does not take, not data the document calls valid.
    "POST /api/v1/auth/refresh-token": {"400": "a body under its documented Content-Type",
                                        "415": "a body under its documented Content-Type"},
    "POST /api/v1/auth/register": {"422": "the current privacy policy version"},
    "POST /api/v1/users/profile/consents": {"422": "the current privacy policy version"},
    "POST /api/v1/streams": {"422": "an existing category"},
    "PUT /api/v1/streams/{stream_id}": {"422": "an existing category"},
    "PUT /api/v1/stream/settings": {"422": "an existing category"},
    "DELETE /api/v1/users/profile": {"422": "the account's right password"},
    "POST /api/v1/users/change-password": {"422": "the right current password, and a new one "
                                                  "that differs from it"},
    "PUT /api/v1/stream/allowed-viewers/{username}": {"422": "not yourself"},
    "POST /api/v1/users/{username}/follow": {"422": "not yourself"},
    # A browser's key is a point on P-256 and its endpoint an https URL on a public address;
    # the document states the lengths and alphabets, not the curve or where a name resolves.
    "POST /api/v1/notifications/push/subscriptions": {
        "422": "keys a browser made (p256dh on P-256) and an https endpoint on a public address"},
    "PUT /api/v1/users/profile": {"422": "an avatar you uploaded or on an allowed host; the "
                                         "right current password to change the email"},
    "GET /api/v1/webhooks/{webhook_id}/deliveries": CURSOR,
    # Whether SF may send to a URL depends on its scheme and on the address its host is or
    # resolves to (SSRF): no JSON Schema states that.
    "POST /api/v1/webhooks": {"422": "an https URL of a public address"},
    "PUT /api/v1/webhooks/{webhook_id}": {"422": "an https URL of a public address"},
    "PUT /api/v1/users/profile/avatar": {"415": "the file must be a PNG, JPEG or WebP image",
                                         "422": "a multipart body with exactly one file",
                                         "400": "a multipart body that can be parsed"},
}


@pytest.fixture(scope="module")
def platform(base_config, tmp_path_factory):
    node = Platform(base_config, tmp_path_factory.mktemp("fuzz-node"),
                    SF_RATE_LIMIT_ANONYMOUS="1000000", SF_RATE_LIMIT_USER="1000000",
                    SF_RATE_LIMIT_AUTH_IP="1000000", SF_RATE_LIMIT_AUTH_ACCOUNT="1000000",
                    SF_RATE_LIMIT_KEY_RESET="1000000").start()
    yield node
    node.stop()


def register(platform: Platform) -> str:
    """A fresh account's access token."""
    return str(platform.register("fz_" + uuid.uuid4().hex[:12])["token"])


class Tally:
    """What the run did: cases per operation, statuses, the 5xx answers (as curl commands)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.cases: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.server_errors: list[str] = []

    def record(self, case: Any, response: Any) -> None:
        with self.lock:
            self.cases[f"{case.operation.method.upper()} {case.operation.path}"] += 1
            self.statuses[response.status_code] += 1
            if response.status_code >= 500:
                self.server_errors.append(f"{response.status_code} {case.as_curl_command()}")

    def report(self) -> str:
        return (f"schemathesis: {len(self.cases)} operations, {sum(self.cases.values())} cases, "
                f"{time.monotonic() - self.started:.1f}s, "
                f"statuses {dict(sorted(self.statuses.items()))}, 5xx: {len(self.server_errors)}")


def test_no_documented_operation_answers_a_server_error(platform):
    shared_token = register(platform)
    status, body, _ = platform.request("POST", "/api/streams", {"title": "fuzz target"},
                                       token=shared_token)
    assert status == 201, body
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "base-url": platform.base_url,
        "cache": {"enabled": False},
        "checks": {"enabled": True},
        "operations": [
            {"include-name": name, "checks": {"positive_data_acceptance": {
                "expected-statuses": [*ACCEPTED, *sorted(refusals)]}}}
            for name, refusals in BUSINESS_RULES.items()],
        "generation": {"max-examples": MAX_EXAMPLES, "mode": "all", "database": "none",
                       "dictionaries": {
                           "string": {"dictionary": "hostile-text", "probability": 0.2},
                           "integer": {"dictionary": "hostile-integers", "probability": 0.2}}},
        "dictionaries": {"hostile-text": {"values": HOSTILE_TEXT},
                         "hostile-integers": {"values": HOSTILE_INTEGERS}},
        "request-timeout": 30,
    })
    schema = schemathesis.openapi.from_url(platform.base_url + "/api/openapi.json", config=config)
    tally = Tally()

    @schema.auth(refresh_interval=None)
    class Bearer:
        def get(self, case: Any, context: Any) -> str:
            operation = (context.operation.method.upper(), context.operation.path)
            return register(platform) if operation in SESSION_ENDING else shared_token

        def set(self, case: Any, data: str, context: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    @schema.hook
    def map_headers(context: Any, headers: dict[str, Any] | None) -> dict[str, Any] | None:
        # HTTP clients refuse to send these in a header at all: the hostile values are meant
        # for query strings and bodies.
        return headers and {name: "".join(char for char in str(value) if " " <= char <= "~")
                            for name, value in headers.items()}

    @schema.hook
    def after_call(context: Any, case: Any, response: Any) -> None:
        tally.record(case, response)

    errors: list[str] = []
    failures: set[str] = set()
    finished = None
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for nodes in event.recorder.checks.values():
                failures.update(
                    f"{event.recorder.label}: {node.name}: {node.failure_info.code_sample}"
                    for node in nodes
                    if node.status == events.Status.FAILURE and node.failure_info)
        if isinstance(event, events.NonFatalError):
            errors.append(f"{event.label}: {event.value!r}")
        elif isinstance(event, events.FatalError):
            errors.append(repr(event.exception))
        elif isinstance(event, events.EngineFinished):
            finished = event
    print("\n" + tally.report())
    assert finished is not None and finished.stop_reason == "completed", errors
    assert not tally.server_errors, "\n".join([tally.report(), *tally.server_errors[:20]])
    assert not errors, errors
    assert not failures, "\n".join(sorted(failures))
    # The run really exercised the API, signed in: every documented operation, successes and
    # refusals, sessions ended by logout.
    assert len(tally.cases) == schema.statistic.operations.total >= 30, tally.report()
    assert tally.statuses[200] and tally.statuses[201] and tally.statuses[422], tally.report()
    assert tally.cases["POST /api/v1/auth/logout"] and tally.statuses[204], tally.report()
