"""The background WAL checkpointer: it copies the WAL into the database file, and a reader
that pins old frames neither blocks it for good nor makes it spin."""

from __future__ import annotations

import time
from pathlib import Path

from ccn_node.store.database import Store, open_connection


def fill(store: Store, rows: int) -> None:
    store.writer.execute("CREATE TABLE IF NOT EXISTS filler(x BLOB)")
    with store.writer:
        for _ in range(rows):
            store.writer.execute("INSERT INTO filler VALUES (randomblob(3000))")


def test_checkpointer_backfills_the_wal_and_tolerates_a_pinning_reader(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    store = Store(path, synchronous="normal")
    try:
        store.start_checkpointer()
        assert store.writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 16384
        small = path.stat().st_size
        fill(store, 2000)  # ~1,500 pages of WAL: past SQLite's own threshold (1,000), below ours
        # only the checkpointer can have copied them into the database file (the file grows
        # while a checkpoint runs; its count goes up when the checkpoint returns)
        checkpointer = store._checkpointer
        assert checkpointer is not None
        deadline = time.monotonic() + 10
        while path.stat().st_size < small + 5_000_000 or checkpointer.checkpoints == 0:
            assert time.monotonic() < deadline, (path.stat().st_size, checkpointer.checkpoints)
            time.sleep(0.05)

        reader = open_connection(path, readonly=True)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM filler").fetchall()  # pins the WAL as it is now
            fill(store, 2000)
            before = checkpointer.checkpoints
            time.sleep(0.5)
            # about one attempt per 100 ms tick, not a loop that spins on frames it cannot copy
            assert checkpointer.checkpoints - before <= 12
            reader.execute("COMMIT")
        finally:
            reader.close()
        assert store.writer.execute("SELECT count(*) FROM filler").fetchone()[0] == 4000
    finally:
        store.close()
