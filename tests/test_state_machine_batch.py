"""A Batch entry (Raft's group of one tick's proposals) must leave the database exactly as the
same commands applied one entry each: its fast path (one savepoint, rows held for multi-row
INSERTs, outcomes and conversation counters kept in memory) is an optimisation only."""

from __future__ import annotations

from pathlib import Path

import pytest
from corpus_commands import AT, at, create_user, start_conversation
from corpus_commands import append_message as msg

from ccn_node.ledger import merkle
from ccn_node.ledger.ledger import Ledger
from ccn_node.ledger.note import NoteSigner
from ccn_node.ledger.schema import ledger_schema_sql
from ccn_node.replication import commands as c
from ccn_node.replication.log import ApplyResult
from ccn_node.replication.state_machine import StateMachine
from ccn_node.store.database import Store

SIGNER = NoteSigner.generate("batch-test.example/log")


def setup_commands() -> list[c.Command]:
    return [
        create_user("alice", request_id="u1"),
        create_user("bob", request_id="u2"),
        start_conversation("s1", "alice", request_id="c1", title="a"),
        start_conversation("s2", "bob", request_id="c2", title="b"),
        msg(0, "s1", "alice", "the lighthouse keeper kept a logbook of storms"),
    ]


def mixed_commands() -> list[bytes]:
    """Every path of the fast path: plain messages, outcomes seen before and inside the Batch,
    idempotency keys, refusals, a validation message and other commands mid-Batch (flushes),
    a seal that reads the tree, and a duplicate primary key that makes the Batch redo itself."""
    cmds: list[c.Command] = []
    for i in range(1, 40):
        session, user = ("s1", "alice") if i % 3 else ("s2", "bob")
        cmds.append(
            msg(
                i,
                session,
                user,
                f"message {i} about sailing boats and harbour lights number {i}",
                idempotency_key=f"k{i}" if i % 5 == 0 else None,
            )
        )
    cmds += [
        msg(0, "s1", "alice", "retry of a message applied before", request_id="r0"),  # stored outcome
        msg(5, "s2", "bob", "retry inside the same batch", request_id="r5"),  # outcome held in the Batch
        msg(100, "s1", "alice", "same idempotency key, new request id", idempotency_key="k10"),
        msg(101, "nope", "alice", "unknown conversation"),
        msg(102, "s1", "bob", "someone else's conversation"),
        msg(103, "s1", "alice", "bad role", role="system"),
        c.RegisterInstance(
            request_id="i1", instance_id="inst-1", session_id="s1", node_id="n1", spawned_at=AT, plate_version="v1"
        ),
        msg(104, "s1", "assistant", "an instance answer", role="assistant"),  # user mismatch → refused
        msg(
            105,
            "s1",
            "alice",
            "answer with metrics",
            role="assistant",
            instance_id="inst-1",
            character_snapshot=[0.1, 0.2],
            metrics={"phi": 0.5, "drift_baseline": 0.1},
        ),
        msg(106, "s1", "alice", "a validation answer", kind="validation"),
        msg(107, "s1", "alice", "after the validation message"),
        c.EndConversation(request_id="e2", session_id="s2", ended_at=at(108)),
        msg(109, "s2", "bob", "after the end"),
        msg(110, "s1", "alice", "before the seal"),
        c.SealBlock(
            request_id="seal1", block_number=1, tree_size=20, sealed_at_ms=1_740_823_200_000, data_snapshot="{}"
        ),
        msg(111, "s1", "alice", "after the seal"),
    ]
    entries = [c.encode(x) for x in cmds]
    entries.insert(10, b"\xc1 not msgpack")  # an undecodable sub-entry
    return entries


def with_duplicate_key(entries: list[bytes]) -> list[bytes]:
    """A second message reusing message id m3 (new request id): its row fails at the Batch's
    multi-row INSERT, after the command was counted as applied — the redo path."""
    return [*entries, c.encode(msg(3, "s1", "alice", "same message id again", request_id="r-dup"))]


class Node:
    def __init__(self, path: Path) -> None:
        self.store = Store(path, synchronous="normal", extra_schema=[ledger_schema_sql()])
        self.sm = StateMachine(self.store.writer, ledger=Ledger(self.store.writer, SIGNER))
        self.index = 0

    def apply(self, entries: list[bytes]) -> list[ApplyResult]:
        batch = []
        for entry in entries:
            self.index += 1
            batch.append((self.index, entry))
        return self.sm.apply_batch(batch)

    def dump(self) -> dict[str, list[tuple[object, ...]]]:
        self.sm.catch_up_search_index()  # the index trails by a chunk; compared once complete
        conn = self.store.writer
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'messages_fts%'"
                " AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        out: dict[str, list[tuple[object, ...]]] = {}
        for table in tables:
            rows = conn.execute(f"SELECT * FROM {table}").fetchall()
            if table == "meta":
                rows = [r for r in rows if r[0] != "applied_index"]  # log entries differ: one vs many
            out[table] = sorted(rows, key=repr)
        for word in ("sailing", "harbour", "lighthouse", "validation", "seal"):
            out[f"fts:{word}"] = conn.execute(
                "SELECT rowid FROM messages_fts WHERE messages_fts MATCH ? ORDER BY rowid", (word,)
            ).fetchall()
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)")  # index = content
        return out

    def close(self) -> None:
        self.store.close()


