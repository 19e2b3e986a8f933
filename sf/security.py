"""Password hashing, JWTs, stream-key and e-mail address encryption, and backup archives.

bcrypt is CPU-bound (59 ms at 10 rounds, 234 ms at 12 on the reference machine: see
docs/benchmarks.md), so callers run `PasswordHasher` methods in its executor, never on the
loop thread.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import bcrypt
import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sf.config import Config, parse_backup_key, parse_encryption_keys
from sf.errors import Overloaded, Unauthorized

JWT_ALGORITHM = "HS256"
JWT_ISSUER = "sf"

T = TypeVar("T")


@dataclass(frozen=True)
class PasswordCheck:
    """The outcome of checking a password: whether it matched and, when it did under another
    work factor than the configured one, the same password hashed again at the configured one
    (for the caller to store)."""

    ok: bool
    rehashed: str | None = None


_BCRYPT_COST = re.compile(r"\$2[abxy]?\$(\d{2})\$")


BCRYPT_THREAD_NICENESS = 10


def _lower_thread_priority() -> None:
    """Run this thread at a lower CPU priority than the event loop (Linux niceness is per
    thread): in a flood of logins the loop still answers everything else, and refuses what
    the password queue cannot take, in milliseconds instead of behind bcrypt's cores."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                       os.getpriority(os.PRIO_PROCESS, 0) + BCRYPT_THREAD_NICENESS)
    except (OSError, AttributeError):  # not Linux: an ordinary thread
        pass


