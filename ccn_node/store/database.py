"""Opening the SQLite database: one writer connection, a pool of reader connections.

WAL lets any number of readers run beside the single writer. The writer belongs to the
state machine's thread; readers run in a small thread pool so a long query never blocks the
event loop. ``synchronous``: FULL by default — WAL commits are fsynced, so an acknowledged
write survives a power cut; NORMAL survives a process crash but may lose the last commits on
power loss (see store/DESIGN.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

import apsw

from ccn_node.store.schema import migrate

T = TypeVar("T")

log = logging.getLogger(__name__)

SYNCHRONOUS_MODES = ("off", "normal", "full", "extra")


class StoreError(RuntimeError):
    """The database cannot be opened or is not usable (corrupt, locked, wrong version)."""


READER_CACHE_KIB = 65536
"""Page cache of a reader connection: up to 64 MiB, filled lazily (pages still in the WAL;
the rest is read through mmap)."""

WRITER_CACHE_KIB = 8192
"""Page cache of the writer connection. Smaller than a reader's on purpose: the writer touches
the same few hot pages (B-tree right edges, the FTS segments being merged) and reads the rest
through mmap, and a cache of 64 MiB made every apply cost 5-15 % more CPU a message (more
memory to walk and to keep coherent at each COMMIT; store/DESIGN.md). A transaction that
dirties more pages than this spills them to the WAL before COMMIT, which is still correct."""


def _configure(conn: apsw.Connection, synchronous: str, busy_timeout_ms: int, cache_kib: int) -> None:
    conn.setbusytimeout(busy_timeout_ms)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA secure_delete = ON")  # erased content is overwritten in freed pages, not left behind
    conn.execute(f"PRAGMA cache_size = -{int(cache_kib)}")
    conn.execute("PRAGMA mmap_size = 1073741824")  # reads via mmap: ledger proofs at 1M entries < 100 µs


STATEMENT_CACHE_SIZE = 200
"""Prepared statements kept per connection (apsw's default is 100): the writer's multi-row
INSERTs alone take up to ~50 shapes (``insert_many``), beside every other statement."""


def open_connection(
    path: str | os.PathLike[str],
    *,
    readonly: bool = False,
    synchronous: str = "full",
    busy_timeout_ms: int = 5000,
    cache_kib: int = READER_CACHE_KIB,
) -> apsw.Connection:
    """Open one connection with the node's pragmas; raises StoreError with the path on failure."""
    flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    try:
        conn = apsw.Connection(str(path), flags=flags, statementcachesize=STATEMENT_CACHE_SIZE)
        if not readonly:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchall()[0][0]
            if mode.lower() != "wal":
                raise StoreError(f"{path}: could not switch to WAL journal mode (got {mode})")
        _configure(conn, synchronous, busy_timeout_ms, cache_kib)
    except apsw.Error as exc:
        raise StoreError(f"{path}: cannot open database: {exc}") from exc
    return conn


WAL_SAFETY_CHECKPOINT_PAGES = 16384
"""With the background checkpointer running, the writer checkpoints by itself only when the WAL
has grown past 64 MiB (4 KiB pages): the checkpointer could not keep up, and the WAL must not
grow without bound."""


class WalCheckpointer:
    """Copies the WAL into the database file from its own connection and thread.

    SQLite's automatic checkpoint runs inside the COMMIT that crosses its threshold (1,000
    pages): with ``synchronous = NORMAL`` that COMMIT also pays two fsyncs and the copy of a
    few MB, so one apply in five took ~10 ms instead of ~1.5 ms. A PASSIVE checkpoint from
    another connection never blocks the writer or the readers, and SQLite releases the GIL
    while it runs. The WAL restarts from its beginning once a checkpoint has caught up.
    """

    def __init__(self, path: Path, synchronous: str, interval_s: float = 0.1, min_frames: int = 256) -> None:
        self._path = path
        self._synchronous = synchronous
        self._interval_s = interval_s
        self._min_frames = min_frames
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ccn-checkpoint", daemon=True)
        self.checkpoints = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        try:
            conn = open_connection(self._path, synchronous=self._synchronous)
        except StoreError:
            return  # the writer's own automatic checkpoint still works
        try:
            while not self._stop.wait(self._interval_s):
                done_before = -1
                while not self._stop.is_set():
                    try:
                        _busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
                    except apsw.Error:
                        break  # busy or locked now: next time
                    self.checkpoints += 1
                    # again at once while it makes progress and much is left (a long reader
                    # pins old frames: then progress stops and so does this loop)
                    if frames - done < self._min_frames or done <= done_before:
                        break
                    done_before = done
        finally:
            conn.close()


class Store:
    """The node's database file: the writer connection and async access to readers."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "full",
        busy_timeout_ms: int = 5000,
        readers: int = 4,
        extra_schema: list[str] | None = None,
    ) -> None:
        if synchronous not in SYNCHRONOUS_MODES:
            raise StoreError(f"storage.synchronous must be one of {SYNCHRONOUS_MODES}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self._extra_schema = extra_schema or []
        closed_cleanly = take_clean_close_mark(self.path)
        self.writer = self._open_writer()
        # quick_check reads the whole file (~5 s at 1M messages): after a clean close it is
        # skipped, the file being exactly as the close left it (store/DESIGN.md).
        self.integrity_checked = not closed_cleanly
        try:
            integrity = "ok" if closed_cleanly else self.writer.execute("PRAGMA quick_check").fetchall()[0][0]
        except apsw.Error as exc:
            raise StoreError(f"{self.path}: database is not readable: {exc}") from exc
        if integrity != "ok":
            raise StoreError(f"{self.path}: database failed its integrity check: {integrity}")
        try:
            migrate(self.writer, self._extra_schema)
        except apsw.Error as exc:
            raise StoreError(f"{self.path}: migration failed: {exc}") from exc
        self._local = threading.local()
        self._reader_conns: list[apsw.Connection] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, readers), thread_name_prefix="ccn-reader")
        self._checkpointer: WalCheckpointer | None = None
        self._closed = False
        # Set by the owner of the writer (node.py: the state machine's catch_up_search_index):
        # makes the full-text index cover every message written so far (replication/search_index.py).
        self.search_index_catch_up: Callable[[], object] | None = None

    def _open_writer(self) -> apsw.Connection:
        return open_connection(
            self.path, synchronous=self.synchronous, busy_timeout_ms=self.busy_timeout_ms, cache_kib=WRITER_CACHE_KIB
        )

    def start_checkpointer(self) -> None:
        """Checkpoint the WAL in the background (a serving node); the writer's automatic
        checkpoint is kept only as a bound on the WAL's size."""
        if self._checkpointer is None:
            self._checkpointer = WalCheckpointer(self.path, self.synchronous)
            self._bound_writer_wal()
            self._checkpointer.start()

    def _bound_writer_wal(self) -> None:
        """With the checkpointer running, the writer checkpoints by itself only past the bound."""
        if self._checkpointer is not None:
            self.writer.execute(f"PRAGMA wal_autocheckpoint = {WAL_SAFETY_CHECKPOINT_PAGES}")

    def _reader(self) -> apsw.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = open_connection(self.path, synchronous=self.synchronous, busy_timeout_ms=self.busy_timeout_ms)
            self._local.conn = conn
            with self._lock:
                self._reader_conns.append(conn)
        return conn

    def read_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on this thread's reader connection."""
        return fn(self._reader(), *args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on a reader thread; never blocks the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.read_sync, fn, *args)

    async def read_searchable(self, fn: Callable[..., T], *args: Any) -> T:
        """``read`` for a reader of the full-text index: the index first catches up with every
        message written so far, so a search finds what was written before it. If that fails
        (disk full), the read still runs, on the index as it is."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._read_searchable_sync, fn, *args)

    def _read_searchable_sync(self, fn: Callable[..., T], *args: Any) -> T:
        if self.search_index_catch_up is not None:
            try:
                self.search_index_catch_up()
            except Exception:
                log.exception("the full-text index could not catch up; searching it as it is")
        return self.read_sync(fn, *args)

    def reopen_writer(self) -> None:
        """Re-open the writer after the file was replaced (snapshot restore)."""
        self.writer.close()
        self.writer = self._open_writer()
        self._bound_writer_wal()
        migrate(self.writer, self._extra_schema)
        with self._lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
        self._local = threading.local()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self._pool.shutdown(wait=True)
        with self._lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
        checkpointed = False
        with contextlib.suppress(apsw.Error):
            checkpointed = self.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0][0] == 0
        self.writer.close()
        if checkpointed:
            with contextlib.suppress(OSError):
                leave_clean_close_mark(self.path)


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a directory (a directory: so that a rename or unlink in it is durable)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


CLEAN_CLOSE_SUFFIX = ".clean-close"
"""Beside the database: written by a clean close, removed by the next open."""


def clean_close_mark(db_path: Path) -> Path:
    return Path(str(db_path) + CLEAN_CLOSE_SUFFIX)


def _file_identity(db_path: Path) -> dict[str, int | str] | None:
    """What a close leaves and anything else touching the file changes: size, mtime, inode,
    and a hash of its first and last pages; None while a WAL with frames lies beside it
    (writes not yet in the file)."""
    wal = Path(str(db_path) + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return None
    st = db_path.stat()
    with open(db_path, "rb") as f:  # the header and the last page: a rewrite in the same clock tick shows there
        ends = f.read(4096)
        f.seek(max(0, st.st_size - 4096))
        ends += f.read(4096)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "dev": st.st_dev,
            "ends_sha256": hashlib.sha256(ends).hexdigest()}


def leave_clean_close_mark(db_path: Path) -> None:
    """After the last connection closed with the WAL checkpointed into the file: note the
    file's identity, so the next open may skip the integrity check."""
    identity = _file_identity(db_path)
    if identity is None:
        return
    mark = clean_close_mark(db_path)
    tmp = Path(str(mark) + ".tmp")
    tmp.write_text(json.dumps(identity))
    fsync_path(tmp)
    os.replace(tmp, mark)
    fsync_path(mark.parent)


def take_clean_close_mark(db_path: Path) -> bool:
    """Remove the clean-close mark (durably, before anything may write to the file); True if
    it was there and the file is still exactly as that close left it."""
    mark = clean_close_mark(db_path)
    try:
        noted = json.loads(mark.read_text())
    except (OSError, ValueError):
        noted = None
    if noted is None and not mark.exists():
        return False
    with contextlib.suppress(OSError):
        mark.unlink()
        fsync_path(mark.parent)
    try:
        return noted is not None and noted == _file_identity(db_path)
    except OSError:
        return False


def insert_many(conn: apsw.Connection, head: str, placeholders: str, rows: list[Any], *, per_statement: int) -> None:
    """``head`` + ``VALUES (…), (…), …``: many rows a statement. One multi-row INSERT is
    cheaper than one statement a row.

    Statements come in a few fixed sizes — ``per_statement`` rows, then halves of it down to
    one — so that each stays in apsw's statement cache: a statement of a size not seen before
    is compiled anew (~0.5 ms for 256 rows of 21 columns), and Raft Batches come in every size.
    ``per_statement`` must keep the SQL under apsw's largest cacheable statement (16 KiB: see
    ``statement_sql``) and rows × parameters below SQLite's 32,766 parameters."""
    done, total, size = 0, len(rows), per_statement
    while done < total:
        while size > total - done:
            size //= 2
        conn.execute(statement_sql(head, placeholders, size), list(chain.from_iterable(rows[done : done + size])))
        done += size


MAX_CACHED_SQL = 16384
"""apsw keeps prepared statements of at most this many bytes of SQL (``Connection.cache_stats()``
``max_cacheable_bytes``); a longer one is compiled at every execution."""


@functools.lru_cache(maxsize=256)
def statement_sql(head: str, placeholders: str, rows: int) -> str:
    """The text of a ``rows``-row INSERT (built once per shape)."""
    sql = head + " VALUES " + ",".join([placeholders] * rows)
    if len(sql.encode()) > MAX_CACHED_SQL:
        raise ValueError(f"{rows} rows of {placeholders} make {len(sql)} bytes of SQL: too long to stay prepared")
    return sql


def rows_as_dicts(cursor: apsw.Cursor) -> list[dict[str, Any]]:
    """All rows of a just-executed cursor as dicts keyed by column name."""
    try:
        names = [d[0] for d in cursor.getdescription()]
    except apsw.ExecutionCompleteError:  # the statement produced no rows
        return []
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
