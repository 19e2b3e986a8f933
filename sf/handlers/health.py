"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sf.handlers.base import BaseHandler
from sf.services.monitoring import refresh_node_metrics


class HealthHandler(BaseHandler):
    auth = "public"

    def get(self) -> None:
        """Process is up.
        ---
        summary: Liveness
        tags: [ops]
        responses: {200: {description: Up}}
        """
        self.write({"status": "ok"})


class ReadyHandler(BaseHandler):
    auth = "public"

    async def get(self) -> None:
        """PostgreSQL is reachable (Redis is checked and reported, but does not gate it).

        Without Redis a process still serves anonymous reads, HLS and publishes
        (operations.md#without-redis-degraded-modes): every process shares the one Redis, so
        taking them all out of rotation for it would turn a degraded service into none.
        ---
        summary: Readiness
        tags: [ops]
        responses: {200: {description: "Ready (status `degraded` while Redis is unreachable)"}, 503: {description: PostgreSQL is down, or the process is stopping}}
        """
        if self.services.drain.draining:  # stopping: take this process out of rotation
            self.set_status(503)
            self.write({"status": "draining", "checks": {}})
            return
        checks: dict[str, str] = {}

        async def check(name: str, probe: object) -> None:
            try:
                await asyncio.wait_for(probe, timeout=2)  # type: ignore[arg-type]
                checks[name] = "ok"
            except Exception as exc:  # any failure means "not ready"
                checks[name] = f"error: {type(exc).__name__}"

        await asyncio.gather(check("postgres", self.db.fetchval("SELECT 1")),
                             check("redis", self.redis.ping()))
        ready = checks["postgres"] == "ok"
        status = ("ok" if checks["redis"] == "ok" else "degraded") if ready else "unavailable"
        self.set_status(200 if ready else 503)
        self.write({"status": status, "checks": checks})


class MetricsHandler(BaseHandler):
    auth = "public"

    async def get(self) -> None:
        """Prometheus metrics of this API process (scrape each process's internal port).
        ---
        summary: Metrics
        tags: [ops]
        responses: {200: {description: Prometheus text format}}
        """
        await refresh_node_metrics(self.services)
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(generate_latest())


routes = [
    (r"/healthz", HealthHandler),
    (r"/readyz", ReadyHandler),
    (r"/metrics", MetricsHandler),
]
