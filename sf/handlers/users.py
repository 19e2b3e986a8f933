"""Profiles: own profile, avatar, password, public users (API.md "Users")."""

from __future__ import annotations

import tornado.httputil

from sf.errors import UnsupportedMediaType, ValidationFailed
from sf.handlers.base import USERNAME_ROUTE, APIHandler
from sf.schemas import (
    ChangePasswordSchema,
    DeleteAccountSchema,
    ProfileUpdateSchema,
    erasure_scheduled,
    user_public,
)
from sf.security import TokenClaims


class ProfileHandler(APIHandler):
    auth = "required"

    async def get(self) -> None:
        """The current user's profile.
        ---
        summary: Own profile
        tags: [users]
        security: [{bearer: []}]
        responses:
          200: {description: Profile, content: {application/json: {schema: UserPrivateSchema}}}
          401: {description: Not authenticated, content: {application/json: {schema: ErrorSchema}}}
        """
        self.write_json(await self.services.accounts.profile(self.user_id,
                                                             self.services.user_private.dump,
                                                             self.prefetched))

    def cache_reads(self, claims: TokenClaims | None) -> tuple[str | None, tuple[str, ...]]:
        return self.services.accounts.profile_reads(claims.user_id) if claims else (None, ())

    async def put(self) -> None:
        """Update email, bio or avatar URL (partial updates allowed).

        Changing the email needs `current_password`. `avatar` is null (remove), the URL path of
        an avatar this user uploaded, or an https URL on a host of SF_AVATAR_HOSTS.
        ---
        summary: Update own profile
        tags: [users]
        security: [{bearer: []}]
        requestBody: {required: true, content: {application/json: {schema: ProfileUpdateSchema}}}
        responses:
          200: {description: Updated profile, content: {application/json: {schema: UserPrivateSchema}}}
          400: {description: Body is not JSON, content: {application/json: {schema: ErrorSchema}}}
          401: {description: Not authenticated, content: {application/json: {schema: ErrorSchema}}}
          415: {description: Not application/json, content: {application/json: {schema: ErrorSchema}}}
          422: {description: "Invalid fields: an email change without the right current_password, an avatar URL that is not allowed", content: {application/json: {schema: ErrorSchema}}}
          429: {description: "Too many e-mail changes (SF_RATE_LIMIT_MAIL per SF_RATE_LIMIT_MAIL_WINDOW), or too many wrong passwords", content: {application/json: {schema: ErrorSchema}}}
        """
        changes = self.parse_json(ProfileUpdateSchema())
        current_password = changes.pop("current_password", None)
        user = await self.services.accounts.update_profile(self.user_id, changes,
                                                            current_password, self.client_ip)
        self.write_json(self.services.user_private.dump(user))

    async def delete(self) -> None:
        """Delete the account: gone from every public place at once (its sessions, tickets,
        stream key, live stream, follows and invites end); its personal data is destroyed
        after SF_ERASURE_GRACE_DAYS unless its owner signs in with `restore: true` before.
        ---
        summary: Delete own account
        tags: [users]
        security: [{bearer: []}]
        requestBody: {required: true, content: {application/json: {schema: DeleteAccountSchema}}}
        responses:
          202: {description: Deleted; erased at erase_after, content: {application/json: {schema: ErasureScheduledSchema}}}
          401: {description: Not authenticated, content: {application/json: {schema: ErrorSchema}}}
          422: {description: Wrong password, content: {application/json: {schema: ErrorSchema}}}
          429: {description: Too many wrong passwords for this account from this address (counted with failed logins), content: {application/json: {schema: ErrorSchema}}}
        """
        body = self.parse_json(DeleteAccountSchema())
        erase_after = await self.services.accounts.delete_account(self.user_id, body["password"],
                                                                  self.client_ip)
        self.write_json(erasure_scheduled.dump({"erase_after": erase_after}), 202)


