"""Register, login, logout and refresh (API.md "Auth")."""

from __future__ import annotations

import hmac
from typing import Any, ClassVar

from sf.errors import Unauthorized
from sf.handlers.base import APIHandler
from sf.ratelimit import Limit, auth_limits, registration_limits
from sf.schemas import LoginSchema, RefreshSchema, RegisterSchema
from sf.security import TokenClaims
from sf.services.accounts import LoginResult

REFRESH_COOKIE = "sf_refresh"
CSRF_COOKIE = "sf_csrf"
CSRF_COOKIE_PATH = "/"


class AuthHandler(APIHandler):
    """Shared answer of every call that hands out a token pair."""

    rate_bucket = "auth"
    needs_redis = True  # sessions, revocations and the sign-in limits live there
    # Sign-in and sign-up also count against their network and node (`auth_limits`); the
    # others (refresh, logout) against the address only.
    auth_action: ClassVar[str | None] = None

    def extra_limits(self, claims: TokenClaims | None) -> list[Limit]:
        if self.auth_action is not None:
            return auth_limits(self.config, self.client_ip, self.auth_action)
        return [Limit("auth-ip", self.client_ip, self.config.rate_limit_auth_ip,
                      self.config.rate_limit_window)]

    def write_tokens(self, result: LoginResult, status: int = 200) -> None:
        tokens = result.tokens
        cookie_options: dict[str, Any] = {
            "httponly": True, "secure": self.is_https, "samesite": "Strict", "path": "/api",
            "expires_days": None, "max_age": self.config.refresh_token_ttl}
        self.set_cookie(REFRESH_COOKIE, tokens.refresh_token, **cookie_options)
        # The CSRF token is the double-submit half that page scripts read and send back as
        # X-CSRF-Token: readable (not HttpOnly) on every page, which live outside /api.
        cookie_options.update(httponly=False, path=CSRF_COOKIE_PATH)
        self.set_cookie(CSRF_COOKIE, self.services.tokens.csrf_token(tokens.session_id),
                        **cookie_options)
        self.write_json({
            "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token,
            "token_type": "Bearer",
            "expires_in": tokens.expires_in,
            "user": self.services.user_private.dump(result.user),
        }, status)


class RegisterHandler(AuthHandler):
    auth = "public"

    def extra_limits(self, claims: TokenClaims | None) -> list[Limit]:
        return registration_limits(self.config, self.client_ip)

    async def post(self) -> None:
        """Create an account and log it in.

        `accept_privacy_policy` must be the current version of the privacy policy
        (GET /api/legal/privacy-policy); the acceptance is kept.
        ---
        summary: Register
        tags: [auth]
        requestBody: {required: true, content: {application/json: {schema: RegisterSchema}}}
        responses:
          201: {description: Account created, content: {application/json: {schema: TokenPairSchema}}}
          409: {description: Username or email taken, content: {application/json: {schema: ErrorSchema}}}
          422: {description: "Invalid fields, or accept_privacy_policy is not the current version", content: {application/json: {schema: ErrorSchema}}}
          429: {description: "Too many attempts from this address, its /24 or /64 network (per minute, or registrations per day) or on this node", content: {application/json: {schema: ErrorSchema}}}
          503: {description: "Too many password hashes in progress on this node: retry after Retry-After", content: {application/json: {schema: ErrorSchema}}}
        """
        body = self.parse_json(RegisterSchema())
        result = await self.services.accounts.register(
            body["username"], body["email"], body["password"], body["accept_privacy_policy"],
            client_ip=self.client_ip, user_agent=self.request.headers.get("User-Agent", ""))
        self.write_tokens(result, 201)


