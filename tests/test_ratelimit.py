"""Rate limits in Redis: per IP, per user, tighter for auth, proxy-aware."""

from __future__ import annotations

import ipaddress
import logging
import time

import pytest

from sf.observability import Outage

pytestmark = pytest.mark.gen_test(timeout=60)


@pytest.fixture
def config(base_config):
    return base_config.replace(rate_limit_anonymous=5, rate_limit_user=8, rate_limit_auth_ip=4,
                               rate_limit_auth_account=3, rate_limit_window=60)


async def test_anonymous_limit_per_ip_gives_429_with_retry_after(api):
    remaining = []
    for _ in range(5):
        response = await api.get("/api/users/nobody")
        assert response.status == 404
        remaining.append(int(response.headers["X-RateLimit-Remaining"]))
    assert remaining == [4, 3, 2, 1, 0]
    blocked = await api.get("/api/users/nobody")
    assert blocked.status == 429
    assert blocked.json["error"]["code"] == "rate_limited"
    assert 1 <= int(blocked.headers["Retry-After"]) <= 61
    assert blocked.headers["X-RateLimit-Limit"] == "5"
    assert blocked.headers["X-RateLimit-Remaining"] == "0"


async def test_users_are_limited_per_account_not_per_ip(api, services):
    tokens = await api.register("alice")
    keys = await services.redis.keys("sf:rl:*")
    await services.redis.delete(*keys)  # forget the register call, keep the session
    statuses = [(await api.get("/api/users/profile", token=tokens["access_token"])).status
                for _ in range(9)]
    assert statuses == [200] * 8 + [429]
    # Anonymous callers from the same IP have their own budget.
    assert (await api.get("/api/users/alice")).status == 200


async def test_a_revoked_token_spends_the_address_budget_not_its_users(api, services):
    stale = await api.register("revokee")
    fresh = (await api.post("/api/auth/login", {"username": "revokee",
                                                "password": "password123"})).json
    assert (await api.post("/api/auth/logout", token=stale["access_token"])).status == 204
    await services.redis.delete(*await services.redis.keys("sf:rl:*"))
    statuses = [(await api.get("/api/users/profile", token=stale["access_token"])).status
                for _ in range(6)]
    assert statuses == [401] * 5 + [429]  # counted against the address (limit 5), refused
    # The user's own budget is untouched: the live session still has all 8 requests.
    response = await api.get("/api/users/profile", token=fresh["access_token"])
    assert response.status == 200 and response.headers["X-RateLimit-Remaining"] == "7"


