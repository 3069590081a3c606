"""A storage failure while the apply thread applies a committed entry stops the member
(fail-stop: skipping the entry would make it diverge, retrying would stall it), and a
restart replays the entry from the journal. One real RaftLog on 127.0.0.1, in process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import apsw
import pytest

from ccn_node.loopback import free_ports
from ccn_node.replication import commands as c
from ccn_node.replication.log import ApplyResult, LogStoppedError, OutcomeUnknownError
from ccn_node.replication.raft_log import ClusterSettings, RaftLog
from ccn_node.replication.state_machine import StateMachine
from ccn_node.store.database import Store

pytestmark = pytest.mark.timeout(60)

AT = "2025-01-01T00:00:00.000000Z"


class FailingDisk:
    """The state machine, but an entry carrying ``poison`` fails as a full disk would."""

    def __init__(self, sm: StateMachine, poison: bytes) -> None:
        self.sm = sm
        self.poison = poison
        self.applied_index = sm.applied_index

    def apply_entry(self, index: int, entry: bytes) -> list[ApplyResult]:
        if self.poison in entry:
            raise apsw.FullError("database or disk is full")
        return self.sm.apply_entry(index, entry)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sm, name)


def user(name: str) -> bytes:
    return c.encode(c.CreateUser(request_id=f"req-{name}", user_id=name, name=name, role="user", created_at=AT))


async def until_leader(raft: RaftLog) -> None:
    deadline = time.monotonic() + 10
    while not raft.is_leader():
        assert time.monotonic() < deadline, "no leader"
        await asyncio.sleep(0.02)


def test_apply_failure_stops_the_member_and_a_restart_replays(tmp_path: Path) -> None:
    settings = ClusterSettings(self_address=f"127.0.0.1:{free_ports(1)[0]}", data_dir=str(tmp_path))
    db = tmp_path / "ccn.sqlite3"

    async def first_life() -> None:
        store = Store(db, synchronous="normal")
        raft = RaftLog(FailingDisk(StateMachine(store.writer), b"poisoned"), settings)  # type: ignore[arg-type]
        stopped: list[BaseException] = []
        raft.add_fatal_listener(stopped.append)
        await raft.start()
        try:
            await until_leader(raft)
            assert (await raft.propose(user("alice"), "req-alice", timeout=5)).ok
            with pytest.raises(OutcomeUnknownError):  # committed, never applied here: may have happened
                await raft.propose(user("poisoned"), "req-poisoned", timeout=5)
            deadline = time.monotonic() + 5
            while not stopped:
                assert time.monotonic() < deadline, "the fatal listener was not called"
                await asyncio.sleep(0.02)
            assert isinstance(stopped[0], apsw.FullError)
            assert raft.status().role == "failed" and not raft.is_leader()
            with pytest.raises(LogStoppedError):
                await raft.propose(user("carol"), "req-carol", timeout=1)
        finally:
            await raft.stop()
            store.close()

    async def second_life() -> list[str]:
        store = Store(db, synchronous="normal")
        raft = RaftLog(StateMachine(store.writer), settings)
        await raft.start()
        try:
            await until_leader(raft)
            await raft.barrier(timeout=5)
            # the entry that could not be applied before is in the journal: replayed once, now
            again = await raft.propose(user("poisoned"), "req-poisoned", timeout=5)
            assert again.ok and again.duplicate
            return [r[0] for r in store.writer.execute("SELECT user_id FROM users ORDER BY user_id")]
        finally:
            await raft.stop()
            store.close()

    asyncio.run(first_life())
    assert asyncio.run(second_life()) == ["alice", "poisoned"]


def test_applier_discards_queued_entries_a_snapshot_covers() -> None:
    """What a snapshot covers is not applied first (it would hold the tick thread); the entry
    under way finishes, the rest above the snapshot's index stays queued."""
    import threading

    from ccn_node.replication.raft_apply import Applier, CommittedEntry

    gate, started, applied = threading.Event(), threading.Event(), []

    class SlowMachine:
        def begin(self) -> None: ...

        def commit(self) -> None: ...

        def abort(self) -> None: ...

        def index_if_due(self) -> None: ...

        def apply_entry(self, index: int, entry: bytes) -> list[ApplyResult]:
            started.set()
            gate.wait(5)
            applied.append(index)
            return []

    applier = Applier(SlowMachine(), lambda entries, upto: None, lambda exc: None)  # type: ignore[arg-type]
    applier.start(0)
    applier.submit([CommittedEntry(1, b"x")], 1)
    assert started.wait(5)  # entry 1 is under way
    for i in range(2, 12):
        applier.submit([CommittedEntry(i, b"x")], i)
    assert applier.discard_through(8) == 7  # 2..8 dropped; 9..11 kept
    gate.set()
    assert applier.wait_idle(5)
    applier.stop()
    assert applied == [1, 9, 10, 11] and applier.applied_index == 11


def test_applier_answers_before_it_indexes_a_chunk() -> None:
    """The apply thread reports what a COMMIT made durable (the proposals' answers) before it
    indexes a due chunk of messages for search: the answers never wait for the chunk."""
    from ccn_node.replication.raft_apply import Applier, CommittedEntry

    events: list[str] = []

    class Machine:
        def begin(self) -> None: ...

        def commit(self) -> None:
            events.append("commit")

        def abort(self) -> None: ...

        def index_if_due(self) -> None:
            events.append("index")

        def apply_entry(self, index: int, entry: bytes) -> list[ApplyResult]:
            return []

    applier = Applier(Machine(), lambda entries, upto: events.append("answered"), lambda exc: None)  # type: ignore[arg-type]
    applier.start(0)
    applier.submit([CommittedEntry(1, b"x")], 1)
    assert applier.wait_idle(5)
    applier.stop()
    assert events[:3] == ["commit", "answered", "index"]
