"""Live viewers: WebSocket `/ws/streams/{id}/viewers` and its one-time tickets
(API.md "Viewers and statistics")."""

from __future__ import annotations

import re
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

import tornado.websocket

from sf.errors import NotFound
from sf.handlers.base import APIHandler, BaseHandler
from sf.services.viewers import CLOSE_NOT_FOUND

VIEWER_COOKIE = "sf_vid"
_VIEWER_ID = re.compile(r"[A-Za-z0-9_-]{22,43}")
CLOSE_UNAUTHORIZED = 4401
CLOSE_POLICY = 1008
MESSAGES_PER_WINDOW, MESSAGE_WINDOW = 20, 10.0  # inbound messages a client may send
MAX_PENDING_WRITES = 64                          # unsent messages before a slow client is dropped


class TicketHandler(APIHandler):
    auth = "required"

    async def post(self) -> None:
        """A one-time ticket for the viewers WebSocket (single use, 30 s).
        ---
        summary: WebSocket ticket
        tags: [viewers]
        security: [{bearer: []}]
        responses:
          200: {description: Ticket, content: {application/json: {schema: WsTicketSchema}}}
          401: {description: Not authenticated, content: {application/json: {schema: ErrorSchema}}}
          429: {description: Rate limited, content: {application/json: {schema: ErrorSchema}}}
        """
        ticket = await self.services.tickets.issue(self.user_id)
        self.write_json({"ticket": ticket, "expires_in": 30})


class ViewersSocket(tornado.websocket.WebSocketHandler, BaseHandler):
    """One viewer of one stream. Anonymous viewers connect as they are; signed-in viewers
    bring `?ticket=`. Closes with 4404 for a stream that does not exist for them.

    BaseHandler gives it the API's response headers, error shape and client address.
    """

    auth = "optional"

    def initialize(self) -> None:
        super().initialize()
        self.account_id: int | None = None
        self.viewer_id = ""
        self.stream_id = 0
        self.joined = False
        self.pending_writes = 0
        self.message_times: list[float] = []
        self.close_after_open: tuple[int, str] | None = None

    @property
    def client_address(self) -> str:
        return self.client_ip

    def check_origin(self, origin: str) -> bool:
        """The page's own host or an allow-listed origin: no cross-site hijacking.

        Host names are compared without ports: proxies in front (nginx `$host`, the compose
        gateway, a load balancer) rewrite or drop the port of the Host header.
        """
        if origin.rstrip("/") in self.services.config.cors_origins:
            return True
        try:
            origin_host = urlsplit(origin).hostname
            own_host = urlsplit("//" + (self.request.headers.get("Host") or "")).hostname
        except ValueError:
            return False
        return bool(origin_host) and origin_host == own_host

    async def get(self, *args: Any, **kwargs: Any) -> None:
        hub = self.services.viewers
        if hub.closing or not hub.admits(self.client_address):
            self.set_status(503 if hub.closing else 429)
            self.set_header("Content-Type", "application/json; charset=utf-8")
            code = "rate_limited" if self.get_status() == 429 else "internal_error"
            self.finish(f'{{"error": {{"code": "{code}", "message": "Not accepting viewers"}}}}')
            return
        ticket = self.get_query_argument("ticket", None)
        if ticket is not None:
            self.account_id = await self.services.tickets.redeem(ticket)
            if self.account_id is None:
                self.close_after_open = (CLOSE_UNAUTHORIZED, "invalid or used ticket")
        if self.account_id is not None:
            self.viewer_id = f"u{self.account_id}"
        else:
            cookie = self.get_cookie(VIEWER_COOKIE) or ""
            if not _VIEWER_ID.fullmatch(cookie):
                cookie = secrets.token_urlsafe(16)
                self.set_cookie(VIEWER_COOKIE, cookie, httponly=True, samesite="Lax",
                                path="/ws", expires_days=365,
                                secure=self.request.headers.get("X-Forwarded-Proto") == "https")
            self.viewer_id = f"a{cookie}"
        await super().get(*args, **kwargs)

    async def open(self, stream_id: str) -> None:
        if self.close_after_open:
            self.close(*self.close_after_open)
            return
        try:
            self.stream_id = int(stream_id)
            stream = await self.services.channels.get_stream(self.stream_id, self.account_id)
        except (NotFound, ValueError, OverflowError):
            self.close(CLOSE_NOT_FOUND, "stream not found")
            return
        if self.ws_connection is None or self.ws_connection.is_closing():
            return  # went away while we looked the stream up
        self.services.viewers.join(self.stream_id, stream.user_id, stream.is_private, self,
                                   self.viewer_id)
        self.joined = True

    def on_message(self, message: str | bytes) -> None:
        """Viewers have nothing to say yet; a client that floods is dropped."""
        now = time.monotonic()
        self.message_times = [t for t in self.message_times if now - t < MESSAGE_WINDOW]
        self.message_times.append(now)
        if len(self.message_times) > MESSAGES_PER_WINDOW:
            self.close(CLOSE_POLICY, "too many messages")

    def send(self, payload: bytes) -> None:
        """Queue a message; a client that reads too slowly is dropped, not buffered."""
        if self.ws_connection is None or self.ws_connection.is_closing():
            return
        if self.pending_writes >= MAX_PENDING_WRITES:
            self.close(CLOSE_POLICY, "client too slow")
            return
        try:
            future = self.write_message(payload)
        except tornado.websocket.WebSocketClosedError:
            return
        self.pending_writes += 1
        future.add_done_callback(self._written)

    def _written(self, future: Any) -> None:
        self.pending_writes -= 1
        future.exception()  # a closed connection's write error is expected; read it

    def on_close(self) -> None:
        if self.joined:
            self.services.viewers.leave(self.stream_id, self, self.viewer_id)
            self.joined = False


STREAM_ID = r"(?P<stream_id>\d{1,18})"

routes = [
    (r"/api/ws/ticket", TicketHandler),
    (rf"/ws/streams/{STREAM_ID}/viewers", ViewersSocket),
]
