"""Fixtures: real PostgreSQL (a fresh database per test session) and real Redis.

`make test` starts both under var/; the session fixture starts them too when pytest runs
alone. Every test gets clean tables and an empty Redis database.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient

from sf.app import make_app
from sf.config import Config, bootstrap_var_dir, ensure_secrets, load_config, with_url_path
from sf.db.migrate import MIGRATIONS_DIR, drop_database, recreate_database
from sf.node import localservices
from sf.observability import RedactingJsonFormatter
from sf.services.container import Services, start_services
from tests.helpers import TEST_REDIS_DB, TEST_SLOT, run_private

LOG_CAPTURE = Path(os.environ.get("SF_TEST_LOG", f"/tmp/sf-test-logs-{TEST_SLOT}.jsonl"))


@pytest.fixture(scope="session")
def base_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Config]:
    """Config of the test session: its own database, Redis db 9, media in a temp dir."""
    ensure_secrets(bootstrap_var_dir())
    media = tmp_path_factory.mktemp("media")
    config = load_config({**os.environ, "SF_ENV": "test", "SF_BCRYPT_ROUNDS": "4",
                          "SF_MEDIA_DIR": str(media), "SF_CACHE_TTL": "2",
                          "SF_CORS_ORIGINS": "https://app.example.com"})
    localservices.start_all(config)
    name = f"sf_test_{uuid.uuid4().hex[:10]}"
    database_url = run_private(recreate_database(config.database_url, name))
    yield config.replace(database_url=database_url,
                         redis_url=with_url_path(config.redis_url, str(TEST_REDIS_DB)))
    run_private(drop_database(config.database_url, name))


@pytest.fixture(scope="session", autouse=True)
def captured_logs() -> Iterator[Path]:
    """Every log record of the suite, formatted as production formats it, kept in one file."""
    LOG_CAPTURE.unlink(missing_ok=True)
    handler = logging.FileHandler(LOG_CAPTURE)
    handler.setFormatter(RedactingJsonFormatter("{asctime}{levelname}{name}{message}", style="{"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)
    yield LOG_CAPTURE
    root.removeHandler(handler)
    root.setLevel(previous)


@pytest.fixture
def config(base_config: Config) -> Config:
    """Override in a test module to change settings for its tests."""
    return base_config


SEED_CATEGORIES = (MIGRATIONS_DIR / "003_seed_categories.sql").read_text()


async def reset_state(services: Services) -> None:
    """Empty tables (categories back to the seeded set) and an empty Redis database."""
    await services.db.execute(
        "TRUNCATE users, streams, follows, categories RESTART IDENTITY CASCADE")
    await services.db.execute(SEED_CATEGORIES)
    await services.redis.flushdb()


@pytest.fixture
def services(io_loop: Any, config: Config) -> Iterator[Services]:
    built = io_loop.run_sync(lambda: start_services(config))
    io_loop.run_sync(lambda: reset_state(built))
    yield built
    io_loop.run_sync(built.close)


@pytest.fixture
def app(services: Services) -> Any:
    return make_app(services)


class Response:
    """A JSON-aware view of an HTTP response."""

    def __init__(self, response: tornado.httpclient.HTTPResponse) -> None:
        self.raw = response
        self.status = response.code
        self.headers = response.headers
        self.body = response.body or b""

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:300]!r}>"


class Api:
    """Drives the app over real HTTP like a client would."""

    def __init__(self, client: Any, base_url: str) -> None:
        self.client = client
        self.base_url = base_url
        self.transcript: list[bytes] = []

    async def request(self, method: str, path: str, json_body: Any = None, token: str | None = None,
                      headers: dict[str, str] | None = None, body: bytes | None = None) -> Response:
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        if json_body is not None:
            body = json.dumps(json_body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        if body is None and method in ("POST", "PUT"):
            body = b""
        response = await self.client.fetch(
            self.base_url + path, method=method, headers=all_headers, body=body,
            raise_error=False, allow_nonstandard_methods=True, follow_redirects=False,
            request_timeout=60,
        )
        self.transcript.append(response.body or b"")
        return Response(response)

    async def get(self, path: str, **kwargs: Any) -> Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, json_body: Any = None, **kwargs: Any) -> Response:
        return await self.request("POST", path, json_body, **kwargs)

    async def put(self, path: str, json_body: Any = None, **kwargs: Any) -> Response:
        return await self.request("PUT", path, json_body, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Response:
        return await self.request("DELETE", path, **kwargs)

    async def register(self, username: str = "alice", password: str = "password123",
                       email: str | None = None) -> dict[str, Any]:
        response = await self.post("/api/auth/register", {
            "username": username, "email": email or f"{username.lower()}@example.com",
            "password": password})
        assert response.status == 201, response
        return response.json  # type: ignore[no-any-return]


@pytest.fixture
def api(http_client: Any, base_url: str) -> Api:
    return Api(http_client, base_url)
