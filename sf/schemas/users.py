"""Users: user names and e-mail addresses as the API accepts them, profile and password
changes, and the public and private views of a user."""

from __future__ import annotations

import re
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from sf.media.images import AVATAR_URL_PREFIX
from sf.schemas.common import (
    END,
    TEXT_CHAR,
    Storable,
    StrictSchema,
    Text,
    case_insensitive_alternatives,
    no_control_chars,
)
from sf.schemas.dump import CompiledDump, UTCDateTime
from sf.schemas.pagination import PaginationSchema

# \A...\Z, not ^...$: `$` also matches before a trailing newline ("alice\n").
USERNAME_RE = re.compile(r"\A[A-Za-z0-9_]{3,30}\Z")
# Names that collide with routes, roles or placeholders (compared case-insensitively); refused at
# registration only, so an account that already has one keeps working.
RESERVED_USERNAMES = frozenset({
    "about", "abuse", "account", "accounts", "admin", "administrator", "anonymous", "api", "app",
    "assets", "auth", "avatar", "avatars", "billing", "categories", "category", "channel",
    "channels", "contact", "dashboard", "default", "delete", "docs", "everyone", "follow",
    "followers", "following", "guest", "healthz", "help", "hls", "home", "info", "internal",
    "legal", "live", "login", "logout", "me", "media", "metrics", "mod", "moderator", "none",
    "nobody", "null", "official", "openapi", "privacy", "profile", "readyz", "refresh",
    "register", "root", "rtmp", "search", "security", "settings", "signin", "signout", "signup",
    "sf", "staff", "static", "stats", "statistics", "status", "stream", "streams", "support",
    "sysadmin", "system", "terms", "undefined", "user", "users", "v1", "watch",
    "webmaster", "ws", "self", "true", "false", "nil", "www", "mail",
})
# The user name a new account may take: USERNAME_RE and not reserved, in any case.
NEW_USERNAME_PATTERN = (rf"^(?!{case_insensitive_alternatives(RESERVED_USERNAMES)}{END})"
                        rf"[A-Za-z0-9_]{{3,30}}{END}")

# The addresses SF keeps, as one pattern: what marshmallow's `validate.Email` accepts (the
# server's first check), narrowed to what SF can mail to anyone's server: ASCII only (mail to
# an internationalized address needs SMTPUTF8, which not every server relays), a dot-atom
# local part (a quoted one may hold control characters), no RFC 2047 encoded word (`=?`, which
# mail readers decode into other addresses in the To: header), and a host name, not an
# address literal or `localhost` (security.md#mail-header-injection, #poisoned-mail).
_ATEXT = r"[-!#$%&'*+/=?^`{}|~A-Za-z0-9_]"
_HOST_CHAR = r"A-Za-z0-9"
EMAIL_PATTERN = (
    rf"^(?!.*=\?){_ATEXT}+(?:\.{_ATEXT}+)*@"
    rf"(?:[{_HOST_CHAR}](?:[{_HOST_CHAR}-]{{0,61}}[{_HOST_CHAR}])?\.)+"
    rf"(?:[A-Za-z]{{2,6}}|[{_HOST_CHAR}-]{{2,}}){END}")
# An avatar URL: the path of an uploaded avatar, or an https URL without spaces or backslashes;
# which uploads are yours and which hosts are allowed no schema can state.
AVATAR_PATTERN = (rf"^(?:{re.escape(AVATAR_URL_PREFIX)}[0-9]+-[A-Za-z0-9_-]{{1,64}}"
                  rf"\.webp|[hH][tT][tT][pP][sS]://(?:(?![\s\\]){TEXT_CHAR})*){END}")


def not_reserved(value: str) -> None:
    if value.lower() in RESERVED_USERNAMES:
        raise ValidationError("is reserved")


def mailable_address(value: str) -> None:
    """The narrowing of EMAIL_PATTERN beyond `validate.Email` (see there)."""
    host = value.rpartition("@")[2]
    if not value.isascii() or value.startswith('"') or "=?" in value \
            or host == "localhost" or host.startswith("["):
        raise ValidationError("is not an address SF can mail (ASCII, a host name, no quoting "
                              "or encoded words)")


