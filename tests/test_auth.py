"""Register, login, logout, refresh: tokens, rotation, reuse detection, revocation."""

from __future__ import annotations

import asyncio
import statistics
import time

import jwt
import pytest

from sf.security import PasswordHasher, TokenService

pytestmark = pytest.mark.gen_test(timeout=60)


async def test_register_returns_token_pair_and_private_user(api):
    response = await api.post("/api/auth/register", await api.registration(
        "Alice_1", "correct horse", "Alice@Example.com"))
    assert response.status == 201
    body = response.json
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert set(body["user"]) == {"id", "username", "avatar", "bio", "followers_count",
                                 "created_at", "is_live", "email", "updated_at",
                                 "privacy_policy_accepted", "privacy_policy_current",
                                 "email_verified", "pending_email"}
    assert body["user"]["username"] == "Alice_1"
    assert body["user"]["created_at"].endswith("Z")
    assert "password" not in response.body.decode().lower().replace("password_", "")
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["typ"] == "access" and claims["jti"] and claims["sub"] == str(body["user"]["id"])
    profile = await api.get("/api/users/profile", token=body["access_token"])
    assert profile.status == 200 and profile.json["email"] == "Alice@Example.com"


@pytest.mark.parametrize("field,value", [
    ("username", "ab"), ("username", "a" * 31), ("username", "bad name"), ("username", "é_accent"),
    ("email", "not-an-email"), ("password", "short"), ("password", "x" * 129),
    ("username", 42),
])
async def test_register_rejects_invalid_fields(api, field, value):
    body = await api.registration("valid_name", email="v@example.com")
    body[field] = value
    response = await api.post("/api/auth/register", body)
    assert response.status == 422
    assert response.json["error"]["code"] == "validation_error"
    assert field in response.json["error"]["fields"]


async def test_register_rejects_unknown_and_missing_fields(api):
    response = await api.post("/api/auth/register", await api.registration(
        "bob", email="b@example.com", is_admin=True))
    assert response.status == 422 and "is_admin" in response.json["error"]["fields"]
    response = await api.post("/api/auth/register", {"username": "bob"})
    assert response.status == 422
    assert set(response.json["error"]["fields"]) == {"email", "password", "accept_privacy_policy"}


async def test_username_and_email_unique_case_insensitively(api):
    await api.register("Carol", email="carol@example.com")
    same_name = await api.post("/api/auth/register", await api.registration(
        "cAROL", email="other@example.com"))
    assert same_name.status == 409 and same_name.json["error"]["code"] == "conflict"
    assert "username" in same_name.json["error"]["fields"]
    same_email = await api.post("/api/auth/register", await api.registration(
        "carol2", email="CAROL@example.com"))
    assert same_email.status == 409 and "email" in same_email.json["error"]["fields"]


async def test_parallel_registrations_of_one_username_exactly_one_wins(api):
    bodies = [await api.registration("racer", email=f"r{i}@example.com") for i in range(20)]
    responses = await asyncio.gather(*[api.post("/api/auth/register", body) for body in bodies])
    statuses = sorted(r.status for r in responses)
    assert statuses.count(201) == 1
    assert statuses.count(409) == 19


async def test_login_by_username_or_email(api):
    await api.register("dave", password="password123")
    by_name = await api.post("/api/auth/login", {"username": "DAVE", "password": "password123"})
    assert by_name.status == 200 and by_name.json["user"]["username"] == "dave"
    by_email = await api.post("/api/auth/login", {"email": "dave@example.com",
                                                  "password": "password123"})
    assert by_email.status == 200
    both = await api.post("/api/auth/login", {"username": "dave", "email": "dave@example.com",
                                              "password": "password123"})
    assert both.status == 422


async def test_wrong_password_and_unknown_user_answer_alike(api):
    await api.register("erin", password="password123")
    wrong = await api.post("/api/auth/login", {"username": "erin", "password": "nope-nope"})
    unknown = await api.post("/api/auth/login", {"username": "nobody", "password": "nope-nope"})
    assert wrong.status == unknown.status == 401
    assert wrong.json == unknown.json
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")


def test_unknown_user_costs_as_much_as_a_wrong_password():
    """Both paths run one bcrypt verification of the same cost (security.md#user-enumeration-by-timing)."""
    hasher = PasswordHasher(rounds=10)
    real = hasher.hash("password123")

    def timed(password_hash):
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            assert hasher.verify("wrong-password", password_hash) is False
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    wrong, unknown = timed(real), timed(None)
    assert wrong > 0.01  # a real bcrypt verification took place
    assert 0.5 < unknown / wrong < 2.0


