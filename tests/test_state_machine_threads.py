"""Two threads write through one state machine: the apply thread, and a reader's search-index
catch-up (``Store.read_searchable`` before a turn's retrieval). Found by the HTTP cluster
bench: ``begin()`` read ``_in_txn`` before taking the lock, so the apply thread could join the
catch-up's open transaction, and its entries failed ("apply() outside begin()/commit()") when
that transaction committed under them — which stops a node."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from corpus_commands import append_message, create_user, start_conversation

from ccn_node.replication import commands as c
from ccn_node.replication.state_machine import StateMachine
from ccn_node.store.database import Store


@pytest.fixture
def sm(tmp_path: Path) -> Iterator[StateMachine]:
    store = Store(tmp_path / "db.sqlite3")
    machine = StateMachine(store.writer)
    machine.apply_batch([(1, c.encode(create_user("alice"))), (2, c.encode(start_conversation("s1", "alice")))])
    yield machine
    store.close()


def test_begin_waits_for_another_threads_transaction_instead_of_joining_it(sm: StateMachine) -> None:
    sm.begin()  # this thread's transaction (as a catch-up holds one)
    opened = threading.Event()
    outcome: list[object] = []

    def apply_thread() -> None:
        try:
            sm.begin()
            opened.set()
            outcome.extend(sm.apply_entry(3, c.encode(append_message(3, "s1", "alice", "hello"))))
            sm.commit()
        except Exception as exc:  # reported below
            outcome.append(exc)
            opened.set()

    worker = threading.Thread(target=apply_thread)
    worker.start()
    assert not opened.wait(0.3), "begin() joined a transaction another thread holds"
    sm.begin()  # idempotent for the thread that holds it
    sm.commit()
    worker.join(10)
    assert opened.is_set() and len(outcome) == 1 and getattr(outcome[0], "ok", False), outcome
    assert sm.applied_index == 3

