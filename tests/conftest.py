"""Fixtures: real PostgreSQL (a fresh database per test session) and real Redis; the two tiers.

`make test` starts both under var/; the session fixture starts them too when pytest runs
alone. Every test gets clean tables and an empty Redis database.

Two tiers. `pytest -m "not platform"` (what `make check` runs) is every test that needs no
more than PostgreSQL, Redis and short-lived tools; `make test` runs everything. A test that
needs a platform — nginx, FFmpeg/ffprobe, a browser, or whole SF node processes (`sf serve`,
`sf node`, `sf dev`, `sf edge`) — carries `pytest.mark.platform`, as a module's `pytestmark` or
a decorator. The marker is registered in pyproject.toml, where `--strict-markers` makes a
misspelt one an error.

Why explicit marks and a guard rather than marking from fixtures or imports: the fixtures that
start a platform are each module's own, under different names, and some tests start nginx in
their body, so any inference would drift without anyone noticing. The guard cannot drift:
while a test WITHOUT the mark runs (in either tier), a process launch whose program is one of
those is refused and the test fails, naming the mark to add. Every launch goes through
`subprocess.Popen` (`subprocess.run`, asyncio's subprocesses and Playwright's driver too), so
that is where the guard sits; a launch from inside a thread that swallows the error still
fails the test at teardown. It reads the program a command starts (any word of a shell
command line), not what that program starts in turn: `bash -c "nginx"` would pass unseen.

Speed of the fast tier: the per-test fixtures dominated it (hundreds of tests, one app each),
so the OpenAPI document is built once per session rather than per app, tables are emptied with
DELETE, not TRUNCATE (which creates new files for every table and index), and a test's pool
opens one connection up front, not two.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient

from harness.smtp import MailReceiver
from sf.app import make_app
from sf.config import Config, bootstrap_var_dir, ensure_secrets, load_config, with_url_path
from sf.db.migrate import MIGRATIONS_DIR, drop_database, recreate_database
from sf.handlers import docs
from sf.node import localservices
from sf.observability import RedactingJsonFormatter
from sf.services.container import Services, start_services
from tests.helpers import TEST_REDIS_DB, TEST_SLOT, run_private

LOG_CAPTURE = Path(os.environ.get("SF_TEST_LOG", f"/tmp/sf-test-logs-{TEST_SLOT}.jsonl"))


@pytest.fixture(scope="session")
def mail_receiver() -> Iterator[MailReceiver]:
    """The session's SMTP server (aiosmtpd on a reserved port): SF_SMTP_URL of every test."""
    receiver = MailReceiver().start()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def base_config(tmp_path_factory: pytest.TempPathFactory,
                mail_receiver: MailReceiver) -> Iterator[Config]:
    """Config of the test session: its own database, Redis db 9, media in a temp dir, mail to
    the session's SMTP receiver (retried within a fraction of a second)."""
    ensure_secrets(bootstrap_var_dir())
    media = tmp_path_factory.mktemp("media")
    # Operator commands the tests run (in process or as `sf` children, which inherit this)
    # write their audit lines here, never into the project's var/log.
    os.environ["SF_AUDIT_LOG_FILE"] = str(tmp_path_factory.mktemp("audit") / "audit.jsonl")
    # One pooled connection opened up front, not two: every test starts its own services.
    # Password checks unbounded too (tests/test_signin.py sets the bound it tests): tests
    # register in parallel to race the database, not bcrypt's queue.
    config = load_config({**os.environ, "SF_ENV": "test", "SF_BCRYPT_ROUNDS": "4",
                          "SF_PASSWORD_CHECKS_MAX_PENDING": "1000",
                          "SF_DATABASE_POOL_MIN": "1",
                          "SF_MEDIA_DIR": str(media), "SF_CACHE_TTL": "2",
                          "SF_CORS_ORIGINS": "https://app.example.com",
                          "SF_SMTP_URL": mail_receiver.url, "SF_SMTP_TIMEOUT": "2",
                          "SF_MAIL_POLL_SECONDS": "0.2", "SF_MAIL_RETRY_SECONDS": "0.2"})
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