def comparable(results: list[ApplyResult]) -> list[tuple[object, ...]]:
    return [(r.request_id, r.ok, r.error_code, r.value, r.duplicate, r.index) for r in results]


@pytest.mark.parametrize("redo", [False, True], ids=["fast-path", "redo-after-partial-write"])
def test_batch_equals_one_entry_per_command(tmp_path: Path, redo: bool) -> None:
    entries = mixed_commands()
    if redo:
        entries = with_duplicate_key(entries)
    one_by_one, batched = Node(tmp_path / "a.sqlite3"), Node(tmp_path / "b.sqlite3")
    try:
        for node in (one_by_one, batched):
            node.apply([c.encode(x) for x in setup_commands()])
        singles = one_by_one.apply(entries)
        grouped = batched.apply([c.encode(c.Batch(request_id="", entries=entries))])
        assert comparable(grouped) == comparable(singles)
        assert batched.sm.batch_redos == (1 if redo else 0)  # the fast path itself was compared
        by_id = {r.request_id: r for r in grouped}
        assert by_id["r5"].duplicate and by_id["r0"].duplicate
        assert by_id["r100"].value == {
            "message_id": "m10",
            "seq": by_id["r10"].value["seq"],
            "existing": True,  # type: ignore[index]
            "leaf_index": by_id["r100"].value["leaf_index"],
        }  # type: ignore[index]
        assert by_id["r101"].error_code == "not_found" and by_id["r109"].error_code == "conversation_ended"
        assert by_id["seal1"].ok, by_id["seal1"]
        assert [r.error_code for r in grouped if r.request_id == ""] == ["bad_entry"]
        if redo:
            assert by_id["r-dup"].error_code == "invalid"
        a, b = one_by_one.dump(), batched.dump()
        assert a.keys() == b.keys()
        for table in a:
            assert a[table] == b[table], table
        assert len(a["messages"]) > 40 and a["fts:sailing"]
    finally:
        one_by_one.close()
        batched.close()


def test_batch_after_restart_sees_the_stored_tree(tmp_path: Path) -> None:
    """The ledger's held rows and cached frontier survive a reopen: a new process appends
    where the last Batch stopped."""
    path = tmp_path / "n.sqlite3"
    node = Node(path)
    node.apply([c.encode(x) for x in setup_commands()])
    node.apply(
        [c.encode(c.Batch(request_id="", entries=[c.encode(msg(i, "s1", "alice", f"x {i}")) for i in range(1, 30)]))]
    )
    size = node.sm.ledger.tree.size()  # type: ignore[union-attr]
    node.close()
    again = Node(path)
    again.index = 100
    try:
        again.apply(
            [
                c.encode(
                    c.Batch(request_id="", entries=[c.encode(msg(i, "s1", "alice", f"y {i}")) for i in range(30, 40)])
                )
            ]
        )
        tree = again.sm.ledger.tree  # type: ignore[union-attr]
        assert tree.size() == size + 10
        conn = again.store.writer
        leaves = conn.execute("SELECT count(*) FROM ledger_leaves").fetchone()[0]
        level3 = conn.execute("SELECT count(*) FROM ledger_nodes WHERE level = 3").fetchone()[0]
        assert leaves == size + 10 and level3 == leaves // 8
        hashes = [
            merkle.leaf_hash(bytes(r[0])) for r in conn.execute("SELECT leaf_bytes FROM ledger_leaves ORDER BY idx")
        ]
        assert merkle.root_of(hashes) == tree.root()
    finally:
        again.close()


def test_local_log_groups_concurrent_proposals_and_answers_each(tmp_path: Path) -> None:
    """LocalLog sends what piled up while it committed as one Batch: every proposal still gets
    its own outcome (refusals and retries included), in the order it asked."""
    import asyncio

    from ccn_node.replication.local_log import LocalLog

    node = Node(tmp_path / "l.sqlite3")
    node.apply([c.encode(x) for x in setup_commands()])

    async def run() -> list[tuple[str, ApplyResult]]:
        log = LocalLog(node.sm)
        await log.start()
        try:
            cmds = [msg(i, "s1" if i % 2 else "s2", "alice" if i % 2 else "bob", f"concurrent {i}")
                    for i in range(1, 301)]
            cmds += [msg(7, "s1", "alice", "a retry of r7"), msg(1000, "nope", "alice", "unknown conversation")]
            results = await asyncio.gather(*(log.propose(c.encode(x), x.request_id, timeout=30) for x in cmds))
            return [(x.request_id, r) for x, r in zip(cmds, results, strict=True)]
        finally:
            await log.stop()

    try:
        answered = asyncio.run(run())
        assert node.sm.applied_index < 300  # grouped: fewer log entries than proposals
        for request_id, result in answered[:300]:
            assert result.ok and result.request_id == request_id and not result.duplicate
        (retry_id, retry), (bad_id, bad) = answered[300:]
        assert bad_id == bad.request_id == "r1000"
        assert retry.duplicate and retry.request_id == retry_id == "r7"
        assert not bad.ok and bad.error_code == "not_found"
        seqs = node.store.writer.execute("SELECT session_id, seq FROM messages ORDER BY session_id, seq").fetchall()
        assert len(seqs) == 301 and len(set(seqs)) == 301
    finally:
        node.close()
