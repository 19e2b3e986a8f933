"""Follows (API.md "Users"): follow, unfollow, followers, following."""

from __future__ import annotations

from sf.handlers.base import USERNAME_ROUTE, APIHandler
from sf.schemas import page, page_query, user_public


class FollowHandler(APIHandler):
    auth = "required"

    async def post(self, username: str) -> None:
        """Follow a user (idempotent).
        ---
        summary: Follow
        tags: [follows]
        security: [{bearer: []}]
        responses:
          204: {description: Following}
          404: {description: No such user, content: {application/json: {schema: ErrorSchema}}}
          422: {description: Cannot follow yourself, content: {application/json: {schema: ErrorSchema}}}
        """
        await self.services.follows.follow(self.user_id, username)
        self.set_status(204)
        self.finish()

    async def delete(self, username: str) -> None:
        """Unfollow a user (idempotent).
        ---
        summary: Unfollow
        tags: [follows]
        security: [{bearer: []}]
        responses:
          204: {description: Not following}
          404: {description: No such user, content: {application/json: {schema: ErrorSchema}}}
        """
        await self.services.follows.unfollow(self.user_id, username)
        self.set_status(204)
        self.finish()


class FollowListHandler(APIHandler):
    auth = "optional"
    side = "followers"

    async def get(self, username: str) -> None:
        """Users on one side of a follow relation, newest first.
        ---
        summary: Followers / following
        tags: [follows]
        parameters:
          - {in: query, schema: PageQuerySchema}
        responses:
          200: {description: A page of users, content: {application/json: {schema: UserListSchema}}}
          404: {description: No such user, content: {application/json: {schema: ErrorSchema}}}
        """
        query = self.parse_query(page_query)
        users, cursor = await self.services.follows.list_side(username, self.side,
                                                              query["limit"], query["cursor"])
        self.write_json(page(users, cursor, user_public))


class FollowersHandler(FollowListHandler):
    side = "followers"


class FollowingHandler(FollowListHandler):
    side = "following"


routes = [
    (rf"/api/users/{USERNAME_ROUTE}/follow", FollowHandler),
    (rf"/api/users/{USERNAME_ROUTE}/followers", FollowersHandler),
    (rf"/api/users/{USERNAME_ROUTE}/following", FollowingHandler),
]
