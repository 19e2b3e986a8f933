"""Live viewers: WebSocket `/ws/streams/{id}/viewers` and its one-time tickets
(API.md "Viewers and statistics")."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable
from typing import Any, Protocol

import tornado.iostream
import tornado.websocket

from sf.config import Config
from sf.errors import NotFound
from sf.handlers.base import APIHandler, BaseHandler
from sf.observability import RATE_LIMITED, WS_MESSAGES_RECEIVED
from sf.ratelimit import Limit
from sf.services.viewer_counts import SIGNED_IN, viewer_network
from sf.services.viewers import CLOSE_NOT_FOUND, CLOSE_UNAUTHORIZED

log = logging.getLogger("sf.ws")

VIEWER_COOKIE = "sf_vid"  # the anonymous viewer id, issued and signed by the server
HANDSHAKE_WINDOW = 60     # seconds: SF_WS_HANDSHAKES_PER_MINUTE is counted per minute
CLOSE_POLICY = 1008
MESSAGES_PER_WINDOW, MESSAGE_WINDOW = 20, 10.0  # inbound messages a client may send
MAX_BUFFERED_BYTES = 64 * 1024                   # unsent bytes before a slow client is dropped
KERNEL_SEND_BUFFER = 32 * 1024                   # SO_SNDBUF (Linux doubles it): 64 KiB in the kernel


class _FrameCache:
    """The WebSocket frame of the message being broadcast, built once for every socket.

    A server's frames are not masked (RFC 6455 §5.1), so one message is the same bytes on
    every connection; the hub hands the same `bytes` object to each socket in turn.
    """

    payload: bytes | None = None
    frame = b""

    @classmethod
    def text_frame(cls, payload: bytes) -> bytes:
        if payload is not cls.payload:
            length = len(payload)
            if length < 126:
                header = bytes((0x81, length))
            elif length < 65536:
                header = bytes((0x81, 126)) + length.to_bytes(2, "big")
            else:
                header = bytes((0x81, 127)) + length.to_bytes(8, "big")
            cls.payload, cls.frame = payload, header + payload
        return cls.frame


class FrameCountingProtocol(tornado.websocket.WebSocketProtocol13):
    """Tornado's RFC 6455 protocol, telling its handler of every frame it reads: data,
    control and continuation frames alike. Tornado calls the handler once per whole message
    (`on_message`), so a message sent as thousands of one-byte fragments counted once while
    the loop paid for every fragment (security.md#chat-fragment-flood). Relies on
    `_receive_frame`, which reads one frame; tests/test_chat.py's fragment flood fails if a
    Tornado release stops calling it."""

    async def _receive_frame(self) -> None:
        await super()._receive_frame()
        handler = self.handler
        if isinstance(handler, ApiSocket):
            handler.count_inbound()


def public_origins(config: Config) -> set[str]:
    """The browser origins of the platform's own pages (SF_PUBLIC_HOST on SF_HTTP_PORT)."""
    origins = set()
    for scheme, default_port in (("http", 80), ("https", 443)):
        origins.add(f"{scheme}://{config.public_host}:{config.http_port}")
        if config.http_port == default_port:
            origins.add(f"{scheme}://{config.public_host}")
    return origins


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
        assert self.claims is not None  # auth "required"
        ticket = await self.services.tickets.issue(self.claims)
        self.write_json({"ticket": ticket, "expires_in": 30})


class SocketHub(Protocol):
    """What an `ApiSocket` asks of the hub it joins, before the upgrade."""

    closing: bool

    def admits(self, address: str) -> bool: ...


class ApiSocket(tornado.websocket.WebSocketHandler, BaseHandler):
    """What every SF WebSocket does: the strict Origin check, the handshake gates (the hub
    shutting down, connections per address, handshakes per minute across nodes), one-time
    tickets, a budget of inbound frames, and sends that drop a client too slow to read.

    BaseHandler gives it the API's response headers, error shape and client address.
    """

    auth = "optional"
    # Inbound frames (messages, pings, pongs) allowed per window; more closes with 1008.
    messages_per_window, message_window = MESSAGES_PER_WINDOW, MESSAGE_WINDOW

    def initialize(self) -> None:
        super().initialize()
        self.account_id: int | None = None
        self.session_id: str | None = None  # the signed-in session the ticket came from
        # When the last inbound messages came; one deque per connection, not a new list per
        # message (each pong would otherwise leave garbage for the collector).
        self.message_times: deque[float] = deque(maxlen=self.messages_per_window + 1)
        self.close_after_open: tuple[int, str] | None = None
        self.opened_at = 0.0
        # Over its frame budget: the connection's stream, cut at the next frame it sends.
        self.flooded: tornado.iostream.IOStream | None = None

    @property
    def hub(self) -> SocketHub:
        """The hub this socket joins (it says whether one more connection is welcome)."""
        raise NotImplementedError

    @property
    def client_address(self) -> str:
        return self.client_ip

    def check_origin(self, origin: str) -> bool:
        """Exactly the platform's own public origin or an allow-listed one (scheme, host and
        port): no cross-site hijacking, and no trusting the Host header (DNS rebinding)."""
        origin = origin.rstrip("/")
        return origin in self.config.cors_origins or origin in public_origins(self.config)

    async def get(self, *args: Any, **kwargs: Any) -> None:
        hub = self.hub
        origin = self.request.headers.get("Origin")
        # Checked here, strictly: Tornado's own check accepts any Origin whose host name
        # matches the Host header (another port or scheme, a rebound DNS name).
        if origin is not None and not self.check_origin(origin):
            self._refuse(403, "forbidden", "Cross-origin WebSocket not allowed")
        elif hub.closing:
            self._refuse(503, "internal_error", "This node is shutting down")
        elif not hub.admits(self.client_address):
            RATE_LIMITED.labels("ws").inc()
            self._refuse(429, "rate_limited", "Too many viewer connections from this address")
        else:
            # Counted across every process and node (the API's own limiter), before the
            # upgrade: a flood of handshakes from one address is refused, not served.
            gate = await self.services.limiter.hit([Limit(
                "ws", f"ip{self.client_address}", self.config.ws_handshakes_per_minute,
                HANDSHAKE_WINDOW)])
            if not gate.verdict.allowed:
                RATE_LIMITED.labels("ws").inc()
                self._refuse(429, "rate_limited",
                             "Too many viewer connections from this address, retry later",
                             retry_after=gate.verdict.retry_after)
            else:
                await self._handshake(*args, **kwargs)

    def _refuse(self, status: int, code: str, message: str,
                retry_after: int | None = None) -> None:
        if retry_after is not None:
            self.set_header("Retry-After", str(retry_after))
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"error": {"code": code, "message": message}}))

    async def redeem_ticket(self) -> None:
        """Sign the socket in with its `?ticket=` (one-time); a bad or used ticket closes it
        with 4401 once open."""
        ticket = self.get_query_argument("ticket", None)
        if ticket is not None:
            redeemed = await self.services.tickets.redeem(ticket)
            if redeemed is None:
                self.close_after_open = (CLOSE_UNAUTHORIZED, "invalid or used ticket")
            else:
                self.account_id, self.session_id = redeemed

    async def _handshake(self, *args: Any, **kwargs: Any) -> None:
        await self.redeem_ticket()
        await super().get(*args, **kwargs)

    def log_fields(self, **more: Any) -> dict[str, Any]:
        """The structured fields of this socket's log lines (never its ticket or cookie)."""
        return {"request_id": self.request_id, "user_id": self.account_id,
                "client_ip": self.client_address, **more}

    def refuse_after_open(self) -> bool:
        """Close a socket refused at the handshake (bad ticket); True when it was."""
        if self.close_after_open:
            log.info("socket refused", extra=self.log_fields(
                close_code=self.close_after_open[0], reason=self.close_after_open[1]))
            self.close(*self.close_after_open)
            return True
        return False

    def bound_buffers(self) -> None:
        """Bound what a client that stops reading can make us hold, in Tornado and in the
        kernel: left to autotuning, the kernel would queue up to 4 MiB (tcp_wmem) for each
        client that stops reading before we notice."""
        connection_stream = self._stream()
        if connection_stream is not None:
            connection_stream.max_write_buffer_size = MAX_BUFFERED_BYTES
            if connection_stream.socket is not None:
                connection_stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                    KERNEL_SEND_BUFFER)

    def on_message(self, message: str | bytes) -> Awaitable[None] | None:
        """Nothing to say by default; a client that floods is dropped (`count_inbound`)."""
        return None

    def get_websocket_protocol(self) -> tornado.websocket.WebSocketProtocol | None:
        protocol = super().get_websocket_protocol()
        if type(protocol) is tornado.websocket.WebSocketProtocol13:
            protocol.__class__ = FrameCountingProtocol  # the same object, counting its frames
        return protocol

    def count_inbound(self) -> None:
        """One inbound frame of any kind (FrameCountingProtocol): messages, pings, pongs and
        fragments all cost the loop; past the budget the socket closes with 1008, and a
        client that goes on sending after that loses the connection at once (Tornado would
        read on for 5 s, waiting for its close frame)."""
        WS_MESSAGES_RECEIVED.inc()
        if self.flooded is not None:
            # (Tornado's close() dropped ws_connection: the stream was kept for this.)
            self.flooded.close()
            return
        now = time.monotonic()
        self.message_times.append(now)
        if (len(self.message_times) > self.messages_per_window
                and now - self.message_times[0] < self.message_window):
            self.flooded = self._stream()
            self.close(CLOSE_POLICY, "too many messages")

    def _stream(self) -> tornado.iostream.IOStream | None:
        """The connection's stream (Tornado's protocol object keeps it as `stream`)."""
        return getattr(self.ws_connection, "stream", None)

    def send(self, payload: bytes) -> None:
        """Queue a text message (framed once per broadcast, see `_FrameCache`) straight onto
        the connection; a client that reads too slowly is dropped, not buffered."""
        stream = self._stream()
        if stream is None or self.ws_connection is None or self.ws_connection.is_closing():
            return
        frame = _FrameCache.text_frame(payload)
        try:
            if not stream.writing() and stream.socket is not None:
                # Nothing queued before it: hand the frame to the kernel now, which is far
                # cheaper than IOStream's queue (bench/viewers.py: the fan-out to 10,000
                # sockets is the hot loop); whatever the kernel does not take is queued.
                try:
                    sent = stream.socket.send(frame)
                except BlockingIOError:
                    sent = 0
                if sent == len(frame):
                    return
                frame = frame[sent:]
            stream.write(frame)
        except tornado.iostream.StreamBufferFullError:
            # Cut at once: a close frame could not be queued behind the full buffer (Tornado's
            # close() would raise here and stop the broadcast to every later socket), and a
            # client that reads nothing would not answer one. on_close does the bookkeeping.
            stream.close()
        except (tornado.iostream.StreamClosedError, OSError):
            pass  # the connection is going away; on_close does the bookkeeping