class PasswordHasher:
    """bcrypt over a SHA-256 pre-hash, so passwords longer than bcrypt's 72 bytes still count.

    It has its own threads (`executor`): logins must not queue behind other blocking work
    such as image decoding in a shared pool. The async methods (`hash_password`,
    `check_password`) are how the loop uses it: at most `max_pending` of them wait or run at
    once in this process, and one more is refused at once with `Overloaded` (503 +
    Retry-After) instead of queueing without bound behind a flood (security.md#login-flood).
    """

    def __init__(self, rounds: int, workers: int = 2, max_pending: int = 1_000_000) -> None:
        self.rounds = rounds
        self.max_pending = max_pending
        self.pending = 0  # checks and hashes queued or running in `executor`
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sf-bcrypt",
                                           initializer=_lower_thread_priority)
        # Verified against when the user does not exist, so both paths cost the same.
        self._dummy_hash = self.hash(secrets.token_urlsafe(16))

    @staticmethod
    def _prehash(password: str) -> bytes:
        return base64.b64encode(hashlib.sha256(password.encode("utf-8")).digest())

    def hash(self, password: str) -> str:
        return bcrypt.hashpw(self._prehash(password), bcrypt.gensalt(self.rounds)).decode()

    def verify(self, password: str, password_hash: str | None) -> bool:
        """Check a password; with no hash (unknown user) spend the same time and say no."""
        candidate = (password_hash or self._dummy_hash).encode()
        try:
            ok = bcrypt.checkpw(self._prehash(password), candidate)
        except ValueError:
            ok = False
        return ok and password_hash is not None

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether a stored hash was made at another work factor than the configured one."""
        match = _BCRYPT_COST.match(password_hash)
        return match is None or int(match.group(1)) != self.rounds

    def check(self, password: str, password_hash: str | None) -> PasswordCheck:
        """`verify`, plus the rehash at the configured factor when it matched under another."""
        if not self.verify(password, password_hash):
            return PasswordCheck(False)
        assert password_hash is not None
        return PasswordCheck(True, self.hash(password) if self.needs_rehash(password_hash)
                             else None)

    async def hash_password(self, password: str) -> str:
        """`hash` in the executor, within the bound on pending work."""
        return await self._run(self.hash, password)

    async def check_password(self, password: str, password_hash: str | None) -> PasswordCheck:
        """`check` in the executor, within the bound on pending work."""
        return await self._run(self.check, password, password_hash)

    def refuse_if_full(self) -> None:
        """`Overloaded` when no check could start now: a caller about to do work for a check
        (database and throttle reads) learns it first, and answers in a millisecond."""
        if self.pending >= self.max_pending:
            raise Overloaded("Too many sign-ins in progress, retry shortly")

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        self.refuse_if_full()
        self.pending += 1  # on the loop thread only: no lock needed
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, function,
                                                                     *args)
        finally:
            self.pending -= 1


@dataclass(frozen=True)
class TokenClaims:
    """The verified claims of an access or refresh token."""

    user_id: int
    session_id: str
    token_id: str
    token_type: str
    expires_at: int


class TokenService:
    """Issues and verifies HS256 JWTs: short-lived access tokens and rotating refresh tokens."""

    VERIFIED_CACHE_SIZE = 8192

    def __init__(self, config: Config) -> None:
        self._secret = config.jwt_secret
        self.access_ttl = config.access_token_ttl
        self.refresh_ttl = config.refresh_token_ttl
        # Tokens whose signature and claims were checked, by (token, type): a client sends the
        # same access token with every request, and decoding it again cost a tenth of a cached
        # read (bench/api.py). Expiry is still checked on each use; only valid tokens enter.
        self._verified: OrderedDict[tuple[str, str], TokenClaims] = OrderedDict()

    def _encode(self, user_id: int, session_id: str, token_type: str, ttl: int,
                token_id: str | None = None) -> tuple[str, TokenClaims]:
        now = int(time.time())
        claims = TokenClaims(user_id, session_id, token_id or uuid.uuid4().hex, token_type, now + ttl)
        payload: dict[str, Any] = {
            "iss": JWT_ISSUER, "sub": str(user_id), "sid": session_id, "jti": claims.token_id,
            "typ": token_type, "iat": now, "exp": claims.expires_at,
        }
        return jwt.encode(payload, self._secret, algorithm=JWT_ALGORITHM), claims

    def issue_access(self, user_id: int, session_id: str) -> tuple[str, TokenClaims]:
        return self._encode(user_id, session_id, "access", self.access_ttl)

    def issue_refresh(self, user_id: int, session_id: str, token_id: str) -> tuple[str, TokenClaims]:
        return self._encode(user_id, session_id, "refresh", self.refresh_ttl, token_id)

    def verify(self, token: str, token_type: str) -> TokenClaims:
        """Decode and check signature, expiry, issuer and type; Unauthorized otherwise."""
        key = (token, token_type)
        claims = self._verified.get(key)
        if claims is not None:
            if claims.expires_at > time.time():  # PyJWT's rule: expired once exp <= now
                self._verified.move_to_end(key)
                return claims
            del self._verified[key]
            raise Unauthorized("Token expired")
        claims = self._decode(token, token_type)
        self._verified[key] = claims
        if len(self._verified) > self.VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return claims

    def _decode(self, token: str, token_type: str) -> TokenClaims:
        try:
            payload = jwt.decode(
                token, self._secret, algorithms=[JWT_ALGORITHM], issuer=JWT_ISSUER,
                options={"require": ["exp", "iat", "sub", "jti", "sid", "typ"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("Token expired") from None
        except jwt.PyJWTError:
            raise Unauthorized("Invalid token") from None
        if payload.get("typ") != token_type:
            raise Unauthorized("Invalid token type")
        try:
            user_id = int(payload["sub"])
        except (TypeError, ValueError):
            raise Unauthorized("Invalid token") from None
        return TokenClaims(user_id, str(payload["sid"]), str(payload["jti"]), token_type,
                           int(payload["exp"]))

    def csrf_token(self, session_id: str) -> str:
        """The CSRF token bound to a refresh session (double-submit for the cookie path)."""
        return hmac.new(self._secret.encode(), f"csrf:{session_id}".encode(), "sha256").hexdigest()


STREAM_KEY_PREFIX = "live_"


@dataclass(frozen=True)
class EncryptedKey:
    """A stream key at rest: AES-GCM ciphertext (nonce first), its key id, its lookup digest."""

    key_id: str
    ciphertext: bytes
    digest: bytes


class StreamKeyCipher:
    """Encrypts stream keys (AES-256-GCM, rotatable key ids) and digests them for lookup."""

    def __init__(self, encryption_keys: str, lookup_secret: str) -> None:
        keys = parse_encryption_keys(encryption_keys)
        self.current_key_id = keys[0][0]
        self._keys = {key_id: AESGCM(key) for key_id, key in keys}
        self._lookup_secret = lookup_secret.encode()

    @staticmethod
    def new_key(user_id: int) -> str:
        """A fresh stream key: `live_<user id>_<256 random bits>`."""
        return f"{STREAM_KEY_PREFIX}{user_id}_{secrets.token_urlsafe(32)}"

    def digest(self, stream_key: str) -> bytes:
        return hmac.new(self._lookup_secret, stream_key.encode(), "sha256").digest()

    def matches(self, stream_key: str, digest: bytes) -> bool:
        """Constant-time check that a presented key has this digest."""
        return hmac.compare_digest(self.digest(stream_key), digest)

    def encrypt(self, stream_key: str, user_id: int) -> EncryptedKey:
        nonce = secrets.token_bytes(12)
        aad = f"sf-stream-key:{user_id}".encode()
        ciphertext = self._keys[self.current_key_id].encrypt(nonce, stream_key.encode(), aad)
        return EncryptedKey(self.current_key_id, nonce + ciphertext, self.digest(stream_key))

    def decrypt(self, key_id: str, blob: bytes, user_id: int) -> str:
        cipher = self._keys.get(key_id)
        if cipher is None:
            raise KeyError(f"stream key encryption key {key_id!r} is not configured")
        aad = f"sf-stream-key:{user_id}".encode()
        return cipher.decrypt(blob[:12], blob[12:], aad).decode()


@dataclass(frozen=True)
class SealedEmail:
    """An e-mail address at rest: AES-GCM ciphertext (nonce first), its key id, and the keyed
    hash of the normalised address that login and uniqueness look it up by."""

    key_id: str
    ciphertext: bytes
    digest: bytes


class EmailCipher:
    """Encrypts e-mail addresses with the stream keys' key ring (SF_STREAM_KEY_ENCRYPTION_KEYS:
    the first key encrypts, all decrypt, `sf keys rotate` re-encrypts) and digests them for
    lookup with a key derived from SF_STREAM_KEY_LOOKUP_SECRET for this purpose alone.

    The ciphertext is bound to its account and column (`purpose`) through the associated data,
    so a sealed address copied onto another row or column does not open.
    """

    LOOKUP_PURPOSE = b"sf e-mail lookup v1"

    @classmethod
    def of(cls, config: Config) -> EmailCipher:
        """The cipher of a node's settings."""
        return cls(config.stream_key_encryption_keys, config.stream_key_lookup_secret)

    def __init__(self, encryption_keys: str, lookup_secret: str) -> None:
        keys = parse_encryption_keys(encryption_keys)
        self.current_key_id = keys[0][0]
        self._keys = {key_id: AESGCM(key) for key_id, key in keys}
        self._lookup_key = hmac.new(lookup_secret.encode(), self.LOOKUP_PURPOSE,
                                    hashlib.sha256).digest()

    @staticmethod
    def normalise(email: str) -> str:
        """The form addresses are compared in: lower case (as the old `lower(email)` index)."""
        return email.lower()

    def digest(self, email: str) -> bytes:
        """The keyed hash of a normalised address (login lookup, the unique index)."""
        return hmac.new(self._lookup_key, self.normalise(email).encode(), "sha256").digest()

    @staticmethod
    def _aad(user_id: int, purpose: str) -> bytes:
        return f"sf-email:{purpose}:{user_id}".encode()

    def encrypt(self, email: str, user_id: int, purpose: str = "email") -> SealedEmail:
        nonce = secrets.token_bytes(12)
        ciphertext = self._keys[self.current_key_id].encrypt(
            nonce, email.encode(), self._aad(user_id, purpose))
        return SealedEmail(self.current_key_id, nonce + ciphertext, self.digest(email))

    def decrypt(self, key_id: str, blob: bytes, user_id: int, purpose: str = "email") -> str:
        return self.open_bytes(key_id, blob, user_id, purpose).decode()

    def seal_bytes(self, data: bytes, user_id: int, purpose: str) -> tuple[str, bytes]:
        """Any bytes holding an address (a queued mail), sealed like an address: (key id,
        nonce + ciphertext)."""
        nonce = secrets.token_bytes(12)
        return self.current_key_id, nonce + self._keys[self.current_key_id].encrypt(
            nonce, data, self._aad(user_id, purpose))

    def open_bytes(self, key_id: str, blob: bytes, user_id: int, purpose: str) -> bytes:
        cipher = self._keys.get(key_id)
        if cipher is None:
            raise KeyError(f"e-mail encryption key {key_id!r} is not configured")
        return cipher.decrypt(blob[:12], blob[12:], self._aad(user_id, purpose))


