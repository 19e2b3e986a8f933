"""The standing headers of every response (Tornado's own, the API's security policy, the
request id, HSTS over HTTPS), set in one go rather than one validated `set_header` each."""

from __future__ import annotations

import time

import tornado
import tornado.httputil

CSP_API = "default-src 'none'; frame-ancestors 'none'"
# Every response's headers, in Tornado's order (its own three first, with the Date between).
_STANDING_HEADERS = {"Server": f"TornadoServer/{tornado.version}",
                     "Content-Type": "text/html; charset=UTF-8"}
_API_HEADERS = {"API-Version": "1", "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
                "Content-Security-Policy": CSP_API, "Cache-Control": "no-store"}
_DATE = [0, ""]  # the second and its HTTP date: formatted once a second, not per response


def _http_date() -> str:
    now = int(time.time())
    if now != _DATE[0]:
        _DATE[:] = [now, tornado.httputil.format_timestamp(now)]
    return str(_DATE[1])


def set_standing_headers(headers: tornado.httputil.HTTPHeaders, request_id: str,
                         https: bool) -> None:
    """Every response's headers onto `headers` (they are constants or checked here)."""
    headers.update(_STANDING_HEADERS)
    headers["Date"] = _http_date()
    headers["X-Request-ID"] = request_id
    headers.update(_API_HEADERS)
    if https:
        headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
