"""NaN and infinity never reach the database: commands carrying them are refused by the state
machine (a stored outcome, nothing written), and a consensus round skips (and names) an
instance whose stored vector is unusable instead of failing or feeding it to the median.
In-process, on a real SQLite file, through the real LocalLog."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from ccn_node.clock import new_id, now_iso
from ccn_node.config import ContinuitySettings
from ccn_node.continuity.consensus_service import ConsensusService
from ccn_node.replication import commands as c
from ccn_node.replication.local_log import LocalLog
from ccn_node.replication.proposer import CommandRejected, Proposer
from ccn_node.replication.state_machine import StateMachine
from ccn_node.store.database import Store

SID = "c_test"
USER = "ursula"


def run(tmp_path: Path, body: Any) -> Any:
    async def main() -> Any:
        store = Store(tmp_path / "db.sqlite3", synchronous="normal")
        log = LocalLog(StateMachine(store.writer))
        await log.start()
        proposer = Proposer(log, 5.0)
        try:
            await proposer.submit(c.CreateUser(request_id="u", user_id=USER, name=USER, role="user",
                                               created_at=now_iso()))
            await proposer.submit(c.StartConversation(request_id="s", session_id=SID, user_id=USER, title="",
                                                      created_at=now_iso(), plate_version="v", plate_sha256="x"))
            return await body(store, log, proposer)
        finally:
            await log.stop()
            store.close()

    return asyncio.run(main())


def message(**kw: Any) -> c.AppendMessage:
    fields: dict[str, Any] = dict(request_id=new_id("r"), message_id=new_id("m"), session_id=SID, user_id=USER,
                                  role="assistant", content="an answer", created_at=now_iso(), tokens=3)
    fields.update(kw)
    return c.AppendMessage(**fields)


def count(store: Store, sql: str) -> int:
    return store.read_sync(lambda conn: conn.execute(sql).fetchall()[0][0])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_in_commands_are_refused(tmp_path: Path, bad: float) -> None:
    async def body(store: Store, log: LocalLog, proposer: Proposer) -> None:
        vector = [0.5] * 16
        vector[3] = bad
        refused = [
            message(character_snapshot=vector),
            message(relational_state=[0.5] * 6 + [bad]),
            message(metrics={"phi": 0.5, "ccc": bad}),
            c.RecordConsensus(request_id=new_id("r"), round_id=new_id("k"), created_at=now_iso(), term=1,
                              node_id="n", instance_count=1, consensus_vector=vector, outliers=[],
                              drifts={"i": 0.0}, latency_ms=1.0),
            c.RecordConsensus(request_id=new_id("r"), round_id=new_id("k"), created_at=now_iso(), term=1,
                              node_id="n", instance_count=1, consensus_vector=[0.5] * 16, outliers=[],
                              drifts={"i": bad}, latency_ms=1.0),
            c.RecordConsensus(request_id=new_id("r"), round_id=new_id("k"), created_at=now_iso(), term=1,
                              node_id="n", instance_count=1, consensus_vector=[0.5] * 16, outliers=[],
                              drifts={"i": 0.0}, latency_ms=bad),
            c.RegisterInstance(request_id=new_id("r"), instance_id="i_bad", session_id=SID, node_id="n",
                               spawned_at=now_iso(), plate_version="v", validation={"score": bad}),
        ]
        for cmd in refused:
            with pytest.raises(CommandRejected) as info:
                await proposer.submit(cmd)
            assert info.value.code == "invalid", cmd
        for table in ("messages", "character_evolution", "consciousness_metrics", "consensus_log",
                      "instance_registry"):
            assert count(store, f"SELECT count(*) FROM {table}") == 0, table
        assert count(store, "SELECT message_count FROM conversations") == 0

    run(tmp_path, body)


def test_validation_messages_keep_the_conversation_seq_dense(tmp_path: Path) -> None:
    async def body(store: Store, log: LocalLog, proposer: Proposer) -> None:
        assert (await proposer.submit(message(kind="validation", content="quillwort one")))["seq"] == -1
        assert (await proposer.submit(message(kind="validation", content="quillwort two")))["seq"] == -2
        assert (await proposer.submit(message(role="user", content="quillwort three")))["seq"] == 1
        assert count(store, "SELECT message_count FROM conversations") == 1
        with pytest.raises(CommandRejected):
            await proposer.submit(message(kind="gossip"))
        log.sm.catch_up_search_index()
        indexed = "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'quillwort'"
        assert count(store, indexed) == 1  # validation answers are not in the full-text index

    run(tmp_path, body)


def test_round_skips_unusable_stored_vectors(tmp_path: Path) -> None:
    async def body(store: Store, log: LocalLog, proposer: Proposer) -> dict[str, Any]:
        vectors = {"i_a": [0.5] * 16, "i_b": [0.52] * 16, "i_c": [0.48] * 16,
                   "i_range": [2.0] * 16, "i_short": [0.5] * 3}
        for instance_id, vector in vectors.items():
            await proposer.submit(c.RegisterInstance(request_id=new_id("r"), instance_id=instance_id,
                                                     session_id=SID, node_id="n", spawned_at=now_iso(),
                                                     plate_version="v"))
            await proposer.submit(message(instance_id=instance_id, character_snapshot=vector))
        service = ConsensusService(store=store, proposer=proposer, log=log, settings=ContinuitySettings(),
                                   node_id="n")
        return await service.run_round()

    result = run(tmp_path, body)
    assert result["committed"] is True and result["instance_count"] == 3
    assert set(result["rejected"]) == {"i_range", "i_short"}
    assert "out of range" in result["rejected"]["i_range"]
    assert result["consensus_vector"] == [0.5] * 16 and result["outliers"] == []
