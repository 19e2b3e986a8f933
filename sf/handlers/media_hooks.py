"""nginx-rtmp callbacks (internal only): on_publish, on_publish_done, on_update.

Accepted only from the configured media nodes and with the shared secret; never proxied by
the public nginx server. Bodies are the form fields nginx-rtmp sends (notify_method post).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging

import tornado.web

from sf.errors import BadRequest, Conflict, DomainError, Forbidden, NotFound
from sf.handlers.base import BaseHandler
from sf.services.ingest import IngestService

log = logging.getLogger("sf.media.callbacks")


class RTMPCallbackHandler(BaseHandler):
    auth = "public"  # authenticated by origin network + shared secret below

    def initialize(self) -> None:
        super().initialize()
        self.callback_stream_id: int | None = None
        self.forwarded = False

    def on_finish(self) -> None:
        """One JSON line per callback: which, the stream id, the answer; never the name field
        (on_publish's is the stream key) nor the query (the callback secret)."""
        status = self.get_status()
        callback = (self.request.path or "").rsplit("/", 1)[-1]
        routine = callback == "on_update" and status < 300  # every 10 s per stream
        log.log(logging.DEBUG if routine else logging.INFO, "media callback %s", callback,
                extra={"request_id": self.request_id, "callback": callback, "status": status,
                       "stream_id": self.callback_stream_id, "forwarded": self.forwarded})

    async def prepare(self) -> None:
        self.check_caller()
        ingest = self.ingest
        if not ingest.owner:  # another process of this node holds the actors: pass it on
            self.forwarded = True
            response = await ingest.forward(self.request.uri or "", self.request.body,
                                            self.request_id)
            self.set_status(response.code if response.code >= 200 else 502)
            if location := response.headers.get("Location"):
                self.set_header("Location", location)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(response.body or b"")

    def check_caller(self) -> None:
        try:
            address = ipaddress.ip_address(self.request.remote_ip or "")
        except ValueError:
            raise NotFound() from None
        if not any(address in network for network in self.config.media_nodes):
            raise NotFound()  # to anyone else these endpoints do not exist
        presented = self.get_query_argument("secret", "")
        if not hmac.compare_digest(presented.encode(), self.config.internal_secret.encode()):
            raise Forbidden("Bad callback secret")

    def field(self, name: str) -> str:
        """A form field that must be present exactly once (a repeated `name` is an attack)."""
        values = self.request.body_arguments.get(name, [])
        if len(values) != 1 or self.request.query_arguments.get(name):
            raise BadRequest(f"Expected exactly one '{name}' field")
        return values[0].decode("utf-8", "replace")

    def optional_field(self, name: str) -> str:
        """A form field that may be missing ("" then), but never repeated."""
        if len(self.request.body_arguments.get(name, [])) > 1 \
                or self.request.query_arguments.get(name):
            raise BadRequest(f"Expected at most one '{name}' field")
        return self.field(name) if name in self.request.body_arguments else ""

    async def stream_id(self) -> int:
        """The stream a callback is about.

        nginx-rtmp keeps the name the publisher connected with for on_update and
        on_publish_done, i.e. the stream key, not the renamed stream id; accept both.
        """
        stream_id = await self.ingest.resolve(self.field("name"))
        if stream_id is None:
            raise NotFound("Unknown stream")
        self.callback_stream_id = stream_id
        return stream_id

    @property
    def ingest(self) -> IngestService:
        ingest = self.services.ingest
        if ingest is None or ingest.stopping:
            raise tornado.web.HTTPError(503, reason="This node is not ingesting (shutting down)")
        return ingest

    def write_error(self, status_code: int, **kwargs: object) -> None:
        # nginx-rtmp only reads the status; keep the body short and secret-free.
        exc = kwargs.get("exc_info", (None, None, None))[1]  # type: ignore[index]
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(exc.message if isinstance(exc, DomainError) else "error")


class OnPublishHandler(RTMPCallbackHandler):
    async def post(self) -> None:
        if self.field("app") != "live":
            raise Forbidden("Unknown application")
        try:
            # addr: the publisher's address, for the per-range limits of transcoder admission.
            stream_id = await self.ingest.publish(self.field("name"), self.optional_field("addr"))
        except Conflict:
            raise Forbidden("Already live") from None
        self.callback_stream_id = stream_id
        # 3xx + Location: nginx-rtmp renames the publish to the stream id, so the key never
        # reaches a path, a playlist, a log, or the transcoder's command line.
        self.set_status(302)
        self.set_header("Location", str(stream_id))
        self.finish()


class OnPublishDoneHandler(RTMPCallbackHandler):
    async def post(self) -> None:
        await self.ingest.publish_done(await self.stream_id())
        self.finish("ok")


class OnUpdateHandler(RTMPCallbackHandler):
    async def post(self) -> None:
        if self.get_body_argument("call", "") != "update_publish":
            self.finish("ok")  # play updates (our own transcoders) need no bookkeeping
            return
        if not await self.ingest.update(await self.stream_id()):
            raise NotFound("Stream ended")  # non-2xx: nginx-rtmp drops the publisher
        self.finish("ok")


routes = [
    (r"/internal/rtmp/on_publish", OnPublishHandler),
    (r"/internal/rtmp/on_publish_done", OnPublishDoneHandler),
    (r"/internal/rtmp/on_update", OnUpdateHandler),
]
