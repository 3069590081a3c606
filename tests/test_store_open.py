"""The integrity check at open: skipped only when the file is exactly as a clean close left it
(quick_check reads the whole file: ~5 s at 1M messages), run after anything else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ccn_node.store.database import Store, StoreError, clean_close_mark


def make(path: Path) -> None:
    store = Store(path)
    with store.writer:
        store.writer.execute("CREATE TABLE IF NOT EXISTS t(x)")
        store.writer.executemany("INSERT INTO t VALUES (?)", [(os.urandom(64),) for _ in range(2000)])
    store.close()


def test_a_clean_close_lets_the_next_open_skip_the_check_once(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    make(path)
    assert clean_close_mark(path).exists()
    store = Store(path)
    assert not store.integrity_checked
    assert not clean_close_mark(path).exists()  # taken at open: a crash from here leaves none
    store.close()
    store = Store(path)
    assert not store.integrity_checked  # that close was clean too
    store.close()


def test_without_a_clean_close_the_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    make(path)
    crashed = Store(path)  # open, write, and never close: as a kill -9 leaves it
    with crashed.writer:
        crashed.writer.execute("INSERT INTO t VALUES (1)")
    again = Store(path)
    try:
        assert again.integrity_checked
        assert again.writer.execute("SELECT count(*) FROM t").fetchall() == [(2001,)]
    finally:
        again.close()
        crashed.writer.close()


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["rewritten", "rewritten-same-mtime"])
def test_a_file_changed_after_a_clean_close_is_checked_and_refused(tmp_path: Path, keep_mtime: bool) -> None:
    path = tmp_path / "db.sqlite3"
    make(path)
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-3000:-2000] = os.urandom(1000)  # damage in the last page
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(StoreError, match=r"db\.sqlite3"):
        Store(path)


def test_a_stale_or_garbled_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    make(path)
    clean_close_mark(path).write_text("{not json")
    store = Store(path)
    assert store.integrity_checked and not clean_close_mark(path).exists()
    store.close()
