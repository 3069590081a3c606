"""Backups, encryption, point-in-time restore and erasure on real SQLite files, in process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from ccn_node.continuity.retrieval import search
from ccn_node.ledger.chain import audit
from ccn_node.ledger.schema import ledger_schema_sql
from ccn_node.ledger.tree_store import MerkleTree
from ccn_node.replication import commands as c
from ccn_node.replication import recovery
from ccn_node.replication.state_machine import StateMachine
from ccn_node.store import backup, journal
from ccn_node.store.database import Store

KEY = bytes(range(32))


def ts(minute: int, second: int = 0) -> str:
    return f"2025-01-01T00:{minute:02d}:{second:02d}.000000Z"


class Corpus:
    """A node's database driven directly through the state machine, with fixed timestamps."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = Store(path, extra_schema=[ledger_schema_sql()])
        self.sm = StateMachine(self.store.writer, ledger=MerkleTree(self.store.writer))
        self.index = self.sm.applied_index
        self.lock = threading.Lock()

    def apply(self, *cmds: c.Command) -> list:
        with self.lock:
            entries = []
            for cmd in cmds:
                self.index += 1
                entries.append((self.index, c.encode(cmd)))
            return self.sm.apply_batch(entries)

    def user(self, name: str, at: str = ts(0)) -> None:
        self.apply(
            c.CreateUser(request_id=f"u-{name}", user_id=name, name=name, role="user", created_at=at),
            c.StartConversation(request_id=f"s-{name}", session_id=f"s-{name}", user_id=name, title="",
                                created_at=at, plate_version="1", plate_sha256="x"),
        )

    def say(self, name: str, n: int, content: str, at: str) -> None:
        self.apply(c.AppendMessage(request_id=f"r-{name}-{n}", message_id=f"m-{name}-{n}", session_id=f"s-{name}",
                                   user_id=name, role="user", content=content, created_at=at, tokens=3))

    def size(self) -> int:
        return MerkleTree(self.store.writer).size()

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def corpus(tmp_path: Path) -> Iterator[Corpus]:
    cp = Corpus(tmp_path / "ccn.sqlite3")
    try:
        yield cp
    finally:
        cp.close()


def messages(path: Path) -> list[tuple[str, str]]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [(r[0], r[1]) for r in conn.execute("SELECT message_id, content FROM messages ORDER BY rowid")]
    finally:
        conn.close()


# -- backups -----------------------------------------------------------------------------


def test_backup_while_writes_continue(corpus: Corpus, tmp_path: Path) -> None:
    corpus.user("ann")
    for i in range(2000):
        corpus.say("ann", i, f"message number {i} about gardens", ts(1))
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        i = 10_000
        while not stop.is_set():
            corpus.say("ann", i, f"late message {i}", ts(2))
            i += 1
            written[0] += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        info = backup.create_backup(corpus.path, tmp_path / "backups", step_pages=4, pause_s=0.002)
    finally:
        stop.set()
        thread.join()
    assert written[0] > 0, "the writer was blocked for the whole backup"
    assert info.integrity == "ok" and info.audit.startswith("ledger OK")
    check = backup.verify_database(info.path)
    assert check.applied_index == info.applied_index
    assert check.ledger_size == info.ledger_size
    assert check.messages == info.messages >= 2000
    assert info.sha256 == backup.sha256_file(info.path)
    assert Path(info.file + ".json").exists()


