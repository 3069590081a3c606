"""LocalLog: the single-node command log.

There is no separate journal: SQLite is the log. A dedicated writer thread drains queued
proposals and applies them in one transaction (group commit), so many concurrent turns
share one fsync. A proposal resolves after its transaction has committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable

from ccn_node.replication import commands as c
from ccn_node.replication.log import (
    ApplyResult,
    BackpressureError,
    LogStatus,
    LogStoppedError,
    OutcomeUnknownError,
)
from ccn_node.replication.state_machine import StateMachine

_STOP = object()


class LocalLog:
    """Applies proposals directly through the state machine on a writer thread."""

    def __init__(self, state_machine: StateMachine, *, max_in_flight: int = 10_000, max_batch: int = 512) -> None:
        self.sm = state_machine
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_flight = 0
        self._listeners: list[Callable[[bool], None]] = []
        self._stopping = False
        self.next_index = state_machine.applied_index + 1

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="ccn-writer", daemon=True)
        self._thread.start()
        for callback in self._listeners:
            callback(True)

    async def stop(self) -> None:
        self._stopping = True
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None

    async def propose(self, entry: bytes, request_id: str, timeout: float | None = None) -> ApplyResult:
        if self._stopping or self._loop is None:
            raise LogStoppedError("the node is stopping", request_id=request_id)
        if self._in_flight >= self.max_in_flight:
            raise BackpressureError("too many writes in flight", request_id=request_id, retry_after=1.0)
        future: asyncio.Future[ApplyResult] = self._loop.create_future()
        self._in_flight += 1
        self._queue.put((entry, future))
        # a plain timer, not wait_for(shield(…)): two fewer futures and a task per write
        timer = None if timeout is None else self._loop.call_later(timeout, _expire, future, request_id)
        try:
            return await future
        finally:
            self._in_flight -= 1
            if timer is not None:
                timer.cancel()

    async def barrier(self, timeout: float | None = None) -> None:
        """Every acknowledged write is already applied on the only node."""
        return None

    def status(self) -> LogStatus:
        return LogStatus(
            kind="local",
            role="leader",
            term=0,
            leader=None,
            self_address=None,
            commit_index=self.sm.applied_index,
            applied_index=self.sm.applied_index,
            has_quorum=True,
        )

    def is_leader(self) -> bool:
        return True

    def add_leadership_listener(self, callback: Callable[[bool], None]) -> None:
        self._listeners.append(callback)

    # -- writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        assert self._loop is not None
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    self._queue.put(_STOP)
                    break
                batch.append(nxt)
            self._apply(batch)

    def _apply(self, batch: list[object]) -> None:
        """One transaction; two or more proposals travel as one ``Batch`` entry, so they take
        the state machine's fast path (one savepoint, multi-row INSERTs: one FTS5 segment
        instead of one a message), exactly as a Raft tick's proposals do."""
        assert self._loop is not None
        entries = [item[0] for item in batch]  # type: ignore[index]
        futures = [item[1] for item in batch]  # type: ignore[index]
        try:
            self.sm.begin()
            index = self.next_index
            self.next_index += 1
            if len(entries) == 1:
                results = self.sm.apply_entry(index, entries[0])
            else:
                results = self.sm.apply_entry(index, c.encode(c.Batch(request_id="", entries=entries)))
            self.sm.commit()
        except Exception as exc:  # disk full, I/O error: nothing in this batch happened
            with contextlib.suppress(Exception):
                self.sm.abort()
            self.next_index = self.sm.applied_index + 1
            self._loop.call_soon_threadsafe(_fail_all, futures, exc)
            return
        self._loop.call_soon_threadsafe(_resolve_all, futures, results)
        self.sm.index_if_due()  # after the answers: they never wait for a chunk


def _expire(future: asyncio.Future[ApplyResult], request_id: str) -> None:
    if not future.done():
        future.set_exception(OutcomeUnknownError(
            "the write did not complete in time; retry with the same request id", request_id=request_id
        ))


def _resolve_all(futures: list[asyncio.Future[ApplyResult]], results: list[ApplyResult]) -> None:
    for future, result in zip(futures, results, strict=True):
        if not future.done():
            future.set_result(result)


def _fail_all(futures: list[asyncio.Future[ApplyResult]], exc: BaseException) -> None:
    for future in futures:
        _fail(future, exc)


def _fail(future: asyncio.Future[ApplyResult], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(LogStoppedError(f"storage failed: {exc}"))
