"""The full-text index is written by the state machine in chunks (replication/search_index.py),
not by a trigger per INSERT. After every COMMIT the index holds exactly the chat messages at or
below the watermark the database records, whatever the transaction did (erasures and other
commands between messages, a Batch undone and redone, a rollback); after a catch-up it holds
every chat message exactly once; the lag is bounded, survives a crash, a reopen and a
snapshot, and a reader through ``Store.read_searchable`` never sees it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import apsw
import pytest
from corpus_commands import AT, append_message, create_user, start_conversation

from ccn_node.continuity.retrieval import search
from ccn_node.replication import commands as c
from ccn_node.replication import search_index
from ccn_node.replication.state_machine import StateMachine
from ccn_node.store.database import Store
from ccn_node.store.schema import MIGRATIONS


def msg(i: int, text: str, *, user: str = "alice", session: str = "s1", **extra: object) -> bytes:
    return c.encode(append_message(i, session, user, text, **extra))


SETUP = [c.encode(x) for x in (create_user("alice"), create_user("bob"), start_conversation("s1", "alice"),
                                start_conversation("s2", "bob"))]


def indexed_rowids(conn: apsw.Connection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT id FROM messages_fts_docsize ORDER BY id")]


def check_lagging_index(conn: apsw.Connection) -> int:
    """As any COMMIT leaves it: the index is sound and holds exactly the chat messages at or
    below the recorded watermark. Returns the watermark."""
    conn.execute("INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')")
    rows = conn.execute("SELECT value FROM meta WHERE key = ?", (search_index.META_KEY,)).fetchall()
    top = conn.execute("SELECT coalesce(max(rowid), 0) FROM messages").fetchall()[0][0]
    watermark = int(rows[0][0]) if rows else top
    chat = [r[0] for r in conn.execute("SELECT rowid FROM messages WHERE kind = 'chat' AND rowid <= ? ORDER BY rowid",
                                       (watermark,))]
    assert indexed_rowids(conn) == chat
    return watermark


def check_index(node: Node) -> None:
    """The watermark invariant, then a catch-up, then FTS5's integrity check with rank 1, which
    compares the index with the content (the view of chat messages): a message missing from
    the index, or indexed twice, fails."""
    conn = node.store.writer
    check_lagging_index(conn)
    node.sm.catch_up_search_index()
    conn.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)")
    assert check_lagging_index(conn) == conn.execute("SELECT coalesce(max(rowid), 0) FROM messages").fetchall()[0][0]


def found(conn: apsw.Connection, word: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT m.message_id FROM messages_fts JOIN messages AS m ON m.rowid = messages_fts.rowid"
        " WHERE messages_fts MATCH ? ORDER BY m.rowid", (word,))]


class Node:
    def __init__(self, path: Path) -> None:
        self.store = Store(path, synchronous="normal")
        self.sm = StateMachine(self.store.writer)
        self.index = 0

    def apply(self, *entries: bytes) -> list[object]:
        batch = []
        for entry in entries:
            self.index += 1
            batch.append((self.index, entry))
        return self.sm.apply_batch(batch)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    n = Node(tmp_path / "db.sqlite3")
    n.apply(*SETUP)
    yield n
    n.store.close()


def test_messages_of_one_transaction_are_indexed_together(node: Node) -> None:
    node.apply(*(msg(i, f"anchor{i} common words") for i in range(1, 30)))
    conn = node.store.writer
    assert found(conn, "common") == []  # a chunk is not full, and nobody searched
    check_index(node)
    assert found(conn, "common") == [f"m{i}" for i in range(1, 30)]
    assert found(conn, "anchor7") == ["m7"]


@pytest.mark.parametrize("batched", [False, True], ids=["entries", "one-batch"])
def test_erasure_between_messages_of_one_transaction(node: Node, batched: bool) -> None:
    """An erasure sees the messages before it indexed (its update trigger deletes their
    tokens); the messages after it wait for the next chunk."""
    entries = [
        msg(1, "before the erasure quokka"),
        msg(2, "bob writes quokka too", user="bob", session="s2"),
        c.encode(c.EraseUserData(request_id="e1", user_id="alice", erased_at="2025-03-01T11:00:00.000000Z")),
        msg(3, "after the erasure quokka"),
        c.encode(c.EndConversation(request_id="end2", session_id="s2", ended_at="2025-03-01T11:00:01.000000Z")),
        msg(4, "last quokka"),
    ]
    if batched:
        node.apply(c.encode(c.Batch(request_id="", entries=entries)))
    else:
        node.apply(*entries)
    conn = node.store.writer
    check_index(node)
    assert found(conn, "quokka") == ["m2", "m3", "m4"]
    assert found(conn, "before") == []


def test_a_batch_redone_after_a_partial_write_indexes_once(node: Node) -> None:
    """A duplicate message id fails at the Batch's multi-row INSERT, after an erasure inside
    the Batch had already brought the index up to date: the Batch is undone and redone one
    command at a time, and the index must follow the undo."""
    node.apply(msg(1, "first wombat"))
    entries = [
        msg(2, "second wombat"),
        c.encode(c.EraseUserData(request_id="e1", user_id="bob", erased_at="2025-03-01T11:00:00.000000Z")),
        msg(3, "third wombat"),
        c.encode(c.AppendMessage(request_id="dup", message_id="m1", session_id="s1", user_id="alice", role="user",
                                 content="duplicate id wombat", created_at=AT, tokens=5)),
        msg(4, "fourth wombat"),
    ]
    results = node.apply(c.encode(c.Batch(request_id="", entries=entries)))
    assert node.sm.batch_redos == 1
    assert [r.error_code for r in results] == [None, None, None, "invalid", None]  # type: ignore[attr-defined]
    conn = node.store.writer
    check_index(node)
    assert found(conn, "wombat") == ["m1", "m2", "m3", "m4"]


def test_a_rolled_back_transaction_leaves_the_index_as_it_was(node: Node) -> None:
    node.apply(msg(1, "kept numbat"))
    sm = node.sm
    sm.begin()
    sm.apply_entry(100, msg(2, "lost numbat"))
    sm.abort()
    node.index = 100
    node.apply(msg(3, "later numbat"))
    conn = node.store.writer
    check_index(node)
    assert found(conn, "numbat") == ["m1", "m3"]


def test_validation_answers_stay_out_of_the_index(node: Node) -> None:
    node.apply(msg(1, "chat echidna"), msg(2, "validation echidna", kind="validation"), msg(3, "chat echidna again"))
    conn = node.store.writer
    check_index(node)
    assert found(conn, "echidna") == ["m1", "m3"]


def test_a_database_indexed_by_the_old_trigger_goes_on(tmp_path: Path) -> None:
    """A schema-3 file, indexed by its trigger: opening it migrates (the trigger goes), the
    rows the trigger indexed stay indexed once, and new rows are indexed by the state machine."""
    path = tmp_path / "old.sqlite3"
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode = WAL")
    with conn:
        for statement in [s for migration in MIGRATIONS[:3] for s in migration]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 3")
        conn.execute("INSERT INTO users(user_id, name, role, created_at) VALUES ('alice', 'alice', 'user', ?)", (AT,))
        conn.execute("INSERT INTO conversations(session_id, user_id, status, created_at, plate_version, plate_sha256)"
                     " VALUES ('s1', 'alice', 'active', ?, 'v1', ?)", (AT, "0" * 64))
        conn.execute("INSERT INTO messages(message_id, session_id, user_id, seq, role, content, content_sha256,"
                     " created_at, tokens, log_index) VALUES ('m0', 's1', 'alice', 1, 'user', 'old platypus', '', ?,"
                     " 3, 0)", (AT,))
        conn.execute("UPDATE conversations SET message_count = 1")
    assert found(conn, "platypus") == ["m0"]  # indexed by the trigger
    conn.close()
    node = Node(path)
    try:
        db = node.store.writer
        assert db.execute("PRAGMA user_version").fetchall()[0][0] == len(MIGRATIONS)
        assert not db.execute("SELECT name FROM sqlite_master WHERE name = 'messages_fts_insert'").fetchall()
        node.apply(msg(1, "new platypus"))
        check_index(node)
        assert found(db, "platypus") == ["m0", "m1"]
    finally:
        node.store.close()


def test_a_full_chunk_is_indexed_after_its_commit(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not inside the COMMIT that fills it (the answers for that COMMIT would wait for the
    chunk): by ``index_if_due``, which the logs call once they have answered."""
    monkeypatch.setattr(search_index, "CHUNK_MESSAGES", 5)
    node.apply(*(msg(i, "koala") for i in range(1, 5)))
    conn = node.store.writer
    assert found(conn, "koala") == [] and node.sm.search_index.pending == 4
    node.index += 1
    node.sm.begin()
    node.sm.apply_entry(node.index, msg(5, "koala"))
    node.sm.commit()
    assert found(conn, "koala") == [] and node.sm.search_index.due()
    check_lagging_index(conn)
    node.sm.index_if_due()
    assert found(conn, "koala") == [f"m{i}" for i in range(1, 6)]
    assert node.sm.search_index.since is None and not node.sm.search_index.due()
    check_index(node)


