"""`sf backup` and `sf restore FILE`: the database in PostgreSQL's custom dump format,
encrypted, with a SHA-256 checksum beside each archive, the newest SF_BACKUP_KEEP kept in
SF_BACKUP_DIR.

The dump holds every user's personal data, so it never reaches the disk in clear: pg_dump's
output is streamed through `BackupCipher` (AES-256-GCM in 1 MiB chunks, a key of the file's own
derived from SF_BACKUP_ENCRYPTION_KEY; memory stays bounded whatever the size) into the archive,
and a restore streams it back into pg_restore. A restore first authenticates the whole archive
(wrong key, truncation, reordering or any altered byte is refused with the reason) before it
touches the database. Both commands write an audit line (sf/ops/audit.py).

PostgreSQL's own pg_dump and pg_restore do the work. The password never reaches their command
line, their environment or a log: it goes into a passfile (mode 600) in a private temporary
directory that lives as long as the program runs.

Restoring replaces the data of the configured database with the backup's, atomically:
`pg_restore --clean --if-exists --single-transaction --exit-on-error`, so a failure half way
leaves the database as it was. A database that already holds tables is only overwritten with
`--force`; tables the backup does not know (a newer migration's) are refused rather than left
beside restored data they may not fit. Then every session in Redis is ended: the restored id
sequences hand out again the ids of accounts created after the backup.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import redis

from sf.config import Config
from sf.db.backups import BACKUP_NAME, checksum_path, file_sha256, recorded_sha256
from sf.node.localservices import ServiceError, postgres_program
from sf.ops import erasure_replay
from sf.ops.audit import audited
from sf.redis_client import open_sync_redis
from sf.security import BackupCipher, BackupDecryptionError

log = logging.getLogger("sf.backup")

# Sessions in Redis (sf/services/sessions.py): cleared after a restore, see `clear_sessions`.
SESSION_KEY_PATTERNS = ("sf:sess:*", "sf:usess:*")
CONNECT_TIMEOUT = "10"  # seconds; a database that is down fails the command, not hangs it
# One table line of `pg_restore --list`: "<id>; <catalog oid> <oid> TABLE <schema> <name> <owner>"
_TOC_TABLE = re.compile(r"^\d+; \d+ \d+ TABLE (\S+) (\S+)(?: |$)")


class BackupError(RuntimeError):
    """A backup or restore could not be done; the message says why (and never a password)."""


@dataclass(frozen=True)
class Target:
    """How PostgreSQL's tools reach the configured database: its URL without the password,
    and the password on its own (for the passfile)."""

    url: str
    password: str | None
    database: str

    @classmethod
    def of(cls, database_url: str) -> Target:
        parts = urlsplit(database_url)
        userinfo, at, hostport = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}@{hostport}" if at and user else hostport
        url = urlunsplit(("postgresql", netloc, parts.path, parts.query, ""))
        password = unquote(parts.password) if parts.password is not None else None
        return cls(url=url, password=password, database=unquote(parts.path.lstrip("/")))

    def redact(self, text: str) -> str:
        """Tool output with the password masked, should a tool ever echo it."""
        return text.replace(self.password, "[REDACTED]") if self.password else text


def _program(name: str) -> str:
    try:
        return postgres_program(name)
    except ServiceError as exc:
        raise BackupError(str(exc)) from None


def _run_tool(args: list[str], target: Target | None, what: str, *,
              feed: Callable[[IO[bytes]], None] | None = None,
              drain: Callable[[IO[bytes]], None] | None = None) -> str:
    """Run a PostgreSQL program, the URL's password (if any) in a passfile; its stdout, or
    BackupError with its stderr. Without a password in the URL, libpq's own ways apply
    (~/.pgpass, PGPASSFILE, PGPASSWORD, peer or certificate authentication).

    `feed` writes the program's standard input (an archive being decrypted); `drain` reads its
    standard output (a dump being encrypted). Should either fail, the program is killed before
    it could finish (pg_restore's single transaction is then rolled back) and the error raised.
    """
    env = dict(os.environ)
    env.setdefault("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT)
    with tempfile.TemporaryDirectory(prefix="sf-pg-") as private:  # mode 700
        if target is not None and target.password is not None:
            env.pop("PGPASSWORD", None)  # it would win over the passfile
            passfile = Path(private) / "pgpass"
            escaped = target.password.replace("\\", "\\\\").replace(":", "\\:")
            descriptor = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(f"*:*:*:*:{escaped}\n")
            env["PGPASSFILE"] = str(passfile)
        # Output and errors into files of the private directory: a program writing much of
        # either never blocks on a pipe nobody reads while this thread feeds or drains it.
        with open(Path(private) / "stdout", "w+b") as out, \
                open(Path(private) / "stderr", "w+b") as err:
            process = subprocess.Popen(
                args, env=env, stderr=err,
                stdin=subprocess.PIPE if feed else subprocess.DEVNULL,
                stdout=subprocess.PIPE if drain else out)
            try:
                if feed is not None:
                    assert process.stdin is not None
                    with process.stdin:
                        feed(process.stdin)
                if drain is not None:
                    assert process.stdout is not None
                    with process.stdout:
                        drain(process.stdout)
            except BaseException:
                process.kill()
                process.wait()
                raise
            returncode = process.wait()
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if returncode != 0:
        detail = stderr.strip() or f"exit status {returncode}"
        if target is not None:
            detail = target.redact(detail)
        raise BackupError(f"{what} failed: {detail}")
    return stdout


def backup_cipher(config: Config) -> BackupCipher:
    """The cipher of SF_BACKUP_ENCRYPTION_KEY; BackupError when none is configured."""
    if not config.backup_encryption_key:
        raise BackupError("no backup encryption key: set SF_BACKUP_ENCRYPTION_KEY or create "
                          f"{config.secrets_dir / 'backup_encryption_key'} (`sf secrets init`)")
    return BackupCipher(config.backup_encryption_key)


def _feed_decrypted(cipher: BackupCipher, archive: Path) -> Callable[[IO[bytes]], None]:
    """Writes the plaintext of `archive` into a program's input, chunk by chunk."""
    def feed(sink: IO[bytes]) -> None:
        with open(archive, "rb") as source:
            for chunk in cipher.decrypt_chunks(source):
                try:
                    sink.write(chunk)
                except BrokenPipeError:
                    return  # the program stopped reading: its exit status tells why
    return feed


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def backup_name(moment: datetime) -> str:
    """The file name of a backup taken at `moment` (UTC, to the millisecond: names sort by time)."""
    moment = moment.astimezone(UTC)
    return f"sf-{moment:%Y%m%dT%H%M%S}.{moment.microsecond // 1000:03d}Z.dump"


def list_backups(directory: Path) -> list[Path]:
    """The dumps in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.iterdir() if BACKUP_NAME.match(path.name))


def take_backup(config: Config) -> dict[str, Any]:
    """Dump the database, encrypted, into SF_BACKUP_DIR, read the archive back, write its
    checksum, then drop the backups beyond SF_BACKUP_KEEP. What was done, for the operator."""
    target = Target.of(config.database_url)
    cipher = backup_cipher(config)
    directory = config.backup_dir
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # dumps hold password hashes and encrypted stream keys
    started = time.monotonic()
    dump = directory / backup_name(datetime.now(UTC))
    partial = directory / f".{dump.name}.partial"
    try:
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BackupError(f"another backup is being written to {partial}") from None
    os.close(descriptor)
    try:
        if dump.exists():
            raise BackupError(f"{dump} already exists")
        with open(partial, "wb") as archive:
            _run_tool([_program("pg_dump"), "--format=custom", f"--dbname={target.url}"],
                      target, "pg_dump",
                      drain=lambda dump: cipher.encrypt_stream(dump, archive))
        # Decrypt and read every block back (a truncated or garbled archive fails here, not at
        # restore time).
        _run_tool([_program("pg_restore"), "--file=/dev/null"], None,
                  "reading the new dump back", feed=_feed_decrypted(cipher, partial))
        digest = file_sha256(partial)
        _fsync(partial)
        os.replace(partial, dump)
        checksum = checksum_path(dump)
        pending = checksum.with_name(f".{checksum.name}.partial")
        descriptor = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"{digest}  {dump.name}\n")  # `sha256sum -c` reads this
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(pending, checksum)
        _fsync(directory)
    finally:
        partial.unlink(missing_ok=True)
    removed = prune_backups(directory, config.backup_keep)
    result = {"backup": str(dump), "bytes": dump.stat().st_size, "sha256": digest,
              "encrypted": True, "database": target.database,
              "seconds": round(time.monotonic() - started, 3),
              "removed": [str(path) for path in removed]}
    log.info("backup written", extra={"backup": dump.name, "bytes": result["bytes"],
                                      "seconds": result["seconds"], "removed": len(removed)})
    return result


def prune_backups(directory: Path, keep: int) -> list[Path]:
    """Remove every dump (and its checksum) older than the newest `keep` complete ones; the
    files removed. A dump without its checksum file never counts towards `keep`."""
    complete = [dump for dump in list_backups(directory) if checksum_path(dump).exists()]
    if len(complete) <= keep:
        return []
    oldest_kept = complete[-keep].name
    removed = []
    for dump in list_backups(directory):
        if dump.name < oldest_kept:
            for path in (dump, checksum_path(dump)):
                if path.exists():
                    path.unlink()
                    removed.append(path)
    return removed


def resolve_backup(config: Config, file: str) -> Path:
    """The dump `file` names: a path, or a bare file name in SF_BACKUP_DIR."""
    path = Path(file)
    if not path.exists() and path.name == file and (config.backup_dir / file).exists():
        path = config.backup_dir / file
    if not path.is_file():
        raise BackupError(f"{file}: no such backup file")
    return path


def verify_backup(dump: Path) -> str:
    """The dump's SHA-256 when it matches the checksum written beside it; BackupError if not."""
    expected = recorded_sha256(dump)
    if expected is None:
        raise BackupError(f"{dump}: its checksum file {checksum_path(dump).name} is missing or "
                          "malformed, so the dump cannot be verified; nothing was restored")
    actual = file_sha256(dump)
    if actual != expected:
        raise BackupError(f"{dump} does not match its checksum (expected sha256 {expected}, "
                          f"the file has {actual}): it is damaged or was changed; "
                          "nothing was restored")
    return actual


def authenticate_backup(cipher: BackupCipher, dump: Path) -> None:
    """Decrypt the whole archive without keeping it; BackupError saying what is wrong (wrong
    key, not an archive, truncated, altered) if it does not open whole."""
    try:
        with open(dump, "rb") as source:
            cipher.verify(source)
    except BackupDecryptionError as exc:
        raise BackupError(f"{dump}: {exc}; nothing was restored") from None


def dump_tables(dump: Path, cipher: BackupCipher) -> set[str]:
    """The public tables an archive holds, from its table of contents."""
    listing = _run_tool([_program("pg_restore"), "--list"], None,
                        f"reading the table of contents of {dump}",
                        feed=_feed_decrypted(cipher, dump))
    return {match.group(2) for line in listing.splitlines()
            if (match := _TOC_TABLE.match(line)) and match.group(1) == "public"}


async def database_tables(database_url: str) -> set[str]:
    """The tables in the public schema of the database."""
    try:
        connection = await asyncpg.connect(database_url, timeout=float(CONNECT_TIMEOUT))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise BackupError(f"cannot connect to the database: {type(exc).__name__}: "
                          f"{Target.of(database_url).redact(str(exc))}") from None
    try:
        rows = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await connection.close()
    return {row["tablename"] for row in rows}


def restore_backup(config: Config, file: str, force: bool) -> dict[str, Any]:
    """Verify an archive's checksum and authenticate all of it, then replace the configured
    database's data with it in one transaction. What was done, for the operator."""
    target = Target.of(config.database_url)
    cipher = backup_cipher(config)
    started = time.monotonic()
    dump = resolve_backup(config, file)
    digest = verify_backup(dump)
    authenticate_backup(cipher, dump)
    in_dump = dump_tables(dump, cipher)
    if not in_dump:
        raise BackupError(f"{dump} holds no tables of the public schema; nothing was restored")
    existing = asyncio.run(database_tables(config.database_url))
    if existing and not force:
        raise BackupError(
            f"database {target.database!r} already holds {len(existing)} table(s); restoring "
            "replaces all their data with the backup's. Stop the API nodes and run again with "
            "--force (nothing was changed)")
    unknown = sorted(existing - in_dump)
    if unknown:
        raise BackupError(
            f"table(s) {', '.join(unknown)} of database {target.database!r} are not in the "
            "backup and would survive the restore beside data they may not fit; drop them or "
            "restore into an empty database (nothing was changed)")
    erasures = erasure_replay.read_ledger(config)  # before the restore replaces the ledger
    try:
        _run_tool([_program("pg_restore"), "--clean", "--if-exists", "--single-transaction",
                   "--exit-on-error", "--no-owner", f"--dbname={target.url}"],
                  target, "pg_restore (the database was left as it was)",
                  feed=_feed_decrypted(cipher, dump))
    except BackupDecryptionError as exc:  # the file changed since it was authenticated
        raise BackupError(f"{dump}: {exc}; the restore was rolled back") from None
    try:
        cleared = clear_sessions(config.redis_url)
    except redis.RedisError as exc:
        raise BackupError(
            f"the database was restored from {dump}, but the sessions in Redis could not be "
            f"cleared ({type(exc).__name__}): clear them before starting the API nodes "
            "(see the README, Backups)") from None
    try:
        replayed = erasure_replay.replay(config, erasures)
    except erasure_replay.ReplayError as exc:
        raise BackupError(f"the database was restored from {dump}, but {exc}") from None
    result = {"restored": str(dump), "sha256": digest, "database": target.database,
              "tables": len(in_dump), "sessions_cleared": cleared,
              "erasures_replayed": replayed,
              "seconds": round(time.monotonic() - started, 3)}
    log.info("backup restored", extra={"backup": dump.name, "tables": len(in_dump),
                                       "seconds": result["seconds"]})
    return result


def clear_sessions(redis_url: str) -> int:
    """End every session (everyone signs in again); how many keys were removed.

    A restore rewinds the id sequences: ids handed out after the backup are handed out again,
    and a surviving session of an account the restore removed would speak for the new
    account that gets its id.
    """
    client = open_sync_redis(redis_url, socket_connect_timeout=5, socket_timeout=30)
    removed = 0
    try:
        for pattern in SESSION_KEY_PATTERNS:
            batch: list[bytes] = []
            for key in client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    removed += client.unlink(*batch)
                    batch = []
            if batch:
                removed += client.unlink(*batch)
    finally:
        client.close()
    return removed


# --- the commands ----------------------------------------------------------------------------

def add_parsers(sub: Any) -> None:
    sub.add_parser("backup", help="dump the database into SF_BACKUP_DIR (keeps SF_BACKUP_KEEP)")
    restore = sub.add_parser("restore", help="verify a backup's checksum and restore it into "
                                             "the configured database")
    restore.add_argument("file", help="a dump written by `sf backup` (path, or name in SF_BACKUP_DIR)")
    restore.add_argument("--force", action="store_true",
                         help="replace the data of a database that already holds tables")


def cmd_backup(config: Config, args: argparse.Namespace) -> int:
    try:
        with audited(config, "backup", details={"database": Target.of(config.database_url).database}
                     ) as details:
            result = take_backup(config)
            details.update(file=Path(result["backup"]).name, sha256=result["sha256"])
    except (BackupError, OSError) as exc:
        print(f"sf backup: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def cmd_restore(config: Config, args: argparse.Namespace) -> int:
    try:
        with audited(config, "restore", details={
                "database": Target.of(config.database_url).database, "file": args.file,
                "force": args.force}) as details:
            result = restore_backup(config, args.file, args.force)
            details.update(sha256=result["sha256"], tables=result["tables"])
    except (BackupError, OSError) as exc:
        print(f"sf restore: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0
