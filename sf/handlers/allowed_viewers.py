"""Who may watch the caller's private streams (API.md "Streams", invites)."""

from __future__ import annotations

from sf.handlers.base import USERNAME_ROUTE, APIHandler
from sf.schemas import page, page_query, user_public


class AllowedViewersHandler(APIHandler):
    auth = "required"

    async def get(self) -> None:
        """The users invited to the caller's private streams, newest invite first.
        ---
        summary: List allowed viewers
        tags: [stream]
        security: [{bearer: []}]
        parameters:
          - {in: query, schema: PageQuerySchema}
        responses:
          200: {description: A page of users, content: {application/json: {schema: UserListSchema}}}
          401: {description: Not authenticated, content: {application/json: {schema: ErrorSchema}}}
          422: {description: Bad limit or cursor, content: {application/json: {schema: ErrorSchema}}}
        """
        query = self.parse_query(page_query)
        users, cursor = await self.services.allowed_viewers.allowed_viewers(
            self.user_id, query["limit"], query["cursor"])
        self.write_json(page(users, cursor, user_public))


class AllowedViewerHandler(APIHandler):
    auth = "required"

    async def put(self, username: str) -> None:
        """Invite a user to the caller's private streams (idempotent).
        ---
        summary: Allow a viewer
        tags: [stream]
        security: [{bearer: []}]
        responses:
          204: {description: Invited}
          401: {description: Not authenticated, content: {application/json: {schema: ErrorSchema}}}
          404: {description: No such user, content: {application/json: {schema: ErrorSchema}}}
          422: {description: Inviting yourself, content: {application/json: {schema: ErrorSchema}}}
        """
        await self.services.allowed_viewers.allow_viewer(self.user_id, username)
        self.set_status(204)
        self.finish()

    async def delete(self, username: str) -> None:
        """Withdraw an invite (idempotent): no new playback URL; signed ones expire soon.
        ---
        summary: Revoke a viewer
        tags: [stream]
        security: [{bearer: []}]
        responses:
          204: {description: Not invited (any more)}
          401: {description: Not authenticated, content: {application/json: {schema: ErrorSchema}}}
          404: {description: No such user, content: {application/json: {schema: ErrorSchema}}}
        """
        await self.services.allowed_viewers.revoke_viewer(self.user_id, username)
        self.set_status(204)
        self.finish()


routes = [
    (r"/api/stream/allowed-viewers", AllowedViewersHandler),
    (rf"/api/stream/allowed-viewers/{USERNAME_ROUTE}", AllowedViewerHandler),
]
