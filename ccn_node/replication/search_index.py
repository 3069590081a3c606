"""The full-text index of messages trails the corpus by a bounded amount, and catches up on demand.

FTS5's cost per message falls steeply with the number of messages indexed in one statement:
tokenising is a fixed cost, but every statement writes an index segment, and segments are
merged again and again later. Measured on 300-byte messages (2-core machine, store/DESIGN.md):
27 µs a message indexed 59 at a time, 18 µs 256 at a time, 12 µs 1024 at a time. Under a
write load the state machine's transactions hold tens to hundreds of messages, so indexing at
every COMMIT paid the expensive end of that curve on every node.

So the state machine indexes new messages in chunks: once ``CHUNK_MESSAGES`` are waiting or
the oldest has waited ``MAX_LAG_S``, in a transaction of its own that the logs run after they
have answered for the entries just committed (``StateMachine.index_if_due``: a chunk takes
~10 ms, and the answers it used to hold back lengthened every writer's round trip); before any
command other than AppendMessage
(erasure, retention and the delete/update triggers must only ever meet indexed rows); and
whenever a reader of the index asks (``StateMachine.catch_up_search_index``: search and
context assembly call it through ``Store.read_searchable``, so what a client wrote is always
found by its next search). Only a load of writes without searches runs ahead of the index.

Invariant, in the database itself: every chat message with rowid ≤ the watermark (meta
``search_indexed_rowid``) is in the index, none above it. The watermark is written in the
same transaction as the rows and the index, so a crash, a Raft snapshot or a backup carries
it (the chunk's own transaction is not fsynced: index rows and watermark are lost or kept
together). A database without the key (schema ≤ 4) indexed every message at COMMIT.
"""

from __future__ import annotations

import logging
import time

import apsw

from ccn_node.store import meta

log = logging.getLogger(__name__)

CHUNK_MESSAGES = 1024
"""Messages indexed in one statement under load: 12 µs a message instead of 27 at 59."""

MAX_LAG_S = 1.0
"""The longest a message waits for the index when nobody searches (bounds what a context
assembled on another node, or a crash before the next chunk, can miss)."""

META_KEY = "search_indexed_rowid"


def _top_rowid(conn: apsw.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(rowid), 0) FROM messages").fetchall()[0][0])


class SearchIndexLag:
    """Which messages are not in the full-text index yet, on the writer connection."""

    __slots__ = ("pending", "since", "stored", "watermark")

    def __init__(self) -> None:
        self.watermark = 0  # every chat message with rowid <= watermark is indexed, none above
        self.stored: int | None = None  # the watermark as the database holds it
        self.pending = 0  # messages appended since the watermark (an upper bound)
        self.since: float | None = None  # monotonic time of the first of them; None: index complete

    def load(self, conn: apsw.Connection) -> None:
        """Read the state the last COMMIT left (at start-up, after a rollback or a restore)."""
        top = _top_rowid(conn)
        stored = meta.get(conn, META_KEY)
        self.stored = None if stored is None else int(stored)
        self.watermark = top if self.stored is None else self.stored
        indexed_top = conn.execute("SELECT coalesce(max(id), 0) FROM messages_fts_docsize").fetchall()[0][0]
        if indexed_top > self.watermark:
            # Indexed above the watermark: an older ccn-node (indexing at every COMMIT, blind to
            # the watermark) applied here after a newer one. Which rows it indexed is unknown,
            # so the index is rebuilt from the messages, once.
            log.warning("the full-text index holds messages above its watermark (%d > %d): rebuilding it",
                        indexed_top, self.watermark)
            with conn:
                conn.execute("INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')")
                meta.put(conn, [(META_KEY, top)])
            self.stored = self.watermark = top
        self.pending = max(0, top - self.watermark)
        self.since = time.monotonic() if self.pending else None

    def state(self) -> tuple[int, int, float | None]:
        return self.watermark, self.pending, self.since

    def restore(self, state: tuple[int, int, float | None]) -> None:
        """Back to ``state()`` taken before writes that were rolled back to a savepoint."""
        self.watermark, self.pending, self.since = state

    def note_append(self, conn: apsw.Connection) -> None:
        """Before a message row is inserted: the first one since the index was complete fixes
        the watermark at the highest rowid now (rowids only go up from there, even if the
        highest rows were deleted since the last chunk)."""
        if self.since is None:
            self.watermark = _top_rowid(conn)
            self.since = time.monotonic()
        self.pending += 1

    def due(self) -> bool:
        """A chunk is full, or its oldest message has waited long enough."""
        if self.since is None:
            return False
        return self.pending >= CHUNK_MESSAGES or time.monotonic() - self.since >= MAX_LAG_S

    def index(self, conn: apsw.Connection) -> None:
        """Add every message above the watermark to the index, with one FTS5 statement."""
        if self.since is None:
            return
        conn.execute(
            "INSERT INTO messages_fts(rowid, content, owner)"
            " SELECT rowid, content, owner FROM messages_fts_source WHERE rowid > ?",
            (self.watermark,),
        )
        self.watermark = _top_rowid(conn)
        self.pending = 0
        self.since = None

    def meta_rows(self) -> list[tuple[str, int | str]]:
        """The meta row to write with this COMMIT, if the watermark moved."""
        return [] if self.watermark == self.stored else [(META_KEY, self.watermark)]

    def committed(self) -> None:
        self.stored = self.watermark


def unindexed_count(conn: apsw.Connection) -> int:
    """Chat messages not in the full-text index yet (read-only: for a tool that reads the file
    of a node that is not running, which indexes them when it runs again)."""
    stored = meta.get(conn, META_KEY)
    if stored is None:
        return 0  # schema <= 4: every message was indexed at COMMIT
    row = conn.execute("SELECT count(*) FROM messages WHERE kind = 'chat' AND rowid > ?", (int(stored),)).fetchall()
    return int(row[0][0])


def index_pending(conn: apsw.Connection) -> None:
    """For a tool that changes messages in a file without the state machine (an erasure applied
    to a backup): index what waits first, in the caller's transaction, so that the delete and
    update triggers only meet indexed rows."""
    lag = SearchIndexLag()
    lag.load(conn)
    lag.index(conn)
    meta.put(conn, lag.meta_rows())