class AvatarHandler(APIHandler):
    auth = "required"
    max_body_setting = "max_avatar_bytes"

    def _image_bytes(self) -> bytes:
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type in ("image/png", "image/jpeg", "image/webp"):
            return self.request.body
        if content_type == "multipart/form-data":
            files: dict[str, list[tornado.httputil.HTTPFile]] = {}
            tornado.httputil.parse_body_arguments(
                self.request.headers["Content-Type"], self.request.body, {}, files)
            uploads = files.get("avatar") or []
            if len(uploads) != 1:
                raise ValidationFailed("Invalid input",
                                       fields={"avatar": ["send exactly one file field 'avatar'"]})
            return uploads[0].body
        raise UnsupportedMediaType("Send image/png, image/jpeg, image/webp or multipart/form-data")

    async def put(self) -> None:
        """Upload an avatar (raw image body or multipart field `avatar`).
        ---
        summary: Upload avatar
        tags: [users]
        security: [{bearer: []}]
        requestBody:
          required: true
          content:
            image/png: {schema: {type: string, format: binary}}
            image/jpeg: {schema: {type: string, format: binary}}
            image/webp: {schema: {type: string, format: binary}}
            multipart/form-data: {schema: {type: object, properties: {avatar: {type: string, format: binary}}}}
        responses:
          200: {description: Profile with the new avatar URL, content: {application/json: {schema: UserPrivateSchema}}}
          413: {description: Too large, content: {application/json: {schema: ErrorSchema}}}
          415: {description: Not an accepted image, content: {application/json: {schema: ErrorSchema}}}
          422: {description: Image larger than the pixel bound, content: {application/json: {schema: ErrorSchema}}}
          429: {description: Rate limited, or image processing busy (Retry-After), content: {application/json: {schema: ErrorSchema}}}
        """
        data = self._image_bytes()
        if not data:
            raise ValidationFailed("Invalid input", fields={"avatar": ["empty upload"]})
        self.write_json(self.services.user_private.dump(
            await self.services.accounts.replace_avatar(self.user_id, data)))


class ChangePasswordHandler(APIHandler):
    auth = "required"

    async def post(self) -> None:
        """Change the password; every other session of the user is revoked.
        ---
        summary: Change password
        tags: [users]
        security: [{bearer: []}]
        requestBody: {required: true, content: {application/json: {schema: ChangePasswordSchema}}}
        responses:
          204: {description: Changed}
          422: {description: Wrong current password or invalid new one, content: {application/json: {schema: ErrorSchema}}}
          429: {description: Too many wrong passwords for this account from this address (counted with failed logins), content: {application/json: {schema: ErrorSchema}}}
        """
        body = self.parse_json(ChangePasswordSchema())
        assert self.claims is not None
        await self.services.accounts.change_password(self.claims, body["current_password"],
                                                     body["new_password"], self.client_ip)
        self.set_status(204)
        self.finish()


class PublicUserHandler(APIHandler):
    auth = "optional"

    def cache_reads(self, claims: TokenClaims | None) -> tuple[str | None, tuple[str, ...]]:
        return self.services.accounts.public_user_reads(self.path_kwargs["username"])

    async def get(self, username: str) -> None:
        """A user's public profile.
        ---
        summary: Public user
        tags: [users]
        parameters: [{in: path, name: username, required: true, schema: {type: string}}]
        responses:
          200: {description: User, content: {application/json: {schema: UserPublicSchema}}}
          404: {description: No such user, content: {application/json: {schema: ErrorSchema}}}
        """
        self.write_json(await self.services.accounts.public_user(username, user_public.dump,
                                                                 self.prefetched))



routes = [
    (r"/api/users/profile", ProfileHandler),
    (r"/api/users/profile/avatar", AvatarHandler),
    (r"/api/users/change-password", ChangePasswordHandler),
    (rf"/api/users/{USERNAME_ROUTE}", PublicUserHandler),
]
