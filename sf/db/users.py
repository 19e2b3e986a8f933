"""Users repository: accounts and profiles."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from sf.db.mail_tokens import PENDING_EMAIL_PURPOSE, PENDING_EMAIL_SQL
from sf.db.sql import Executor, set_clause
from sf.errors import Conflict, NotFound
from sf.security import EmailCipher


@dataclass(frozen=True)
class User:
    """A user row plus `is_live` (whether one of their public streams is live now).

    A private live stream never shows in `is_live`: the profile is public. The e-mail address
    is stored sealed (`EmailCipher`) and opened only by the reads given the cipher (the own
    profile, login, registration); the others (public views, lists) leave `email` empty.
    `privacy_policy_accepted` (the version last accepted) is read with the own profile only.
    """

    id: int
    username: str
    email: str
    password_hash: str
    avatar: str | None
    bio: str
    followers_count: int
    created_at: datetime
    updated_at: datetime
    is_live: bool
    privacy_policy_accepted: str | None = None
    email_verified: bool = False
    pending_email: str | None = None  # an e-mail change waiting for its verification
    deleted_at: datetime | None = None  # erasure requested: hidden everywhere (sf/db/erasure.py)


USER_COLUMNS = """u.id, u.username, u.email_key_id, u.email_ciphertext, u.password_hash, u.avatar,
    u.bio, u.followers_count, u.created_at, u.updated_at, u.deleted_at,
    EXISTS (SELECT 1 FROM streams s WHERE s.user_id = u.id AND s.is_live AND NOT s.is_private)
        AS is_live, u.email_verified"""
# The own profile's columns: the public ones plus the privacy policy version last accepted and
# the sealed pending address of an unconfirmed e-mail change.
PRIVATE_COLUMNS = USER_COLUMNS + f""",
    (SELECT c.version FROM consents c WHERE c.user_id = u.id AND c.purpose = 'privacy_policy'
     ORDER BY c.accepted_at DESC, c.id DESC LIMIT 1) AS privacy_policy_accepted,
    {PENDING_EMAIL_SQL}"""
_ROW_FIELDS = tuple(name for name in User.__dataclass_fields__
                    if name not in ("email", "privacy_policy_accepted", "pending_email"))


# SQL: the user `u` has not asked for erasure. Every read that can show a user to anyone
# carries it; only login sees deleted accounts (to restore one within the grace period).
LISTED = "u.deleted_at IS NULL"


def user_from_row(row: asyncpg.Record, cipher: EmailCipher | None = None) -> User:
    """The User of a row of USER_COLUMNS (or PRIVATE_COLUMNS); its address opened with
    `cipher` when given, else left empty."""
    email = ""
    if cipher is not None and row["email_ciphertext"] is not None:
        email = cipher.decrypt(row["email_key_id"], row["email_ciphertext"], row["id"])
    pending = None
    if cipher is not None and row.get("pending_email_ciphertext") is not None:
        pending = cipher.decrypt(row["pending_email_key_id"], row["pending_email_ciphertext"],
                                 row["id"], PENDING_EMAIL_PURPOSE)
    return User(**{key: row[key] for key in _ROW_FIELDS}, email=email,
                privacy_policy_accepted=row.get("privacy_policy_accepted"), pending_email=pending)


def _conflict(exc: asyncpg.UniqueViolationError) -> Conflict:
    constraint = exc.constraint_name or ""
    field = "email" if "email" in constraint else "username"
    return Conflict(f"That {field} is already taken", fields={field: ["already taken"]})


async def create_user(db: Executor, cipher: EmailCipher, username: str, email: str,
                      password_hash: str) -> User:
    """Insert a user, the address sealed; Conflict (409) when the username or email is taken
    (case-insensitively: the unique index is on the digest of the lower-case address)."""
    # The id first: the sealed address is bound to it.
    user_id = await db.fetchval("SELECT nextval(pg_get_serial_sequence('users', 'id'))")
    sealed = cipher.encrypt(email, user_id)
    try:
        row = await db.fetchrow(
            "INSERT INTO users (id, username, email_key_id, email_ciphertext, email_digest,"
            " password_hash) VALUES ($1, $2, $3, $4, $5, $6)"
            " RETURNING *, false AS is_live",
            user_id, username, sealed.key_id, sealed.ciphertext, sealed.digest, password_hash,
        )
    except asyncpg.UniqueViolationError as exc:
        raise _conflict(exc) from None
    return user_from_row(row, cipher)


async def get_user(db: Executor, user_id: int, cipher: EmailCipher | None = None) -> User:
    """A user by id; with `cipher`, the own profile: the address opened and the consent read."""
    columns = PRIVATE_COLUMNS if cipher is not None else USER_COLUMNS
    row = await db.fetchrow(f"SELECT {columns} FROM users u WHERE u.id = $1 AND {LISTED}",
                            user_id)
    if row is None:
        raise NotFound("User not found")
    return user_from_row(row, cipher)


async def get_user_by_username(db: Executor, username: str) -> User:
    row = await db.fetchrow(
        f"SELECT {USER_COLUMNS} FROM users u WHERE lower(u.username) = lower($1) AND {LISTED}",
        username
    )
    if row is None:
        raise NotFound("User not found")
    return user_from_row(row)


async def find_user_for_login(db: Executor, cipher: EmailCipher, login: str) -> User | None:
    """The user whose username or email is `login` (case-insensitive), or None; an account
    deleted within its grace period too (`deleted_at` says so), not an erased one. An address
    is found by its digest: the database never sees it in clear."""
    if "@" in login:
        row = await db.fetchrow(f"SELECT {PRIVATE_COLUMNS} FROM users u WHERE u.email_digest = $1"
                                " AND u.erased_at IS NULL", cipher.digest(login))
    else:
        row = await db.fetchrow(
            f"SELECT {PRIVATE_COLUMNS} FROM users u WHERE lower(u.username) = lower($1)"
            " AND u.erased_at IS NULL", login)
    return user_from_row(row, cipher) if row else None


async def find_user_by_email(db: Executor, cipher: EmailCipher, email: str) -> User | None:
    """The user whose address is `email` (case-insensitive, by its digest), the address opened;
    None for none. A pending address of an unconfirmed change does not count."""
    row = await db.fetchrow(f"SELECT {USER_COLUMNS} FROM users u WHERE u.email_digest = $1",
                            cipher.digest(email))
    return user_from_row(row, cipher) if row else None


async def confirm_email(db: Executor, cipher: EmailCipher, user_id: int,
                        new_email: str | None) -> None:
    """Mark the account's address verified, first moving it to `new_email` (sealed) when that
    is given (a confirmed change); Conflict (409) when another account took that address."""
    try:
        if new_email is None:
            await db.execute("UPDATE users SET email_verified = true, updated_at = now()"
                             " WHERE id = $1", user_id)
            return
        sealed = cipher.encrypt(new_email, user_id)
        await db.execute(
            "UPDATE users SET email_key_id = $2, email_ciphertext = $3, email_digest = $4,"
            " email_verified = true, updated_at = now() WHERE id = $1",
            user_id, sealed.key_id, sealed.ciphertext, sealed.digest)
    except asyncpg.UniqueViolationError as exc:
        raise _conflict(exc) from None


_UNSET = object()


async def update_profile(db: Executor, user_id: int, *, cipher: EmailCipher | None = None,
                         email: object = _UNSET, bio: object = _UNSET,
                         avatar: object = _UNSET) -> User:
    """Change the given profile fields (others stay; a new address is sealed with `cipher`,
    which the answer is read with too); Conflict when the email is taken."""
    changes: dict[str, object] = {name: value for name, value in (("bio", bio), ("avatar", avatar))
                                  if value is not _UNSET}
    if email is not _UNSET:
        if cipher is None:
            raise ValueError("changing the e-mail address needs the cipher")
        sealed = cipher.encrypt(str(email), user_id)
        changes.update(email_key_id=sealed.key_id, email_ciphertext=sealed.ciphertext,
                       email_digest=sealed.digest)
    if not changes:
        return await get_user(db, user_id, cipher)
    assignments = set_clause(changes, 2)
    try:
        result = await db.execute(
            f"UPDATE users SET {assignments} WHERE id = $1",
            user_id, *changes.values(),
        )
    except asyncpg.UniqueViolationError as exc:
        raise _conflict(exc) from None
    if result.endswith(" 0"):
        raise NotFound("User not found")
    return await get_user(db, user_id, cipher)


async def set_password_hash(db: Executor, user_id: int, password_hash: str) -> None:
    await db.execute(
        "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1",
        user_id, password_hash,
    )


async def replace_password_hash(db: Executor, user_id: int, old_hash: str,
                                new_hash: str) -> None:
    """Store a rehash of the same password, unless the password changed meanwhile."""
    await db.execute(
        "UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2",
        user_id, old_hash, new_hash,
    )


async def account_age_seconds(db: Executor, user_id: int) -> float:
    """How long ago the account was created, by the database's clock (0 for no such user)."""
    age = await db.fetchval(
        "SELECT EXTRACT(epoch FROM now() - created_at) FROM users WHERE id = $1", user_id)
    return float(age) if age is not None else 0.0


async def rotate_email_encryption(db: asyncpg.Pool, cipher: EmailCipher, batch: int = 500) -> int:
    """Re-seal every address not under the current encryption key, a batch a transaction;
    return how many changed. The digests stay: the lookup secret is not rotated."""
    changed = 0
    while True:
        async with db.acquire() as connection, connection.transaction():
            rows = await connection.fetch(
                "SELECT id, email_key_id, email_ciphertext FROM users WHERE email_key_id <> $1"
                " ORDER BY id LIMIT $2 FOR UPDATE", cipher.current_key_id, batch)
            values = []
            for row in rows:
                plain = cipher.decrypt(row["email_key_id"], row["email_ciphertext"], row["id"])
                sealed = cipher.encrypt(plain, row["id"])
                values.append((row["id"], sealed.key_id, sealed.ciphertext))
            await connection.executemany(
                "UPDATE users SET email_key_id = $2, email_ciphertext = $3 WHERE id = $1", values)
        changed += len(rows)
        if len(rows) < batch:
            return changed
