"""The Raft snapshot container and what a member accepts from it: this code writes version 2
and reads 1 and 2 (a member on older code refuses a 2 and stops, instead of installing a
database laid out in a way it cannot append to); a database of a newer schema is refused."""

from __future__ import annotations

from pathlib import Path

import apsw
import msgspec
import pytest
from corpus_commands import create_user

from ccn_node.replication import commands as c
from ccn_node.replication.raft_snapshot import (
    MAGIC,
    VERSION,
    SnapshotFormatError,
    SnapshotHeader,
    read_snapshot,
    write_snapshot,
)
from ccn_node.replication.state_machine import StateMachine
from ccn_node.store.database import Store
from ccn_node.store.schema import SCHEMA_VERSION, SchemaTooNewError

HEADER = SnapshotHeader(last=(b"x", 9, 2), prev=(b"w", 8, 2), cluster=["127.0.0.1:1", "127.0.0.1:2"])


def _container(path: Path, version: int, db: bytes) -> None:
    encoded = msgspec.msgpack.encode(msgspec.structs.replace(HEADER, version=version))
    path.write_bytes(MAGIC + len(encoded).to_bytes(4, "little") + encoded + db)


def test_version_2_is_written_and_versions_1_and_2_are_read(tmp_path: Path) -> None:
    db = tmp_path / "db"
    db.write_bytes(b"database bytes")
    write_snapshot(str(tmp_path / "snap"), HEADER, str(db))
    header = read_snapshot(str(tmp_path / "snap"), str(tmp_path / "out"))
    assert VERSION == 2 and header.version == 2 and header.last == (b"x", 9, 2)
    assert (tmp_path / "out").read_bytes() == b"database bytes"
    _container(tmp_path / "old", 1, b"older bytes")
    assert read_snapshot(str(tmp_path / "old"), str(tmp_path / "out1")).version == 1
    assert (tmp_path / "out1").read_bytes() == b"older bytes"
    _container(tmp_path / "new", 3, b"")
    with pytest.raises(SnapshotFormatError, match="version 3 is unknown"):
        read_snapshot(str(tmp_path / "new"), str(tmp_path / "out3"))


def test_a_snapshot_of_a_newer_schema_is_refused_and_the_database_kept(tmp_path: Path) -> None:
    ours = Store(tmp_path / "ours.sqlite3", synchronous="normal")
    theirs = Store(tmp_path / "theirs.sqlite3", synchronous="normal")
    try:
        sm = StateMachine(ours.writer)
        sm.apply_batch([(1, c.encode(create_user("alice")))])
        other = StateMachine(theirs.writer)
        other.apply_batch([(1, c.encode(create_user("alice"))), (2, c.encode(create_user("bob")))])
        other.backup_to(str(tmp_path / "snap.sqlite3"))
        snap = apsw.Connection(str(tmp_path / "snap.sqlite3"))
        snap.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        snap.close()
        with pytest.raises(SchemaTooNewError, match="newer than this ccn-node"):
            sm.restore_from(str(tmp_path / "snap.sqlite3"))
        assert ours.writer.execute("SELECT user_id FROM users").fetchall() == [("alice",)]
        assert ours.writer.execute("PRAGMA user_version").fetchall()[0][0] == SCHEMA_VERSION
    finally:
        ours.close()
        theirs.close()
