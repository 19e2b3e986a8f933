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
        """PostgreSQL and Redis are reachable.
        ---
        summary: Readiness
        tags: [ops]
        responses: {200: {description: Ready}, 503: {description: A dependency is down}}
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
        ready = all(value == "ok" for value in checks.values())
        self.set_status(200 if ready else 503)
        self.write({"status": "ok" if ready else "unavailable", "checks": checks})


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