def Email(**kwargs: Any) -> fields.String:
    """An e-mail address as marshmallow's `fields.Email` checks it (the same validators in the
    same order), narrowed to what SF can mail (`mailable_address`), at most 254 characters.
    Documented by EMAIL_PATTERN alone: `format: email` would promise RFC 5321 syntax, which
    validators read differently from this check."""
    return fields.String(validate=[validate.Email(), mailable_address,
                                   validate.Length(max=254)],
                         metadata={"pattern": EMAIL_PATTERN}, **kwargs)


class ProfileUpdateSchema(StrictSchema):
    email = Email()
    bio = Text(1000)
    avatar = fields.String(allow_none=True, validate=[validate.Length(min=1, max=2048),
                                                      no_control_chars], metadata={
        "pattern": AVATAR_PATTERN,
        "description": "null (remove), the URL path of an avatar you uploaded "
                       "(/media/avatars/...), or an https URL on an allow-listed host"})
    current_password = Storable(1, 128, load_only=True,
                                metadata={"description": "required to change the email"})


class ChangePasswordSchema(StrictSchema):
    current_password = Storable(1, 128, required=True)
    new_password = Storable(8, 128, required=True)


class DeleteAccountSchema(StrictSchema):
    password = Storable(1, 128, required=True, load_only=True)


class ErasureScheduledSchema(Schema):
    erase_after = UTCDateTime(metadata={
        "description": "when the account's personal data will be destroyed, unless its owner "
                       'signs in with "restore": true before then'})


class UserPublicSchema(CompiledDump):
    id = fields.Integer()
    username = fields.String()
    avatar = fields.String(allow_none=True)
    bio = fields.String()
    followers_count = fields.Integer()
    created_at = UTCDateTime()
    is_live = fields.Boolean()


class UserPrivateSchema(UserPublicSchema):
    """The own profile; `privacy_policy_current` is the version the node serves (the schema
    is built with it), so a client sees when it differs from `privacy_policy_accepted`."""

    email = fields.String(metadata={"description": "the address the account signs in and gets "
                                                   "mail with (a change counts once verified)"})
    email_verified = fields.Boolean(metadata={
        "description": "whether `email` was confirmed through the link mailed to it"})
    pending_email = fields.String(allow_none=True, metadata={
        "description": "a new address waiting for its verification link (null: none)"})
    updated_at = UTCDateTime()
    privacy_policy_accepted = fields.String(
        allow_none=True, metadata={"description": "the privacy policy version last accepted"})
    privacy_policy_current = fields.Method(
        "dump_privacy_policy_current", metadata={"type": "string", "description":
                                                 "the privacy policy version in force"})

    def __init__(self, *args: Any, privacy_policy_version: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.privacy_policy_version = privacy_policy_version

    def dump_privacy_policy_current(self, user: Any) -> str:
        return self.privacy_policy_version


# A document version as the operator writes it (sf/services/consents.py checks the file).
POLICY_VERSION_RE = re.compile(r"\A[A-Za-z0-9._-]{1,64}\Z")
POLICY_VERSION_PATTERN = rf"^[A-Za-z0-9._-]{{1,64}}{END}"


def PolicyVersion(description: str, **kwargs: Any) -> fields.String:
    """A privacy policy version; which one is current no schema can state (422 otherwise)."""
    return fields.String(validate=validate.Regexp(POLICY_VERSION_RE, error="is not a version"),
                         metadata={"pattern": POLICY_VERSION_PATTERN, "description": description},
                         **kwargs)


class ConsentSchema(StrictSchema):
    privacy_policy = PolicyVersion("the current version (GET /api/legal/privacy-policy)",
                                   required=True)


class PrivacyPolicySchema(Schema):
    version = fields.String()
    effective_at = UTCDateTime()
    text = fields.String(metadata={"description": "Markdown"})


class UserListSchema(Schema):
    data = fields.List(fields.Nested(UserPublicSchema))
    pagination = fields.Nested(PaginationSchema)


erasure_scheduled = ErasureScheduledSchema()
user_public = UserPublicSchema()
user_private = UserPrivateSchema()
