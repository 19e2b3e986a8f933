"""Profiles: own profile, avatar, password, public users (API.md "Users")."""

from __future__ import annotations

import asyncio

import tornado.httputil

from sf import avatars
from sf.db import users as users_db
from sf.errors import UnsupportedMediaType, ValidationFailed
from sf.handlers.base import USERNAME_ROUTE, APIHandler
from sf.schemas import ChangePasswordSchema, ProfileUpdateSchema, user_private, user_public


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
        self.write_json(user_private.dump(await users_db.get_user(self.db, self.user_id)))

    async def put(self) -> None:
        """Update email, bio or avatar URL (partial updates allowed).
        ---
        summary: Update own profile
        tags: [users]
        security: [{bearer: []}]
        requestBody: {required: true, content: {application/json: {schema: ProfileUpdateSchema}}}
        responses:
          200: {description: Updated profile, content: {application/json: {schema: UserPrivateSchema}}}
          409: {description: Email taken, content: {application/json: {schema: ErrorSchema}}}
          422: {description: Invalid fields, content: {application/json: {schema: ErrorSchema}}}
        """
        changes = self.parse_json(ProfileUpdateSchema())
        user = await users_db.update_profile(self.db, self.user_id, **changes)
        await self.services.on_user_changed(user.username)
        self.write_json(user_private.dump(user))


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
        """
        data = self._image_bytes()
        if not data:
            raise ValidationFailed("Invalid input", fields={"avatar": ["empty upload"]})
        config = self.config
        loop = asyncio.get_running_loop()
        webp = await loop.run_in_executor(None, avatars.render_avatar, data, config.avatar_size,
                                          config.avatar_max_pixels)
        url = await loop.run_in_executor(None, avatars.store_avatar, config.media_dir,
                                         self.user_id, webp)
        previous = await users_db.get_user(self.db, self.user_id)
        user = await users_db.update_profile(self.db, self.user_id, avatar=url)
        await loop.run_in_executor(None, avatars.remove_avatar, config.media_dir, previous.avatar)
        await self.services.on_user_changed(user.username)
        self.write_json(user_private.dump(user))


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
        """
        body = self.parse_json(ChangePasswordSchema())
        assert self.claims is not None
        await self.services.accounts.change_password(self.claims, body["current_password"],
                                                     body["new_password"])
        self.set_status(204)
        self.finish()


class PublicUserHandler(APIHandler):
    auth = "optional"

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
        async def load() -> dict:
            return user_public.dump(await users_db.get_user_by_username(self.db, username))

        self.write_json(await self.services.cache.get_or_set(f"user:{username.lower()}", load))



routes = [
    (r"/api/users/profile", ProfileHandler),
    (r"/api/users/profile/avatar", AvatarHandler),
    (r"/api/users/change-password", ChangePasswordHandler),
    (rf"/api/users/{USERNAME_ROUTE}", PublicUserHandler),
]
