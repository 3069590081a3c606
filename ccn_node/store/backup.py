"""Online backups, their verification and encryption, rotation, and restore into a stopped node.

Why this shape (store/DESIGN.md has the long form):

- The copy uses SQLite's online backup API from a connection that holds one read
  transaction for the whole copy. In WAL mode a reader never blocks the writer, and the
  held snapshot keeps the copy consistent: writes made meanwhile go to the WAL and do not
  restart the backup. Copying in steps with a short pause between them bounds the I/O burst
  so API latency stays flat.
- A backup counts only after it was re-opened and checked (``integrity_check`` and the
  ledger audit). Rotation runs after that check, so a bad new file can never push out the
  last good one.
- Encryption (AES-256-GCM, per-file key derived with HKDF from the operator's key) is
  chunked (1 MiB) so a large database never has to fit in memory. The header (magic,
  version, chunk size, salt, key id) is authenticated as every chunk's associated data, the
  chunk counter and a last-chunk flag are in the nonce, so a flipped byte, a reordered or a
  dropped chunk, a truncated file and a wrong key are all refused, each with its own message.
- Restore never touches the live file before the candidate passed every check; the
  replaced database is kept as ``<db>.pre-restore``. A lock file held by the running node
  (``<db>.lock``, ``flock``) tells restore that the node is up.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import apsw
import msgspec

from ccn_node.store.database import clean_close_mark, fsync_path
from ccn_node.store.schema import SCHEMA_VERSION

log = logging.getLogger(__name__)

MAGIC = b"CCNBKP\x00\x01"  # 8 bytes: name and a zero byte, then the major format
FORMAT_VERSION = 1
CHUNK = 1 << 20
_HEADER = struct.Struct(">8sBI16s8s")  # magic, version, chunk size, salt, key id
TAG = 16
SIDECAR_SUFFIX = ".json"
KEY_BYTES = 32


class BackupError(Exception):
    """A backup or restore step failed; the message names the file and what failed."""


# -- locking ---------------------------------------------------------------------------


class DatabaseLock:
    """An exclusive ``flock`` on ``<db>.lock``: held by a running node and by restore.

    The kernel drops it when the process dies, so a crashed node never leaves a stale lock.
    """

    def __init__(self, db_path: Path) -> None:
        self.path = Path(str(db_path) + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise BackupError naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise BackupError(f"{self.path}: held by a running ccn-node (pid {holder}); stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DatabaseLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def dir_lock(directory: Path) -> Iterator[None]:
    """Serialise backup writers (the node's loop and `ccn-node backup`) on one directory."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- keys and encryption ---------------------------------------------------------------


def parse_key(data: bytes) -> bytes:
    """A 32-byte key from a key file: raw bytes, 64 hex digits, or base64 (standard or URL-safe)."""
    if len(data) == KEY_BYTES:
        return data
    text = data.strip()
    with contextlib.suppress(ValueError):
        if len(text) == 2 * KEY_BYTES:
            return binascii.unhexlify(text)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        with contextlib.suppress(ValueError, binascii.Error):
            raw = decode(text)
            if len(raw) == KEY_BYTES:
                return raw
    raise ValueError(f"expected {KEY_BYTES} bytes, as raw bytes, 64 hex digits or base64")


def new_key_text() -> bytes:
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n"


def key_id(key: bytes) -> bytes:
    """8 bytes naming the key in the header, so a wrong key is told apart from damage."""
    return hashlib.sha256(b"ccn-backup key id\n" + key).digest()[:8]


def _file_key(key: bytes, salt: bytes) -> Any:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"ccn-backup v1").derive(key)
    return AESGCM(derived)


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def is_encrypted(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def encrypt_file(src: Path, dst: Path, key: bytes) -> None:
    """Write ``src`` encrypted to ``dst`` in chunks; fsyncs ``dst``."""
    salt = secrets.token_bytes(16)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, CHUNK, salt, key_id(key))
    aead = _file_key(key, salt)
    prefix = salt[:7]  # the derived key is per file, so a fixed prefix plus counter never repeats
    with open(src, "rb") as inp, open(dst, "wb") as out:
        out.write(header)
        counter = 0
        chunk = inp.read(CHUNK)
        while True:
            nxt = inp.read(CHUNK)
            last = not nxt
            out.write(aead.encrypt(_nonce(prefix, counter, last), chunk, header))
            if last:
                break
            chunk, counter = nxt, counter + 1
        out.flush()
        os.fsync(out.fileno())


