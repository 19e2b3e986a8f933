"""The owner's stream key and default stream settings (API.md "Stream key and settings")."""

from __future__ import annotations

from typing import Any

from sf.db.stream_keys import StreamKey
from sf.handlers.base import APIHandler
from sf.ratelimit import Limit
from sf.schemas import StreamKeySchema, StreamSettingsSchema
from sf.security import TokenClaims

key_schema = StreamKeySchema()
settings_schema = StreamSettingsSchema()


class StreamKeyBase(APIHandler):
    auth = "required"

    def write_key(self, key: StreamKey) -> None:
        self.set_header("Cache-Control", "no-store")  # a secret: never cached anywhere
        self.set_header("Pragma", "no-cache")
        self.write_json(key_schema.dump({"stream_key": key.stream_key,
                                         "rtmp_url": self.config.rtmp_url,
                                         "updated_at": key.updated_at}))


class StreamKeyHandler(StreamKeyBase):
    async def get(self) -> None:
        """The caller's stream key and the RTMP URL to publish to (owner only).
        ---
        summary: Get stream key
        tags: [stream]
        security: [{bearer: []}]
        responses:
          200: {description: Key, content: {application/json: {schema: StreamKeySchema}}}
          401: {description: Not authenticated, content: {application/json: {schema: ErrorSchema}}}
        """
        self.write_key(await self.services.stream_keys.get_key(self.user_id))


class StreamKeyResetHandler(StreamKeyBase):
    def extra_limits(self, claims: TokenClaims | None) -> list[Limit]:
        if claims is None:
            return []
        return [Limit("key-reset", f"u{claims.user_id}", self.config.rate_limit_key_reset,
                      self.config.rate_limit_window)]

    async def post(self) -> None:
        """Replace the stream key; the old key stops working and a live publish is dropped.
        ---
        summary: Reset stream key
        tags: [stream]
        security: [{bearer: []}]
        responses:
          200: {description: New key, content: {application/json: {schema: StreamKeySchema}}}
          429: {description: Too many resets, content: {application/json: {schema: ErrorSchema}}}
        """
        self.write_key(await self.services.stream_keys.reset_key(self.user_id))


class StreamSettingsHandler(APIHandler):
    auth = "required"

    def _dump(self, settings: Any) -> None:
        self.write_json(settings_schema.dump(settings))

    async def get(self) -> None:
        """Defaults for the next stream.
        ---
        summary: Get stream settings
        tags: [stream]
        security: [{bearer: []}]
        responses:
          200: {description: Settings, content: {application/json: {schema: StreamSettingsSchema}}}
        """
        self._dump(await self.services.stream_keys.get_settings(self.user_id))

    async def put(self) -> None:
        """Update the defaults for the next stream (partial updates allowed).
        ---
        summary: Update stream settings
        tags: [stream]
        security: [{bearer: []}]
        requestBody: {required: true, content: {application/json: {schema: StreamSettingsSchema}}}
        responses:
          200: {description: Settings, content: {application/json: {schema: StreamSettingsSchema}}}
          422: {description: Invalid fields or unknown category, content: {application/json: {schema: ErrorSchema}}}
        """
        changes = self.parse_json(StreamSettingsSchema())
        self._dump(await self.services.stream_keys.update_settings(self.user_id, changes))


routes = [
    (r"/api/stream/key", StreamKeyHandler),
    (r"/api/stream/key/reset", StreamKeyResetHandler),
    (r"/api/stream/settings", StreamSettingsHandler),
]
