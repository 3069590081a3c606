"""RaftLog: the command log replicated among peer nodes with pysyncobj.

A thin bridge. pysyncobj runs on one dedicated thread (``autoTick=False``, we call
``doTick``) and owns the Raft protocol; the state machine owns SQLite. The bridge adds what
pysyncobj lacks for a database behind it:

- **an apply thread** (``raft_apply.Applier``): pysyncobj hands each committed entry over
  on its tick thread; the apply thread applies entries in order, one transaction for what it
  was given since its last COMMIT, and only then resolves the futures of the proposals they
  carried (one ``call_soon_threadsafe``), so the tick thread keeps talking Raft meanwhile;
- **durability = "fsync"**: pysyncobj never fsyncs its journal. In this mode the journal is
  msync'ed after each poll and each tick when it changed, a follower's acknowledgements
  (``next_node_idx``) are held until then, the leader counts itself in a commit only on the
  tick after its entries were flushed, and the term/vote file is fsynced before a vote
  leaves the node (group commit: one flush, however many entries it carried);
- **snapshots** through pysyncobj's serializer hooks: a consistent SQLite backup (taken on a
  background thread, so heartbeats keep flowing) plus pysyncobj's raft data in one file;
  a restored snapshot replaces the database only if the database is behind it;
- **batching**: proposals queue on the event loop; the tick thread drains them at the start
  of each tick into *one* ``commands.Batch`` entry (barriers share one empty entry), so the
  per-entry cost of pysyncobj (pickle, framing and encryption, one append_entries) is paid once per
  tick instead of once per command;
- **proposals** that retry on their own while the outcome is certain not to have happened
  or is made harmless by the state machine's request-id dedup, and otherwise end in the
  errors of ``log.py``.

pysyncobj internals used (checked at start; written against pysyncobj 0.3.17): the journal
object ``_SyncObj__raftLog`` (flush, term file), the transport ``_SyncObj__transport``,
``_SyncObj__lastResponseTime`` (leader lease) and ``_SyncObj__noopIDx`` (leadership is
announced once the leader's first entry of its term is applied); the ``encryptor`` property and
``pysyncobj.tcp_connection.zlib`` carry our wire (raft_wire.py).

**Never add a second ``@replicated`` method** to ``_RaftNode``: pysyncobj numbers replicated
methods by sorted name, the journal stores the number, and a new method renumbers the old
ones — every existing journal and snapshot would then replay into the wrong method.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import msgspec
from pysyncobj import FAIL_REASON, SERIALIZER_STATE, SyncObj, SyncObjConf, replicated
from pysyncobj.journal import Journal, MetaStorer
from pysyncobj.node import TCPNode
from pysyncobj.pickle import dumps as pysyncobj_dumps
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.transport import TCPTransport

from ccn_node.replication import commands as c
from ccn_node.replication import raft_wire
from ccn_node.replication.log import (
    ApplyResult,
    BackpressureError,
    CommandLogError,
    LogStatus,
    LogStoppedError,
    NoQuorumError,
    NotLeaderError,
    OutcomeUnknownError,
    PeerStatus,
)
from ccn_node.replication.raft_apply import Applier, CommittedEntry
from ccn_node.replication.raft_snapshot import SnapshotHeader, read_snapshot, write_snapshot
from ccn_node.store.database import fsync_path

log = logging.getLogger(__name__)

BARRIER_ENTRY = b""
"""The entry ``barrier()`` commits: handled by the bridge, never passed to the state machine."""

_PRIVATE_ATTRS = (
    "_SyncObj__raftLog",
    "_SyncObj__raftCommitIndex",
    "_SyncObj__transport",
    "_SyncObj__lastResponseTime",
    "_SyncObj__noopIDx",
    "_SyncObj__raftNextIndex",
    "_poller",
)


class ClusterSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[cluster]`` of ccn.toml. Addresses are ``host:port`` strings, identical on every node.

    Defaults are chosen and measured in replication/DESIGN.md, section "Raft".
    """

    self_address: str
    peers: list[str] = []  # the other members (this node's own address is ignored if listed)
    secret: str = ""  # pysyncobj password: encrypts and authenticates; required with peers
    data_dir: str = "."  # holds raft/journal, raft/journal.meta, raft/snapshot
    bind_address: str | None = None  # default: self_address (never all interfaces)
    durability: Literal["fast", "fsync"] = "fsync"
    heartbeat_s: float = 0.05
    election_min_s: float = 0.4
    election_max_s: float = 0.8
    leader_fallback_s: float | None = None  # default: election_min_s
    connection_timeout_s: float = 3.5
    connect_retry_s: float = 0.5
    max_in_flight: int = 4096
    commands_queue_size: int = 16384
    propose_timeout_s: float = 10.0
    compaction_min_entries: int = 50_000
    compaction_min_time_s: float = 3600.0
    append_batch_bytes: int = 4 << 20  # > any one entry: pysyncobj's chunked path for bigger ones is broken
    bind_retries: int = 20
    tick_wait_s: float = 0.02
    max_batch_bytes: int = 1 << 19  # one Batch entry holds at most this many encoded bytes …
    max_batch_commands: int = 1024  # … and this many commands

    def validate(self) -> None:
        """Refuse settings that are unsafe, whatever pysyncobj would accept."""
        if self.others() and not self.secret:
            raise ValueError(
                "cluster.secret is required when cluster.peers is set: pysyncobj unpickles "
                "what it receives, so an open raft port lets anyone run code on this node"
            )
        if not (0 < self.heartbeat_s * 3 < self.election_min_s < self.election_max_s):
            raise ValueError("need 3 * heartbeat_s < election_min_s < election_max_s")
        if self.connection_timeout_s < self.election_max_s:
            raise ValueError("connection_timeout_s must be >= election_max_s")
        if self.max_in_flight < 1 or self.commands_queue_size < self.max_in_flight:
            raise ValueError("need 1 <= max_in_flight <= commands_queue_size")
        if self.max_batch_commands < 1 or self.max_batch_bytes < 1024:
            raise ValueError("need max_batch_commands >= 1 and max_batch_bytes >= 1024")
        if self.append_batch_bytes < 2 * self.max_batch_bytes:
            raise ValueError("need append_batch_bytes >= 2 * max_batch_bytes")

    def others(self) -> list[str]:
        return [p for p in dict.fromkeys(self.peers) if p != self.self_address]

    @property
    def raft_dir(self) -> str:
        return os.path.join(self.data_dir, "raft")


