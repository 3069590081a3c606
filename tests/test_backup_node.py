"""Backups and restore across the process boundary: `ccn-node backup` beside a running node,
the admin backup API, restore refused while the node runs, restore and point-in-time restore
into the stopped node, which then serves the restored state."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import GENEROUS_LIMITS
from nodeproc import NodeProcess

from ccn_node.config import write_secret_file
from ccn_node.store import backup

BACKUP_CONFIG = GENEROUS_LIMITS + """
[backup]
key_file = "keys/backup.key"
interval_s = 3600
keep = 3
"""


def cli(node: NodeProcess, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ccn_node", *args, "--config", str(node.config_path)],
        capture_output=True, text=True, env=node.env, timeout=timeout,
    )


@pytest.fixture(scope="module")
def bnode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    data = tmp_path_factory.mktemp("bnode")
    proc = NodeProcess(data, config_extra=BACKUP_CONFIG)
    write_secret_file(data / "keys" / "backup.key", backup.new_key_text())
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def turn(node: NodeProcess, token: str, sid: str, text: str) -> None:
    r = node.send(sid, token, text)
    assert r.status == 200, r


def contents(node: NodeProcess, token: str, sid: str) -> list[str]:
    r = node.request("GET", f"/api/v1/conversation/{sid}", token=token)
    assert r.status == 200, r
    return [m["content"] for m in r.json()["messages"] if m["role"] == "user"]


def test_backup_restore_and_pitr(bnode: NodeProcess) -> None:
    token = bnode.token("ann")
    sid = bnode.start_conversation(token)
    for i in range(1, 6):
        turn(bnode, token, sid, f"first batch {i}")

    # `ccn-node backup` while the node runs and keeps taking turns
    stop = threading.Event()
    during: list[int] = []

    def talk() -> None:
        i = 0
        while not stop.is_set():
            turn(bnode, token, sid, f"during backup {i}")
            during.append(i)
            i += 1

    talker = threading.Thread(target=talk)
    talker.start()
    try:
        out = cli(bnode, "backup", "--json")
    finally:
        stop.set()
        talker.join()
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["encrypted"] and info["integrity"] == "ok" and info["audit"].startswith("ledger OK"), info
    assert info["messages"] >= 10
    first_backup = Path(info["file"])
    assert first_backup.parent == bnode.data_dir / "backups"

    # the admin API writes one too; a plain user may not
    user_try = bnode.request("POST", "/api/v1/admin/backup", token=token)
    assert user_try.status == 403
    admin = bnode.token("root", "admin")
    r = bnode.request("POST", "/api/v1/admin/backup", token=admin)
    assert r.status == 200, r
    listing = bnode.request("GET", "/api/v1/admin/backups", token=admin).json()
    assert len(listing["backups"]) == 2 and 0 <= listing["age_seconds"] < 60
    metrics = bnode.request("GET", "/metrics").body.decode()
    assert "ccn_backup_age_seconds" in metrics

    for i in range(1, 4):
        turn(bnode, token, sid, f"after backup {i}")
    conv = bnode.request("GET", f"/api/v1/conversation/{sid}", token=token).json()
    third_after = next(m for m in conv["messages"] if m["content"] == "after backup 2")["created_at"]
    everything = contents(bnode, token, sid)

    # refused while the node runs, and nothing changed
    refused = cli(bnode, "restore", str(first_backup))
    assert refused.returncode == 1 and "running" in refused.stderr, refused.stderr
    assert contents(bnode, token, sid) == everything

    bnode.stop()
    done = cli(bnode, "restore", str(first_backup))
    assert done.returncode == 0, done.stderr
    db = bnode.data_dir / "ccn.sqlite3"
    pre = Path(str(db) + ".pre-restore")
    assert pre.exists() and "pre-restore" in done.stdout
    bnode.start()
    restored = contents(bnode, token, sid)
    assert restored[:5] == [f"first batch {i}" for i in range(1, 6)]
    assert not any(t.startswith("after backup") for t in restored)
    assert len(restored) <= 5 + len(during)

    # point in time, from the kept database's journal: up to and including "after backup 2"
    bnode.stop()
    keep_pre = bnode.data_dir / "history.sqlite3"
    pre.rename(keep_pre)
    pitr = cli(bnode, "restore", str(keep_pre), "--at-time", third_after)
    assert pitr.returncode == 0, pitr.stderr
    bnode.start()
    at = contents(bnode, token, sid)
    assert at == everything[: everything.index("after backup 2") + 1]


def test_restore_refuses_a_bad_backup(bnode: NodeProcess, tmp_path: Path) -> None:
    bnode.stop()
    try:
        damaged = tmp_path / "damaged.sqlite3.enc"
        newest = backup.list_backups(bnode.data_dir / "backups")[-1]
        data = bytearray(newest.path.read_bytes())
        data[len(data) // 2] ^= 0x01
        damaged.write_bytes(bytes(data))
        before = (bnode.data_dir / "ccn.sqlite3").read_bytes()
        out = cli(bnode, "restore", str(damaged))
        assert out.returncode == 1 and "authentication failed" in out.stderr, out.stderr
        not_db = tmp_path / "plain.sqlite3"
        not_db.write_bytes(b"SQLite format 3\x00" + b"\x00" * 5000)
        out = cli(bnode, "restore", str(not_db))
        assert out.returncode == 1 and "restore refused" in out.stderr, out.stderr
        assert (bnode.data_dir / "ccn.sqlite3").read_bytes() == before
    finally:
        bnode.start()
