"""Refresh sessions and access-token revocation, kept in Redis with expiry.

A session is one login: it owns one current refresh token id. Refreshing swaps that id
atomically; presenting an older one means the token was stolen or replayed, so the whole
session is dropped (every access and refresh token of it stops working at once).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis

from sf.errors import Unauthorized
from sf.observability import REDIS_UNREPLICATED
from sf.security import TokenClaims, TokenService, new_session_id

log = logging.getLogger("sf.sessions")

_ROTATE = """
local current = redis.call('HGET', KEYS[1], 'jti')
if not current then return 0 end
if current == ARGV[1] then
  redis.call('HSET', KEYS[1], 'jti', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return 1
end
redis.call('DEL', KEYS[1])
return -1
"""


def session_key(session_id: str) -> str:
    return f"sf:sess:{session_id}"


def _user_sessions_key(user_id: int) -> str:
    return f"sf:usess:{user_id}"


def _revoked_key(token_id: str) -> str:
    return f"sf:revoked:{token_id}"


@dataclass(frozen=True)
class IssuedTokens:
    """A fresh access + refresh token pair of one session."""

    access_token: str
    refresh_token: str
    expires_in: int
    session_id: str
    user_id: int


class SessionStore:
    """Creates, rotates, checks and revokes sessions.

    With replicas (`replicated`: a Sentinel-managed Redis), a revocation is only answered once
    a replica has it too, or `REPLICA_WAIT_MS` passed (`WAIT` on the connection that wrote
    it): replication is asynchronous, and a failover right after a logout would otherwise
    promote a replica on which the session still lives. Sessions created or rotated just
    before a failover may be lost instead; that signs their user out, which is safe.
    """

    REPLICA_WAIT_MS = 500

    def __init__(self, redis: Redis, tokens: TokenService, *, replicated: bool = False) -> None:
        self.redis = redis
        self.tokens = tokens
        self.replicated = replicated
        self._rotate = redis.register_script(_ROTATE)

    async def _end(self, user_id: int, session_ids: list[str], token_id: str | None = None,
                   token_ttl: int = 0) -> None:
        """End sessions of a user, and deny an access token for `token_ttl` seconds: one
        transaction, or with replicas one round trip with its WAIT (the sessions' DEL goes
        first: that alone ends them, should the connection drop half way)."""
        async with self.redis.pipeline(transaction=not self.replicated) as pipe:
            pipe.delete(*[session_key(s) for s in session_ids])
            pipe.srem(_user_sessions_key(user_id), *session_ids)
            if token_id is not None:
                pipe.set(_revoked_key(token_id), 1, ex=token_ttl)
            if self.replicated:
                pipe.execute_command("WAIT", 1, self.REPLICA_WAIT_MS)
            results = await pipe.execute()
        if self.replicated and not results[-1]:
            REDIS_UNREPLICATED.inc()
            log.warning("a revocation reached no replica within %d ms; a failover now would "
                        "lose it", self.REPLICA_WAIT_MS)

    def _issue(self, user_id: int, session_id: str, refresh_id: str) -> IssuedTokens:
        access, _ = self.tokens.issue_access(user_id, session_id)
        refresh, _ = self.tokens.issue_refresh(user_id, session_id, refresh_id)
        return IssuedTokens(access, refresh, self.tokens.access_ttl, session_id, user_id)

    async def create(self, user_id: int) -> IssuedTokens:
        """Open a new session for a user who just proved who they are."""
        session_id, refresh_id = new_session_id(), uuid.uuid4().hex
        ttl = self.tokens.refresh_ttl
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(session_key(session_id), mapping={
                "uid": user_id, "jti": refresh_id, "created": int(time.time())})
            pipe.expire(session_key(session_id), ttl)
            pipe.sadd(_user_sessions_key(user_id), session_id)
            pipe.expire(_user_sessions_key(user_id), ttl)
            await pipe.execute()
        return self._issue(user_id, session_id, refresh_id)

    async def rotate(self, refresh_token: str) -> IssuedTokens:
        """Swap a refresh token for a new pair; a reused old token revokes its session."""
        claims = self.tokens.verify(refresh_token, "refresh")
        new_id = uuid.uuid4().hex
        outcome = await self._rotate(
            keys=[session_key(claims.session_id)],
            args=[claims.token_id, new_id, self.tokens.refresh_ttl],
        )
        if outcome == -1:
            await self._end(claims.user_id, [claims.session_id])
            raise Unauthorized("Refresh token reuse detected; the session was revoked")
        if outcome != 1:
            raise Unauthorized("Session expired or revoked")
        return self._issue(claims.user_id, claims.session_id, new_id)

    def verify(self, access_token: str) -> TokenClaims:
        """An access token's claims if its signature and expiry hold. Not whether it was
        revoked: `liveness_keys` name what to check for that (the API edge folds it into its
        rate-limit round trip)."""
        return self.tokens.verify(access_token, "access")

    @staticmethod
    def liveness_keys(claims: TokenClaims) -> tuple[str, str]:
        """(the session's key, which must exist; the token's revoked key, which must not)."""
        return session_key(claims.session_id), _revoked_key(claims.token_id)

    async def alive(self, session_ids: list[str], chunk: int = 500) -> set[str]:
        """Which of these sessions still exist (not logged out, not revoked), a pipeline per
        `chunk` ids so that checking thousands does not hold the loop."""
        found: set[str] = set()
        for start in range(0, len(session_ids), chunk):
            part = session_ids[start:start + chunk]
            async with self.redis.pipeline(transaction=False) as pipe:
                for session_id in part:
                    pipe.exists(session_key(session_id))
                results = await pipe.execute()
            found.update(sid for sid, exists in zip(part, results, strict=True) if exists)
        return found

    async def revoke(self, claims: TokenClaims) -> None:
        """Log out: drop the session and deny its access token until it expires anyway."""
        remaining = max(1, claims.expires_at - int(time.time()))
        await self._end(claims.user_id, [claims.session_id], claims.token_id, remaining)

    async def revoke_all(self, user_id: int, keep_session: str | None = None) -> int:
        """Drop every session of a user but `keep_session`; return how many were dropped."""
        sessions = await self.redis.smembers(_user_sessions_key(user_id))
        doomed = [s.decode() if isinstance(s, bytes) else s for s in sessions]
        doomed = [s for s in doomed if s != keep_session]
        if not doomed:
            return 0
        await self._end(user_id, doomed)
        return len(doomed)


TICKET_TTL = 30  # seconds


def _ticket_key(ticket: str) -> str:
    # Only a digest is stored: a Redis dump never holds a usable ticket.
    return "sf:wst:" + hashlib.sha256(ticket.encode()).hexdigest()


class TicketStore:
    """One-time WebSocket tickets: a signed-in viewer trades an access token (sent in a
    header) for a short-lived ticket that may go into a WebSocket URL, because browsers
    cannot set headers on a WebSocket and access tokens never go into URLs."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def issue(self, claims: TokenClaims) -> str:
        """A ticket for the signed-in session of `claims`."""
        ticket = secrets.token_urlsafe(32)
        await self.redis.set(_ticket_key(ticket), f"{claims.user_id}:{claims.session_id}",
                             ex=TICKET_TTL)
        return ticket

    async def redeem(self, ticket: str) -> tuple[int, str] | None:
        """(user id, session id) of a ticket, once; None when unknown, used, expired, or its
        session has ended since (logout, password change, refresh-token reuse)."""
        if not 20 <= len(ticket) <= 100:
            return None
        value = await self.redis.getdel(_ticket_key(ticket))
        if value is None:
            return None
        user_id, _, session_id = (value.decode() if isinstance(value, bytes) else value).partition(":")
        if not await self.redis.exists(session_key(session_id)):
            return None
        return int(user_id), session_id