def test_rotation_keeps_n_and_never_drops_old_on_failed_check(corpus: Corpus, tmp_path: Path) -> None:
    corpus.user("ann")
    d = tmp_path / "backups"
    made = []
    for i in range(4):
        corpus.say("ann", i, f"text {i}", ts(1, i))
        made.append(backup.create_backup(corpus.path, d, keep=3).file)
    kept = [b.file for b in backup.list_backups(d)]
    assert kept == made[1:]

    def corrupt(path: Path) -> None:
        conn = apsw.Connection(str(path))
        conn.execute("UPDATE messages SET content_sha256 = 'bad' WHERE message_id = 'm-ann-1'")
        conn.close()

    corpus.say("ann", 9, "one more", ts(2))
    with pytest.raises(backup.BackupError, match=r"ledger audit failed: .*m-ann-1"):
        backup.create_backup(corpus.path, d, keep=3, before_verify=corrupt)
    assert [b.file for b in backup.list_backups(d)] == kept
    assert not list(d.glob(".tmp-*"))

    def smash(path: Path) -> None:  # garbage over every page header but the first page's
        size = path.stat().st_size
        with open(path, "r+b") as f:
            for page in range(1, size // 4096):
                f.seek(page * 4096)
                f.write(b"\x0d\xff\xff\xff\xff\xff\xff\xff")

    with pytest.raises(backup.BackupError, match=r"integrity_check|ledger|cannot open|not a ccn-node"):
        backup.create_backup(corpus.path, d, keep=3, before_verify=smash)
    assert [b.file for b in backup.list_backups(d)] == kept


def test_encrypted_round_trip_and_refusals(corpus: Corpus, tmp_path: Path) -> None:
    corpus.user("ann")
    for i in range(300):
        corpus.say("ann", i, "x" * 5000 + str(i), ts(1))  # > 1 MiB: several chunks
    info = backup.create_backup(corpus.path, tmp_path / "b", key=KEY)
    assert info.encrypted and info.path.suffix == ".enc"
    raw = info.path.read_bytes()
    assert b"xxxxxxxxxx" not in raw and raw.startswith(backup.MAGIC)
    plain, check = backup.open_candidate(info.path, tmp_path / "w", key=KEY)
    assert check is not None and check.messages == 300
    assert messages(plain) == messages(corpus.path)

    with pytest.raises(backup.BackupError, match=r"wrong key"):
        backup.open_candidate(info.path, tmp_path / "w", key=bytes(32))
    with pytest.raises(backup.BackupError, match=r"encrypted; configure backup.key_file"):
        backup.open_candidate(info.path, tmp_path / "w", key=None)

    for offset in (len(raw) // 2, 12, len(raw) - 3):  # body, header (chunk size), last tag
        bad = tmp_path / f"flipped-{offset}.enc"
        data = bytearray(raw)
        data[offset] ^= 0x01
        bad.write_bytes(bytes(data))
        with pytest.raises(backup.BackupError, match=r"authentication failed|damaged"):
            backup.decrypt_file(bad, None, KEY)
    truncated = tmp_path / "truncated.enc"
    truncated.write_bytes(raw[: len(raw) - (backup.CHUNK // 2)])
    with pytest.raises(backup.BackupError, match=r"authentication failed"):
        backup.decrypt_file(truncated, None, KEY)
    # the sidecar's hash catches an altered file before decryption is even tried
    altered = bytearray(raw)
    altered[len(raw) // 3] ^= 0x80
    info.path.write_bytes(bytes(altered))
    with pytest.raises(backup.BackupError, match=r"sha256 differs from its sidecar"):
        backup.open_candidate(info.path, tmp_path / "w", key=KEY)
    assert list((tmp_path / "w").glob(".restore-*")) == [plain]  # refused candidates leave nothing


def test_parse_key_forms() -> None:
    import base64

    assert backup.parse_key(KEY) == KEY
    assert backup.parse_key(KEY.hex().encode() + b"\n") == KEY
    assert backup.parse_key(base64.b64encode(KEY) + b"\n") == KEY
    with pytest.raises(ValueError, match=r"32 bytes"):
        backup.parse_key(b"short")


def test_install_keeps_pre_restore(corpus: Corpus, tmp_path: Path) -> None:
    corpus.user("ann")
    corpus.say("ann", 1, "before", ts(1))
    info = backup.create_backup(corpus.path, tmp_path / "b")
    corpus.say("ann", 2, "after", ts(2))
    corpus.close()
    candidate, _ = backup.open_candidate(info.path, corpus.path.parent, key=None)
    with backup.DatabaseLock(corpus.path):
        kept = backup.install_database(candidate, corpus.path)
    assert kept is not None and [m for m, _ in messages(kept)] == ["m-ann-1", "m-ann-2"]
    assert [m for m, _ in messages(corpus.path)] == ["m-ann-1"]


def test_lock_is_exclusive(tmp_path: Path) -> None:
    db = tmp_path / "x.sqlite3"
    with backup.DatabaseLock(db), pytest.raises(backup.BackupError, match=r"held by a running ccn-node"):
        backup.DatabaseLock(db).acquire()
    with backup.DatabaseLock(db):
        pass


# -- point-in-time restore ----------------------------------------------------------------


def _history(corpus: Corpus) -> dict[int, int]:
    """Ten messages, one per minute; returns ledger size after each message number."""
    corpus.user("ann")
    sizes = {}
    for i in range(1, 11):
        corpus.say("ann", i, f"note {i}", ts(i))
        sizes[i] = corpus.size()
    return sizes


@pytest.mark.parametrize("with_base", [False, True])
def test_pitr_to_size_and_time(corpus: Corpus, tmp_path: Path, with_base: bool) -> None:
    corpus.user("ann")
    bases = []
    for i in range(1, 11):
        corpus.say("ann", i, f"note {i}", ts(i))
        if with_base and i in (3, 8):
            bases.append(backup.create_backup(corpus.path, tmp_path / "b", key=KEY))
    tree = MerkleTree(corpus.store.writer)
    size_at_6 = journal.index_at_size(corpus.store.writer, 0)  # just exercise the 0 case
    assert size_at_6 is not None
    target_size = tree.size() - 4  # after message 6
    out, report = recovery.point_in_time(corpus.path, recovery.Target(size=target_size), tmp_path / "w",
                                         bases=bases, key=KEY)
    assert [m for m, _ in messages(out)] == [f"m-ann-{i}" for i in range(1, 7)]
    assert report.ledger_size == target_size
    assert report.ledger_root == tree.root(target_size).hex()
    if with_base:
        assert report.base.endswith(".enc") and report.replayed == 3  # from the backup at message 3
    out2, report2 = recovery.point_in_time(corpus.path, recovery.Target(at=ts(4, 30)), tmp_path / "w2", bases=bases,
                                           key=KEY)
    assert [m for m, _ in messages(out2)] == [f"m-ann-{i}" for i in range(1, 5)]
    assert report2.ledger_root == tree.root(report2.ledger_size).hex()
    # time given in another zone, same instant
    out3, _ = recovery.point_in_time(corpus.path, recovery.Target(at="2025-01-01T01:07:00+01:00"), tmp_path / "w3")
    assert [m for m, _ in messages(out3)] == [f"m-ann-{i}" for i in range(1, 8)]
    with pytest.raises(backup.BackupError, match=r"never reached"):
        recovery.point_in_time(corpus.path, recovery.Target(size=10_000), tmp_path / "w4")
    with pytest.raises(backup.BackupError, match=r"not an ISO 8601"):
        recovery.point_in_time(corpus.path, recovery.Target(at="yesterday"), tmp_path / "w4")


def test_erasure_scrubs_journal_keeps_ledger_and_pitr_cannot_resurrect(corpus: Corpus, tmp_path: Path) -> None:
    corpus.user("ann")
    corpus.user("bob")
    corpus.say("ann", 1, "ann's secret orchid recipe", ts(1))
    corpus.say("bob", 1, "bob talks about orchid care", ts(2))
    base = backup.create_backup(corpus.path, tmp_path / "b")
    corpus.say("ann", 2, "ann again about the orchid", ts(3))
    size_before_erasure = corpus.size()
    conn = corpus.store.writer
    corpus.sm.catch_up_search_index()  # as the node does before a search (Store.read_searchable)
    assert len(search(conn, "ann", "orchid", 10, 0)) == 2
    [result] = corpus.apply(c.EraseUserData(request_id="e1", user_id="ann", erased_at=ts(4)))
    assert result.ok and result.value["messages_erased"] == 2
    # content gone from rows, FTS and journal; hashes and ledger kept
    rows = conn.execute("SELECT content, content_sha256, erased_at FROM messages WHERE user_id = 'ann'").fetchall()
    assert [r[0] for r in rows] == ["", ""]
    assert rows[0][1] == c.content_sha256("ann's secret orchid recipe") and rows[0][2] == ts(4)
    assert search(conn, "ann", "orchid", 10, 0) == []
    assert len(search(conn, "bob", "orchid", 10, 0)) == 1
    blob = b"".join(bytes(e) for (e,) in conn.execute("SELECT entry FROM command_journal"))
    assert b"secret orchid" not in blob and b"ann again" not in blob and b"bob talks" not in blob
    held = conn.execute("SELECT count(*) FROM command_journal WHERE entry = ?", (journal.HELD_BY_CORPUS,))
    assert held.fetchone()[0] == 3  # each message is its leaf + its row: no third copy of the text
    assert audit(conn, []).ok
    # the erasure itself is a logged command with its leaf
    assert conn.execute("SELECT kind FROM ledger_leaves ORDER BY idx DESC LIMIT 1").fetchone()[0] == "erase.user"
    # a restore to before the erasure, from a backup that still holds the text, stays erased
    out, report = recovery.point_in_time(corpus.path, recovery.Target(size=size_before_erasure), tmp_path / "w",
                                         bases=[base])
    assert report.purged >= 1
    restored = dict(messages(out))
    assert restored["m-ann-1"] == "" and restored["m-ann-2"] == "" and restored["m-bob-1"].startswith("bob")
    assert b"secret orchid" not in out.read_bytes()
    assert report.ledger_root == MerkleTree(conn).root(size_before_erasure).hex()
    # replaying through the erasure gives the same ledger and the same erasure count
    out2, report2 = recovery.point_in_time(corpus.path, recovery.Target(size=corpus.size()), tmp_path / "w2")
    assert report2.ledger_root == MerkleTree(conn).root().hex()
    assert dict(messages(out2)) == {"m-ann-1": "", "m-bob-1": "bob talks about orchid care", "m-ann-2": ""}
    c2 = apsw.Connection(str(out2))
    assert c2.execute("SELECT messages_erased FROM erasures").fetchall() == [(2,)]
    c2.close()


def test_pitr_rebuilds_held_entries_and_refuses_a_row_that_does_not_match(corpus: Corpus, tmp_path: Path) -> None:
    """A message's journal entry is rebuilt from its ledger leaf and its row; a row whose text no
    longer hashes to the leaf (and was not erased) is named, never replayed."""
    corpus.user("ann")
    corpus.say("ann", 1, "first words", ts(1))
    corpus.say("ann", 2, "second words", ts(2))
    [rejected] = corpus.apply(c.AppendMessage(request_id="late", message_id="m-x", session_id="s-nobody",
                                              user_id="ann", role="user", content="kept whole", created_at=ts(3),
                                              tokens=2))
    assert not rejected.ok
    conn = corpus.store.writer
    entries = dict(conn.execute("SELECT log_index, entry FROM command_journal").fetchall())
    assert sum(1 for e in entries.values() if e == journal.HELD_BY_CORPUS) == 2
    assert any(b"kept whole" in bytes(e) for e in entries.values())  # no row holds it: kept in the journal
    out, report = recovery.point_in_time(corpus.path, recovery.Target(size=corpus.size()), tmp_path / "w")
    assert dict(messages(out)) == {"m-ann-1": "first words", "m-ann-2": "second words"}
    assert report.ledger_root == MerkleTree(conn).root().hex()
    corpus.sm.catch_up_search_index()  # the update trigger deletes from the index: the row must be in it
    conn.execute("UPDATE messages SET content = 'other words' WHERE message_id = 'm-ann-2'")
    with pytest.raises(backup.BackupError, match=r"message m-ann-2 does not match its ledger leaf"):
        recovery.point_in_time(corpus.path, recovery.Target(size=corpus.size()), tmp_path / "w2")
    conn.execute("DELETE FROM messages WHERE message_id = 'm-ann-1'")
    with pytest.raises(backup.BackupError, match=r"message m-ann-1 is missing from the source"):
        recovery.point_in_time(corpus.path, recovery.Target(size=corpus.size()), tmp_path / "w3")


def test_purge_backups_removes_user_content(corpus: Corpus, tmp_path: Path) -> None:
    corpus.user("ann")
    corpus.user("bob")
    corpus.say("ann", 1, "ann's zebra diary", ts(1))
    corpus.say("bob", 1, "bob's zebra notes", ts(2))
    d = tmp_path / "b"
    plain = backup.create_backup(corpus.path, d)
    enc = backup.create_backup(corpus.path, d, key=KEY)
    report = recovery.purge_backups(d, "ann", None, ts(5), key=KEY)
    assert [r["action"] for r in report] == ["rewritten", "rewritten"]
    assert b"ann's zebra" not in plain.path.read_bytes()
    out, check = backup.open_candidate(enc.path, tmp_path / "w", key=KEY)
    assert dict(messages(out)) == {"m-ann-1": "", "m-bob-1": "bob's zebra notes"}
    assert check is not None and check.audit.startswith("ledger OK")
    assert backup.list_backups(d)[0].purged[0]["user_id"] == "ann"


# -- retention -------------------------------------------------------------------------


def test_retention_due_erasures_only_old_content(corpus: Corpus) -> None:
    from ccn_node.clock import parse_iso
    from ccn_node.continuity.retention import due_erasures

    corpus.user("ann")
    corpus.user("bob")
    corpus.say("ann", 1, "old ann", "2024-12-20T00:00:00.000000Z")
    corpus.say("ann", 2, "new ann", "2025-03-25T00:00:00.000000Z")
    corpus.say("bob", 1, "bob mid", "2025-03-01T00:00:00.000000Z")
    corpus.apply(c.SetUserRetention(request_id="ret", user_id="bob", retention_days=10))
    now = parse_iso("2025-04-01T00:00:00Z").timestamp()
    due = dict(due_erasures(corpus.store.writer, 90, now))
    assert set(due) == {"ann", "bob"}
    assert due["ann"] == "2025-01-01T00:00:00.000000Z"  # 90 days before now
    assert due["bob"] == "2025-03-22T00:00:00.000000Z"  # bob's own 10 days
    for user, before in due.items():
        corpus.apply(c.EraseUserData(request_id=f"e-{user}", user_id=user, erased_at="2025-04-01T00:00:00.000000Z",
                                     before=before, reason="retention"))
    assert dict(messages(corpus.path)) == {"m-ann-1": "", "m-ann-2": "new ann", "m-bob-1": ""}
    assert due_erasures(corpus.store.writer, 90, now) == []
    assert audit(corpus.store.writer, []).ok


def test_pitr_inside_a_raft_batch(corpus: Corpus, tmp_path: Path) -> None:
    """Raft puts several commands in one log entry; the journal is per command, so a target
    can fall inside a batch and a base backup is found by command index."""
    corpus.user("ann")
    corpus.say("ann", 1, "single", ts(1))
    base = backup.create_backup(corpus.path, tmp_path / "b")
    subs = [c.encode(c.AppendMessage(request_id=f"rb{i}", message_id=f"m-ann-b{i}", session_id="s-ann",
                                     user_id="ann", role="user", content=f"batched {i}", created_at=ts(2, i),
                                     tokens=2)) for i in range(4)]
    corpus.apply(c.Batch(request_id="batch", entries=subs))
    corpus.say("ann", 2, "after the batch", ts(3))
    tree = MerkleTree(corpus.store.writer)
    target = tree.size() - 3  # after the second batched message
    out, report = recovery.point_in_time(corpus.path, recovery.Target(size=target), tmp_path / "w", bases=[base])
    assert [m for m, _ in messages(out)] == ["m-ann-1", "m-ann-b0", "m-ann-b1"]
    assert report.base == base.file and report.ledger_root == tree.root(target).hex()
    whole, _ = recovery.point_in_time(corpus.path, recovery.Target(size=tree.size()), tmp_path / "w2")
    assert messages(whole) == messages(corpus.path)
