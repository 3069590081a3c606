"""`ccn-node verify` on a data directory made by a real node (then stopped): it passes on the
untouched copy and names the first bad entry after each kind of tampering."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest
from nodeproc import NodeProcess

from ccn_node.config import load_config
from ccn_node.datadir import ledger_verifiers as _ledger_verifiers
from ccn_node.replication.audit import VerifyReport, verify_database

EXTRA = """
[ledger]
block_seconds = 0.3
[limits]
requests_per_minute = 100000
burst = 10000
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with users, two conversations, messages, an erasure and several blocks."""
    node = NodeProcess(tmp_path_factory.mktemp("verify") / "node", config_extra=EXTRA).start()
    try:
        for user in ("alice", "bob"):
            token = node.token(user)
            sid = node.request("POST", "/api/v1/conversation/start", token=token, json_body={}).json()["session_id"]
            for i in range(3):
                r = node.request("POST", f"/api/v1/conversation/{sid}/message", token=token,
                                 json_body={"content": f"{user} says {i}"})
                assert r.status == 200, r
        admin = node.token("admin", "admin")
        assert node.request("DELETE", "/api/v1/users/bob/data", token=admin).status == 200
        time.sleep(1.0)  # a few seals after the last write
    finally:
        node.stop()
    return node.data_dir


@pytest.fixture
def copy(made: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "node"
    shutil.copytree(made, dst)
    return dst


def run_verify(data_dir: Path) -> VerifyReport:
    """Serial and parallel (corpus split between two processes) must find the same thing."""
    cfg = load_config(data_dir / "ccn.toml")
    serial = verify_database(cfg.database_path, _ledger_verifiers(cfg), origin=cfg.node.name, parallel=False)
    parallel = verify_database(cfg.database_path, _ledger_verifiers(cfg), origin=cfg.node.name, parallel=True)
    assert serial.problem == parallel.problem
    if serial.problem is None:  # rows checked before stopping at a problem depend on the split
        assert serial.corpus_rows == parallel.corpus_rows
    return serial


def tamper(data_dir: Path, *sql: str) -> None:
    conn = apsw.Connection(str(data_dir / "ccn.sqlite3"))
    with conn:
        for s in sql:
            conn.execute(s)
    conn.close()


def messages(data_dir: Path) -> list[tuple[str, str]]:
    conn = apsw.Connection(str(data_dir / "ccn.sqlite3"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return list(conn.execute("SELECT message_id, user_id FROM messages WHERE erased_at IS NULL ORDER BY rowid"))
    finally:
        conn.close()


def test_untouched_copy_verifies_through_the_cli(copy: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "ccn_node", "verify", "--config", str(copy / "ccn.toml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("verify OK:") and out.stdout.count("\n") == 1
    report = run_verify(copy)
    assert report.ok and report.ledger.blocks >= 2 and report.corpus_rows > 10


def test_tampered_content(copy: Path) -> None:
    mid = messages(copy)[0][0]
    tamper(copy, f"UPDATE messages SET content = 'something else' WHERE message_id = '{mid}'")
    problem = run_verify(copy).problem
    assert problem is not None and (problem.table, problem.row) == ("messages", mid)
    assert "content" in problem.message
    out = subprocess.run([sys.executable, "-m", "ccn_node", "verify", "--config", str(copy / "ccn.toml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and mid in out.stdout and "messages" in out.stdout


def test_deleted_row(copy: Path) -> None:
    mid = messages(copy)[2][0]
    tamper(copy, f"DELETE FROM messages WHERE message_id = '{mid}'")
    problem = run_verify(copy).problem
    assert problem is not None and (problem.table, problem.row) == ("messages", mid)
    assert "missing" in problem.message


def test_two_rows_swapped(copy: Path) -> None:
    (m1, _), (m2, _) = messages(copy)[:2]
    tamper(copy,
           "CREATE TEMP TABLE t AS SELECT message_id, content, content_sha256 FROM messages"
           f" WHERE message_id IN ('{m1}', '{m2}')",
           f"UPDATE messages SET content = (SELECT content FROM t WHERE message_id = '{m2}'),"
           f" content_sha256 = (SELECT content_sha256 FROM t WHERE message_id = '{m2}') WHERE message_id = '{m1}'",
           f"UPDATE messages SET content = (SELECT content FROM t WHERE message_id = '{m1}'),"
           f" content_sha256 = (SELECT content_sha256 FROM t WHERE message_id = '{m1}') WHERE message_id = '{m2}'")
    problem = run_verify(copy).problem
    assert problem is not None and (problem.table, problem.row) == ("messages", m1)
    assert "content_sha256" in problem.message


def test_edited_block(copy: Path) -> None:
    tamper(copy, "UPDATE verification_chain SET data_snapshot = '{\"ledger_size\":1}' WHERE block_number = 2")
    problem = run_verify(copy).problem
    assert problem is not None and (problem.table, problem.row) == ("verification_chain", "2")
    assert problem.message.startswith("current_hash")  # what differs: the stored hash vs the fields


def test_swapped_signature(copy: Path) -> None:
    conn = apsw.Connection(str(copy / "ccn.sqlite3"))
    (one,), (two,) = conn.execute("SELECT checkpoint FROM verification_chain WHERE block_number IN (1, 2)"
                                  " ORDER BY block_number")
    conn.close()
    swapped = two.rsplit("\n\n", 1)[0] + "\n\n" + one.rsplit("\n\n", 1)[1]
    tamper(copy, "UPDATE verification_chain SET checkpoint = '" + swapped.replace("'", "''") + "'"
           " WHERE block_number = 2")
    problem = run_verify(copy).problem
    assert problem is not None and (problem.table, problem.row) == ("verification_chain", "2")
    assert "does not verify" in problem.message


def test_erased_messages_still_verify_and_a_refilled_one_does_not(copy: Path) -> None:
    conn = apsw.Connection(str(copy / "ccn.sqlite3"))
    erased = conn.execute("SELECT message_id FROM messages WHERE erased_at IS NOT NULL LIMIT 1").fetchone()[0]
    conn.close()
    assert run_verify(copy).ok
    tamper(copy, f"UPDATE messages SET content = 'resurrected' WHERE message_id = '{erased}'")
    problem = run_verify(copy).problem
    assert problem is not None and (problem.table, problem.row) == ("messages", erased)


def test_tampered_last_row_is_found_in_the_tail_half_too(copy: Path) -> None:
    mid = messages(copy)[-1][0]
    tamper(copy, f"UPDATE messages SET tokens = tokens + 1 WHERE message_id = '{mid}'")
    problem = run_verify(copy).problem
    assert problem is not None and (problem.table, problem.row) == ("messages", mid)
    assert problem.message.startswith("tokens is")