def decrypt_file(src: Path, dst: Path | None, key: bytes) -> str:
    """Decrypt ``src`` into ``dst`` (None: only authenticate); returns the plaintext's sha256.

    Raises BackupError: not an encrypted backup, unknown format version, wrong key, or a
    chunk that fails authentication (damaged, truncated or reordered).
    """
    from cryptography.exceptions import InvalidTag

    digest = hashlib.sha256()
    with open(src, "rb") as inp:
        header = inp.read(_HEADER.size)
        if len(header) != _HEADER.size or header[: len(MAGIC)] != MAGIC:
            raise BackupError(f"{src}: not an encrypted ccn-node backup (bad magic)")
        _, version, chunk_size, salt, kid = _HEADER.unpack(header)
        if version != FORMAT_VERSION:
            raise BackupError(f"{src}: encrypted backup format version {version} is unknown (this node reads 1)")
        if not 0 < chunk_size <= 64 << 20:
            raise BackupError(f"{src}: encrypted backup header is damaged (chunk size {chunk_size})")
        if kid != key_id(key):
            raise BackupError(
                f"{src}: wrong key: the file was encrypted with key id {kid.hex()},"
                f" the key given has key id {key_id(key).hex()}"
            )
        aead = _file_key(key, salt)
        prefix = salt[:7]
        out = open(dst, "wb") if dst is not None else None  # noqa: SIM115 - closed below
        try:
            counter = 0
            block = inp.read(chunk_size + TAG)
            while True:
                nxt = inp.read(chunk_size + TAG)
                last = not nxt
                try:
                    plain = aead.decrypt(_nonce(prefix, counter, last), block, header)
                except InvalidTag:
                    raise BackupError(
                        f"{src}: authentication failed at chunk {counter}"
                        f" (offset {_HEADER.size + counter * (chunk_size + TAG)}):"
                        " the file is damaged, truncated or was altered"
                    ) from None
                digest.update(plain)
                if out is not None:
                    out.write(plain)
                if last:
                    break
                block, counter = nxt, counter + 1
            if out is not None:
                out.flush()
                os.fsync(out.fileno())
        finally:
            if out is not None:
                out.close()
    return digest.hexdigest()


# -- copy, verify ----------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def online_copy(
    src_db: Path,
    dst: Path,
    *,
    step_pages: int = 1024,
    pause_s: float = 0.001,
    busy_timeout_ms: int = 5000,
    cancel: threading.Event | None = None,
) -> dict[str, float]:
    """Copy a live WAL database into ``dst`` (a standalone rollback-journal file).

    The source connection holds one read transaction across every step: the copy is the
    snapshot at its start, and concurrent writers neither block nor restart it.
    """
    if not src_db.exists():
        raise BackupError(f"{src_db}: database does not exist")
    t0 = time.perf_counter()
    src = apsw.Connection(str(src_db), flags=apsw.SQLITE_OPEN_READWRITE)
    src.setbusytimeout(busy_timeout_ms)
    dest = apsw.Connection(str(dst))
    steps = 0
    try:
        src.execute("BEGIN")
        src.execute("SELECT count(*) FROM sqlite_schema").fetchall()  # start the read transaction now
        with dest.backup("main", src, "main") as b:
            while not b.done:
                if cancel is not None and cancel.is_set():
                    raise BackupError(f"{src_db}: backup cancelled (the node is stopping)")
                b.step(step_pages)
                steps += 1
                if pause_s and not b.done:
                    time.sleep(pause_s)
        src.execute("COMMIT")
        dest.execute("PRAGMA journal_mode = DELETE")  # a backup is one self-contained file
    except apsw.Error as exc:
        raise BackupError(f"{src_db}: online backup failed: {exc}") from exc
    finally:
        dest.close()
        src.close()
    return {"seconds": time.perf_counter() - t0, "steps": float(steps)}