class BackupDecryptionError(ValueError):
    """A backup archive that does not open: wrong key, not an archive, truncated or altered."""


class BackupCipher:
    """Backup archives: the dump streamed through AES-256-GCM in chunks, memory bounded.

    Layout: `MAGIC`, a key fingerprint (8 bytes, so a wrong key is told apart from damage), a
    random 16-byte file id, then records of `length (4 bytes, big endian) | ciphertext`. Each
    file has its own key (HKDF of SF_BACKUP_ENCRYPTION_KEY and the file id), each chunk the
    nonce of its index, and the associated data of every chunk holds the header, its index and
    whether it is the last: a reordered, dropped, appended, truncated or altered chunk, or a
    chunk from another file, fails authentication.
    """

    MAGIC = b"SFBACKUP1\n"
    CHUNK = 1 << 20  # plaintext bytes per chunk
    _TAG = 16

    def __init__(self, key_spec: str) -> None:
        key = parse_backup_key(key_spec)
        self._key = key
        self.fingerprint = hmac.new(key, b"sf backup key fingerprint", "sha256").digest()[:8]

    def _file_cipher(self, file_id: bytes) -> AESGCM:
        return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=file_id,
                           info=b"sf backup file key").derive(self._key))

    @staticmethod
    def _nonce(index: int) -> bytes:
        return index.to_bytes(12, "big")

    @staticmethod
    def _aad(header: bytes, index: int, final: bool) -> bytes:
        return header + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")

    def encrypt_stream(self, source: IO[bytes], sink: IO[bytes]) -> None:
        """Read `source` to its end and write the archive of it to `sink`."""
        file_id = secrets.token_bytes(16)
        header = self.MAGIC + self.fingerprint + file_id
        cipher = self._file_cipher(file_id)
        sink.write(header)
        index = 0
        chunk = _read_full(source, self.CHUNK)
        while True:
            following = _read_full(source, self.CHUNK) if len(chunk) == self.CHUNK else b""
            final = not following
            sealed = cipher.encrypt(self._nonce(index), chunk, self._aad(header, index, final))
            sink.write(len(sealed).to_bytes(4, "big") + sealed)
            if final:
                return
            chunk, index = following, index + 1

    def decrypt_chunks(self, source: IO[bytes]) -> Iterator[bytes]:
        """The plaintext of an archive, chunk by chunk, each authenticated before it is given;
        BackupDecryptionError at the first thing wrong (a chunk already given stays given:
        check a whole archive with `verify` before acting on it)."""
        header = _read_full(source, len(self.MAGIC) + 8 + 16)
        if len(header) < len(self.MAGIC) or header[:len(self.MAGIC)] != self.MAGIC:
            raise BackupDecryptionError("not an encrypted sf backup (its header is missing)")
        if len(header) < len(self.MAGIC) + 24:
            raise BackupDecryptionError("the archive is truncated (in its header)")
        if not hmac.compare_digest(header[len(self.MAGIC):len(self.MAGIC) + 8], self.fingerprint):
            raise BackupDecryptionError(
                "the archive was written with another SF_BACKUP_ENCRYPTION_KEY")
        cipher = self._file_cipher(header[-16:])
        index = 0
        while True:
            prefix = _read_full(source, 4)
            if len(prefix) < 4:
                raise BackupDecryptionError(
                    f"the archive is truncated (it ends before its last chunk, after {index})")
            length = int.from_bytes(prefix, "big")
            if not self._TAG <= length <= self.CHUNK + self._TAG:
                raise BackupDecryptionError(f"chunk {index} of the archive is damaged")
            sealed = _read_full(source, length)
            if len(sealed) < length:
                raise BackupDecryptionError(f"the archive is truncated (in chunk {index})")
            for final in (False, True):
                try:
                    plain = cipher.decrypt(self._nonce(index), sealed,
                                           self._aad(header, index, final))
                except InvalidTag:
                    continue
                yield plain
                if final:
                    if source.read(1):
                        raise BackupDecryptionError("the archive has data after its last chunk")
                    return
                break
            else:
                raise BackupDecryptionError(
                    f"chunk {index} of the archive fails authentication: it was altered, "
                    "reordered or comes from another file")
            index += 1

    def verify(self, source: IO[bytes]) -> int:
        """Authenticate a whole archive without keeping it; the plaintext size."""
        return sum(len(chunk) for chunk in self.decrypt_chunks(source))