class TestLoginThrottle:
    """Failed logins count per account (username and email alike) and client address."""

    @pytest.fixture
    def config(self, base_config):
        return base_config.replace(rate_limit_auth_ip=1000, rate_limit_auth_account=3,
                                   rate_limit_auth_account_ceiling=5, rate_limit_window=60)

    @staticmethod
    async def login(api, address, password, **name):
        started = time.perf_counter()
        response = await api.post("/api/auth/login", {**name, "password": password},
                                  headers={"X-Forwarded-For": address})
        return response, time.perf_counter() - started

    @pytest.mark.gen_test(timeout=60)
    async def test_one_account_by_any_name_is_limited_per_address(self, api):
        """security.md#login-lockout-of-owner."""
        await api.register("bob")
        await api.register("carol")
        attacker, owner = "198.51.100.1", "203.0.113.9"
        attempts = [{"username": "bob"}, {"email": "bob@example.com"}, {"username": "BOB"}]
        for name in attempts:
            assert (await self.login(api, attacker, "wrong-one", **name))[0].status == 401
        locked, _ = await self.login(api, attacker, "password123", email="bob@example.com")
        assert locked.status == 429 and locked.json["error"]["code"] == "rate_limited"
        assert 1 <= int(locked.headers["Retry-After"]) <= 61
        # Another account from the same address, and the owner from theirs, are not locked.
        assert (await self.login(api, attacker, "wrong-one", username="carol"))[0].status == 401
        assert (await self.login(api, owner, "password123", username="bob"))[0].status == 200

    @pytest.mark.gen_test(timeout=60)
    async def test_a_successful_login_starts_the_address_afresh(self, api):
        await api.register("dave")
        address = "198.51.100.7"
        for _ in range(2):
            assert (await self.login(api, address, "wrong-one", username="dave"))[0].status == 401
        assert (await self.login(api, address, "password123", username="dave"))[0].status == 200
        statuses = [(await self.login(api, address, "wrong-one", username="dave"))[0].status
                    for _ in range(4)]
        assert statuses == [401, 401, 401, 429]

    @pytest.mark.gen_test(timeout=60)
    async def test_password_checks_outside_login_count_as_failed_logins(self, api):
        """security.md#password-oracle: with a stolen token, change-password and the email
        change were an unthrottled password oracle."""
        token = (await api.register("gail"))["access_token"]
        address = {"X-Forwarded-For": "198.51.100.90"}
        wrong = {"current_password": "guess-1", "new_password": "another-password"}
        first = await api.post("/api/users/change-password", wrong, token=token, headers=address)
        assert first.status == 422
        email = {"email": "new@example.com", "current_password": "guess-2"}
        second = await api.put("/api/users/profile", email, token=token, headers=address)
        assert second.status == 422
        assert (await self.login(api, "198.51.100.90", "guess-3", username="gail"))[0].status == 401
        locked = await api.post("/api/users/change-password",
                                {"current_password": "password123",
                                 "new_password": "another-password"}, token=token, headers=address)
        assert locked.status == 429 and locked.json["error"]["code"] == "rate_limited"
        assert (await self.login(api, "198.51.100.90", "password123", username="gail"))[0].status == 429
        # The owner elsewhere is not locked out.
        assert (await self.login(api, "203.0.113.90", "password123", username="gail"))[0].status == 200

    @pytest.mark.gen_test(timeout=60)
    async def test_past_the_ceiling_guessing_networks_wait_but_the_owner_does_not(self, api):
        """security.md#owner-delayed-by-guesses: past the ceiling every login to the account
        waited, the owner's too (8 s at most, stacked over a flood); now only networks that
        failed against the account wait."""
        await api.register("erin")
        await api.register("frank")
        _, quick = await self.login(api, "203.0.113.50", "password123", username="frank")
        # A distributed guess: every address stays under its own limit. Six failures: the
        # sixth guess comes once the ceiling (5) is reached and already waits (as few waits as
        # show it: each costs half a second).
        for index in range(6):
            response, took = await self.login(api, f"198.51.100.{index + 20}", "wrong-one",
                                              username="erin")
            assert response.status == 401
        assert took >= 0.45, took
        # A fresh address of a network that guessed waits too...
        response, fresh = await self.login(api, "198.51.100.99", "password123", username="erin")
        assert response.status == 200 and fresh >= 0.45, fresh
        # ...while the owner from their own network signs in at once.
        response, owner = await self.login(api, "203.0.113.51", "password123", username="erin")
        assert response.status == 200
        assert owner < 0.45 and quick < 0.45, (owner, quick)


async def test_register_limited_per_ip(api):
    statuses = []
    for index in range(5):
        response = await api.post("/api/auth/register", await api.registration(
            f"user{index}", email=f"u{index}@example.com"),
            headers={"X-Forwarded-For": "203.0.113.7"})
        statuses.append(response.status)
    assert statuses == [201, 201, 201, 201, 429]
    other_ip = await api.post("/api/auth/register", await api.registration(
        "user9", email="u9@example.com"), headers={"X-Forwarded-For": "203.0.113.8"})
    assert other_ip.status == 201


async def test_forwarded_for_from_trusted_proxy_identifies_the_client(api):
    for _ in range(5):
        assert (await api.get("/api/users/x", headers={"X-Forwarded-For": "192.0.2.1"})).status == 404
    assert (await api.get("/api/users/x", headers={"X-Forwarded-For": "192.0.2.1"})).status == 429
    # A different client behind the same proxy is not affected; spoofed left-most hops are ignored.
    fresh = await api.get("/api/users/x", headers={"X-Forwarded-For": "192.0.2.1, 192.0.2.2"})
    assert fresh.status == 404


class TestUntrustedPeer:
    """When the peer is not a configured proxy, X-Forwarded-For is ignored."""

    @pytest.fixture
    def config(self, base_config):
        return base_config.replace(rate_limit_anonymous=3,
                                   trusted_proxies=(ipaddress.ip_network("10.9.9.9/32"),))

    @pytest.mark.gen_test(timeout=60)
    async def test_spoofed_header_does_not_reset_the_budget(self, api):
        statuses = []
        for index in range(4):
            response = await api.get("/api/users/x",
                                     headers={"X-Forwarded-For": f"192.0.2.{index + 10}"})
            statuses.append(response.status)
        assert statuses == [404, 404, 404, 429]


