"""The request gate as an API request meets it: Bearer authentication, rate limits and the
cache read-ahead, decided in one Redis round trip (`sf.ratelimit.RateLimiter` runs it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from sf.cache import Prefetched
from sf.errors import DomainError, Unauthorized, Unavailable
from sf.ratelimit import Gate, Limit, Verdict
from sf.security import TokenClaims
from sf.services.container import Services
from sf.services.sessions import SessionStore

# The limits a request counts against when authenticated as the claims (None: anonymous, or a
# token that failed), and the cache entries it answers from as (namespace or None, keys).
LimitsFor = Callable[[TokenClaims | None], list[Limit]]
ReadsFor = Callable[[TokenClaims | None], tuple[str | None, tuple[str, ...]]]

# A signed-in request that finds Redis unreachable waits for it, asking again every
# RIDE_THROUGH_RETRY s, while the outage is younger than SF_REDIS_OUTAGE_WAIT_SECONDS: a
# Sentinel failover (the primary's death noticed, a replica promoted: 2-3 s in bench/chaos.py)
# or a restart is waited out rather than answered 503. Counted from the outage's start, so a
# long outage does not hold every request: past it, the 503 comes at once.
RIDE_THROUGH_RETRY = 0.1
# At most this many requests of a process wait at once (each asks Redis ten times a second);
# the others are answered 503 at once, so a flood during an outage holds neither memory nor
# connections for long.
RIDE_THROUGH_MAX_WAITING = 200


class _Waiting:
    count = 0


def bearer_claims(sessions: SessionStore, header: str, mode: str) -> TokenClaims | None:
    """The signature-checked claims of an `Authorization: Bearer` header under an auth mode.

    `required`: a token whose signature and expiry hold, or Unauthorized. `optional`: the same
    when a header is sent, None without one. `public`: never checked (a malformed header is
    still refused). Revocation is the caller's to check (`SessionStore.liveness_keys`), in the
    same round trip as the rate limit.
    """
    if not header:
        if mode == "required":
            raise Unauthorized("Authentication required")
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Expected 'Authorization: Bearer <token>'")
    if mode == "public":
        return None
    return sessions.verify(token.strip())


@dataclass(slots=True)
class Admission:
    """What the gate decided for one request. The caller sets the verdict's headers, refuses
    a request over its limit (429), then raises `refusal` when there is one."""

    verdict: Verdict
    claims: TokenClaims | None = None  # the authenticated, live session's claims
    prefetched: Prefetched | None = None  # the cache entries read ahead
    refusal: DomainError | None = None  # failed authentication (401) or unknown revocation (503)


async def admit(services: Services, authorization: str, mode: str, limits_for: LimitsFor,
                reads_for: ReadsFor) -> Admission:
    """Bearer auth and rate limits in one Redis round trip for a signed token: the session's
    liveness is checked and the request counted against its user, or, for a revoked token,
    against the address (so a stolen, revoked token cannot spend its user's budget). Any
    other failed authentication counts against the address too. The same round trip reads
    the cache entries the request answers from."""
    sessions = services.sessions
    try:
        claims = bearer_claims(sessions, authorization, mode)
    except Unauthorized as refused:
        admission = await _count_by_address(services, limits_for, reads_for)
        admission.refusal = refused
        return admission
    if claims is None:
        return await _count_by_address(services, limits_for, reads_for)
    wanted = reads_for(claims)
    limiter = services.limiter
    waiting = False
    try:
        while True:
            gate = await limiter.hit_for_session(
                sessions.liveness_keys(claims), limits_for(claims), limits_for(None),
                services.cache.reads(*wanted))
            since = limiter.outage.since
            if (gate.alive is not None or since is None
                    or time.monotonic() - since >= services.config.redis_outage_wait_seconds):
                break
            if not waiting:
                if _Waiting.count >= RIDE_THROUGH_MAX_WAITING:
                    break
                waiting = True
                _Waiting.count += 1
            await asyncio.sleep(RIDE_THROUGH_RETRY)
    finally:
        if waiting:
            _Waiting.count -= 1
    admission = Admission(gate.verdict)
    if gate.alive is None:
        # Revocation cannot be checked: refuse rather than trust a possibly revoked token.
        admission.refusal = Unavailable("Sign-in is temporarily unavailable, retry shortly")
    elif not gate.alive:
        admission.refusal = Unauthorized("Token revoked")
    else:
        admission.claims = claims
        admission.prefetched = _prefetched(services, wanted, gate)
    return admission


async def _count_by_address(services: Services, limits_for: LimitsFor,
                            reads_for: ReadsFor) -> Admission:
    """Count an anonymous request (or one whose authentication failed) by its address."""
    wanted = reads_for(None)
    gate = await services.limiter.hit(limits_for(None), services.cache.reads(*wanted))
    return Admission(gate.verdict, prefetched=_prefetched(services, wanted, gate))


def _prefetched(services: Services, wanted: tuple[str | None, tuple[str, ...]],
                gate: Gate) -> Prefetched | None:
    if not wanted[1]:
        return None
    return services.cache.prefetched(*wanted, gate.generation, gate.entries)