def _read_full(source: IO[bytes], size: int) -> bytes:
    """Up to `size` bytes, fewer only at the end of `source` (pipes give short reads)."""
    parts: list[bytes] = []
    wanted = size
    while wanted:
        part = source.read(wanted)
        if not part:
            break
        parts.append(part)
        wanted -= len(part)
    return b"".join(parts)


def new_session_id() -> str:
    return uuid.uuid4().hex


_VIEWER_NONCE = re.compile(r"[A-Za-z0-9_-]{22}")


class ViewerIdSigner:
    """Anonymous viewer ids the server issued: the `sf_vid` cookie is `<nonce>.<tag>`, the tag
    an HMAC-SHA256 of the nonce under a key derived from SF_INTERNAL_SECRET for this purpose
    alone. A client can keep an id it was given (its tabs count once) but cannot make new
    ones: a missing, forged or altered cookie gets a fresh id instead."""

    PURPOSE = b"sf anonymous viewer id v1"

    def __init__(self, secret: str) -> None:
        self._key = hmac.new(secret.encode(), self.PURPOSE, hashlib.sha256).digest()

    def _tag(self, nonce: str) -> str:
        digest = hmac.new(self._key, nonce.encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def issue(self) -> tuple[str, str]:
        """A new (cookie value, viewer id)."""
        nonce = secrets.token_urlsafe(16)
        return f"{nonce}.{self._tag(nonce)}", f"a{nonce}"

    def verify(self, cookie: str) -> str | None:
        """The viewer id of a cookie this server issued, or None."""
        nonce, dot, tag = cookie.partition(".")
        if not dot or not _VIEWER_NONCE.fullmatch(nonce) or len(tag) != 22:
            return None
        if not hmac.compare_digest(tag.encode(), self._tag(nonce).encode()):
            return None
        return f"a{nonce}"
