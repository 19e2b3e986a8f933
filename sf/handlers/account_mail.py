"""E-mail verification and password reset by mail (API.md "Account lifecycle")."""

from __future__ import annotations

from sf.handlers.auth import AuthHandler
from sf.ratelimit import Limit
from sf.schemas import MailTokenSchema, PasswordResetConfirmSchema, PasswordResetRequestSchema
from sf.security import TokenClaims


class VerifyEmailHandler(AuthHandler):
    auth = "public"
    needs_redis = False  # PostgreSQL alone: a mailed link still works while Redis is down

    async def post(self) -> None:
        """Confirm an e-mail address with the token of the link mailed to it.
        ---
        summary: Verify e-mail
        description: The token comes from the link's `#token=`. It confirms the account's address (then `email_verified` is true), or makes a pending new address the account's address.
        tags: [auth]
        requestBody: {required: true, content: {application/json: {schema: MailTokenSchema}}}
        responses:
          204: {description: Verified}
          409: {description: Another account took the new address meanwhile, content: {application/json: {schema: ErrorSchema}}}
          422: {description: "The token is invalid, expired, already used or replaced by a newer link (one answer for all), on field `token`", content: {application/json: {schema: ErrorSchema}}}
          429: {description: Rate limited, content: {application/json: {schema: ErrorSchema}}}
        """
        body = self.parse_json(MailTokenSchema())
        await self.services.account_mail.verify_email(body["token"])
        self.set_status(204)
        self.finish()


class ResendVerificationHandler(AuthHandler):
    auth = "required"

    def extra_limits(self, claims: TokenClaims | None) -> list[Limit]:
        limits = super().extra_limits(claims)
        if claims is not None:
            limits.append(Limit("verify-mail", f"u{claims.user_id}",
                                self.config.rate_limit_mail, self.config.rate_limit_mail_window))
        return limits

    async def post(self) -> None:
        """Mail the verification link again (to the pending new address if there is one).
        ---
        summary: Send the verification mail again
        tags: [users]
        security: [{bearer: []}]
        responses:
          202: {description: "Queued: the mail goes out shortly; the previous link stops working"}
          401: {description: Not authenticated, content: {application/json: {schema: ErrorSchema}}}
          409: {description: The address is already verified and no change is pending, content: {application/json: {schema: ErrorSchema}}}
          429: {description: Too many re-sends for this account (SF_RATE_LIMIT_MAIL per SF_RATE_LIMIT_MAIL_WINDOW), content: {application/json: {schema: ErrorSchema}}}
        """
        await self.services.account_mail.resend_verification(self.user_id)
        self.finish_accepted()


class PasswordResetHandler(AuthHandler):
    auth = "public"
    auth_action = "password-reset"  # per address, network and node (security.md#login-flood)

    async def post(self) -> None:
        """Ask for a password reset link by mail.

        The answer never tells whether an account has the address: always 202, with no body,
        in the same time.
        ---
        summary: Request a password reset
        tags: [auth]
        requestBody: {required: true, content: {application/json: {schema: PasswordResetRequestSchema}}}
        responses:
          202: {description: "Accepted: if an account has this address, a reset link (valid SF_PASSWORD_RESET_TTL, once) is mailed to it"}
          422: {description: Not an e-mail address, content: {application/json: {schema: ErrorSchema}}}
          429: {description: "Too many requests from this client address, its /24 or /64 network or this node, for this address or for its account (SF_RATE_LIMIT_MAIL per SF_RATE_LIMIT_MAIL_WINDOW)", content: {application/json: {schema: ErrorSchema}}}
        """
        body = self.parse_json(PasswordResetRequestSchema())
        await self.services.account_mail.request_password_reset(body["email"])
        self.finish_accepted()


class PasswordResetConfirmHandler(AuthHandler):
    auth = "public"
    auth_action = "password-reset"

    async def post(self) -> None:
        """Set a new password with the token of a reset link; every session of the account ends.
        ---
        summary: Reset the password
        tags: [auth]
        requestBody: {required: true, content: {application/json: {schema: PasswordResetConfirmSchema}}}
        responses:
          204: {description: Password set; every session of the account is signed out}
          422: {description: "The token is invalid, expired, already used or replaced by a newer link (one answer for all, on field `token`), or the new password is invalid", content: {application/json: {schema: ErrorSchema}}}
          429: {description: "Too many attempts from this address, its /24 or /64 network or on this node", content: {application/json: {schema: ErrorSchema}}}
          503: {description: "Too many password hashes in progress on this node: retry after Retry-After", content: {application/json: {schema: ErrorSchema}}}
        """
        body = self.parse_json(PasswordResetConfirmSchema())
        await self.services.account_mail.reset_password(body["token"], body["new_password"])
        self.set_status(204)
        self.finish()


routes = [
    (r"/api/auth/verify-email", VerifyEmailHandler),
    (r"/api/auth/password-reset", PasswordResetHandler),
    (r"/api/auth/password-reset/confirm", PasswordResetConfirmHandler),
    (r"/api/users/profile/verify-email", ResendVerificationHandler),
]
