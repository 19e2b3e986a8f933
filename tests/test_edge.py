"""The API edge: error shapes, limits, headers, CORS, versioning, docs, health, logging."""

from __future__ import annotations

import io
import json

import pytest

pytestmark = pytest.mark.gen_test(timeout=60)


async def test_body_that_is_not_json_is_400(api):
    response = await api.post("/api/auth/register", body=b"{not json",
                              headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert response.json == {"error": {"code": "bad_request",
                                       "message": "Request body is not valid JSON"}}


async def test_json_that_is_not_an_object_is_422(api):
    response = await api.post("/api/auth/register", body=b"[1, 2]",
                              headers={"Content-Type": "application/json"})
    assert response.status == 422 and response.json["error"]["code"] == "validation_error"


async def test_wrong_content_type_is_415(api):
    response = await api.post("/api/auth/register", body=b"username=a",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 415
    assert response.json["error"]["code"] == "unsupported_media_type"


async def test_body_over_limit_is_413(api, services):
    big = json.dumps({"username": "a" * services.config.max_body_bytes}).encode()
    response = await api.post("/api/auth/register", body=big,
                              headers={"Content-Type": "application/json"})
    assert response.status == 413
    assert response.json["error"]["code"] == "payload_too_large"


async def test_unknown_route_is_404_in_error_shape(api):
    response = await api.get("/api/does-not-exist")
    assert response.status == 404
    assert response.json["error"]["code"] == "not_found"
    assert response.headers["API-Version"] == "1"


async def test_wrong_method_is_405_in_error_shape(api):
    response = await api.delete("/api/auth/register")
    assert response.status == 405
    assert "error" in response.json
    assert response.headers["Allow"] == "POST, OPTIONS"


async def test_a_missing_method_is_405_before_authentication(api):
    """security.md#method-before-auth: without a token, DELETE /api/streams answered 401, not 405."""
    for method, path in (("DELETE", "/api/streams"), ("HEAD", "/api/streams/1"),
                         ("PUT", "/api/users/profile/avatar/x"),
                         ("DELETE", "/api/users/change-password")):
        response = await api.request(method, path)
        if response.status == 404:  # not a route at all
            continue
        assert response.status == 405, (method, path, response)
        assert method not in response.headers["Allow"].split(", ")


async def test_internal_error_is_500_without_traceback(api, services, captured_logs):
    await api.register("alice")
    await services.db.close()  # the database "goes away"
    response = await api.get("/api/users/alice")
    assert response.status == 500
    assert response.json == {"error": {"code": "internal_error",
                                       "message": "Internal server error"}}
    assert b"Traceback" not in response.body and b"asyncpg" not in response.body
    assert "unhandled error" in captured_logs.read_text()


async def test_every_response_has_version_and_security_headers(api):
    for response in (await api.get("/healthz"), await api.get("/api/users/nobody"),
                     await api.get("/api/v1/users/profile")):
        assert response.headers["API-Version"] == "1"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Request-ID"]


async def test_hsts_only_over_https(api):
    plain = await api.get("/healthz")
    assert "Strict-Transport-Security" not in plain.headers
    proxied = await api.get("/healthz", headers={"X-Forwarded-For": "203.0.113.9",
                                                 "X-Forwarded-Proto": "https"})
    assert "max-age=" in proxied.headers["Strict-Transport-Security"]


async def test_v1_is_canonical_and_api_is_an_alias(api):
    await api.register("bob")
    v1 = await api.get("/api/v1/users/bob")
    alias = await api.get("/api/users/bob")
    assert v1.status == alias.status == 200 and v1.json == alias.json
    login = await api.post("/api/v1/auth/login", {"username": "bob", "password": "password123"})
    assert login.status == 200


async def test_rate_limit_headers_on_every_api_response(api):
    response = await api.get("/api/users/nobody")
    assert int(response.headers["X-RateLimit-Limit"]) > 0
    assert int(response.headers["X-RateLimit-Remaining"]) >= 0


async def test_cors_allow_list(api, services):
    allowed = services.config.cors_origins[0]
    ok = await api.get("/api/users/nobody", headers={"Origin": allowed})
    assert ok.headers["Access-Control-Allow-Origin"] == allowed
    assert ok.headers["Access-Control-Allow-Credentials"] == "true"
    foreign = await api.get("/api/users/nobody", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in foreign.headers
    preflight = await api.request("OPTIONS", "/api/users/profile", headers={
        "Origin": allowed, "Access-Control-Request-Method": "PUT"})
    assert preflight.status == 204
    assert "PUT" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]


async def test_openapi_document_covers_the_routes(api):
    response = await api.get("/api/openapi.json")
    assert response.status == 200
    spec = response.json
    assert spec["openapi"].startswith("3.")
    for path in ("/api/v1/auth/register", "/api/v1/auth/login", "/api/v1/auth/logout",
                 "/api/v1/auth/refresh-token", "/api/v1/users/profile",
                 "/api/v1/users/profile/avatar", "/api/v1/users/change-password",
                 "/api/v1/users/{username}"):
        assert path in spec["paths"], path
    assert set(spec["paths"]["/api/v1/auth/refresh-token"]) >= {"get", "post"}
    assert "keyset" in spec["info"]["description"]  # the documented deviations travel with it
    for path in ("/api/v1/streams", "/api/v1/streams/{stream_id}", "/api/v1/stream/key",
                 "/api/v1/stream/key/reset", "/api/v1/stream/settings", "/api/v1/categories",
                 "/api/v1/categories/{category_id}/streams", "/api/v1/users/{username}/follow"):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    assert "RegisterSchema" in schemas and "TokenPairSchema" in schemas
    assert schemas["RegisterSchema"]["properties"]["username"]["type"] == "string"


async def test_swagger_ui_is_served_locally(api):
    page = await api.get("/api/docs")
    assert page.status == 200 and b"swagger-ui-bundle.js" in page.body
    assert b"http" not in page.body.split(b"<body>")[1]  # no CDN
    asset = await api.get("/api/docs/static/swagger-ui-bundle.js")
    assert asset.status == 200 and len(asset.body) > 100_000


async def test_docs_assets_are_compressed_once_and_rate_limited(api, monkeypatch):
    """security.md#docs-compression-flood: the 1 MB bundle was gzipped per request (~40 ms of API CPU each),
    outside any rate limit: an anonymous CPU flood."""
    import gzip
    from pathlib import Path

    import swagger_ui_bundle

    from sf.handlers import docs

    compressions = 0
    real_compress = docs.gzip.compress

    def counting(*args, **kwargs):
        nonlocal compressions
        compressions += 1
        return real_compress(*args, **kwargs)

    monkeypatch.setattr(docs.gzip, "compress", counting)
    original = Path(swagger_ui_bundle.swagger_ui_path, "swagger-ui-bundle.js").read_bytes()
    remaining = []
    for _ in range(10):
        response = await api.client.fetch(
            api.base_url + "/api/docs/static/swagger-ui-bundle.js", raise_error=False,
            headers={"Accept-Encoding": "gzip"}, decompress_response=False)
        assert response.code == 200 and response.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(response.body) == original
        remaining.append(int(response.headers["X-RateLimit-Remaining"]))
    assert compressions <= 1  # once per application, not once per request
    assert remaining == sorted(remaining, reverse=True) and remaining[0] > remaining[-1]
    plain = await api.get("/api/docs/static/swagger-ui-bundle.js",
                          headers={"Accept-Encoding": "identity"})
    assert plain.body == original and "Content-Encoding" not in plain.headers
    spec = await api.client.fetch(api.base_url + "/api/openapi.json", raise_error=False,
                                  headers={"Accept-Encoding": "gzip"}, decompress_response=False)
    assert json.loads(gzip.decompress(spec.body))["openapi"].startswith("3.")
    assert "X-RateLimit-Limit" in spec.headers


async def test_health_readiness_and_metrics(api):
    assert (await api.get("/healthz")).json == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status == 200
    assert ready.json["checks"] == {"postgres": "ok", "redis": "ok"}
    metrics = await api.get("/metrics")
    assert metrics.status == 200 and b"sf_http_requests_total" in metrics.body


async def test_readiness_reports_redis_down_but_stays_ready(api, services):
    """Every process shares the one Redis, and serves anonymous reads, HLS and publishes
    without it: Redis down must not take them all out of rotation (operations.md#without-redis-
    degraded-modes). PostgreSQL down does (tests/test_recovery.py)."""
    from sf.redis_client import service_client as open_redis

    await services.redis.aclose()
    # Built as the services build theirs (one quick retry), so the probe's error comes from
    # the refused connection, not from the 2 s timeout that redis-py's default retries reach.
    services.redis = open_redis("redis://127.0.0.1:1/0")  # nothing listens there
    ready = await api.get("/readyz")
    assert ready.status == 200 and ready.json["status"] == "degraded"
    assert ready.json["checks"]["postgres"] == "ok"
    assert ready.json["checks"]["redis"].startswith("error")


async def test_one_json_access_log_line_per_request_without_secrets(api, captured_logs):
    tokens = await api.register("carol", password="hunter2hunter2")
    await api.get("/api/users/profile?access_token=" + tokens["access_token"],
                  token=tokens["access_token"])
    lines = [json.loads(line) for line in captured_logs.read_text().splitlines()]
    access = [line for line in lines if line.get("name", line.get("logger")) == "sf.access"]
    profile = [line for line in access if line.get("path") == "/api/users/profile"][-1]
    assert profile["status"] == 200 and profile["method"] == "GET"
    assert profile["user_id"] == tokens["user"]["id"]
    assert profile["client_ip"] == "127.0.0.1"
    assert profile["duration_ms"] >= 0 and profile["request_id"]
    text = captured_logs.read_text()
    assert "hunter2hunter2" not in text
    assert tokens["access_token"] not in text and tokens["refresh_token"] not in text


def test_the_access_log_fast_path_writes_what_the_generic_formatter_writes():
    import logging

    from pythonjsonlogger.json import JsonFormatter

    from sf.observability import RedactingJsonFormatter, access_log, configure_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("INFO", io.StringIO())
    formatter = root.handlers[0].formatter
    root.handlers[:], level = saved
    root.setLevel(level)
    assert isinstance(formatter, RedactingJsonFormatter)
    for status, user_id, path in [(200, 7, "/api/v1/streams"), (500, None, "/api/x"),
                                  (404, None, "/rtmp/live_12_abcdefghijklmnopqrst/x?key=1"),
                                  (200, 1, "/api/users/\u00e9l\u00e8ve\"quoted")]:
        record = access_log.makeRecord("sf.access", logging.INFO, __file__, 1, "request", (),
                                       None, extra={
            "access_fields": True, "request_id": "abc123def456", "method": "GET",
            "path": path, "status": status, "duration_ms": 1.25, "user_id": user_id,
            "client_ip": "203.0.113.7"})
        fast = formatter.format(record)
        generic = JsonFormatter.format(formatter, record)
        assert fast == generic, (fast, generic)
        assert "abcdefghijklmnopqrst" not in fast


async def test_made_up_methods_do_not_grow_the_metrics(api):
    """security.md#metric-label-explosion: each new method name added metric series without bound."""
    for index in range(5):
        response = await api.request(f"XMADEUP{index}", "/api/streams")
        assert response.status == 405
    metrics = (await api.get("/metrics")).body.decode()
    assert "XMADEUP" not in metrics
    assert 'method="other"' in metrics


async def test_docs_serve_only_the_two_swagger_files_they_load_with_security_headers(api):
    # security.md#swagger-demo-pages: the package's demo index.html (which renders a foreign document on
    # this origin), its OAuth redirect page and source maps were all served, bare.
    for name in ("index.html", "oauth2-redirect.html", "swagger-initializer.js",
                 "swagger-ui-bundle.js.map", "../__init__.py"):
        response = await api.get(f"/api/docs/static/{name}")
        assert response.status == 404, name
    for name in ("swagger-ui.css", "swagger-ui-bundle.js"):
        response = await api.get(f"/api/docs/static/{name}")
        assert response.status == 200, name
        assert response.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"


async def test_the_node_server_keeps_tcp_nodelay_on_between_responses(app, services):
    """sf/node/server.py: Tornado turns TCP_NODELAY off after each response (a setsockopt per
    request each way); the node's server leaves it on, and answers as before."""
    import socket

    import tornado.iostream
    import tornado.netutil

    from sf.node.server import DrainingHTTPServer
    server = DrainingHTTPServer(app)
    server.drain = services.drain
    [listener] = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets([listener])
    port = listener.getsockname()[1]
    client = tornado.iostream.IOStream(socket.socket())
    try:
        await client.connect(("127.0.0.1", port))
        for _ in range(2):  # keep-alive: the second response too
            await client.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await client.read_until(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            await client.read_bytes(length)
            [connection] = server._connections
            stream = connection.stream
            assert stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        client.close()
        server.stop()
        await server.close_all_connections()