@dataclass
class Verification:
    """What a check of one database file found."""

    integrity: str
    audit: str
    applied_index: int
    command_index: int
    ledger_size: int
    ledger_root: str
    schema_version: int
    messages: int


def verify_database(path: Path, verifiers: Iterable[Any] | None = None, *, audit: bool = True) -> Verification:
    """``PRAGMA integrity_check``, then the ledger audit (tree, blocks, signatures) plus a
    check that every message row and its leaf agree; raise BackupError naming the failure."""
    try:
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.Error as exc:
        raise BackupError(f"{path}: cannot open as SQLite: {exc}") from exc
    try:
        try:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check(20)")]
        except apsw.Error as exc:
            raise BackupError(f"{path}: integrity_check failed: {exc}") from exc
        if rows != ["ok"]:
            raise BackupError(f"{path}: integrity_check failed: {'; '.join(map(str, rows))}")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            meta = conn.execute("SELECT value FROM meta WHERE key = 'applied_index'").fetchone()
            cmeta = conn.execute("SELECT value FROM meta WHERE key = 'command_index'").fetchone()
            messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        except apsw.Error as exc:
            raise BackupError(f"{path}: not a ccn-node database: {exc}") from exc
        if version > SCHEMA_VERSION:
            raise BackupError(f"{path}: schema version {version} is newer than this ccn-node ({SCHEMA_VERSION})")
        size, root = _ledger_head(conn)
        summary = "skipped"
        if audit:
            summary = _audit(conn, path, verifiers)
        return Verification(
            integrity="ok",
            audit=summary,
            applied_index=int(meta[0]) if meta else 0,
            command_index=int(cmeta[0]) if cmeta else (int(meta[0]) if meta else 0),
            ledger_size=size,
            ledger_root=root,
            schema_version=int(version),
            messages=int(messages),
        )
    finally:
        conn.close()


def _ledger_head(conn: apsw.Connection) -> tuple[int, str]:
    try:
        from ccn_node.ledger.tree_store import MerkleTree
    except ImportError:  # pragma: no cover - the ledger package is part of the node
        return 0, ""
    try:
        tree = MerkleTree(conn)
        return tree.size(), tree.root().hex()
    except (apsw.Error, ValueError) as exc:
        raise BackupError(f"ledger tables unreadable: {exc}") from exc


def _audit(conn: apsw.Connection, path: Path, verifiers: Iterable[Any] | None) -> str:
    try:
        from ccn_node.ledger.chain import audit
    except ImportError:  # pragma: no cover
        return "unavailable"
    check = _MessageLeafCheck(conn)
    try:
        report = audit(conn, list(verifiers or []), check_leaf=check)
    except (apsw.Error, ValueError, KeyError) as exc:
        raise BackupError(f"{path}: ledger audit could not run: {exc}") from exc
    if not report.ok:
        raise BackupError(f"{path}: ledger audit failed: {report.problem}")
    leftover = check.leftover()
    if leftover:
        raise BackupError(f"{path}: ledger audit failed: messages row {leftover}: no ledger leaf for it")
    return report.summary()


