"""Multi-row INSERTs stay prepared: Raft Batches come in every size, and a statement of a size
not seen before (or longer than apsw caches) is compiled again at every execution."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest
from corpus_commands import AT, create_user, start_conversation

from ccn_node.ledger.ledger import Ledger
from ccn_node.ledger.note import NoteSigner
from ccn_node.ledger.schema import ledger_schema_sql
from ccn_node.replication import commands as c
from ccn_node.replication.state_machine import StateMachine
from ccn_node.store.database import MAX_CACHED_SQL, Store, insert_many, open_connection, statement_sql


def test_rows_of_any_count_use_a_few_cached_statement_shapes(tmp_path: Path) -> None:
    conn = open_connection(tmp_path / "t.sqlite3")
    conn.execute("CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT)")
    before = conn.cache_stats()
    total = 0
    for count in [*range(1, 70), 255, 256, 257, 600, 1000]:
        rows = [(total + i, f"row {total + i}") for i in range(count)]
        insert_many(conn, "INSERT INTO t(a, b)", "(?,?)", rows, per_statement=256)
        total += count
    stats = conn.cache_stats()
    assert stats["too_big"] == before["too_big"]
    assert stats["misses"] - before["misses"] == 9  # 256, 128, …, 1 rows: each compiled once
    assert conn.execute("SELECT count(*), min(a), max(a) FROM t").fetchall() == [(total, 0, total - 1)]
    conn.close()


def test_a_shape_too_long_to_stay_prepared_is_refused() -> None:
    with pytest.raises(ValueError, match="too long"):
        statement_sql("INSERT INTO t(a)", "(" + ",".join("?" * 30) + ")", MAX_CACHED_SQL // 40)


def test_batches_of_every_size_keep_the_fast_path_and_the_cache(tmp_path: Path) -> None:
    """Every multi-row INSERT of a Batch (messages, outcomes, journal, ledger leaves and
    nodes) fits apsw's statement cache: a shape that did not would fail inside the Batch and
    quietly send it down the slow redo path — so no Batch may be redone here."""
    store = Store(tmp_path / "n.sqlite3", synchronous="normal", extra_schema=[ledger_schema_sql()])
    sm = StateMachine(store.writer, ledger=Ledger(store.writer, NoteSigner.generate("stmt-test.example/log")))
    setup = [create_user("alice"), start_conversation("s1", "alice")]
    index = 0
    for command in setup:
        index += 1
        sm.apply_batch([(index, c.encode(command))])
    n = 0
    try:
        for size in (2, 3, 59, 256, 300, 1100):
            subs = []
            for _ in range(size):
                n += 1
                subs.append(c.encode(c.AppendMessage(request_id=f"r{n}", message_id=f"m{n}", session_id="s1",
                                                     user_id="alice", role="user", content=f"words of message {n}",
                                                     created_at=AT, tokens=4)))
            index += 1
            before = store.writer.cache_stats()["too_big"]
            results = sm.apply_batch([(index, c.encode(c.Batch(request_id="", entries=subs)))])
            assert all(r.ok for r in results)
            assert store.writer.cache_stats()["too_big"] == before, size
        assert sm.batch_redos == 0
        assert store.writer.execute("SELECT count(*) FROM messages").fetchall()[0][0] == n
    finally:
        store.close()


def test_apsw_still_caches_what_we_assume() -> None:
    """MAX_CACHED_SQL mirrors apsw's limit; if a new apsw changes it, this says so."""
    conn = apsw.Connection(":memory:")
    assert conn.cache_stats()["max_cacheable_bytes"] == MAX_CACHED_SQL
