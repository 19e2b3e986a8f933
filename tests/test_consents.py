"""Consent: the versioned privacy policy, its acceptance at registration and after a new
version, kept in the consents table (issue 21, point 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sf.config import ConfigError
from sf.errors import ValidationFailed
from sf.services.consents import load_privacy_policy
from sf.services.container import start_services

pytestmark = pytest.mark.gen_test(timeout=60)


async def test_the_policy_is_served_with_its_version(api, services):
    response = await api.get("/api/legal/privacy-policy")
    assert response.status == 200
    assert "public" in response.headers["Cache-Control"]
    policy = load_privacy_policy(services.config.privacy_policy_file)
    assert response.json == {"version": policy.version, "effective_at": "2026-12-01T00:00:00Z",
                             "text": policy.text}
    assert response.json["text"].startswith("# Privacy policy")


async def test_registration_needs_the_current_version_and_keeps_the_acceptance(api, services):
    current = await api.privacy_policy_version()
    missing = await api.post("/api/auth/register", {
        "username": "dora", "email": "dora@example.com", "password": "password123"})
    assert missing.status == 422 and "accept_privacy_policy" in missing.json["error"]["fields"]
    old = await api.post("/api/auth/register", await api.registration(
        "dora", accept_privacy_policy="2020-01-01"))
    assert old.status == 422
    message = old.json["error"]["fields"]["accept_privacy_policy"][0]
    assert current in message
    assert await services.db.fetchval("SELECT count(*) FROM users") == 0  # nothing made
    registered = await api.register("dora")
    assert registered["user"]["privacy_policy_accepted"] == current
    assert registered["user"]["privacy_policy_current"] == current
    rows = await services.db.fetch("SELECT user_id, purpose, version, accepted_at FROM consents")
    assert [(r["user_id"], r["purpose"], r["version"]) for r in rows] == [
        (registered["user"]["id"], "privacy_policy", current)]
    profile = await api.get("/api/users/profile", token=registered["access_token"])
    assert profile.json["privacy_policy_accepted"] == current
    login = await api.post("/api/auth/login", {"email": "DORA@example.com",
                                               "password": "password123"})
    assert login.json["user"]["privacy_policy_accepted"] == current


async def test_accepting_again_through_the_profile(api, services):
    user = await api.register("erin")
    token = user["access_token"]
    assert (await api.post("/api/users/profile/consents", {"privacy_policy": "0"},
                           token=token)).status == 422
    assert (await api.post("/api/users/profile/consents",
                           {"privacy_policy": await api.privacy_policy_version()})).status == 401
    accepted = await api.post("/api/users/profile/consents",
                              {"privacy_policy": await api.privacy_policy_version()}, token=token)
    assert accepted.status == 204
    assert await services.db.fetchval("SELECT count(*) FROM consents") == 2  # the history stays


async def test_a_new_version_shows_until_accepted(api, services, config, tmp_path: Path):
    """A node serving a new version: the profile (cached) says current ≠ accepted; the old
    version is refused; accepting the new one changes the cached profile at once."""
    user = await api.register("fay")
    user_id = user["user"]["id"]
    first = await api.privacy_policy_version()
    newer = tmp_path / "policy.md"
    newer.write_text("---\nversion: 2027-01-15\neffective_at: 2027-01-15T00:00:00+03:00\n---\n"
                     "# Policy, second edition\n")
    updated = await start_services(config.replace(privacy_policy_file=newer))
    try:
        render = updated.user_private.dump
        profile = json.loads(await updated.accounts.profile(user_id, render))
        assert profile["privacy_policy_accepted"] == first
        assert profile["privacy_policy_current"] == "2027-01-15"
        assert updated.consents.policy.effective_at.isoformat() == "2027-01-15T00:00:00+03:00"
        with pytest.raises(ValidationFailed) as refused:
            await updated.consents.accept_privacy_policy(user_id, first)
        assert "2027-01-15" in refused.value.fields["privacy_policy"][0]
        await updated.consents.accept_privacy_policy(user_id, "2027-01-15")
        profile = json.loads(await updated.accounts.profile(user_id, render))
        assert profile["privacy_policy_accepted"] == "2027-01-15"
    finally:
        await updated.close()


@pytest.mark.parametrize("content", [
    "# no front matter\n",
    "---\nversion: 1\n---\ntext\n",
    "---\nversion: 1 2\neffective_at: 2026-01-01T00:00:00Z\n---\ntext\n",
    "---\nversion: 1\neffective_at: 2026-01-01T00:00:00\n---\ntext\n",
])
async def test_a_policy_file_nobody_could_accept_stops_the_node(tmp_path, content):
    path = tmp_path / "policy.md"
    path.write_text(content)
    with pytest.raises(ConfigError, match="SF_PRIVACY_POLICY_FILE"):
        load_privacy_policy(path)
