"""Statistics (API.md "Viewers and statistics"): a stream's and a channel's."""

from __future__ import annotations

from sf.handlers.base import USERNAME_ROUTE, APIHandler
from sf.handlers.streams import STREAM_ID
from sf.schemas import StatisticsQuerySchema, StreamStatisticsSchema, UserStatisticsSchema

STATISTICS_QUERY = StatisticsQuerySchema()

stream_statistics_schema = StreamStatisticsSchema()
user_statistics_schema = UserStatisticsSchema()


class StreamStatisticsHandler(APIHandler):
    auth = "optional"

    async def get(self, stream_id: str) -> None:
        """A stream's viewer statistics; the per-sample timeline only for its owner.
        ---
        summary: Stream statistics
        description: >
          Peak and average viewers (over samples taken about every 10 s while live), unique
          viewers (a HyperLogLog estimate, exact for small audiences), watch time in
          viewer-seconds, duration (started_at to ended_at, or now while live) and net new
          followers while live. Updated about every 10 s. `timeline` is `[]` for anyone but
          the owner. A stream you may not see answers 404, as `GET /api/streams/{id}` does.
        tags: [statistics]
        responses:
          200: {description: Statistics, content: {application/json: {schema: StreamStatisticsSchema}}}
          404: {description: No such stream (or private to you), content: {application/json: {schema: ErrorSchema}}}
          422: {description: Unknown query parameter, content: {application/json: {schema: ErrorSchema}}}
        """
        self.parse_query(STATISTICS_QUERY)
        viewer = self.claims.user_id if self.claims else None
        statistics = await self.services.statistics.stream_statistics(int(stream_id), viewer)
        self.write_json(stream_statistics_schema.dump(statistics))


class UserStatisticsHandler(APIHandler):
    auth = "optional"

    async def get(self, username: str) -> None:
        """A channel's totals over its streams that went live.
        ---
        summary: User statistics
        description: >
          Private streams count only when users ask for their own statistics; for everyone
          else the totals cover public streams. `average_viewers` is the mean over all
          samples of those streams; `last_stream_at` the latest start (null: never live).
        tags: [statistics]
        responses:
          200: {description: Statistics, content: {application/json: {schema: UserStatisticsSchema}}}
          404: {description: No such user, content: {application/json: {schema: ErrorSchema}}}
          422: {description: Unknown query parameter, content: {application/json: {schema: ErrorSchema}}}
        """
        self.parse_query(STATISTICS_QUERY)
        viewer = self.claims.user_id if self.claims else None
        statistics = await self.services.statistics.user_statistics(username, viewer)
        self.write_json(user_statistics_schema.dump(statistics))


routes = [
    (rf"/api/streams/{STREAM_ID}/statistics", StreamStatisticsHandler),
    (rf"/api/users/{USERNAME_ROUTE}/statistics", UserStatisticsHandler),
]