# What empties a database's tables, read once per database from its catalog: every table but
# the migrations' ledger, referencing tables before the tables they reference.
_EMPTYING: dict[str, str] = {}


async def emptying_statement(services: Services) -> str:
    """DELETE every row of every table and restart every sequence (one round trip).

    What `TRUNCATE ... RESTART IDENTITY CASCADE` did, in a tenth of the time on tables of a
    few rows; built from the catalog, so a table or sequence added by a migration is covered.
    """
    known = _EMPTYING.get(services.config.database_url)
    if known is not None:
        return known
    tables = [row["name"] for row in await services.db.fetch(
        "SELECT quote_ident(tablename) AS name FROM pg_tables "
        "WHERE schemaname = 'public' AND tablename <> 'schema_migrations'")]
    edges = await services.db.fetch(
        "SELECT DISTINCT quote_ident(child.relname) AS child, quote_ident(parent.relname) AS parent "
        "FROM pg_constraint c JOIN pg_class child ON child.oid = c.conrelid "
        "JOIN pg_class parent ON parent.oid = c.confrelid "
        "JOIN pg_namespace n ON n.oid = child.relnamespace "
        "WHERE c.contype = 'f' AND n.nspname = 'public' AND child.oid <> parent.oid")
    referenced_by: dict[str, set[str]] = {table: set() for table in tables}
    for edge in edges:
        referenced_by.setdefault(edge["parent"], set()).add(edge["child"])
    ordered: list[str] = []

    def visit(table: str) -> None:
        if table not in ordered:
            for child in sorted(referenced_by.get(table, ())):
                visit(child)
            ordered.append(table)

    for table in sorted(tables):
        visit(table)
    sequences = await services.db.fetch(
        "SELECT quote_ident(schemaname) || '.' || quote_ident(sequencename) AS name, start_value "
        "FROM pg_sequences WHERE schemaname = 'public'")
    statement = "".join(f"DELETE FROM {table};\n" for table in ordered if table in tables)
    statement += "".join(f"SELECT setval('{row['name']}', {row['start_value']}, false);\n"
                         for row in sequences)
    _EMPTYING[services.config.database_url] = statement
    return statement


async def reset_state(services: Services) -> None:
    """Empty tables (categories back to the seeded set) and an empty Redis database."""
    await services.db.execute(await emptying_statement(services) + SEED_CATEGORIES)
    await services.redis.flushdb()


@pytest.fixture
def services(io_loop: Any, config: Config) -> Iterator[Services]:
    built = io_loop.run_sync(lambda: start_services(config))
    io_loop.run_sync(lambda: reset_state(built))
    yield built
    io_loop.run_sync(built.close)


@pytest.fixture
def mailbox(io_loop: Any, services: Services, mail_receiver: MailReceiver) -> Iterator[MailReceiver]:
    """The SMTP receiver, emptied, with the services' mail sender running (stopped after)."""
    mail_receiver.start()  # a test may have left it stopped (an outage)
    mail_receiver.clear()
    io_loop.run_sync(services.mail.start)
    yield mail_receiver
    io_loop.run_sync(services.mail.stop)


BUILD_OPENAPI = docs.build_openapi


@functools.cache
def _openapi_of(routes: tuple[tuple[str, type], ...]) -> dict[str, Any]:
    return BUILD_OPENAPI(list(routes))


def build_openapi_once(routes: list[Any]) -> dict[str, Any]:
    """`docs.build_openapi`, computed once per route table: the document depends on the routes
    and the schemas only, and building it (YAML from every docstring) cost 50 ms per app.
    Every app shares the one document, not a copy (a deep copy cost 10 ms per app): SF only
    encodes it, and tests read it over HTTP."""
    return _openapi_of(tuple((route[0], route[1]) for route in routes))


