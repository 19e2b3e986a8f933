"""The login flood of issue 21, replayed from outside: through the public edge (nginx) in front
of a real `sf serve`, from real source addresses (all of 127.0.0.0/8 is loopback, so a socket
bound to 127.a.b.c is another machine to nginx and the API), at the default bcrypt factor.

security.md#login-flood: 20 addresses, each under its 20-a-minute limit, sent failed logins
as fast as they were allowed; the queue in front of bcrypt had no bound, no deadline and no
global limit, so a bystander's correct login took 11 s median and some got nginx's 504.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.client import register
from harness.measure import percentile_sorted
from harness.platform import Platform
from sf.config import read_defaults

pytestmark = pytest.mark.platform

ATTACKERS = 24  # each from a /24 of its own: the per-network limit alone does not stop them
PER_ADDRESS = 20  # SF_RATE_LIMIT_AUTH_IP, per minute, as in the attack
SUSTAINED_SECONDS = 15
RUN = random.randint(1, 254)


def attacker(index: int) -> str:
    return f"127.{RUN}.{index + 1}.9"


BYSTANDER = f"127.{RUN}.250.7"


@pytest.fixture(scope="module")
def platform(base_config, tmp_path_factory):
    # The shipped defaults of what this attack meets (the harness relaxes them for others).
    defaults = read_defaults()
    node = Platform(base_config, tmp_path_factory.mktemp("login-flood"),
                    SF_RATE_LIMIT_AUTH_IP=str(PER_ADDRESS), **{
                        f"SF_{name.upper()}": str(defaults[name]) for name in (
                            "bcrypt_rounds", "password_checks_max_pending",
                            "rate_limit_auth_network", "rate_limit_auth_node",
                            "rate_limit_auth_account", "rate_limit_auth_account_ceiling")}
                    ).start()
    yield node
    node.stop()


def post_login(platform: Platform, source: str, username: str,
               password: str) -> tuple[int, dict[str, str], bytes, float]:
    """One login through the edge from `source`: status, headers, body, seconds taken."""
    return request(platform, source, "POST", "/api/auth/login",
                   {"username": username, "password": password})


def request(platform: Platform, source: str, method: str, path: str,
            body: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes, float]:
    """One request through the edge from `source`: status, headers, body, seconds taken."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", platform.config.http_port, timeout=90,
                                      source_address=(source, 0))
    try:
        conn.request(method, path, headers={"Content-Type": "application/json"},
                     body=json.dumps(body) if body is not None else None)
        response = conn.getresponse()
        body = response.read()
        return (response.status, dict(response.headers), body,
                time.perf_counter() - started)
    finally:
        conn.close()


def sign_in(platform: Platform) -> tuple[int, float]:
    """The bystander signing in as a client does: again after `Retry-After` when told to.
    The status it ended with, and the time until then."""
    started = time.perf_counter()
    for _ in range(5):
        status, headers, _, _ = post_login(platform, BYSTANDER, "bystander", "password123")
        if status != 503:
            break
        time.sleep(float(headers["Retry-After"]))
    return status, time.perf_counter() - started


