"""The writer's page cache is small on purpose (WRITER_CACHE_KIB: measured cheaper per applied
message than a reader's 64 MiB), and a transaction larger than it must still commit whole."""

from __future__ import annotations

import os
from pathlib import Path

import apsw

from ccn_node.store.database import READER_CACHE_KIB, WRITER_CACHE_KIB, Store


def cache_kib(conn: apsw.Connection) -> int:
    return -conn.execute("PRAGMA cache_size").fetchall()[0][0]


def test_the_writer_keeps_its_smaller_cache_and_readers_theirs(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    try:
        assert WRITER_CACHE_KIB < READER_CACHE_KIB
        assert cache_kib(store.writer) == WRITER_CACHE_KIB
        assert store.read_sync(cache_kib) == READER_CACHE_KIB
        store.reopen_writer()  # after a snapshot restore: still the writer's size
        assert cache_kib(store.writer) == WRITER_CACHE_KIB
    finally:
        store.close()


def test_a_transaction_dirtying_more_pages_than_the_writer_cache_commits_whole(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    rows = [(i, os.urandom(1000)) for i in range(3 * WRITER_CACHE_KIB)]  # ~3x the cache, in one transaction
    try:
        store.writer.execute("CREATE TABLE t(i INTEGER PRIMARY KEY, b BLOB)")
        store.writer.execute("BEGIN IMMEDIATE")
        store.writer.executemany("INSERT INTO t VALUES (?, ?)", rows)
        # spilled to the WAL before COMMIT, yet invisible to a reader until then
        assert store.read_sync(lambda conn: conn.execute("SELECT count(*) FROM t").fetchall()[0][0]) == 0
        store.writer.execute("COMMIT")
        got = store.read_sync(lambda conn: conn.execute("SELECT count(*), sum(length(b)) FROM t").fetchall()[0])
        assert got == (len(rows), 1000 * len(rows))
        assert store.writer.execute("PRAGMA quick_check").fetchall()[0][0] == "ok"
    finally:
        store.close()
