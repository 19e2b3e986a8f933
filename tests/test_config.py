"""Configuration: defaults from conf/sf.toml, SF_* overrides, clear errors on bad values."""

from __future__ import annotations

import os

import pytest

from sf.config import (
    EDGE_SECRET_NAMES,
    ConfigError,
    ensure_secrets,
    load_config,
    new_encryption_key_spec,
    parse_vapid_key,
)


def env(**overrides):
    return {**os.environ, **{f"SF_{k.upper()}": str(v) for k, v in overrides.items()}}


def test_defaults_and_overrides():
    config = load_config(env(api_port=9123, ladder="720,480,1080", source_passthrough="yes"))
    assert config.api_port == 9123
    assert config.ladder == (1080, 720, 480)
    assert config.source_passthrough is True
    assert config.http_port == 8080 and config.rtmp_port == 1935


@pytest.mark.parametrize("name,value,fragment", [
    ("api_port", "abc", "SF_API_PORT: expected an integer"),
    ("api_port", "70000", "SF_API_PORT: 70000 is outside 1..65535"),
    ("bcrypt_rounds", "2", "SF_BCRYPT_ROUNDS"),
    ("source_passthrough", "maybe", "SF_SOURCE_PASSTHROUGH: expected true/false"),
    ("env", "staging", "SF_ENV"),
    ("ladder", "1080,999", "SF_LADDER"),
    ("trusted_proxies", "not-an-ip", "SF_TRUSTED_PROXIES"),
    ("cors_origins", "evil.example", "SF_CORS_ORIGINS"),
    ("database_url", "mysql://x/y", "SF_DATABASE_URL"),
    ("jwt_secret", "short", "SF_JWT_SECRET"),
    ("stream_key_encryption_keys", "k1:notbase64", "SF_STREAM_KEY_ENCRYPTION_KEYS"),
    ("tls_cert", "/nonexistent.pem", "SF_TLS_CERT"),
    ("vapid_private_key", "not-a-key", "SF_VAPID_PRIVATE_KEY"),
    ("vapid_private_key", "A" * 43, "SF_VAPID_PRIVATE_KEY"),  # zero: no P-256 private key
    ("vapid_subject", "admin@example.com", "SF_VAPID_SUBJECT"),
    ("vapid_subject", "http://example.com", "SF_VAPID_SUBJECT"),
])
def test_bad_values_fail_with_the_variable_named(name, value, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(env(**{name: value}))
    assert fragment in str(info.value)


def test_missing_secret_file_explains_what_to_do(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config({**{k: v for k, v in os.environ.items() if not k.startswith("SF_")},
                     "SF_VAR_DIR": str(tmp_path)})
    assert "sf secrets init" in str(info.value)


def test_unknown_sf_variables_are_reported():
    config = load_config(env(api_prot="1"))
    assert "SF_API_PROT" in config.extra


def test_encryption_keys_rotate_with_ids():
    spec = ",".join([new_encryption_key_spec("k2"), new_encryption_key_spec("k1")])
    config = load_config(env(stream_key_encryption_keys=spec))
    assert config.stream_key_encryption_keys.startswith("k2:")
    with pytest.raises(ConfigError):
        load_config(env(stream_key_encryption_keys=new_encryption_key_spec("k1") + ","
                        + new_encryption_key_spec("k1")))


def test_no_cross_origin_caller_is_trusted_by_default():
    # security.md#cors-default-origin: the old default allowed http://localhost:3000 with credentials; cookies
    # are not separated by port, so any page there could refresh a user's tokens.
    environ = {key: value for key, value in os.environ.items() if key != "SF_CORS_ORIGINS"}
    assert load_config(environ).cors_origins == ()


def test_the_edge_needs_only_the_internal_secret(tmp_path):
    """`sf edge` runs on a gateway machine that holds no API key: only the internal secret
    (playback signatures) is required there, and still checked."""
    bare = {k: v for k, v in os.environ.items() if not k.startswith("SF_")}
    bare["SF_VAR_DIR"] = str(tmp_path)
    config = load_config({**bare, "SF_INTERNAL_SECRET": "i" * 32}, secrets=EDGE_SECRET_NAMES)
    assert config.internal_secret == "i" * 32
    assert config.jwt_secret == config.stream_key_encryption_keys == config.vapid_private_key == ""
    for environ, fragment in ((bare, "SF_INTERNAL_SECRET is not set"),
                              ({**bare, "SF_INTERNAL_SECRET": "short"}, "at least 16")):
        with pytest.raises(ConfigError) as info:
            load_config(environ, secrets=EDGE_SECRET_NAMES)
        assert fragment in str(info.value)
    # A secret given anyway is still checked; every other command needs all of them.
    with pytest.raises(ConfigError, match="SF_JWT_SECRET must be at least 32"):
        load_config({**bare, "SF_INTERNAL_SECRET": "i" * 32, "SF_JWT_SECRET": "short"},
                    secrets=EDGE_SECRET_NAMES)
    with pytest.raises(ConfigError, match="sf secrets init"):
        load_config({**bare, "SF_INTERNAL_SECRET": "i" * 32})


def test_the_vapid_key_is_generated_read_and_its_subject_defaults_to_the_mail_sender(tmp_path):
    """Every API node signs Web Pushes: `sf secrets init` makes the key, a node needs it."""
    bare = {k: v for k, v in os.environ.items() if not k.startswith("SF_")}
    bare["SF_VAR_DIR"] = str(tmp_path)
    assert "vapid_private_key" in ensure_secrets(tmp_path)
    config = load_config(bare)
    assert config.vapid_private_key == (tmp_path / "secrets" / "vapid_private_key").read_text().strip()
    assert parse_vapid_key(config.vapid_private_key).curve.name == "secp256r1"
    assert config.vapid_subject == "mailto:no-reply@localhost"
    assert load_config({**bare, "SF_MAIL_FROM": "Ops <ops@sf.example>"}).vapid_subject \
        == "mailto:ops@sf.example"
    assert load_config({**bare, "SF_VAPID_SUBJECT": "https://sf.example"}).vapid_subject \
        == "https://sf.example"
    (tmp_path / "secrets" / "vapid_private_key").unlink()
    with pytest.raises(ConfigError, match="SF_VAPID_PRIVATE_KEY is not set"):
        load_config(bare)
