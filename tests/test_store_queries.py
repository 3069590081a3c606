"""``queries.started_conversation`` answers a start without reading the row back, so it must be
exactly what ``get_conversation`` reads once the StartConversation command is applied."""

from __future__ import annotations

from pathlib import Path

from corpus_commands import create_user

from ccn_node.replication import commands as c
from ccn_node.replication.state_machine import StateMachine
from ccn_node.store import queries
from ccn_node.store.database import Store


def test_started_conversation_is_the_row_get_conversation_reads(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    try:
        start = c.StartConversation(request_id="r1", session_id="c_1", user_id="alice", title="a title — ü",
                                    created_at="2026-11-26T10:00:00.123456Z", plate_version="v7",
                                    plate_sha256="ab" * 32, metadata={"client": "t", "n": 3, "x": 0.5, "f": None})
        results = StateMachine(store.writer).apply_batch([(1, c.encode(create_user("alice"))), (2, c.encode(start))])
        assert all(r.ok for r in results), results
        stored = queries.get_conversation(store.writer, "alice", "c_1")
        answered = queries.started_conversation(start.session_id, start.user_id, start.title, start.created_at,
                                                start.plate_version, start.plate_sha256, start.metadata)
        assert answered == stored  # every column, keys and values
    finally:
        store.close()