class _MessageLeafCheck:
    """Each ``msg.append`` leaf must have its message row with the same content hash.

    Rows and leaves are both in apply order, so one forward walk over ``messages`` by rowid
    pairs them; only an idempotent duplicate (a leaf without a new row) costs a lookup.
    """

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn
        self._rows = conn.cursor().execute("SELECT message_id, content_sha256 FROM messages ORDER BY rowid")
        self._next: tuple[str, str] | None = self._advance()

    def _advance(self) -> tuple[str, str] | None:
        row = next(self._rows, None)
        return None if row is None else (row[0], row[1])

    def __call__(self, index: int, kind: str, ref: str, leaf_bytes: bytes) -> str | None:
        if kind != "msg.append":
            return None
        try:
            content = msgspec.msgpack.decode(leaf_bytes).get("content", "")
        except (msgspec.DecodeError, AttributeError):
            return "leaf bytes are not a command"
        want = content.removeprefix("sha256:")
        if self._next is not None and self._next[0] == ref:
            have = self._next[1]
            self._next = self._advance()
        else:
            row = self.conn.execute("SELECT content_sha256 FROM messages WHERE message_id = ?", (ref,)).fetchone()
            if row is None:
                return f"messages row {ref} is missing"
            have = row[0]
        if have != want:
            return f"messages row {ref}: content_sha256 {have} != leaf's {want}"
        return None

    def leftover(self) -> str | None:
        return None if self._next is None else self._next[0]


# -- sidecar, listing, rotation --------------------------------------------------------


@dataclass
class BackupInfo:
    """The JSON sidecar next to each backup file."""

    file: str
    created_at: str
    created_unix: float
    applied_index: int
    ledger_size: int
    ledger_root: str
    sha256: str
    bytes: int
    encrypted: bool
    key_id: str | None
    node: str
    schema_version: int
    messages: int
    integrity: str
    audit: str
    copy_seconds: float
    verify_seconds: float
    format: int = 1
    command_index: int = -1  # journal position (log index of commands); -1: same as applied_index
    purged: list[dict[str, Any]] = field(default_factory=list)

    @property
    def journal_index(self) -> int:
        return self.applied_index if self.command_index < 0 else self.command_index

    @property
    def path(self) -> Path:
        return Path(self.file)

    def save(self) -> None:
        sidecar = Path(self.file + SIDECAR_SUFFIX)
        tmp = sidecar.with_name(sidecar.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, sidecar)

    @classmethod
    def load(cls, sidecar: Path) -> BackupInfo:
        data = json.loads(sidecar.read_text())
        known = {f for f in cls.__dataclass_fields__}
        info = cls(**{k: v for k, v in data.items() if k in known})
        info.file = str(sidecar.with_name(sidecar.name.removesuffix(SIDECAR_SUFFIX)))
        return info


def list_backups(directory: Path) -> list[BackupInfo]:
    """Verified backups in ``directory`` (those with a sidecar), oldest first."""
    if not directory.is_dir():
        return []
    out = []
    for sidecar in directory.glob("ccn-*" + SIDECAR_SUFFIX):
        try:
            info = BackupInfo.load(sidecar)
        except (ValueError, TypeError, OSError):
            log.warning("unreadable backup sidecar %s", sidecar)
            continue
        if info.path.exists():
            out.append(info)
    out.sort(key=lambda i: (i.created_unix, i.applied_index))
    return out