class RaftStateMachine(Protocol):
    """What RaftLog needs from the state machine (replication/state_machine.py)."""

    applied_index: int

    def begin(self) -> None: ...

    def apply_entry(self, index: int, entry: bytes) -> list[ApplyResult]: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...

    def backup_to(self, path: str) -> None: ...

    def restore_from(self, path: str) -> bool: ...


class _FatalError(RuntimeError):
    """The state machine or the disk failed mid-tick: stop this node rather than diverge."""


class _FsyncMetaStorer(MetaStorer):
    """pysyncobj's term/vote file, but fsynced before the rename and after it.

    Raft needs currentTerm and votedFor on stable storage before a vote is sent; the stock
    storer only renames an unsynced file, so a power cut could let a node vote twice.
    """

    def storeMeta(self, meta: dict[str, Any]) -> None:
        path = self.getPath()
        with open(path + ".tmp", "wb") as f:
            f.write(pysyncobj_dumps(meta))
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
        fsync_path(os.path.dirname(path) or ".")


class _TrackedJournal(Journal):
    """pysyncobj's file journal, remembering whether it changed since the last flush."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.dirty = False

    def add(self, command: bytes, idx: int, term: int) -> None:
        self.inner.add(command, idx, term)
        self.dirty = True

    def clear(self) -> None:
        self.inner.clear()
        self.dirty = True

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        self.inner.deleteEntriesFrom(entryFrom)
        self.dirty = True

    def deleteEntriesTo(self, entryTo: int) -> None:
        self.inner.deleteEntriesTo(entryTo)
        self.dirty = True

    def __getitem__(self, item: Any) -> Any:
        return self.inner[item]

    def __len__(self) -> int:
        return len(self.inner)

    def _destroy(self) -> None:
        self.inner._destroy()

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        self.inner.setRaftCommitIndex(raftCommitIndex)

    def getRaftCommitIndex(self) -> int:
        return self.inner.getRaftCommitIndex()

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:
        self.inner.setCurrentTerm(term, votedForNodeId)

    def getCurrentTerm(self) -> int:
        return self.inner.getCurrentTerm()

    def getVotedForNodeId(self) -> Any:
        return self.inner.getVotedForNodeId()

    def onOneSecondTimer(self) -> None:
        self.inner.onOneSecondTimer()

    def flush(self) -> None:
        """msync the journal (a datasync of the mapped file), once per tick at most."""
        if self.dirty:
            self.inner.flush()
            self.dirty = False


class _AckHoldingTransport(TCPTransport):
    """Holds a follower's append acknowledgements until the tick has flushed the journal."""

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        super().__init__(syncObj, selfNode, otherNodes)
        self.hold = False
        self.held: list[tuple[Any, dict[str, Any]]] = []

    def send(self, node: Any, message: Any) -> bool:
        if self.hold and message.get("type") == "next_node_idx":
            self.held.append((node, message))
            return True
        return super().send(node, message)

    def _onMessageReceived(self, node: Any, message: Any) -> None:
        if message.get("type") == "append_entries" and "prevLogIdx" not in message:
            self._receive_snapshot_message(node, message)
            return
        self._receive(node, message)

    def _receive_snapshot_message(self, node: Any, message: Any) -> None:
        """A follower's commit index moves only over entries checked against the leader's log.

        pysyncobj (0.3.17) handles an append_entries that carries a snapshot — or, while the
        leader's snapshot is still being written, nothing at all (``serialized: None``) — and
        then sets the follower's commit index to min(leader's commit index, *its own* last log
        index), without the prevLogIdx/prevLogTerm check a normal append makes. A follower
        that still holds an entry a dead minority leader appended and never committed would
        then commit and apply that entry, which the new leader's log does not have: the
        nodes diverge for good (the snapshot that follows does not replace a database that is
        not behind it). Only a snapshot actually installed by the message may move the commit
        index; otherwise it is put back where it was.
        """
        sync = self._syncObj
        raft_log = sync._SyncObj__raftLog
        before = sync._SyncObj__raftCommitIndex

        def shape() -> tuple[int, Any, Any]:  # an installed snapshot replaces the log by its 2 head entries
            n = len(raft_log)
            return (n, raft_log[0] if n else None, raft_log[n - 1] if n else None)

        old_shape = shape()
        self._receive(node, message)
        installed = shape() != old_shape  # (putting the index back is safe even when wrong: only slower)
        if not installed and sync._SyncObj__raftCommitIndex > before:
            sync._SyncObj__raftCommitIndex = before
            raft_log.setRaftCommitIndex(before)

    def _receive(self, node: Any, message: Any) -> None:
        """Keep the leader's nextIndex from moving back on a late acknowledgement.

        pysyncobj sets nextIndex from every successful ``next_node_idx``; with one
        append_entries per command, acks arrive for messages older than the newest one sent,
        so nextIndex rewinds and the leader re-sends entries the follower already has (which
        the follower then truncates and re-appends, logging "truncating already-applied log
        entries"). nextIndex is only a hint in Raft: a follower that really misses entries
        answers with ``reset`` and the leader backs off as before.
        """
        if message.get("type") == "next_node_idx" and message.get("success") and not message.get("reset"):
            next_index = self._syncObj._SyncObj__raftNextIndex
            before = next_index.get(node)
            super()._onMessageReceived(node, message)
            if before is not None and next_index.get(node, before) < before:
                next_index[node] = before
            return
        super()._onMessageReceived(node, message)

    def release(self) -> None:
        held, self.held = self.held, []
        for node, message in held:
            super().send(node, message)


