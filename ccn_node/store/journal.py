"""The command journal: every applied command kept in SQLite, for point-in-time restore.

Why a table and not a separate log file: the state machine writes the journal row in the
same transaction as the command's effect, so the journal and the state can never disagree
(no crash window, no second fsync), and a backup of the database carries the journal with
it. The journal is node-local bookkeeping: it is not part of the ledger, and the ledger does
not depend on it. Only SQL here; what an entry means is the replication package's business.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import apsw

from ccn_node.store.database import insert_many

BATCH_ROWS = 2000

HELD_BY_CORPUS = b""
"""The entry of a command whose bytes the database already holds elsewhere: a message the
state machine inserted is its ledger leaf (everything but the content, which it commits to
by hash) plus the content in its ``messages`` row. Storing it again cost every node a second
copy of each message's text; recovery rebuilds the entry from the two (replication/recovery.py).
No encoded command is empty, so the mark cannot be mistaken for one."""


def record(conn: apsw.Connection, index: int, entry: bytes, at: str | None, leaf_index: int | None) -> None:
    """Store one applied entry; runs inside the state machine's transaction."""
    conn.execute(
        "INSERT OR REPLACE INTO command_journal(log_index, at, leaf_index, entry) VALUES (?, ?, ?, ?)",
        (index, at, leaf_index, entry),
    )


def record_many(conn: apsw.Connection, rows: list[tuple[int, str | None, int | None, bytes]]) -> None:
    """Store many applied entries ``(index, at, leaf_index, entry)`` with multi-row INSERTs."""
    insert_many(conn, "INSERT OR REPLACE INTO command_journal(log_index, at, leaf_index, entry)", "(?,?,?,?)", rows,
                per_statement=1000)  # 10 KiB of SQL: stays prepared


def entries(conn: apsw.Connection, after: int, up_to: int) -> Iterator[list[tuple[int, bytes, int | None]]]:
    """Entries ``(log_index, entry, leaf_index)`` with ``after < log_index <= up_to`` in order,
    in batches (bounded memory); an entry may be ``HELD_BY_CORPUS``."""
    last = after
    while True:
        rows = conn.execute(
            "SELECT log_index, entry, leaf_index FROM command_journal WHERE log_index > ? AND log_index <= ?"
            " ORDER BY log_index LIMIT ?",
            (last, up_to, BATCH_ROWS),
        ).fetchall()
        if not rows:
            return
        yield [(int(i), bytes(e), leaf) for i, e, leaf in rows]
        last = rows[-1][0]


def bounds(conn: apsw.Connection) -> tuple[int, int]:
    """(first, last) log index held; (0, 0) when empty."""
    row = conn.execute(
        "SELECT coalesce(min(log_index), 0), coalesce(max(log_index), 0) FROM command_journal"
    ).fetchone()
    return int(row[0]), int(row[1])


def index_at_size(conn: apsw.Connection, size: int) -> int | None:
    """The log index after which the ledger had exactly ``size`` leaves; None if never reached."""
    if size == 0:
        row = conn.execute("SELECT min(log_index) FROM command_journal WHERE leaf_index IS NOT NULL").fetchone()
        return 0 if row[0] is None else int(row[0]) - 1
    row = conn.execute("SELECT log_index FROM command_journal WHERE leaf_index = ?", (size - 1,)).fetchone()
    return None if row is None else int(row[0])


def index_at_time(conn: apsw.Connection, at: str) -> int:
    """The last log index of the longest prefix of the log stamped at or before ``at``.

    Entries without a timestamp (Noop, SetUserRetention) belong to the prefix they follow.
    The prefix ends before the first entry stamped later than ``at``, so nothing in the
    restored state is newer than the target (see store/DESIGN.md on clock skew).
    """
    row = conn.execute("SELECT min(log_index) FROM command_journal WHERE at > ?", (at,)).fetchone()
    if row[0] is not None:
        return int(row[0]) - 1
    return bounds(conn)[1]


def rewrite(conn: apsw.Connection, indexes: list[int], fn: Callable[[bytes], bytes | None]) -> int:
    """Replace entries by ``fn(entry)`` (None keeps the entry); returns how many changed.
    Entries ``HELD_BY_CORPUS`` are left alone: they hold nothing to change."""
    changed = 0
    for start in range(0, len(indexes), 500):
        part = indexes[start : start + 500]
        marks = ",".join("?" * len(part))
        rows = conn.execute(f"SELECT log_index, entry FROM command_journal WHERE log_index IN ({marks})", part)
        updates = []
        for index, entry in rows.fetchall():
            if entry == HELD_BY_CORPUS:
                continue
            new = fn(bytes(entry))
            if new is not None and new != entry:
                updates.append((new, index))
        if updates:
            conn.executemany("UPDATE command_journal SET entry = ? WHERE log_index = ?", updates)
            changed += len(updates)
    return changed
