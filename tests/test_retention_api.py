"""Erasure and retention: the API on a real node, the sweep on a real LocalLog with a set clock."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import apsw
import pytest
from nodeproc import NodeProcess

from ccn_node.clock import parse_iso
from ccn_node.config import load_config, read_secret_file
from ccn_node.continuity.retention import RetentionService
from ccn_node.ledger.chain import audit
from ccn_node.ledger.ledger import load_signer
from ccn_node.ledger.schema import ledger_schema_sql
from ccn_node.ledger.tree_store import MerkleTree
from ccn_node.replication import commands as c
from ccn_node.replication.local_log import LocalLog
from ccn_node.replication.proposer import Proposer
from ccn_node.replication.state_machine import StateMachine
from ccn_node.store.database import Store


def say(node: NodeProcess, token: str, text: str) -> str:
    sid = node.start_conversation(token)
    r = node.send(sid, token, text)
    assert r.status == 200, r
    return sid


def hits(node: NodeProcess, token: str, q: str) -> int:
    r = node.request("GET", f"/api/v1/search?q={q}", token=token)
    assert r.status == 200, r
    return len(r.json()["hits"])


def test_erase_and_retention_api(node: NodeProcess) -> None:
    ann, bob, carol = node.token("ann"), node.token("bob"), node.token("carol")
    admin = node.token("boss", "admin")
    ann_sid = say(node, ann, "my pineapple allergy is a secret")
    say(node, bob, "pineapple pizza opinions")
    say(node, carol, "pineapple smoothie")
    assert hits(node, ann, "pineapple") >= 1

    # another user: 404 whether or not the name exists (names don't leak)
    assert node.request("DELETE", "/api/v1/users/ann/data", token=bob).status == 404
    assert node.request("DELETE", "/api/v1/users/nobody/data", token=bob).status == 404
    assert node.request("DELETE", "/api/v1/users/ann/data").status == 401
    assert node.request("DELETE", "/api/v1/users/nobody/data", token=admin).status == 404
    assert hits(node, ann, "pineapple") >= 1

    r = node.request("DELETE", "/api/v1/users/ann/data", token=ann)
    assert r.status == 200, r
    assert r.json()["erasure"]["messages_erased"] >= 2  # the question and the answer
    assert hits(node, ann, "pineapple") == 0
    assert hits(node, bob, "pineapple") >= 1
    conv = node.request("GET", f"/api/v1/conversation/{ann_sid}", token=ann).json()
    assert all(m["content"] == "" and m["erased_at"] for m in conv["messages"])
    assert all(len(m["content_sha256"]) == 64 for m in conv["messages"])

    r = node.request("DELETE", "/api/v1/users/carol/data", token=admin)
    assert r.status == 200 and r.json()["erasure"]["messages_erased"] >= 2
    assert hits(node, carol, "pineapple") == 0

    # retention: admin only, validated
    assert node.request("PUT", "/api/v1/users/bob/retention", token=bob, json_body={"days": 5}).status == 403
    r = node.request("PUT", "/api/v1/users/bob/retention", token=admin, json_body={"days": 0})
    assert r.status == 400 and r.json()["error"]["field"] == "days"
    assert node.request("PUT", "/api/v1/users/bob/retention", token=admin, json_body={"dayz": 3}).status == 400
    assert node.request("PUT", "/api/v1/users/zed/retention", token=admin, json_body={"days": 3}).status == 404
    r = node.request("PUT", "/api/v1/users/bob/retention", token=admin, json_body={"days": 30})
    assert r.status == 200 and r.json()["retention_days"] == 30

    # the CLI goes through the running node
    env = node.env
    base = [sys.executable, "-m", "ccn_node", "user"]
    out = subprocess.run([*base, "retention", "bob", "default", "--config", str(node.config_path)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([*base, "erase", "bob", "--config", str(node.config_path)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert hits(node, bob, "pineapple") == 0

    # after erasure the ledger still verifies, signatures and all, and holds the erasures
    node.stop()
    try:
        cfg = load_config(node.config_path)
        pem = read_secret_file(cfg.path(cfg.ledger.key_file), file=cfg.source, key="ledger.key_file")
        verifier = load_signer(cfg.node.name, pem).verifier()
        conn = apsw.Connection(str(cfg.database_path), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            assert audit(conn, [verifier]).ok
            kinds = [k for (k,) in conn.execute("SELECT kind FROM ledger_leaves WHERE kind = 'erase.user'")]
            assert len(kinds) == 3
            assert conn.execute("SELECT count(*) FROM messages WHERE user_id IN ('ann', 'carol', 'bob')"
                                " AND content != ''").fetchone()[0] == 0
            journal = b"".join(bytes(e) for (e,) in conn.execute("SELECT entry FROM command_journal"))
            assert b"pineapple" not in journal
        finally:
            conn.close()
    finally:
        node.start()


def test_sweep_erases_only_expired_content(tmp_path: Path) -> None:
    async def run() -> None:
        store = Store(tmp_path / "ccn.sqlite3", extra_schema=[ledger_schema_sql()])
        sm = StateMachine(store.writer, ledger=MerkleTree(store.writer))
        log = LocalLog(sm)
        await log.start()
        proposer = Proposer(log, 10.0)
        now = parse_iso("2025-06-01T00:00:00Z").timestamp()
        service = RetentionService(store, proposer, default_days=90, interval_s=3600, is_leader=lambda: True,
                                   clock=lambda: now)
        try:
            for user, days in (("ann", None), ("bob", 7)):
                await proposer.submit(c.CreateUser(request_id=user, user_id=user, name=user, role="user",
                                                   created_at="2025-01-01T00:00:00.000000Z", retention_days=days))
                await proposer.submit(c.StartConversation(request_id=f"s{user}", session_id=f"s{user}", user_id=user,
                                                          title="", created_at="2025-01-01T00:00:00.000000Z",
                                                          plate_version="1", plate_sha256="x"))
            for i, (user, when) in enumerate([("ann", "2025-02-01"), ("ann", "2025-05-01"), ("bob", "2025-05-20"),
                                              ("bob", "2025-05-30")]):
                await proposer.submit(c.AppendMessage(
                    request_id=f"m{i}", message_id=f"m{i}", session_id=f"s{user}", user_id=user, role="user",
                    content=f"text {i} kiwi", created_at=f"{when}T00:00:00.000000Z", tokens=2))
            first = await service.sweep()
            assert first["erased"] == {"ann": 1, "bob": 1}
            again = await service.sweep()
            assert again["erased"] == {}
            rows = await store.read(lambda conn: conn.execute(
                "SELECT message_id, content FROM messages ORDER BY message_id").fetchall())
            assert rows == [("m0", ""), ("m1", "text 1 kiwi"), ("m2", ""), ("m3", "text 3 kiwi")]
            erasures = await store.read(lambda conn: conn.execute(
                "SELECT user_id, reason, before FROM erasures ORDER BY user_id").fetchall())
            assert erasures == [("ann", "retention", "2025-03-03T00:00:00.000000Z"),
                                ("bob", "retention", "2025-05-25T00:00:00.000000Z")]
            assert await store.read(lambda conn: audit(conn, []).ok)
            service_off = RetentionService(store, proposer, default_days=90, interval_s=0.01,
                                           is_leader=lambda: False, clock=lambda: now + 10**9)
            service_off.start()
            await asyncio.sleep(0.05)
            await service_off.stop()
            assert service_off.last_sweep is None  # followers never sweep
        finally:
            await log.stop()
            store.close()

    asyncio.run(run())


@pytest.mark.parametrize("days", ["x", "-3"])
def test_cli_retention_rejects_bad_days(node: NodeProcess, days: str) -> None:
    out = subprocess.run([sys.executable, "-m", "ccn_node", "user", "retention", "bob", days,
                          "--config", str(node.config_path)], capture_output=True, text=True, env=node.env, timeout=60)
    assert out.returncode == 2 and "DAYS" in out.stderr
