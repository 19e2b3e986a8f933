"""Rate limits in Redis: per IP, per user, tighter for auth, proxy-aware."""

from __future__ import annotations

import ipaddress

import pytest

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


async def test_login_limited_per_account_across_ips(api):
    await api.register("bob")
    statuses = []
    for index in range(4):
        response = await api.post("/api/auth/login", {"username": "bob", "password": "wrong-one"},
                                  headers={"X-Forwarded-For": f"198.51.100.{index + 1}"})
        statuses.append(response.status)
    assert statuses == [401, 401, 401, 429]


async def test_register_limited_per_ip(api):
    statuses = []
    for index in range(5):
        response = await api.post("/api/auth/register", {
            "username": f"user{index}", "email": f"u{index}@example.com",
            "password": "password123"}, headers={"X-Forwarded-For": "203.0.113.7"})
        statuses.append(response.status)
    assert statuses == [201, 201, 201, 201, 429]
    other_ip = await api.post("/api/auth/register", {
        "username": "user9", "email": "u9@example.com", "password": "password123"},
        headers={"X-Forwarded-For": "203.0.113.8"})
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