class ViewersSocket(ApiSocket):
    """One viewer of one stream. Anonymous viewers connect as they are; signed-in viewers
    bring `?ticket=`. Closes with 4404 for a stream that does not exist for them."""

    def initialize(self) -> None:
        super().initialize()
        self.viewer_id = ""
        self.network = ""  # where an anonymous viewer counts (`viewer_network`)
        self.stream_id = 0
        self.owner_id = 0  # the stream's owner (its chat's channel)
        self.joined = False

    @property
    def hub(self) -> SocketHub:
        return self.services.viewers

    async def _handshake(self, *args: Any, **kwargs: Any) -> None:
        await self.redeem_ticket()
        if self.account_id is not None:
            self.viewer_id, self.network = f"u{self.account_id}", SIGNED_IN
        else:
            # Only an id this server signed is kept: any other value (missing, forged,
            # altered) is a new anonymous viewer, whom the per-network cap then applies to.
            signer = self.services.viewers.signer
            viewer_id = signer.verify(self.get_cookie(VIEWER_COOKIE) or "")
            if viewer_id is None:
                cookie, viewer_id = signer.issue()
                self.set_cookie(VIEWER_COOKIE, cookie, httponly=True, samesite="Lax",
                                path="/ws", expires_days=365,
                                secure=self.request.headers.get("X-Forwarded-Proto") == "https")
            self.viewer_id, self.network = viewer_id, viewer_network(self.client_address)
        await tornado.websocket.WebSocketHandler.get(self, *args, **kwargs)

    def log_fields(self, **more: Any) -> dict[str, Any]:
        return super().log_fields(stream_id=self.stream_id or None, **more)

    async def open(self, stream_id: str) -> None:
        if self.refuse_after_open():
            return
        try:
            self.stream_id = int(stream_id)
            stream = await self.services.streams.get_stream(self.stream_id, self.account_id)
        except (NotFound, ValueError, OverflowError):
            log.info("viewer socket refused", extra=self.log_fields(
                close_code=CLOSE_NOT_FOUND, reason="stream not found"))
            self.close(CLOSE_NOT_FOUND, "stream not found")
            return
        if self.ws_connection is None or self.ws_connection.is_closing():
            return  # went away while we looked the stream up
        # Viewer messages are ~100 bytes a second; 128 KiB in all is minutes of them.
        self.bound_buffers()
        self.owner_id = stream.user_id
        self.services.viewers.join(self.stream_id, stream.user_id, stream.is_private,
                                   stream.is_live, self, self.viewer_id, self.network)
        self.joined = True
        self.opened_at = time.monotonic()
        log.info("viewer connected", extra=self.log_fields())

    def on_close(self) -> None:
        if self.joined:
            self.services.viewers.leave(self.stream_id, self, self.viewer_id)
            self.joined = False
            log.info("viewer disconnected", extra=self.log_fields(
                close_code=self.close_code, seconds=round(time.monotonic() - self.opened_at, 1)))


STREAM_ID = r"(?P<stream_id>\d{1,18})"

routes = [
    (r"/api/ws/ticket", TicketHandler),
    (rf"/ws/streams/{STREAM_ID}/viewers", ViewersSocket),
]