class _RaftNode(raft_wire.WireMixin, SyncObj):
    """The SyncObj: exactly one replicated method, which hands the entry to the bridge."""

    def __init__(self, bridge: RaftLog, self_address: str, others: list[str], conf: SyncObjConf) -> None:
        self._bridge = bridge
        self.use_wire(conf)  # AES-GCM, uncompressed (raft_wire.py)
        super().__init__(self_address, others, conf, transportClass=_AckHoldingTransport)

    @replicated
    def apply_entry(self, entry: bytes) -> list[ApplyResult] | None:
        return self._bridge._apply_on_tick(entry)


@dataclass(slots=True, eq=False)
class _Proposal:
    entry: bytes
    request_id: str | None  # None for a barrier
    future: asyncio.Future[Any]
    deadline: float  # loop.time()
    attempt: int = 0
    maybe_applied: bool = False  # some attempt may have been appended to the log
    waiting: bool = False  # between attempts (certainly nothing of this attempt in the log)
    done_at: list[float] = field(default_factory=list)


@dataclass(slots=True)
class _SnapshotJob:
    generation: int
    path: str
    header: SnapshotHeader
    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False


_ROLE = {0: "follower", 1: "candidate", 2: "leader"}
_RETRY_S = 0.02
_SWEEP_S = 0.05
_LEADER_WAIT_S = 0.1


def raft_timing(s: ClusterSettings) -> dict[str, Any]:
    """The Raft protocol settings shared by RaftLog and the bare-pysyncobj baseline bench,
    so that the baseline is measured with exactly the same settings."""
    return {
        "password": s.secret or None,
        "appendEntriesUseBatch": False,
        "appendEntriesPeriod": s.heartbeat_s,
        "raftMinTimeout": s.election_min_s,
        "raftMaxTimeout": s.election_max_s,
        "leaderFallbackTimeout": s.leader_fallback_s or s.election_min_s,
        "connectionTimeout": s.connection_timeout_s,
        "connectionRetryTime": s.connect_retry_s,
        "commandsQueueSize": s.commands_queue_size,
        "commandsWaitLeader": False,
    }