class TestTheGateConnection:
    """The gate's own pipelined connection (sf/redis_pipeline.py `PipelinedScript`) against the real
    Redis: replies matched to their calls, a flushed script cache, a dropped connection, a
    stalled server and wrong credentials."""

    @staticmethod
    def limits(identity: str) -> list:
        from sf.ratelimit import Limit
        return [Limit("gatetest", identity, 1000, 60)]

    async def test_concurrent_calls_each_get_their_own_reply(self, services):
        import asyncio
        limiter = services.limiter
        # identity i is hit i + 1 times, all at once over the one connection
        calls = [limiter.hit(self.limits(f"id{i}")) for i in range(20) for _ in range(i + 1)]
        gates = await asyncio.gather(*calls)
        counts: dict[int, list[int]] = {}
        position = 0
        for i in range(20):
            counts[i] = sorted(1000 - gate.verdict.remaining
                               for gate in gates[position:position + i + 1])
            position += i + 1
        assert all(counts[i] == list(range(1, i + 2)) for i in range(20))
        assert all(gate.alive for gate in gates)

    async def test_a_flushed_script_cache_is_reloaded(self, services):
        first = await services.limiter.hit(self.limits("flush"))
        await services.redis.script_flush()
        second = await services.limiter.hit(self.limits("flush"))
        assert (first.verdict.remaining, second.verdict.remaining) == (999, 998)
        assert not services.limiter.outage.down

    async def test_a_killed_connection_is_replaced_without_failing_open(self, services):
        await services.limiter.hit(self.limits("kill"))
        pipeline = services.limiter._gate._pipeline
        assert pipeline is not None and not pipeline.closed
        killed = await services.redis.execute_command("CLIENT", "KILL", "TYPE", "normal",
                                                      "SKIPME", "yes")
        assert killed >= 1
        gate = await services.limiter.hit(self.limits("kill"))
        # counted on a new connection (2), not allowed blindly as in an outage
        assert gate.verdict.remaining == 998 and gate.alive is True
        assert services.limiter._gate._pipeline is not pipeline
        assert not services.limiter.outage.down

    async def test_a_stalled_server_times_out_and_fails_open(self, config):
        import time as clock

        from redis.asyncio import Redis

        from sf.ratelimit import RateLimiter
        redis = Redis.from_url(config.redis_url, socket_timeout=0.5)
        limiter = RateLimiter(redis)
        try:
            assert (await limiter.hit(self.limits("stall"))).verdict.remaining == 999
            await redis.execute_command("CLIENT", "PAUSE", "1500", "WRITE")
            started = clock.monotonic()
            gate = await limiter.hit(self.limits("stall"))
            took = clock.monotonic() - started
            assert gate.alive is True and gate.verdict.allowed  # failed open, as in an outage
            assert limiter.outage.down
            assert 0.4 <= took < 1.4, took  # the socket timeout, not the pause
            await redis.execute_command("CLIENT", "UNPAUSE")
            gate = await limiter.hit(self.limits("stall"))  # on a new connection
            assert not limiter.outage.down and gate.verdict.remaining <= 998
        finally:
            await redis.execute_command("CLIENT", "UNPAUSE")
            limiter.close()
            await redis.aclose()

    async def test_wrong_credentials_are_an_outage_not_a_pass(self, config):
        from urllib.parse import urlsplit, urlunsplit

        from redis.asyncio import Redis

        from sf.ratelimit import RateLimiter
        parts = urlsplit(config.redis_url)
        wrong = urlunsplit(parts._replace(
            netloc=f":not-the-password@{parts.hostname}:{parts.port}"))
        redis = Redis.from_url(wrong)
        limiter = RateLimiter(redis)
        try:
            gate = await limiter.hit(self.limits("auth"))
            assert limiter.outage.down and gate.verdict.allowed
            assert limiter._gate._pipeline is None  # nothing half-open kept
        finally:
            limiter.close()
            await redis.aclose()


def test_a_redis_outage_seen_again_after_a_quiet_spell_counts_from_then(monkeypatch):
    """The gate waits out the first SF_REDIS_OUTAGE_WAIT_SECONDS of an outage, counted from
    `Outage.since`. A process that saw no request between two outages (Redis back and gone
    again unseen) must count the second from its own start, not from the first's: its
    signed-in requests were answered 503 at once instead of waiting (found from outside)."""
    monkeypatch.setattr(Outage, "QUIET", 0.2)
    outage = Outage(logging.getLogger("sf.test"), "Redis", "nothing")
    outage.lost(ConnectionError("refused"))
    first = outage.since
    assert first is not None
    time.sleep(0.05)
    outage.lost(ConnectionError("refused"))  # the same outage, seen continuously
    assert outage.since == first
    time.sleep(0.3)  # nobody looked for longer than QUIET
    outage.lost(ConnectionError("refused"))
    assert outage.since is not None and outage.since > first
    outage.back()
    assert outage.since is None and not outage.down