def rotate(directory: Path, keep: int) -> list[str]:
    """Delete the oldest verified backups beyond ``keep``; returns the files removed."""
    removed = []
    backups = list_backups(directory)
    for info in backups[: max(0, len(backups) - keep)]:
        for p in (info.path, Path(info.file + SIDECAR_SUFFIX)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        removed.append(info.file)
    return removed


def newest_age_s(directory: Path) -> float | None:
    backups = list_backups(directory)
    return None if not backups else max(0.0, time.time() - backups[-1].created_unix)


# -- create ----------------------------------------------------------------------------


def create_backup(
    db_path: Path,
    directory: Path,
    *,
    key: bytes | None = None,
    keep: int | None = 4,
    verifiers: Iterable[Any] | None = None,
    node_name: str = "",
    output: Path | None = None,
    step_pages: int = 1024,
    pause_s: float = 0.001,
    before_verify: Callable[[Path], None] | None = None,
    cancel: threading.Event | None = None,
) -> BackupInfo:
    """Copy, verify, (encrypt), publish, then rotate. Only reads the live database.

    ``output`` writes one named file instead (no rotation). ``before_verify`` lets a test
    damage the fresh copy to prove that a failed check keeps every older backup.
    """
    verifiers = list(verifiers or [])
    directory = directory if output is None else output.parent
    with dir_lock(directory):
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        created = time.time()
        tmp = directory / f".tmp-{stamp}-{secrets.token_hex(4)}.sqlite3"
        try:
            copy = online_copy(db_path, tmp, step_pages=step_pages, pause_s=pause_s, cancel=cancel)
            if before_verify is not None:
                before_verify(tmp)
            t0 = time.perf_counter()
            check = verify_database(tmp, verifiers)
            verify_s = time.perf_counter() - t0
            plain_sha = sha256_file(tmp)
            if output is not None:
                final = output
            else:
                ext = ".sqlite3.enc" if key else ".sqlite3"
                final = directory / f"ccn-{stamp}-{check.applied_index:012d}{ext}"
            if key:
                enc = tmp.with_suffix(".enc")
                encrypt_file(tmp, enc, key)
                if decrypt_file(enc, None, key) != plain_sha:  # read it back before trusting it
                    raise BackupError(f"{enc}: encrypted copy does not decrypt to the verified database")
                tmp.unlink()
                tmp = enc
            os.chmod(tmp, 0o600)
            fsync_path(tmp)
            os.replace(tmp, final)
            fsync_path(directory)
        except BaseException:
            for p in (tmp, tmp.with_suffix(".enc")):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            raise
        info = BackupInfo(
            file=str(final),
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
            created_unix=created,
            applied_index=check.applied_index,
            ledger_size=check.ledger_size,
            ledger_root=check.ledger_root,
            sha256=sha256_file(final),
            bytes=final.stat().st_size,
            encrypted=bool(key),
            key_id=key_id(key).hex() if key else None,
            node=node_name,
            schema_version=check.schema_version,
            messages=check.messages,
            integrity=check.integrity,
            audit=check.audit,
            copy_seconds=copy["seconds"],
            verify_seconds=verify_s,
            command_index=check.command_index,
        )
        info.save()
        fsync_path(directory)
        if output is None and keep is not None:
            for old in rotate(directory, keep):
                log.info("backup rotated out: %s", old)
        return info


# -- restore ---------------------------------------------------------------------------


def sidecar_for(path: Path) -> BackupInfo | None:
    sidecar = Path(str(path) + SIDECAR_SUFFIX)
    if not sidecar.exists():
        return None
    try:
        return BackupInfo.load(sidecar)
    except (ValueError, TypeError, OSError) as exc:
        raise BackupError(f"{sidecar}: unreadable sidecar: {exc}") from exc


def open_candidate(
    path: Path, workdir: Path, *, key: bytes | None, verifiers: Iterable[Any] | None = None, check: bool = True
) -> tuple[Path, Verification | None]:
    """A verified plain copy of a backup file in ``workdir`` (decrypted when needed).

    Checks, in order: the sidecar's sha256 (when there is one), decryption, integrity_check
    and the ledger audit. Any failure removes the copy and raises BackupError naming it.
    """
    if not path.is_file():
        raise BackupError(f"{path}: no such backup file")
    info = sidecar_for(path)
    if info is not None and sha256_file(path) != info.sha256:
        raise BackupError(f"{path}: sha256 differs from its sidecar (the file was altered or is incomplete)")
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f".restore-{secrets.token_hex(4)}.sqlite3"
    try:
        if is_encrypted(path):
            if key is None:
                raise BackupError(f"{path}: the backup is encrypted; configure backup.key_file or pass --key-file")
            decrypt_file(path, out, key)
        else:
            with open(path, "rb") as inp, open(out, "wb") as dst:
                while block := inp.read(CHUNK):
                    dst.write(block)
        result = verify_database(out, verifiers) if check else None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            out.unlink()
        raise
    return out, result


def install_database(candidate: Path, db_path: Path) -> Path | None:
    """Swap ``candidate`` in as the node's database; the old one becomes ``<db>.pre-restore``.

    The caller holds the DatabaseLock. The old file's WAL is checkpointed first when it
    can be, and moved along with it otherwise, so the kept copy is complete.
    """
    kept: Path | None = None
    if db_path.exists():
        with contextlib.suppress(apsw.Error):
            conn = apsw.Connection(str(db_path))
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
        kept = Path(str(db_path) + ".pre-restore")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(db_path) + suffix)
            if src.exists():
                os.replace(src, Path(str(kept) + suffix))
    conn = apsw.Connection(str(candidate))
    try:
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()
    clean_close_mark(db_path).unlink(missing_ok=True)  # it described the file replaced here
    os.replace(candidate, db_path)
    for suffix in ("-wal", "-shm"):
        stray = Path(str(candidate) + suffix)
        if stray.exists():
            os.replace(stray, Path(str(db_path) + suffix))
    fsync_path(db_path.parent)
    return kept