class RaftLog:
    """The command log of a cluster member (see the module docstring for how)."""

    def __init__(
        self,
        state_machine: RaftStateMachine,
        settings: ClusterSettings,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        settings.validate()
        self.sm = state_machine
        self.settings = settings
        self._loop = loop
        self._durable = settings.durability == "fsync"
        self._raft: _RaftNode | None = None
        self._journal: _TrackedJournal | None = None
        self._transport: _AckHoldingTransport | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stopped = False
        self._fatal: BaseException | None = None
        # tick-thread state
        self._tick_ident: int | None = None
        self._report_lock = threading.Lock()  # CommittedEntry.reported / .waiters: tick vs apply thread
        self._outcomes: list[tuple[list[tuple[_Proposal, int]], Any, int]] = []
        self._applier = Applier(state_machine, self._on_applied, self._on_apply_failed)
        self._snap_job: _SnapshotJob | None = None
        self._snap_generation = 0
        self._snapshot_installed = False
        self._last_leader: Any = None
        self._announced_leader = False
        self._next_publish = 0.0
        # published by the tick thread, read anywhere
        self._status: LogStatus = self._initial_status()
        self._lease_until = 0.0
        self._leader_flag = False
        self.counters: dict[str, int] = {"ticks": 0, "snapshots_written": 0, "snapshots_installed": 0}
        # proposals waiting for the next tick: appended on the loop, drained on the tick thread
        self._pending: collections.deque[tuple[_Proposal, int]] = collections.deque()
        self._wake_pending = False
        self._wake_fds: tuple[int, int] | None = None
        # loop-thread state
        self._in_flight: set[_Proposal] = set()
        self._sweep: asyncio.TimerHandle | None = None  # the deadline sweep, while proposals wait
        self._apply_waiters: list[tuple[int, asyncio.Future[None]]] = []  # (raft index, future)
        self._leader_waiters: set[_Proposal] = set()
        self._leadership_listeners: list[Callable[[bool], None]] = []
        self._fatal_listeners: list[Callable[[BaseException], None]] = []

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the raft port and start ticking; raises if the port cannot be bound."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        os.makedirs(self.settings.raft_dir, exist_ok=True)
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="ccn-raft", daemon=True)
        self._thread.start()
        await asyncio.wrap_future(ready)

    async def stop(self) -> None:
        """Stop ticking, close the port and the journal; fail what is still in flight."""
        self._stopped = True
        self._stop.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None
        for prop in list(self._in_flight):
            self._finish_error(prop, self._undecided_error(prop, "the node is stopping", stopping=True))
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    # -- the CommandLog interface ------------------------------------------------------------

    async def propose(self, entry: bytes, request_id: str, timeout: float | None = None) -> ApplyResult:
        """Commit ``entry`` through the leader; resolve once applied and committed here."""
        if not entry:
            raise ValueError("an empty entry is reserved for barrier()")
        if len(entry) > self.settings.append_batch_bytes // 2:
            # pysyncobj splits an entry >= appendEntriesBatchSizeBytes into chunks, and its
            # reassembly is broken (0.3.17): followers could never accept it. Refuse up front.
            raise CommandLogError(f"the command is too large for the raft log ({len(entry)} bytes)",
                                  request_id=request_id)
        return await self._propose(entry, request_id, timeout)

    async def barrier(self, timeout: float | None = None) -> None:
        """Commit a no-op through the log: afterwards this node has applied every write
        acknowledged anywhere before the call (a linearizable read point)."""
        await self._propose(BARRIER_ENTRY, None, timeout)

    def status(self) -> LogStatus:
        """As of the last tick (at most ~100 ms old; role changes are published at once)."""
        return self._status

    @property
    def applied_index(self) -> int:
        """Committed in this node's SQLite, now (``status()`` is up to 100 ms old)."""
        return self._applier.applied_index

    def is_leader(self) -> bool:
        return self._leader_flag and self._fatal is None and not self._stopped

    def has_leader_lease(self) -> bool:
        """Leader, and a majority answered within the last election_min_s - heartbeat_s."""
        return self.is_leader() and time.monotonic() < self._lease_until

    def check_leader_read(self) -> None:
        """For ``leader`` consistency reads: refuse on a follower or a cut-off leader."""
        if not self.is_leader():
            leader = self._status.leader
            raise NotLeaderError(f"this node is not the leader (leader: {leader or 'unknown'})")
        if not self.has_leader_lease():
            raise NoQuorumError("this leader has not heard from a majority recently", retry_after=1.0)

    async def leader_read(self, timeout: float | None = None) -> None:
        """Before a ``leader`` read: refuse on a follower or a cut-off leader, then wait until
        the apply thread has committed everything this leader knows to be committed, so a
        write acknowledged by any node is visible here."""
        self.check_leader_read()
        raft = self._raft
        if raft is None:
            raise LogStoppedError("the raft log is not running")
        await self._wait_applied(raft.raftCommitIndex, timeout)

    async def _wait_applied(self, index: int, timeout: float | None) -> None:
        if self._applier.applied_index >= index:
            return
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()
        self._apply_waiters.append((index, future))
        if self._applier.applied_index >= index:  # applied between the check and the append
            return
        wait = self.settings.propose_timeout_s if timeout is None else timeout
        try:
            await asyncio.wait_for(future, wait)
        except TimeoutError:
            raise NoQuorumError(f"this node has not applied index {index} in {wait:g}s", retry_after=1.0) from None
        finally:
            self._apply_waiters = [(i, f) for i, f in self._apply_waiters if f is not future]

    def add_leadership_listener(self, callback: Callable[[bool], None]) -> None:
        """Called on the event loop with True once this node leads and has applied its
        term's first entry (safe to start leader-only duties), False when it stops leading."""
        self._leadership_listeners.append(callback)

    def add_fatal_listener(self, callback: Callable[[BaseException], None]) -> None:
        """Called on the event loop if the node stopped itself to avoid diverging (storage
        failed during apply). The process should exit; a restart replays the journal."""
        self._fatal_listeners.append(callback)

    async def change_membership(self, action: Literal["add", "remove"], address: str, timeout: float = 30.0) -> None:
        """Add or remove one member through the log (pysyncobj dynamic membership); returns once
        the change is applied on this node. One change at a time: a second one while the first
        is uncommitted is refused (ValueError), as is adding a member or removing a stranger."""
        raft = self._raft
        if raft is None or self._stopped or self._fatal is not None:
            raise LogStoppedError("the raft log is not running")
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"expected HOST:PORT, got {address!r}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()

        def done(result: Any, error: int) -> None:
            loop.call_soon_threadsafe(lambda: None if future.done() else future.set_result(error))

        if action == "add":
            raft.addNodeToCluster(address, callback=done)
        else:
            raft.removeNodeFromCluster(address, callback=done)
        try:
            error = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise OutcomeUnknownError(f"membership change ({action} {address}) not applied in {timeout:g}s") from None
        if error == FAIL_REASON.SUCCESS:
            return
        if error == FAIL_REASON.REQUEST_DENIED:
            raise ValueError(
                f"refused: {address} is already {'a' if action == 'add' else 'not a'} member, or another"
                " membership change is still in progress"
            )
        if error in (FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER):
            raise NoQuorumError("no leader: the membership change was not made")
        raise OutcomeUnknownError(f"membership change ({action} {address}) ended with pysyncobj error {error}")

    def force_compaction(self) -> None:
        """Snapshot and compact the journal at the next tick (admin tool, tests)."""
        if self._raft is not None:
            self._raft.forceLogCompaction()

    # -- proposals (event-loop thread) ----------------------------------------------------------

    async def _propose(self, entry: bytes, request_id: str | None, timeout: float | None) -> Any:
        if self._stopped or self._fatal is not None or self._raft is None or self._loop is None:
            raise LogStoppedError("the raft log is not running", request_id=request_id)
        if len(self._in_flight) >= self.settings.max_in_flight:
            raise BackpressureError("too many writes in flight", request_id=request_id, retry_after=1.0)
        loop = self._loop
        wait = self.settings.propose_timeout_s if timeout is None else timeout
        prop = _Proposal(entry, request_id, loop.create_future(), loop.time() + wait)
        self._in_flight.add(prop)
        if self._sweep is None:
            self._sweep = loop.call_later(_SWEEP_S, self._sweep_deadlines)
        self._submit(prop)
        try:
            return await prop.future
        finally:
            if prop.future.cancelled() or not prop.future.done():  # the caller was cancelled
                prop.future.cancel()
                self._forget(prop)

    def _sweep_deadlines(self) -> None:
        """One timer for all proposals (not one each): expire those past their deadline."""
        assert self._loop is not None
        self._sweep = None
        now = self._loop.time()
        for prop in [p for p in self._in_flight if p.deadline <= now]:
            self._expire(prop)
        if self._in_flight:
            self._sweep = self._loop.call_later(_SWEEP_S, self._sweep_deadlines)

    def _submit(self, prop: _Proposal) -> None:
        if prop.future.done():
            return
        raft = self._raft
        if raft is None or self._fatal is not None or self._stopped:
            self._finish_error(prop, self._undecided_error(prop, "the raft log stopped", stopping=True))
            return
        prop.waiting = False
        prop.attempt += 1
        self._pending.append((prop, prop.attempt))
        if not self._wake_pending:  # one wake-up per tick, however many proposals
            self._wake_pending = True
            self._wake()

    def _wake(self) -> None:
        """Interrupt the tick thread's poll so the new proposals go out now, not after tick_wait_s."""
        fds = self._wake_fds
        if fds is not None:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(fds[1], b"w")

    def _on_wake(self, fd: int, event: int) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(fd, 4096):
                pass

    def _drain(self, raft: _RaftNode) -> None:
        """Tick thread, before each tick: the tick's proposals become one Batch entry (or a
        few, bounded by max_batch_bytes / max_batch_commands); barriers share one entry."""
        self._wake_pending = False  # cleared before draining: a later append wakes us again
        if not self._pending:
            return
        barriers: list[tuple[_Proposal, int]] = []
        group: list[tuple[_Proposal, int]] = []
        size = 0
        s = self.settings
        while self._pending:
            prop, attempt = self._pending.popleft()
            if attempt != prop.attempt or prop.future.done():
                continue  # superseded or already answered
            if prop.request_id is None:
                barriers.append((prop, attempt))
                continue
            if group and (size + len(prop.entry) > s.max_batch_bytes or len(group) >= s.max_batch_commands):
                self._send_group(raft, group)
                group, size = [], 0
            group.append((prop, attempt))
            size += len(prop.entry)
        if group:
            self._send_group(raft, group)
        if barriers:
            raft.apply_entry(BARRIER_ENTRY, callback=functools.partial(self._on_outcome, barriers))

    def _send_group(self, raft: _RaftNode, group: list[tuple[_Proposal, int]]) -> None:
        if len(group) == 1:
            entry = group[0][0].entry  # a lone command goes as itself: no Batch wrapper to pay for
        else:
            entry = c.encode(c.Batch(request_id="", entries=[prop.entry for prop, _ in group]))
        raft.apply_entry(entry, callback=functools.partial(self._on_outcome, group))

    def _on_outcome(self, group: list[tuple[_Proposal, int]], result: Any, error: int) -> None:
        """pysyncobj's callback, on the tick thread. A success waits for the apply thread's
        COMMIT of that entry; a failure is delivered at the end of the tick."""
        if error == FAIL_REASON.SUCCESS and isinstance(result, CommittedEntry):
            with self._report_lock:
                if not result.reported:
                    result.waiters.append(group)
                    return
            result = result.results  # the apply thread was quicker than this callback
        self._outcomes.append((group, result, error))

    def _on_applied(self, entries: list[CommittedEntry], applied_index: int) -> None:
        """Apply thread, after each COMMIT: resolve the proposals the entries carried."""
        with self._report_lock:
            for item in entries:
                item.reported = True
            outcomes = [(group, item.results, FAIL_REASON.SUCCESS) for item in entries for group in item.waiters]
        loop = self._loop
        if loop is not None and (outcomes or self._apply_waiters):
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self._after_apply, outcomes, applied_index)

    def _after_apply(self, outcomes: list[tuple[list[tuple[_Proposal, int]], Any, int]], applied: int) -> None:
        self._deliver(outcomes)
        if self._apply_waiters:
            still = []
            for index, future in self._apply_waiters:
                if applied >= index:
                    if not future.done():
                        future.set_result(None)
                else:
                    still.append((index, future))
            self._apply_waiters = still

    def _on_apply_failed(self, exc: BaseException) -> None:
        """Apply thread: the state machine raised (disk, I/O). Stop the node; wake the tick."""
        self._set_fatal(exc, "apply failed")
        self._wake()

    def _deliver(self, outcomes: list[tuple[list[tuple[_Proposal, int]], Any, int]]) -> None:
        """Split each entry's outcome among the proposals it carried (results are in order)."""
        for group, result, error in outcomes:
            for i, (prop, attempt) in enumerate(group):
                one = result
                if isinstance(result, list):
                    # a replayed entry answers with one placeholder for the whole Batch
                    one = result[i] if len(result) == len(group) else result[0]
                self._handle(prop, attempt, one, error)

    def _handle(self, prop: _Proposal, attempt: int, result: Any, error: int) -> None:
        if prop.future.done():
            return
        if error == FAIL_REASON.SUCCESS:
            if prop.request_id is not None and _is_replay_placeholder(result):
                # This node had already applied that index (from a snapshot that was ahead),
                # so the callback carries no outcome. The same entry again is harmless: the
                # state machine answers a known request id with the first outcome.
                prop.maybe_applied = True
                self._retry(prop, 0.0)
                return
            self._finish(prop, result)
            return
        if attempt != prop.attempt:
            return  # an older attempt failing late: its successor is already under way
        if error in (FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER):
            self._retry(prop, _LEADER_WAIT_S, wait_for_leader=True)
        elif error in (FAIL_REASON.LEADER_CHANGED, FAIL_REASON.UNKNOWN_OUTCOME):
            prop.maybe_applied = True
            self._retry(prop, _RETRY_S)
        elif error == FAIL_REASON.DISCARDED:
            self._retry(prop, _RETRY_S)
        elif error == FAIL_REASON.QUEUE_FULL:
            if prop.maybe_applied:
                self._retry(prop, _LEADER_WAIT_S)
            else:
                self._finish_error(
                    prop, BackpressureError("the raft queue is full", request_id=prop.request_id, retry_after=1.0)
                )
        else:
            self._finish_error(
                prop, CommandLogError(f"pysyncobj refused the entry ({error})", request_id=prop.request_id)
            )

    def _retry(self, prop: _Proposal, delay: float, *, wait_for_leader: bool = False) -> None:
        assert self._loop is not None
        if self._loop.time() + delay >= prop.deadline:
            self._expire(prop)
            return
        prop.waiting = True
        if wait_for_leader:
            self._leader_waiters.add(prop)
        if delay <= 0:
            self._submit(prop)
        else:
            self._loop.call_later(delay, self._retry_due, prop)

    def _retry_due(self, prop: _Proposal) -> None:
        self._leader_waiters.discard(prop)
        if prop.waiting:
            self._submit(prop)

    def _on_leader_known(self) -> None:
        waiters, self._leader_waiters = self._leader_waiters, set()
        for prop in waiters:
            if prop.waiting:
                self._submit(prop)

    def _on_snapshot_installed(self) -> None:
        """Callbacks for indexes inside an installed snapshot never fire: ask again."""
        for prop in list(self._in_flight):
            if not prop.waiting and not prop.future.done():
                prop.maybe_applied = True
                self._submit(prop)

    def _expire(self, prop: _Proposal) -> None:
        if prop.future.done():
            return
        self._finish_error(prop, self._undecided_error(prop, "no outcome in time"))

    def _undecided_error(self, prop: _Proposal, why: str, *, stopping: bool = False) -> CommandLogError:
        if prop.maybe_applied or not prop.waiting:
            return OutcomeUnknownError(
                f"{why}; the write may have been applied — retry with the same request id",
                request_id=prop.request_id,
            )
        if stopping:
            return LogStoppedError(f"{why}; the write was not applied", request_id=prop.request_id)
        return NoQuorumError(f"{why}: no leader reachable; the write was not applied", request_id=prop.request_id)

    def _finish(self, prop: _Proposal, result: Any) -> None:
        prop.future.set_result(result)
        self._forget(prop)

    def _finish_error(self, prop: _Proposal, exc: BaseException) -> None:
        if not prop.future.done():
            prop.future.set_exception(exc)
        self._forget(prop)

    def _forget(self, prop: _Proposal) -> None:
        prop.waiting = False
        self._in_flight.discard(prop)
        self._leader_waiters.discard(prop)

    # -- the tick thread -------------------------------------------------------------------------

    def _conf(self) -> SyncObjConf:
        s = self.settings
        return SyncObjConf(
            **raft_timing(s),
            autoTick=False,
            appendEntriesBatchSizeBytes=s.append_batch_bytes,
            journalFile=os.path.join(s.raft_dir, "journal"),
            fullDumpFile=os.path.join(s.raft_dir, "snapshot"),
            serializer=self._serialize,
            deserializer=self._deserialize,
            serializeChecker=self._serialize_check,
            logCompactionMinEntries=s.compaction_min_entries,
            logCompactionMinTime=s.compaction_min_time_s,
            logCompactionSplit=True,
            dynamicMembershipChange=True,
            bindAddress=s.bind_address or s.self_address,
            bindRetryTime=0.5,
            maxBindRetries=s.bind_retries,
            useFork=False,
        )

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        self._tick_ident = threading.get_ident()
        try:
            raft = self._build()
        except BaseException as exc:  # bind failure, bad settings: start() raises it
            self._applier.stop()
            ready.set_exception(exc)
            return
        ready.set_result(None)
        # pysyncobj runs tick callbacks after its Raft work and right before it blocks in
        # poll(): the flush, the hand-over to the apply thread and replies go out there, not
        # after the poll has waited.
        raft.addOnTickCallback(self._end_tick_guarded)
        wait = self.settings.tick_wait_s
        while not self._stop.is_set():
            try:
                # Entries a follower received during the poll: flushed and acknowledged now,
                # before this tick's Raft work, so the leader hears back as soon as possible.
                self._flush_journal()
                self._drain(raft)
                raft.doTick(wait)
            except _FatalError:
                pass
            except Exception as exc:  # a pysyncobj bug: log it and go on, as its autoTick does
                if self._fatal is None:
                    log.exception("raft tick failed")
                else:
                    log.debug("tick stopped by fatal error", exc_info=exc)
            if self._fatal is not None:
                self._die()
                return
        self._shutdown()

    def _build(self) -> _RaftNode:
        s = self.settings
        self._applier.start(0)
        raft = _RaftNode(self, s.self_address, s.others(), self._conf())
        missing = [a for a in _PRIVATE_ATTRS if not hasattr(raft, a)]
        if missing:
            raft._doDestroy()
            raise RuntimeError(f"unsupported pysyncobj version (no {', '.join(missing)}); RaftLog needs 0.3.17")
        self._transport = raft._SyncObj__transport  # type: ignore[attr-defined]
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        raft._poller.subscribe(r, self._on_wake, POLL_EVENT_TYPE.READ)
        self._wake_fds = (r, w)
        if self._durable:
            inner = raft._SyncObj__raftLog  # type: ignore[attr-defined]
            inner._FileJournal__metaStorer = _FsyncMetaStorer(inner._FileJournal__metaStorer.getPath())
            inner.flush()
            fsync_path(s.raft_dir)
            self._journal = _TrackedJournal(inner)
            raft._SyncObj__raftLog = self._journal  # type: ignore[attr-defined]
            self._transport.hold = True
        self._raft = raft
        return raft

    def _apply_on_tick(self, entry: bytes) -> CommittedEntry:
        """The replicated method's body: hand the entry to the apply thread at once (it is
        committed, and in this node's journal since the tick that flushed it). The proposals
        it carries are attached by pysyncobj's callback right after this returns, or answered
        at once if the apply thread was quicker. Raises into pysyncobj only to stop the node."""
        if self._fatal is not None:
            raise _FatalError("stopped")
        assert self._raft is not None
        item = CommittedEntry(self._raft.raftLastApplied + 1, entry)
        self._applier.submit([item], item.index)
        return item

    def _flush_journal(self) -> None:
        """fsync mode: msync the journal if it changed, then let the held acks go."""
        if self._journal is not None:
            try:
                self._journal.flush()
            except BaseException as exc:
                self._set_fatal(exc, "journal flush failed")
                raise _FatalError(str(exc)) from exc
        if self._transport is not None and self._transport.held:
            self._transport.release()

    def _end_tick_guarded(self) -> None:
        if self._fatal is not None:
            return
        try:
            self._end_tick()
        except Exception:
            log.exception("raft tick bookkeeping failed")

    def _end_tick(self) -> None:
        """End of a tick's work: COMMIT, flush the journal, release acks, resolve futures."""
        raft = self._raft
        assert raft is not None and self._loop is not None
        self.counters["ticks"] += 1
        try:
            self._flush_journal()
        except _FatalError:
            return
        self._applier.submit([], raft.raftLastApplied)  # pysyncobj's own entries count as applied
        outcomes, self._outcomes = self._outcomes, []
        if outcomes:
            self._loop.call_soon_threadsafe(self._deliver, outcomes)
        if self._snapshot_installed:
            self._snapshot_installed = False
            self._loop.call_soon_threadsafe(self._on_snapshot_installed)
        self._publish(raft)

    def _publish(self, raft: _RaftNode) -> None:
        """Role changes at once; the full status at most every 100 ms."""
        assert self._loop is not None
        now = time.monotonic()
        is_leader = raft._isLeader()
        leader = raft._getLeader()
        if is_leader:
            responses = sorted(raft._SyncObj__lastResponseTime.values(), reverse=True)  # type: ignore[attr-defined]
            needed = (len(raft.otherNodes) + 1) // 2
            contact = now if needed == 0 else (responses[needed - 1] if len(responses) >= needed else 0.0)
            self._lease_until = contact + self.settings.election_min_s - self.settings.heartbeat_s
        else:
            self._lease_until = 0.0
        changed = leader != self._last_leader or is_leader != self._leader_flag
        if leader is not None and self._last_leader is None:
            self._loop.call_soon_threadsafe(self._on_leader_known)
        self._last_leader = leader
        self._leader_flag = is_leader
        noop = raft._SyncObj__noopIDx  # type: ignore[attr-defined]
        ready_leader = is_leader and noop is not None and self._applier.applied_index >= noop
        if ready_leader != self._announced_leader:
            self._announced_leader = ready_leader
            self._loop.call_soon_threadsafe(self._announce, ready_leader)
        if changed or now >= self._next_publish:
            self._next_publish = now + 0.1
            self._status = self._build_status(raft)

    def _build_status(self, raft: _RaftNode) -> LogStatus:
        st = raft.getStatus()
        is_leader = st["state"] == 2
        journal = raft._SyncObj__raftLog  # type: ignore[attr-defined]
        last_index = journal[-1][1]
        peers = []
        for node in sorted(raft.otherNodes, key=lambda n: n.id):
            match = st.get("match_idx_server_" + node.id) if is_leader else None
            peers.append(
                PeerStatus(
                    address=node.id,
                    connected=raft.isNodeConnected(node),
                    match_index=match,
                    lag=None if match is None else max(0, last_index - match),
                )
            )
        leader = st["leader"]
        return LogStatus(
            kind="raft",
            role=_ROLE.get(st["state"], "unknown"),
            term=st["raft_term"],
            leader=None if leader is None else leader.id,
            self_address=self.settings.self_address,
            commit_index=st["commit_idx"],
            applied_index=self._applier.applied_index,
            has_quorum=(time.monotonic() < self._lease_until)
            if is_leader
            else (leader is not None and st["has_quorum"]),
            peers=peers,
        )

    def _initial_status(self) -> LogStatus:
        return LogStatus(
            kind="raft",
            role="follower",
            term=0,
            leader=None,
            self_address=self.settings.self_address,
            commit_index=0,
            applied_index=0,
            has_quorum=False,
            peers=[PeerStatus(address=p, connected=False) for p in self.settings.others()],
        )

    def _announce(self, leading: bool) -> None:
        for callback in self._leadership_listeners:
            try:
                callback(leading)
            except Exception:
                log.exception("leadership listener failed")

    def _set_fatal(self, exc: BaseException, why: str) -> None:
        if self._fatal is None:
            log.critical("raft node stops itself: %s: %r", why, exc)
            self._fatal = exc

    def _die(self) -> None:
        """Fail-stop: no more ticks, port closed; pending outcomes become unknown."""
        exc = self._fatal
        assert exc is not None and self._loop is not None
        self._applier.stop(drain=False)  # nothing more is applied: a restart replays the journal
        if self._transport is not None:
            self._transport.held = []
        self._outcomes = []
        self._leader_flag = False
        self._status = msgspec.structs.replace(self._status, role="failed", has_quorum=False)
        self._shutdown()
        self._loop.call_soon_threadsafe(self._on_fatal, exc)

    def _on_fatal(self, exc: BaseException) -> None:
        for prop in list(self._in_flight):
            self._finish_error(prop, self._undecided_error(prop, "the raft node stopped after a storage failure"))
        if self._announced_leader:
            self._announced_leader = False
            self._announce(False)
        for callback in self._fatal_listeners:
            try:
                callback(exc)
            except Exception:
                log.exception("fatal listener failed")

    def _shutdown(self) -> None:
        if self._raft is not None:
            with contextlib.suppress(Exception):
                if self._journal is not None and self._fatal is None:
                    self._journal.flush()
                self._raft._doDestroy()
        self._applier.stop(drain=self._fatal is None)
        fds, self._wake_fds = self._wake_fds, None
        if fds is not None:  # no proposal can arrive now: _stopped or _fatal is set
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self._fatal is None and self._loop is not None:
            self._status = msgspec.structs.replace(self._status, role="stopped", has_quorum=False)
            self._leader_flag = False
            if self._announced_leader:
                self._announced_leader = False
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._announce, False)

    # -- snapshots (tick thread, except the backup itself) --------------------------------------

    def _serialize(self, tmp_path: str, data: Sequence[Any]) -> None:
        """pysyncobj's serializer: start a background backup; ``_serialize_check`` finishes it.

        pysyncobj renames ``tmp_path`` right after this returns; we never create it, so that
        rename fails harmlessly and the checker reports the real state.
        """
        last, prev, cluster = data
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        header = SnapshotHeader(
            last=(bytes(last[0]), int(last[1]), int(last[2])),
            prev=(bytes(prev[0]), int(prev[1]), int(prev[2])),
            cluster=sorted(n.id for n in cluster),
        )
        job = _SnapshotJob(self._snap_generation, os.path.join(self.settings.raft_dir, "snapshot.local"), header)
        self._snap_job = job
        threading.Thread(target=self._write_snapshot, args=(job,), name="ccn-raft-snapshot", daemon=True).start()

    def _write_snapshot(self, job: _SnapshotJob) -> None:
        """Background thread: once the apply thread has committed every entry up to the
        header's index, back the database up. A backup that is ahead of that index is correct
        too, because replaying entries at or below the state machine's applied_index is a no-op."""
        db_tmp = job.path + ".sqlite3"
        try:
            while not self._applier.wait_applied(job.header.last[1], timeout=1.0):
                if self._stop.is_set() or self._fatal is not None or self._applier.failed is not None:
                    return  # finally: job.done with ok = False
            self.sm.backup_to(db_tmp)
            write_snapshot(job.path, job.header, db_tmp)
            job.ok = True
        except Exception:
            log.exception("raft snapshot failed")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(db_tmp)
            job.done.set()

    def _serialize_check(self) -> int:
        job = self._snap_job
        if job is None:
            return SERIALIZER_STATE.NOT_SERIALIZING
        if not job.done.is_set():
            return SERIALIZER_STATE.SERIALIZING
        self._snap_job = None
        if job.ok and job.generation == self._snap_generation:
            try:
                target = os.path.join(self.settings.raft_dir, "snapshot")
                os.replace(job.path, target)
                fsync_path(self.settings.raft_dir)
                self.counters["snapshots_written"] += 1
                return SERIALIZER_STATE.SUCCESS
            except OSError:
                log.exception("could not install the new raft snapshot")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(job.path)
        return SERIALIZER_STATE.FAILED

    def _deserialize(self, path: str) -> tuple[Any, Any, list[TCPNode]]:
        """pysyncobj's deserializer: at start (our own snapshot) or when a leader sent one."""
        self._snap_generation += 1  # a local snapshot still being written is now stale
        db_tmp = os.path.join(self.settings.raft_dir, "restore.sqlite3")
        try:
            header = read_snapshot(path, db_tmp)
            # Entries still queued for the apply thread are all at or below the snapshot's
            # index (pysyncobj sends a snapshot only to a node behind it): applying them would
            # only delay this tick thread (heartbeats, elections), so they are dropped; their
            # proposals are asked again below (_on_snapshot_installed). The apply thread then
            # idles (only this thread hands it work) and the database can be replaced under it.
            self._applier.discard_through(header.last[1])
            self._applier.wait_idle()
            if self._applier.failed is not None:
                raise _FatalError(str(self._applier.failed))
            replaced = self.sm.restore_from(db_tmp)
            if self._durable:
                fsync_path(path)
                fsync_path(self.settings.raft_dir)
        except _FatalError:
            raise
        except BaseException as exc:
            self._set_fatal(exc, f"cannot load raft snapshot {path} (remove it to fetch one from the leader)")
            raise _FatalError(str(exc)) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(db_tmp)
        if replaced:
            self.counters["snapshots_installed"] += 1
        self._snapshot_installed = True
        log.info("raft snapshot at index %d loaded (database replaced: %s)", header.last[1], replaced)
        return header.last, header.prev, [TCPNode(a) for a in header.cluster]


def _is_replay_placeholder(result: Any) -> bool:
    return isinstance(result, ApplyResult) and result.duplicate and not result.request_id


def remove_raft_state(data_dir: str) -> None:
    """Delete this node's journal and snapshot (a wiped follower refetches from the leader)."""
    shutil.rmtree(os.path.join(data_dir, "raft"), ignore_errors=True)