class LoginHandler(AuthHandler):
    auth = "public"
    auth_action = "login"

    async def post(self) -> None:
        """Log in by username or email.
        ---
        summary: Login
        tags: [auth]
        requestBody: {required: true, content: {application/json: {schema: LoginSchema}}}
        responses:
          200: {description: Logged in, content: {application/json: {schema: TokenPairSchema}}}
          401: {description: Wrong credentials (same answer for an unknown user), content: {application/json: {schema: ErrorSchema}}}
          403: {description: "The account is deleted and scheduled for erasure (right password, no restore: true)", content: {application/json: {schema: ErrorSchema}}}
          429: {description: "Too many attempts from this address, its /24 or /64 network or on this node, or too many failed logins for this account from this address", content: {application/json: {schema: ErrorSchema}}}
          503: {description: "Too many password checks in progress on this node: retry after Retry-After (answered at once)", content: {application/json: {schema: ErrorSchema}}}
        """
        body = self.parse_json(LoginSchema())
        login = body.get("username") or body["email"]
        self.write_tokens(await self.services.accounts.login(
            login, body["password"], self.client_ip,
            user_agent=self.request.headers.get("User-Agent", ""),
            restore=body.get("restore", False)))


class LogoutHandler(AuthHandler):
    auth = "required"

    async def post(self) -> None:
        """Revoke the access token and its refresh session.
        ---
        summary: Logout
        tags: [auth]
        security: [{bearer: []}]
        responses:
          204: {description: Logged out}
          401: {description: Not authenticated, content: {application/json: {schema: ErrorSchema}}}
        """
        assert self.claims is not None
        await self.services.accounts.logout(self.claims)
        self.clear_cookie(REFRESH_COOKIE, path="/api")
        self.clear_cookie(CSRF_COOKIE, path=CSRF_COOKIE_PATH)
        self.set_status(204)
        self.finish()


class RefreshHandler(AuthHandler):
    auth = "public"

    def _token_from_request(self) -> str:
        header = self.request.headers.get("X-Refresh-Token")
        if header:
            return header.strip()
        cookie = self.get_cookie(REFRESH_COOKIE)
        if not cookie:
            raise Unauthorized("No refresh token: send X-Refresh-Token or the sf_refresh cookie")
        claims = self.services.tokens.verify(cookie, "refresh")
        expected = self.services.tokens.csrf_token(claims.session_id)
        if not hmac.compare_digest(self.request.headers.get("X-CSRF-Token", ""), expected):
            raise Unauthorized("Missing or wrong X-CSRF-Token for the cookie refresh")
        return cookie

    async def get(self) -> None:
        """Rotate the refresh token (header, or cookie + X-CSRF-Token).
        ---
        summary: Refresh tokens
        tags: [auth]
        parameters:
          - {in: header, name: X-Refresh-Token, schema: {type: string}, required: false}
          - {in: header, name: X-CSRF-Token, schema: {type: string}, required: false, description: required with the sf_refresh cookie}
        responses:
          200: {description: New token pair; the old refresh token stops working, content: {application/json: {schema: TokenPairSchema}}}
          401: {description: Invalid, expired, revoked or reused refresh token, content: {application/json: {schema: ErrorSchema}}}
        """
        self.write_tokens(await self.services.accounts.refresh(self._token_from_request()))

    async def post(self) -> None:
        """Rotate the refresh token given in the body.
        ---
        summary: Refresh tokens
        tags: [auth]
        requestBody: {required: true, content: {application/json: {schema: RefreshSchema}}}
        responses:
          200: {description: New token pair, content: {application/json: {schema: TokenPairSchema}}}
          401: {description: Invalid, expired, revoked or reused refresh token, content: {application/json: {schema: ErrorSchema}}}
        """
        body = self.parse_json(RefreshSchema())
        self.write_tokens(await self.services.accounts.refresh(body["refresh_token"]))


routes = [
    (r"/api/auth/register", RegisterHandler),
    (r"/api/auth/login", LoginHandler),
    (r"/api/auth/logout", LogoutHandler),
    (r"/api/auth/refresh-token", RefreshHandler),
]
