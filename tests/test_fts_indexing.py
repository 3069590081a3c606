"""The full-text index is written by the state machine once per transaction, not by a trigger
per INSERT: every committed chat message must be in it, exactly once, whatever else the
transaction did (erasures and other commands between messages, a Batch undone and redone, a
transaction rolled back), and a database indexed by the old trigger must go on correctly."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest
from corpus_commands import AT, create_user, start_conversation

from ccn_node.replication import commands as c
from ccn_node.replication.state_machine import StateMachine
from ccn_node.store.database import Store
from ccn_node.store.schema import MIGRATIONS


def msg(i: int, text: str, *, user: str = "alice", session: str = "s1", **extra: object) -> bytes:
    return c.encode(
        c.AppendMessage(request_id=f"r{i}", message_id=f"m{i}", session_id=session, user_id=user, role="user",
                        content=text, created_at=f"2025-03-01T10:00:{i % 60:02d}.000000Z", tokens=5,
                        **extra)  # type: ignore[arg-type]
    )


SETUP = [c.encode(x) for x in (create_user("alice"), create_user("bob"), start_conversation("s1", "alice"),
                                start_conversation("s2", "bob"))]


def check_index(conn: apsw.Connection) -> None:
    """FTS5's integrity check with rank 1 also compares the index with the content (the view
    of chat messages): a committed message missing from the index, or indexed twice, fails."""
    conn.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)")


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


def test_messages_of_one_transaction_are_indexed_at_commit(node: Node) -> None:
    node.apply(*(msg(i, f"anchor{i} common words") for i in range(1, 30)))
    conn = node.store.writer
    check_index(conn)
    assert found(conn, "common") == [f"m{i}" for i in range(1, 30)]
    assert found(conn, "anchor7") == ["m7"]


@pytest.mark.parametrize("batched", [False, True], ids=["entries", "one-batch"])
def test_erasure_between_messages_of_one_transaction(node: Node, batched: bool) -> None:
    """An erasure sees the messages before it indexed (its update trigger deletes their
    tokens); the messages after it are indexed at commit."""
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
    check_index(conn)
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
    check_index(conn)
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
    check_index(conn)
    assert found(conn, "numbat") == ["m1", "m3"]


def test_validation_answers_stay_out_of_the_index(node: Node) -> None:
    node.apply(msg(1, "chat echidna"), msg(2, "validation echidna", kind="validation"), msg(3, "chat echidna again"))
    conn = node.store.writer
    check_index(conn)
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
        check_index(db)
        assert found(db, "platypus") == ["m0", "m1"]
    finally:
        node.store.close()