async def test_logout_revokes_access_and_refresh(api):
    tokens = await api.register("frank")
    other = (await api.post("/api/auth/login", {"username": "frank",
                                                "password": "password123"})).json
    response = await api.post("/api/auth/logout", token=tokens["access_token"])
    assert response.status == 204
    after = await api.get("/api/users/profile", token=tokens["access_token"])
    assert after.status == 401 and after.headers["WWW-Authenticate"].startswith("Bearer")
    refresh = await api.post("/api/auth/refresh-token", {"refresh_token": tokens["refresh_token"]})
    assert refresh.status == 401
    # Another session of the same user is untouched.
    assert (await api.get("/api/users/profile", token=other["access_token"])).status == 200


async def test_refresh_rotates_and_old_token_stops_working(api):
    tokens = await api.register("gina")
    first = await api.get("/api/auth/refresh-token",
                          headers={"X-Refresh-Token": tokens["refresh_token"]})
    assert first.status == 200
    new = first.json
    assert new["refresh_token"] != tokens["refresh_token"]
    assert (await api.get("/api/users/profile", token=new["access_token"])).status == 200
    second = await api.post("/api/auth/refresh-token", {"refresh_token": new["refresh_token"]})
    assert second.status == 200


async def test_reusing_a_rotated_refresh_token_revokes_the_session(api):
    """security.md#refresh-token-reuse."""
    tokens = await api.register("hank")
    rotated = (await api.post("/api/auth/refresh-token",
                              {"refresh_token": tokens["refresh_token"]})).json
    reuse = await api.post("/api/auth/refresh-token", {"refresh_token": tokens["refresh_token"]})
    assert reuse.status == 401 and "reuse" in reuse.json["error"]["message"].lower()
    # The thief's replay killed the legitimate successor too.
    assert (await api.post("/api/auth/refresh-token",
                           {"refresh_token": rotated["refresh_token"]})).status == 401
    assert (await api.get("/api/users/profile", token=rotated["access_token"])).status == 401


async def test_cookie_refresh_requires_csrf_header(api):
    """security.md#csrf-on-cookie-refresh."""
    registered = await api.post("/api/auth/register", await api.registration("ivy"))
    cookies = {}
    for header in registered.headers.get_list("Set-Cookie"):
        name, _, rest = header.partition("=")
        cookies[name] = rest.split(";")[0]
        path = "/" if name == "sf_csrf" else "/api"  # page scripts read the CSRF half
        assert "SameSite=Strict" in header and f"Path={path};" in header + ";"
    assert "HttpOnly" in next(h for h in registered.headers.get_list("Set-Cookie")
                              if h.startswith("sf_refresh="))
    cookie_header = f"sf_refresh={cookies['sf_refresh']}"
    without = await api.get("/api/auth/refresh-token", headers={"Cookie": cookie_header})
    assert without.status == 401
    forged = await api.get("/api/auth/refresh-token",
                           headers={"Cookie": cookie_header, "X-CSRF-Token": "0" * 64})
    assert forged.status == 401
    good = await api.get("/api/auth/refresh-token",
                         headers={"Cookie": cookie_header, "X-CSRF-Token": cookies["sf_csrf"]})
    assert good.status == 200


async def test_refresh_without_any_token_is_401(api):
    response = await api.get("/api/auth/refresh-token")
    assert response.status == 401 and response.json["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("header", ["Bearer", "Bearer not.a.jwt", "Basic abc", "Token x"])
async def test_malformed_authorization_is_401(api, header):
    response = await api.get("/api/users/profile", headers={"Authorization": header})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_refresh_token_is_not_an_access_token(api):
    tokens = await api.register("jack")
    response = await api.get("/api/users/profile", token=tokens["refresh_token"])
    assert response.status == 401


async def test_tampered_token_is_rejected(api):
    tokens = await api.register("kate")
    header, payload, signature = tokens["access_token"].split(".")
    forged = jwt.encode({**jwt.decode(tokens["access_token"], options={"verify_signature": False}),
                         "sub": "999"}, "not-the-secret-" * 3, algorithm="HS256")
    assert (await api.get("/api/users/profile", token=forged)).status == 401
    bad_sig = f"{header}.{payload}.{signature[::-1]}"
    assert (await api.get("/api/users/profile", token=bad_sig)).status == 401


async def test_expired_access_token_is_rejected(api, services):
    tokens = await api.register("liam")
    claims = services.tokens.verify(tokens["access_token"], "access")
    # A one-second lifetime ends at the next whole second (exp is in whole seconds): wait for
    # it rather than a fixed two seconds, re-issuing if too little of it is left for the first
    # request, which must still pass (and puts the token in the verified-token cache).
    short = TokenService(services.config.replace(access_token_ttl=1))
    token, issued = short.issue_access(claims.user_id, claims.session_id)
    while issued.expires_at - time.time() < 0.3:
        await asyncio.sleep(max(0.0, issued.expires_at - time.time()))
        token, issued = short.issue_access(claims.user_id, claims.session_id)
    assert (await api.get("/api/users/profile", token=token)).status == 200
    await asyncio.sleep(issued.expires_at - time.time() + 0.05)
    response = await api.get("/api/users/profile", token=token)
    assert response.status == 401 and "expired" in response.json["error"]["message"].lower()
