"""Transcoder admission: whether a publish to this media node gets a transcoded ladder (issue 19
point 6: 8 ladders from 8 throw-away accounts on 2 addresses put a 2-core node at load 11).

A ladder is admitted only while the node has room for it — fewer than SF_MAX_TRANSCODERS
running and its CPU no busier than SF_TRANSCODE_CPU_MAX_PERCENT over the last seconds — and
only for an account older than SF_TRANSCODE_MIN_ACCOUNT_AGE_MINUTES whose address range (/24,
/64) has fewer than SF_PUBLISH_RANGE_LADDERS ladders live. Otherwise the publish is served
source-only: one copied rendition, no x264, which still plays. A range that went live more than
SF_PUBLISH_RANGE_GO_LIVES_PER_HOUR times in the last hour is refused outright. A node without
room refuses instead when another live media node has room (the encoder's retry through the
RTMP balancer lands there) — but not the same user twice in a row: an encoder pointed at this
node alone would retry here forever, so its retry is served source-only.

The per-range numbers are counted in PostgreSQL, in the go-live's own transaction under a lock
of the range (exact across nodes and simultaneous publishes); the node's own load is counted
here, on the loop thread, and a ladder's slot is reserved without an await between the check
and the reservation.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from sf.config import Config
from sf.db import streams as streams_db
from sf.db import users as users_db
from sf.errors import RateLimited, Unavailable
from sf.observability import TRANSCODER_ADMISSIONS
from sf.services.media_nodes import CpuMonitor, MediaNode, MediaNodeRegistry, usable_cores

log = logging.getLogger("sf.admission")

LADDER, SOURCE_ONLY, REFUSED = "ladder", "source_only", "refused"
REFUSAL_MEMORY = 120.0  # seconds a refusal for lack of room is remembered per user
RANGE_PREFIX = {4: 24, 6: 64}
OUTCOMES = ((LADDER, "ok"),
            *((SOURCE_ONLY, reason) for reason in ("capacity", "cpu", "new_account",
                                                   "range_ladders")),
            *((REFUSED, reason) for reason in ("capacity", "cpu", "range_rate", "not_h264")))


@dataclass(frozen=True)
class Admission:
    """What a publish gets, and why (the reason is a metric label: a few fixed words)."""

    decision: str                 # ladder | source_only | refused
    reason: str                   # ok | capacity | cpu | new_account | range_ladders | range_rate | not_h264
    address_range: str | None

    @property
    def transcoded(self) -> bool:
        return self.decision == LADDER


def address_range(address: str) -> str | None:
    """The /24 (IPv4) or /64 (IPv6) a publisher's address belongs to; None if it is none."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ipaddress.ip_network(f"{ip}/{RANGE_PREFIX[ip.version]}", strict=False))


class TranscoderAdmission:
    """The admission of one media node (its ingest process); lives on the loop thread."""

    def __init__(self, config: Config, registry: MediaNodeRegistry, cpu: CpuMonitor,
                 running: Callable[[], int]) -> None:
        self.config = config
        self.registry = registry
        self.cpu = cpu
        self.running = running  # ladders this node runs now
        self.capacity = config.max_transcoders or usable_cores()
        self.reserved = 0       # ladders admitted whose actor has not started yet
        self._refused: dict[int, float] = {}  # user → when refused here for lack of room

    @staticmethod
    def export_outcomes() -> None:
        """Every (decision, reason) at 0 from the start: increase() over a series that
        appears with its first publish would miss that publish."""
        for decision, reason in OUTCOMES:
            TRANSCODER_ADMISSIONS.labels(decision, reason)

    @property
    def transcoders(self) -> int:
        return self.running() + self.reserved

    def lack_of_room(self) -> str | None:
        """Why this node cannot start another ladder now ("capacity", "cpu"), or None."""
        if self.transcoders >= self.capacity:
            return "capacity"
        busy = self.cpu.busy
        if busy is not None and busy * 100 > self.config.transcode_cpu_max_percent:
            return "cpu"
        return None

    async def others_with_room(self) -> list[MediaNode]:
        """Other live media nodes that would take a ladder now ([] when Redis cannot say)."""
        try:
            alive = await self.registry.alive()
        except Exception:
            return []
        return [node for url, node in alive.items()
                if url != self.config.media_node_url and node.has_room]

    async def decide(self, connection: asyncpg.Connection, user_id: int, address: str,
                     resumed: bool, others_have_room: bool) -> Admission:
        """The admission of one publish, inside its go-live transaction (see module doc)."""
        config = self.config
        ranged = address_range(address)
        if ranged is not None and (config.publish_range_go_lives_per_hour
                                   or config.publish_range_ladders):
            await streams_db.lock_publish_range(connection, ranged)
        if (ranged is not None and not resumed and config.publish_range_go_lives_per_hour
                and await streams_db.go_lives_from_range(connection, ranged)
                >= config.publish_range_go_lives_per_hour):
            return Admission(REFUSED, "range_rate", ranged)
        if (config.transcode_min_account_age_minutes
                and await users_db.account_age_seconds(connection, user_id)
                < config.transcode_min_account_age_minutes * 60):
            return Admission(SOURCE_ONLY, "new_account", ranged)
        if (ranged is not None and config.publish_range_ladders
                and await streams_db.ladders_from_range(connection, ranged)
                >= config.publish_range_ladders):
            return Admission(SOURCE_ONLY, "range_ladders", ranged)
        # No await from here on: the check and the reservation of the slot are one step.
        lacking = self.lack_of_room()
        if lacking is not None:
            now = time.monotonic()
            self._refused = {user: at for user, at in self._refused.items()
                             if now - at < REFUSAL_MEMORY}
            if others_have_room and user_id not in self._refused:
                self._refused[user_id] = now
                return Admission(REFUSED, lacking, ranged)
            return Admission(SOURCE_ONLY, lacking, ranged)
        self.reserved += 1
        return Admission(LADDER, "ok", ranged)

    def release(self, admission: Admission) -> None:
        """The admitted ladder's actor started (it counts in `running` now), or the publish
        failed after all: its reservation ends."""
        if admission.transcoded:
            self.reserved = max(0, self.reserved - 1)

    @staticmethod
    def refusal(admission: Admission) -> Exception:
        """The domain error that refuses a publish (nginx-rtmp drops it on any non-2xx)."""
        if admission.reason == "range_rate":
            return RateLimited(3600, "Too many go-lives from this address range")
        return Unavailable("This media node has no room for another transcoder")

    def record(self, admission: Admission, user_id: int, stream_id: int | None) -> None:
        """The decision's metric and its one structured log line."""
        TRANSCODER_ADMISSIONS.labels(admission.decision, admission.reason).inc()
        busy = self.cpu.busy
        level = logging.INFO if admission.decision == LADDER else logging.WARNING
        log.log(level, "publish admission: %s (%s)", admission.decision, admission.reason,
                extra={"event": "admission", "decision": admission.decision,
                       "reason": admission.reason, "user_id": user_id, "stream_id": stream_id,
                       "address_range": admission.address_range,
                       "transcoders": self.transcoders, "capacity": self.capacity,
                       "cpu_busy": round(busy, 3) if busy is not None else None})