def test_a_login_flood_from_many_addresses_leaves_sign_in_to_a_bystander(platform):
    register(platform.base_url, "bystander")
    answers: list[tuple[int, dict[str, str], bytes, float]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def guess(index: int, count: int, interval: float, offset: float = 0,
              account: str = "bystander") -> None:
        stop.wait(offset)
        for attempt in range(count):
            if stop.is_set():
                return
            answer = post_login(platform, attacker(index), account, f"guess-{attempt}")
            with lock:
                answers.append(answer)
            stop.wait(interval)

    # 1. Sustained: every address at its limit, spread over the minute (1 every 3 s), the
    # issue's attack (8 guesses a second from 24 addresses); the bystander signs in once a
    # second from its own address meanwhile.
    bystander: list[tuple[int, float]] = []
    interval = 60 / PER_ADDRESS
    per_attacker = int(SUSTAINED_SECONDS / interval)
    with ThreadPoolExecutor(ATTACKERS) as pool:
        for index in range(ATTACKERS):
            pool.submit(guess, index, per_attacker, interval, index * interval / ATTACKERS)
        time.sleep(0.5)
        deadline = time.monotonic() + SUSTAINED_SECONDS - 1
        while time.monotonic() < deadline:
            status, took = sign_in(platform)
            bystander.append((status, took))
            time.sleep(max(0.0, 1 - took))
    sustained = sorted(took for _, took in bystander)
    p95 = percentile_sorted(sustained, 95)
    print(f"\nsustained flood: {len(answers)} guesses in {SUSTAINED_SECONDS} s from {ATTACKERS} "
          f"addresses; bystander {len(sustained)} sign-ins, p50 "
          f"{percentile_sorted(sustained, 50) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
          f"max {sustained[-1] * 1000:.0f} ms")
    assert p95 <= 1.0, sustained
    assert {status for status, _ in bystander} == {200}, bystander
    assert {status for status, *_ in answers} <= {401, 503}, answers

    # 2. Burst: every address sends the rest of its minute's budget at once (~360 logins in
    # flight), each against another account (credential stuffing: no account's failures
    # pile up, so no per-account delay slows them). What the node cannot take at once is
    # refused at once: 503 + Retry-After from the API, never nginx's 504 after a minute in a
    # queue.
    answers.clear()
    remaining = PER_ADDRESS - per_attacker
    started = time.perf_counter()
    with ThreadPoolExecutor(ATTACKERS * remaining) as pool:
        for index in range(ATTACKERS):
            for victim in range(remaining):
                pool.submit(guess, index, 1, 0, 0, f"victim_{index}_{victim}")
        time.sleep(0.2)
        bystander_status, _, bystander_body, burst_bystander = post_login(
            platform, BYSTANDER, "bystander", "password123")
    burst_seconds = time.perf_counter() - started
    statuses: dict[int, int] = {}
    for code, *_ in answers:
        statuses[code] = statuses.get(code, 0) + 1
    overloaded = sorted(took for code, _, _, took in answers if code == 503)
    print(f"burst: {len(answers)} guesses answered in {burst_seconds:.1f} s: {statuses}; "
          f"503 answers p50 {percentile_sorted(overloaded, 50) * 1000:.0f} ms, p95 "
          f"{percentile_sorted(overloaded, 95) * 1000:.0f} ms; the bystander meanwhile: "
          f"{bystander_status} in {burst_bystander * 1000:.0f} ms")
    assert set(statuses) <= {401, 429, 503}, statuses
    assert statuses.get(503, 0) > 0, statuses
    for code, headers, body, _ in answers:
        if code == 503:
            assert headers["Retry-After"] == "1", headers
            error = json.loads(body)["error"]
            assert error["code"] == "internal_error" and "in progress" in error["message"]
    checked = sorted(took for code, _, _, took in answers if code == 401)
    assert percentile_sorted(overloaded, 50) < percentile_sorted(checked, 50), (overloaded,
                                                                                checked)
    # On 2 cores shared with this test's 360 client threads and nginx, the floor below is
    # 100-200 ms and the 503s came in 350 ms at the median, 450 ms at p95 (docs/security.md).
    assert percentile_sorted(overloaded, 95) < 2.0, overloaded
    assert burst_seconds < 20, burst_seconds
    assert bystander_status in (200, 503), (bystander_status, bystander_body)
    assert burst_bystander < 5, burst_bystander
    # The floor: the same burst of reads that cost no password check (a 404 each).
    with ThreadPoolExecutor(ATTACKERS * remaining) as pool:
        floor = sorted(pool.map(lambda n: request(platform, attacker(n % ATTACKERS), "GET",
                                                  f"/api/users/nobody_{n}")[3],
                                range(ATTACKERS * remaining)))
    print(f"the same burst of 404 reads: p50 {percentile_sorted(floor, 50) * 1000:.0f} ms, "
          f"p95 {percentile_sorted(floor, 95) * 1000:.0f} ms")
    stop.set()
    # Afterwards the bystander signs in as before.
    status, _, body, took = post_login(platform, BYSTANDER, "bystander", "password123")
    assert status == 200 and took < 1.0, (status, body, took)