@pytest.fixture(scope="session", autouse=True)
def openapi_built_once() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(docs, "build_openapi", build_openapi_once)
        yield


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
        self._policy_version: str | None = None

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

    async def privacy_policy_version(self) -> str:
        """The version of the privacy policy the server serves (read once per test)."""
        if self._policy_version is None:
            response = await self.get("/api/legal/privacy-policy")
            assert response.status == 200, response
            self._policy_version = str(response.json["version"])
        return self._policy_version

    async def registration(self, username: str = "alice", password: str = "password123",
                           email: str | None = None, **extra: Any) -> dict[str, Any]:
        """A registration body accepting the current privacy policy, with `extra` fields."""
        return {"username": username, "email": email or f"{username.lower()}@example.com",
                "password": password,
                "accept_privacy_policy": await self.privacy_policy_version(), **extra}

    async def register(self, username: str = "alice", password: str = "password123",
                       email: str | None = None) -> dict[str, Any]:
        response = await self.post("/api/auth/register",
                                   await self.registration(username, password, email))
        assert response.status == 201, response
        return response.json  # type: ignore[no-any-return]


@pytest.fixture
def api(http_client: Any, base_url: str) -> Api:
    return Api(http_client, base_url)


# --- the platform tier ---------------------------------------------------------------------------

PLATFORM_PROGRAMS = frozenset({"nginx", "ffmpeg", "ffprobe", "chromium", "chromium-browser",
                               "chrome", "google-chrome", "headless_shell"})
NODE_COMMANDS = frozenset({"serve", "node", "dev", "edge"})


class PlatformLaunchRefused(RuntimeError):
    """A test without `pytest.mark.platform` tried to start part of a platform."""


def platform_program(args: Any, executable: Any = None, shell: bool = False) -> str | None:
    """What part of a platform this command line starts, if any (None: none)."""
    if isinstance(args, (str, bytes, os.PathLike)):
        text = os.fsdecode(args)
        argv = shlex.split(text) if shell else [text]
    else:
        argv = [os.fsdecode(arg) for arg in args]
    if not argv:
        return None
    # A shell command line may start its program anywhere (`exec nginx`, `a && ffmpeg`).
    programs = argv if shell else [os.fsdecode(executable) if executable else argv[0]]
    for program in map(os.path.basename, programs):
        if program in PLATFORM_PROGRAMS:
            return program
    if "run-driver" in argv:
        return "the Playwright driver (a browser)"
    for token, command in zip(argv, argv[1:], strict=False):
        if (token == "sf.app" or os.path.basename(token) == "sf") and command in NODE_COMMANDS:
            return f"sf {command}"
    return None


class LaunchGuard:
    """The launches refused during one test (the guard fails the test if there were any)."""

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid
        self.refused: list[str] = []

    def check(self, args: Any, executable: Any, shell: bool) -> None:
        program = platform_program(args, executable, shell)
        if program is not None:
            self.refused.append(program)
            raise PlatformLaunchRefused(
                f"{self.nodeid} starts {program} but is not marked platform: add "
                "`pytestmark = pytest.mark.platform` to its module or "
                "`@pytest.mark.platform` to the test (see tests/conftest.py)")


@pytest.fixture(autouse=True)
def platform_launch_guard(request: pytest.FixtureRequest) -> Iterator[LaunchGuard | None]:
    """Refuse nginx, FFmpeg, browsers and SF node processes to tests not marked `platform`."""
    if request.node.get_closest_marker("platform") is not None:
        yield None
        return
    guard = LaunchGuard(request.node.nodeid)
    original = subprocess.Popen.__init__

    @functools.wraps(original)
    def guarded(self: subprocess.Popen[Any], args: Any, *more: Any, **kwargs: Any) -> None:
        guard.check(args, kwargs.get("executable", more[1] if len(more) > 1 else None),
                    bool(kwargs.get("shell", more[7] if len(more) > 7 else False)))
        original(self, args, *more, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", guarded)
        yield guard
    if guard.refused:
        pytest.fail(f"started {', '.join(sorted(set(guard.refused)))} without "
                    "pytest.mark.platform (see tests/conftest.py)", pytrace=False)
