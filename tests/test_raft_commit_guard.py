"""A follower must never commit entries it has not matched against the leader's log.

pysyncobj 0.3.17 lets an append_entries without prevLogIdx — a snapshot chunk, or nothing at
all while the leader's snapshot is still being written — move a follower's commit index to
min(leader's commit index, the follower's *own* last index). A follower still holding an
entry that a dead minority leader appended and never committed then applies it, and the
cluster diverges for good. RaftLog's transport puts the commit index back. This drives a real
pysyncobj follower (no network, no ticks) with the message both ways."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.node import TCPNode
from pysyncobj.transport import TCPTransport

from ccn_node.loopback import free_ports
from ccn_node.replication.raft_log import _AckHoldingTransport


def follower_with_stale_tail(transport_class: type, journal: str) -> SyncObj:
    """A follower at term 1 whose log holds indexes 1–5 and has committed up to 3: 4 and 5
    are what a minority leader appended before it died, never committed anywhere."""
    me, peer = (f"127.0.0.1:{p}" for p in free_ports(2))
    conf = SyncObjConf(autoTick=False, password="guard-test", dynamicMembershipChange=True, journalFile=journal)
    sync = SyncObj(me, [peer], conf, transportClass=transport_class)
    raft_log = sync._SyncObj__raftLog
    for index in range(2, 6):
        raft_log.add(b"\x00stale" + bytes([index]), index, 1)
    sync._SyncObj__raftCurrentTerm = 1
    sync._SyncObj__raftCommitIndex = 3
    raft_log.setRaftCommitIndex(3)
    sync.peer = TCPNode(peer)  # type: ignore[attr-defined]
    return sync


@pytest.fixture(params=[TCPTransport, _AckHoldingTransport], ids=["stock-pysyncobj", "raftlog-transport"])
def follower(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SyncObj]:
    sync = follower_with_stale_tail(request.param, str(tmp_path / "journal"))
    yield sync
    sync.destroy()  # autoTick=False: destroys at once


def test_a_snapshot_message_does_not_commit_the_stale_tail(follower: SyncObj) -> None:
    transport = follower._SyncObj__transport
    # The new leader (term 2) has committed up to 10 in *its* log; its snapshot is not ready yet.
    transport._onMessageReceived(follower.peer, {"type": "append_entries", "term": 2, "commit_index": 10,
                                                 "serialized": None})
    committed = follower._SyncObj__raftCommitIndex
    if type(transport) is TCPTransport:
        assert committed == 5  # pysyncobj's unchecked commit: if this fails, upstream fixed it
    else:
        assert committed == 3
        assert follower._SyncObj__raftLog.getRaftCommitIndex() == 3  # and so is the journal's


def test_a_normal_append_still_commits(follower: SyncObj) -> None:
    """A matching append (prevLogIdx/prevLogTerm checked) moves the commit index as before,
    through either transport: the guard only holds back messages without that check."""
    transport = follower._SyncObj__transport
    entries = [(b"\x00new4", 4, 2), (b"\x00new5", 5, 2)]
    transport._onMessageReceived(follower.peer, {"type": "append_entries", "term": 2, "commit_index": 5,
                                                 "entries": entries, "prevLogIdx": 3, "prevLogTerm": 1})
    assert follower._SyncObj__raftCommitIndex == 5
    assert follower._SyncObj__raftLog[-1][0] == b"\x00new5"  # the stale tail was replaced first