def listener_running(host: str, port: int) -> bool:
    """Whether something accepts connections on the node's listen address."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# -- the node's schedule ---------------------------------------------------------------


class BackupService:
    """Backs the node's database up every ``interval_s`` and on demand, off the event loop."""

    def __init__(
        self,
        db_path: Path,
        directory: Path,
        *,
        interval_s: float,
        keep: int,
        key: bytes | None,
        verifiers: list[Any],
        node_name: str,
        step_pages: int,
        pause_s: float,
    ) -> None:
        self.db_path = db_path
        self.directory = directory
        self.interval_s = interval_s
        self.keep = keep
        self.key = key
        self.verifiers = verifiers
        self.node_name = node_name
        self.step_pages = step_pages
        self.pause_s = pause_s
        self.last_error: str | None = None
        self._lock = asyncio.Lock()
        self._thread_lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._cancel = threading.Event()

    def age_seconds(self) -> float:
        """Seconds since the newest verified backup; -1 when there is none."""
        age = newest_age_s(self.directory)
        return -1.0 if age is None else age

    def all(self) -> list[BackupInfo]:
        return list_backups(self.directory)

    def run_sync(self) -> BackupInfo:
        with self._thread_lock:
            return create_backup(
                self.db_path,
                self.directory,
                key=self.key,
                keep=self.keep,
                verifiers=self.verifiers,
                node_name=self.node_name,
                step_pages=self.step_pages,
                pause_s=self.pause_s,
                cancel=self._cancel,
            )

    async def run_now(self) -> BackupInfo:
        async with self._lock:
            loop = asyncio.get_running_loop()
            try:
                info = await loop.run_in_executor(None, self.run_sync)
            except Exception as exc:
                self.last_error = str(exc)
                raise
            self.last_error = None
            return info

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="ccn-backup")

    async def stop(self) -> None:
        self._cancel.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _due_in(self) -> float:
        age = newest_age_s(self.directory)
        if age is None:
            return min(self.interval_s, 60.0)  # a fresh node gets its first backup soon
        return max(0.0, self.interval_s - age)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._due_in())
            try:
                info = await self.run_now()
                log.info("backup written: %s (%d bytes, index %d)", info.file, info.bytes, info.applied_index)
            except Exception as exc:  # the node keeps serving; the age metric shows the problem
                log.error("backup failed: %s", exc)
                await asyncio.sleep(min(self.interval_s, 300.0))


# -- from the config -------------------------------------------------------------------


def backup_key(cfg: Any, key_file: str | None = None) -> bytes | None:
    """The backup key named by ``backup.key_file`` (or ``key_file``), or None when unset."""
    from ccn_node.config import ConfigError, read_secret_file

    name = key_file if key_file is not None else cfg.backup.key_file
    if not name:
        return None
    where = "--key-file" if key_file is not None else "backup.key_file"
    data = read_secret_file(cfg.path(name), file=cfg.source, key=where)
    try:
        return parse_key(data)
    except ValueError as exc:
        raise ConfigError(cfg.source, where, f"{cfg.path(name)}: {exc}") from None