def test_a_message_waits_at_most_the_lag_bound(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    node.apply(msg(1, "dingo"))
    assert not node.sm.search_index.due()
    monkeypatch.setattr(search_index, "MAX_LAG_S", 0.0)
    assert node.sm.search_index.due()  # the node's timer would catch up now
    node.apply(msg(2, "dingo"))  # and so does the next COMMIT
    assert found(node.store.writer, "dingo") == ["m1", "m2"]
    check_index(node)


def test_the_lag_survives_a_crash_and_a_reopen(tmp_path: Path) -> None:
    """Messages committed but not indexed when the process dies are indexed after the restart,
    once (the watermark is in the database, written with them)."""
    path = tmp_path / "db.sqlite3"
    first = Node(path)
    first.apply(*SETUP)
    first.apply(msg(1, "wallaby one"))
    first.sm.catch_up_search_index()
    first.apply(msg(2, "wallaby two"), msg(3, "wallaby three"))
    first.store.writer.close()  # no catch-up, no clean close: as after kill -9
    again = Node(path)
    try:
        assert again.sm.search_index.since is not None and again.sm.search_index.pending == 2
        assert found(again.store.writer, "wallaby") == ["m1"]
        again.index = 100
        again.apply(msg(4, "wallaby four"))
        check_index(again)
        assert found(again.store.writer, "wallaby") == ["m1", "m2", "m3", "m4"]
    finally:
        again.store.close()


def test_rowids_reused_after_the_top_rows_were_deleted_are_indexed(node: Node) -> None:
    """SQLite gives a new row max(rowid)+1: below the last chunk's watermark when the highest
    rows were deleted since. The first message of a chunk fixes the watermark anew."""
    node.apply(msg(1, "quoll one"), msg(2, "quoll two"), msg(3, "quoll three"))
    node.sm.catch_up_search_index()
    conn = node.store.writer
    with conn:
        conn.execute("DELETE FROM messages WHERE message_id IN ('m2', 'm3')")  # the delete trigger unindexes them
        conn.execute("DELETE FROM applied_requests WHERE request_id IN ('r2', 'r3')")
    node.apply(msg(4, "quoll four"))
    check_index(node)
    assert found(conn, "quoll") == ["m1", "m4"]


def test_a_snapshot_carries_the_lag(tmp_path: Path) -> None:
    """A Raft snapshot (a backup of the file) taken while messages wait for the index: the node
    that installs it indexes them."""
    leader = Node(tmp_path / "a.sqlite3")
    follower = Node(tmp_path / "b.sqlite3")
    try:
        leader.apply(*SETUP)
        leader.apply(msg(1, "bilby"), msg(2, "bilby"))
        leader.sm.backup_to(str(tmp_path / "snap.sqlite3"))
        assert follower.sm.restore_from(str(tmp_path / "snap.sqlite3"))
        assert follower.sm.search_index.pending == 2
        check_index(follower)
        assert found(follower.store.writer, "bilby") == ["m1", "m2"]
    finally:
        leader.store.close()
        follower.store.close()


def test_a_searching_reader_finds_what_was_written_before(node: Node) -> None:
    """Store.read_searchable makes the index current first (without an fsync of its own); a
    plain read sees the lag."""
    node.store.search_index_catch_up = node.sm.catch_up_search_index
    node.apply(msg(1, "bandicoot"))

    async def both() -> tuple[list[object], list[object]]:
        plain = await node.store.read(search, "alice", "bandicoot", 10, 0)
        fresh = await node.store.read_searchable(search, "alice", "bandicoot", 10, 0)
        return plain, fresh

    plain, fresh = asyncio.run(both())
    assert plain == [] and [h.message_id for h in fresh] == ["m1"]  # type: ignore[attr-defined]
    assert node.store.writer.execute("PRAGMA synchronous").fetchall()[0][0] == 1  # NORMAL, as it was
    check_index(node)


def test_an_index_written_past_its_watermark_is_rebuilt(tmp_path: Path) -> None:
    """An older ccn-node indexes at every COMMIT without moving the watermark (a rolling upgrade
    in which it installed a newer member's snapshot): at the next open the index is rebuilt,
    never left with a message indexed twice."""
    path = tmp_path / "db.sqlite3"
    first = Node(path)
    first.apply(*SETUP)
    first.apply(msg(1, "numbat one"), msg(2, "numbat two"))  # waiting for the index
    with first.store.writer as conn:  # what the old code's COMMIT did: index its own new row
        conn.execute("INSERT INTO messages_fts(rowid, content, owner) SELECT rowid, content, owner"
                     " FROM messages_fts_source WHERE rowid = (SELECT max(rowid) FROM messages)")
    first.store.close()
    again = Node(path)
    try:
        assert again.sm.search_index.since is None
        check_index(again)
        assert found(again.store.writer, "numbat") == ["m1", "m2"]
    finally:
        again.store.close()
