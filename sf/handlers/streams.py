"""Streams (API.md "Streams"): create, list with filters, get, update, end, a user's streams."""

from __future__ import annotations

from typing import Any

from sf.db.users import get_user_by_username
from sf.handlers.base import USERNAME_ROUTE, APIHandler
from sf.schemas import (
    StreamCreateSchema,
    StreamUpdateSchema,
    page,
    page_query,
    stream_list_query,
)
from sf.security import TokenClaims


class StreamListMixin(APIHandler):
    """A list of streams filtered by the query (`StreamListQuerySchema`) and by `fixed_filters`
    (from the path); `check_listing` runs before a page is computed (not on cache hits)."""

    def stream_page(self, streams: list[Any], cursor: str | None) -> dict[str, Any]:
        return page(streams, cursor, self.services.stream_schema)

    query_schema: Any = stream_list_query

    def fixed_filters(self) -> dict[str, Any]:
        return {}

    check_listing: Any = None  # an async method, or None

    def _filters(self) -> dict[str, Any]:
        return {**self.parse_query(self.query_schema), **self.fixed_filters()}

    def cache_reads(self, claims: TokenClaims | None) -> tuple[str | None, tuple[str, ...]]:
        return self.services.streams.stream_list_reads(
            claims.user_id if claims else None, self._filters(), self.check_listing is not None)

    async def write_stream_list(self) -> None:
        viewer = self.claims.user_id if self.claims else None
        self.write_json(await self.services.streams.list_streams(
            viewer, self._filters(), self.stream_page, self.prefetched, self.check_listing))


class StreamsHandler(StreamListMixin):
    auth = {"GET": "optional", "POST": "required"}

    async def get(self) -> None:
        """Live streams by default, filtered and sorted, keyset-paginated.
        ---
        summary: List streams
        tags: [streams]
        parameters:
          - {in: query, schema: StreamListQuerySchema}
        responses:
          200: {description: A page of streams, content: {application/json: {schema: StreamListSchema}}}
          422: {description: Bad filter or cursor, content: {application/json: {schema: ErrorSchema}}}
        """
        await self.write_stream_list()

    async def post(self) -> None:
        """Prepare a stream; it goes live when the owner's RTMP publish starts.
        ---
        summary: Create stream
        tags: [streams]
        security: [{bearer: []}]
        requestBody: {required: true, content: {application/json: {schema: StreamCreateSchema}}}
        responses:
          201: {description: Prepared stream, content: {application/json: {schema: StreamSchema}}}
          422: {description: Invalid fields or unknown category, content: {application/json: {schema: ErrorSchema}}}
        """
        fields = self.parse_json(StreamCreateSchema())
        stream = await self.services.streams.create_stream(self.user_id, fields)
        self.write_json(self.services.stream_schema.dump(stream), 201)


class StreamHandler(APIHandler):
    auth = {"GET": "optional", "PUT": "required", "DELETE": "required"}

    async def get(self, stream_id: str) -> None:
        """One stream (a private one only for its owner and their followers).
        ---
        summary: Get stream
        tags: [streams]
        responses:
          200: {description: Stream, content: {application/json: {schema: StreamSchema}}}
          404: {description: No such stream (or private to you), content: {application/json: {schema: ErrorSchema}}}
        """
        viewer = self.claims.user_id if self.claims else None
        self.write_json(self.services.stream_schema.dump(
            await self.services.streams.get_stream(int(stream_id), viewer)))

    async def put(self, stream_id: str) -> None:
        """Change title, description, category or privacy (owner only).
        ---
        summary: Update stream
        tags: [streams]
        security: [{bearer: []}]
        requestBody: {required: true, content: {application/json: {schema: StreamUpdateSchema}}}
        responses:
          200: {description: Stream, content: {application/json: {schema: StreamSchema}}}
          403: {description: Not the owner, content: {application/json: {schema: ErrorSchema}}}
          404: {description: No such stream, content: {application/json: {schema: ErrorSchema}}}
        """
        changes = self.parse_json(StreamUpdateSchema())
        stream = await self.services.streams.update_stream(int(stream_id), self.user_id, changes)
        self.write_json(self.services.stream_schema.dump(stream))

    async def delete(self, stream_id: str) -> None:
        """End the stream (owner only): it stops being live and its publisher is dropped.
        ---
        summary: End stream
        tags: [streams]
        security: [{bearer: []}]
        responses:
          204: {description: Ended}
          403: {description: Not the owner, content: {application/json: {schema: ErrorSchema}}}
          404: {description: No such stream, content: {application/json: {schema: ErrorSchema}}}
        """
        await self.services.streams.end_stream(int(stream_id), self.user_id)
        self.set_status(204)
        self.finish()


class UserStreamsHandler(StreamListMixin):
    auth = "optional"

    async def get(self, username: str) -> None:
        """A user's streams (live or not), newest first.
        ---
        summary: User's streams
        tags: [streams]
        parameters:
          - {in: query, schema: PageQuerySchema}
        responses:
          200: {description: A page of streams, content: {application/json: {schema: StreamListSchema}}}
          404: {description: No such user, content: {application/json: {schema: ErrorSchema}}}
        """
        query = self.parse_query(page_query)
        user = await get_user_by_username(self.db, username)
        viewer = self.claims.user_id if self.claims else None
        filters = {"username": user.username, "is_live": None, "sort": "created_at", **query}
        self.write_json(await self.services.streams.list_streams(viewer, filters,
                                                                  self.stream_page))


STREAM_ID = r"(?P<stream_id>\d{1,18})"

routes = [
    (r"/api/streams", StreamsHandler),
    (rf"/api/streams/{STREAM_ID}", StreamHandler),
    (rf"/api/users/{USERNAME_ROUTE}/streams", UserStreamsHandler),
]
