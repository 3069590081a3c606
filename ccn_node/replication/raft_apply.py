"""The apply thread of a cluster member: committed Raft entries → the state machine → SQLite.

Why a thread of its own: pysyncobj applies committed entries on its tick thread, and while
that thread is inside SQLite (a 256-message Batch: FTS5, ledger, COMMIT — ~10 ms) it cannot
read its sockets. A follower then acknowledges entry N+1 only after it has applied entry N,
and the leader only replicates N+1 after it has applied N: two applies in series on every
round trip. Here the tick thread only *hands over* each committed entry; this thread applies
them in order, one transaction for everything handed over since its last COMMIT (group
commit when it lags), and reports each entry's results after the COMMIT. SQLite releases
the GIL, so applying overlaps with the Raft work of the tick thread.

Raft index space: ``applied_index`` is pysyncobj's ``raftLastApplied`` as of the last tick
whose entries are all committed here — it also counts pysyncobj's own entries (its no-op,
membership changes), which never reach the state machine.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from ccn_node.replication.log import ApplyResult

log = logging.getLogger(__name__)

MAX_ENTRIES_PER_TXN = 64
"""A lagging node (catching up after a restart) commits at least every 64 entries (each up to
one 1024-command Batch), so one transaction and its WAL growth stay bounded."""


class _StateMachine(Protocol):
    def begin(self) -> None: ...

    def apply_entry(self, index: int, entry: bytes) -> list[ApplyResult]: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...

    def index_if_due(self) -> None: ...


class CommittedEntry:
    """One committed entry on its way through the apply thread.

    pysyncobj's replicated method returns it as the command's "result"; the callbacks of the
    proposals it carries attach themselves (``waiters``) on the tick thread unless the apply
    thread has already ``reported`` it; ``results`` is filled before it is reported.
    """

    __slots__ = ("entry", "index", "reported", "results", "waiters")

    def __init__(self, index: int, entry: bytes) -> None:
        self.index = index
        self.entry = entry  # b"": a barrier, applied by nobody
        self.results: list[ApplyResult] | None = None
        self.waiters: list[Any] = []
        self.reported = False  # the apply thread has committed it and taken its waiters


class Applier:
    """Owns the state machine's write transactions in a cluster member (one thread)."""

    def __init__(
        self,
        state_machine: _StateMachine,
        on_applied: Callable[[list[CommittedEntry], int], None],
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        """``on_applied(entries, applied_index)`` runs on the apply thread after each COMMIT;
        ``on_fatal(exc)`` once, if the state machine raised (disk, I/O): nothing is applied
        after that, so this node stops rather than diverge."""
        self.sm = state_machine
        self._on_applied = on_applied
        self._on_fatal = on_fatal
        self._cond = threading.Condition()
        self._queue: list[tuple[list[CommittedEntry], int]] = []
        self._busy = False
        self._stopping = False
        self._halted = False
        self._applied = 0
        self._thread: threading.Thread | None = None
        self.failed: BaseException | None = None

    @property
    def applied_index(self) -> int:
        """The Raft index up to which everything is applied and committed here."""
        return self._applied

    def start(self, applied_index: int) -> None:
        self._applied = applied_index
        self._thread = threading.Thread(target=self._run, name="ccn-raft-apply", daemon=True)
        self._thread.start()

    def submit(self, entries: list[CommittedEntry], upto: int) -> None:
        """Tick thread, once per tick: this tick's committed entries, and pysyncobj's applied
        index after them (reached once they are committed)."""
        with self._cond:
            if self._halted:
                return
            if not entries and not self._queue and not self._busy:
                self._applied = max(self._applied, upto)  # nothing of ours in between
                return
            for start in range(0, len(entries), MAX_ENTRIES_PER_TXN):
                part = entries[start : start + MAX_ENTRIES_PER_TXN]
                self._queue.append((part, upto if start + MAX_ENTRIES_PER_TXN >= len(entries) else part[-1].index))
            if not entries:
                self._queue.append(([], upto))
            self._cond.notify_all()

    def discard_through(self, index: int) -> int:
        """Drop queued (not yet started) entries at or below ``index`` — a snapshot covering
        them is about to be installed. Returns how many were dropped."""
        with self._cond:
            kept: list[tuple[list[CommittedEntry], int]] = []
            dropped = 0
            for entries, upto in self._queue:
                left = [e for e in entries if e.index > index]
                dropped += len(entries) - len(left)
                if left or upto > index:
                    kept.append((left, upto))
            self._queue = kept
            self._cond.notify_all()
            return dropped

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until everything handed over is committed (or the thread failed/halted)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._halted or (not self._queue and not self._busy), timeout)

    def wait_applied(self, index: int, timeout: float | None = None) -> bool:
        """Block until ``applied_index >= index``; False on timeout, failure or halt."""
        with self._cond:
            self._cond.wait_for(lambda: self._halted or self._applied >= index, timeout)
            return self._applied >= index

    def stop(self, *, drain: bool = True) -> None:
        """End the thread: after applying what was handed over (``drain``), or at once after
        the transaction under way (a fail-stop: committed entries are replayed at restart)."""
        with self._cond:
            self._stopping = True
            if not drain:
                self._halted = True
                self._queue = []
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopping)
                if not self._queue:
                    self._halted = True
                    self._cond.notify_all()
                    return
                batch: list[CommittedEntry] = []
                upto = self._applied
                while self._queue and len(batch) + len(self._queue[0][0]) <= MAX_ENTRIES_PER_TXN:
                    entries, upto = self._queue.pop(0)
                    batch.extend(entries)
                self._busy = True
            try:
                self._apply(batch)
            except BaseException as exc:
                log.critical("apply failed; this node stops: %r", exc)
                with contextlib.suppress(Exception):
                    self.sm.abort()
                with self._cond:
                    self.failed = exc
                    self._halted = True
                    self._busy = False
                    self._queue = []
                    self._cond.notify_all()
                self._on_fatal(exc)
                return
            with self._cond:
                self._applied = max(self._applied, upto)
                self._busy = False
                self._cond.notify_all()
            try:
                self._on_applied(batch, upto)
            except Exception:
                log.exception("reporting applied entries failed")
            self.sm.index_if_due()  # after the answers: they never wait for a chunk

    def _apply(self, batch: list[CommittedEntry]) -> None:
        sm = self.sm
        began = False
        for item in batch:
            if not item.entry:
                continue  # a barrier: its place in the order is all it needs
            if not began:
                sm.begin()
                began = True
            item.results = sm.apply_entry(item.index, item.entry)
        if began:
            sm.commit()
