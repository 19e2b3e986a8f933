"""Sign-in under load: the bcrypt work factor and rehashing, the bound on password checks in
progress, and the aggregate limits of sign-in, sign-up and signed-in requests (issue 21,
points 8 and 9). The flood through the public edge is tests/test_login_flood.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from sf.db import users as users_db
from sf.security import PasswordHasher

pytestmark = pytest.mark.gen_test(timeout=60)


async def login(api, address: str, username: str, password: str = "password123"):
    return await api.post("/api/auth/login", {"username": username, "password": password},
                          headers={"X-Forwarded-For": address})


async def register_from(api, username: str, address: str):
    """A registration from `address` (the shared helpers send none)."""
    return await api.post("/api/auth/register", await api.registration(username),
                          headers={"X-Forwarded-For": address})


class TestRehash:
    @pytest.fixture
    def config(self, base_config):
        return base_config.replace(bcrypt_rounds=5)

    async def test_a_hash_of_another_factor_is_redone_on_the_next_login(self, api, services):
        user = (await api.register("oldhash"))["user"]
        old = PasswordHasher(4, workers=1).hash("password123")
        await users_db.set_password_hash(services.db, user["id"], old)
        assert (await login(api, "192.0.2.10", "oldhash")).status == 200
        stored = (await users_db.get_user(services.db, user["id"])).password_hash
        assert stored != old and stored.startswith("$2b$05$"), stored
        # The same password still works against the new hash; a wrong one still does not.
        assert (await login(api, "192.0.2.10", "oldhash")).status == 200
        assert (await login(api, "192.0.2.10", "oldhash", "wrong-one")).status == 401
        assert (await users_db.get_user(services.db, user["id"])).password_hash == stored

    async def test_a_hash_of_the_configured_factor_stays(self, api, services):
        user = (await api.register("samehash"))["user"]
        stored = (await users_db.get_user(services.db, user["id"])).password_hash
        assert stored.startswith("$2b$05$")
        assert (await login(api, "192.0.2.11", "samehash")).status == 200
        assert (await users_db.get_user(services.db, user["id"])).password_hash == stored


class TestPendingChecksBound:
    """security.md#login-flood: the queue in front of bcrypt had no bound and no deadline."""

    @pytest.fixture
    def config(self, base_config):
        return base_config.replace(bcrypt_rounds=11, password_checks_max_pending=2,
                                   rate_limit_auth_ip=1000)

    async def test_past_the_bound_logins_get_503_with_retry_after_at_once(self, api, services):
        await api.register("crowded")

        async def timed(index: int):
            started = time.perf_counter()
            response = await login(api, f"198.51.{index}.1", "crowded",
                                   "password123" if index == 0 else "wrong-one")
            return response, time.perf_counter() - started

        answers = await asyncio.gather(*(timed(index) for index in range(8)))
        statuses = sorted(response.status for response, _ in answers)
        refused = [(response, took) for response, took in answers if response.status == 503]
        assert refused and len(refused) <= 6, statuses
        assert set(statuses) <= {200, 401, 503}, statuses
        slowest_check = max(took for response, took in answers if response.status != 503)
        for response, took in refused:
            assert response.headers["Retry-After"] == "1"
            assert response.json["error"]["code"] == "internal_error"
            assert "sign-ins in progress" in response.json["error"]["message"]
            assert took < slowest_check, (took, slowest_check)  # not queued behind bcrypt
        assert services.hasher.pending == 0
        # The bound is on checks in progress, not a lockout: once they are done, sign-in works.
        assert (await login(api, "198.51.0.1", "crowded")).status == 200

    async def test_other_password_checks_count_against_the_same_bound(self, api, services):
        token = (await api.register("changer"))["access_token"]
        services.hasher.pending = services.hasher.max_pending  # as if two checks were running
        try:
            change = await api.post("/api/users/change-password", {
                "current_password": "password123", "new_password": "another-password"},
                token=token)
            assert change.status == 503 and change.headers["Retry-After"] == "1"
            assert (await login(api, "198.51.100.1", "changer")).status == 503
        finally:
            services.hasher.pending = 0
        assert (await login(api, "198.51.100.1", "changer")).status == 200


class TestAggregateLimits:
    """security.md#login-flood: each address under its limit, many of them together."""

    @pytest.fixture
    def config(self, base_config):
        return base_config.replace(rate_limit_auth_ip=1000, rate_limit_auth_network=4,
                                   rate_limit_auth_node=1000, accounts_per_range_per_day=1000)

    async def test_logins_are_limited_per_network(self, api):
        statuses = [(await login(api, f"198.51.100.{host}", "nobody")).status
                    for host in range(1, 6)]
        assert statuses == [401] * 4 + [429], statuses
        assert (await login(api, "198.51.101.1", "nobody")).status == 401  # another /24
        ipv6 = [(await login(api, f"2001:db8:1:2::{host:x}", "nobody")).status
                for host in range(1, 6)]
        assert ipv6 == [401] * 4 + [429], ipv6
        assert (await login(api, "2001:db8:1:3::1", "nobody")).status == 401  # another /64


class TestNodeLimit:
    """security.md#login-flood: many networks, each under its limits."""

    @pytest.fixture
    def config(self, base_config):
        return base_config.replace(rate_limit_auth_ip=1000, rate_limit_auth_node=7)

    async def test_logins_are_limited_per_node_and_other_actions_keep_their_budget(self, api):
        statuses = [(await login(api, f"198.51.{network}.1", "nobody")).status
                    for network in range(8)]
        assert statuses == [401] * 7 + [429], statuses
        limited = await login(api, "198.51.200.1", "nobody")
        assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
        assert (await register_from(api, "stillwelcome", "198.51.201.1")).status == 201


class TestThrowawayAccounts:
    """security.md#throwaway-accounts: every throw-away account added a signed-in budget to
    its address, and one address could make 20 accounts a minute."""

    @pytest.fixture
    def config(self, base_config):
        return base_config.replace(rate_limit_user=8, rate_limit_authenticated_ip=12,
                                   rate_limit_auth_ip=1000, accounts_per_range_per_day=3)

    async def test_registrations_are_limited_per_network_per_day(self, api):
        statuses = [(await register_from(api, f"throwaway{index}", f"203.0.113.{index}")).status
                    for index in range(1, 5)]
        assert statuses == [201, 201, 201, 429], statuses
        refused = await register_from(api, "throwaway9", "203.0.113.200")
        assert refused.status == 429 and refused.json["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 86401
        assert (await register_from(api, "elsewhere", "203.0.114.1")).status == 201

    async def test_signed_in_requests_count_against_the_address_too(self, api, services):
        tokens = [(await api.register(f"sock{index}"))["access_token"] for index in range(3)]
        await services.redis.delete(*await services.redis.keys("sf:rl:*"))
        address = {"X-Forwarded-For": "198.51.100.77"}
        statuses = [(await api.get("/api/users/profile", token=token, headers=address)).status
                    for token in tokens for _ in range(5)]
        # Each account is under its own 8, the address's 12 are spent by the three together.
        assert statuses == [200] * 12 + [429] * 3, statuses
        # The same accounts from another address still have their own budgets.
        other = await api.get("/api/users/profile", token=tokens[0],
                              headers={"X-Forwarded-For": "198.51.100.78"})
        assert other.status == 200 and other.headers["X-RateLimit-Remaining"] == "2"
