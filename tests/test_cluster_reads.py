"""Read consistency levels on a 3-node cluster of real `ccn-node serve` processes: `local`,
`leader` (refused on a follower and on a leader cut off from its majority) and
`linearizable` (a barrier through the log), with writes made on another node just before."""

from __future__ import annotations

import time

import pytest
from test_cluster_faults import Cluster, module_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


cluster = module_cluster("reads")


def start_on(cl: Cluster, i: int) -> str:
    resp = cl.members[i].request("POST", "/api/v1/conversation/start", token=cl.user, timeout=10)
    assert resp.status == 201, resp
    return resp.json()["session_id"]


def read(cl: Cluster, i: int, session_id: str, level: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    resp = cl.members[i].request("GET", f"/api/v1/conversation/{session_id}?consistency={level}",
                                 token=cl.user, timeout=10)
    return resp.status, resp.json()


def test_consistency_levels(cluster: Cluster) -> None:
    cl = cluster
    leader = cl.leader()
    a, b = [i for i in range(3) if i != leader]

    # leader: refused on a follower (503, retryable, says which node leads), served by the leader
    status, body = read(cl, a, "nosuch", "leader")
    assert status == 503 and body["error"]["code"] == "not_leader", body
    assert "retry-after" in cl.members[a].request("GET", "/api/v1/conversations?consistency=leader",
                                                  token=cl.user).headers
    # a bad level is the client's error, whatever the role
    status, body = read(cl, leader, "nosuch", "eventual")
    assert status == 400 and body["error"]["field"] == "consistency", body

    for _ in range(20):
        # written through follower a, read at once through the leader and through follower b
        sid = start_on(cl, a)
        status, body = read(cl, leader, sid, "leader")
        assert status == 200 and body["session_id"] == sid, body
        status, body = read(cl, b, sid, "linearizable")
        assert status == 200 and body["session_id"] == sid, body
    status, body = read(cl, b, sid, "local")  # after the barrier above, local sees it too
    assert status == 200, body


def test_leader_cut_off_from_its_majority_refuses_leader_reads(cluster: Cluster) -> None:
    cl = cluster
    leader = cl.leader()
    sid = start_on(cl, leader)
    followers = [i for i in range(3) if i != leader]
    for i in followers:
        cl.down.add(i)
        cl.members[i].kill()
    try:
        time.sleep(1.0)  # > election_min_s: the lease has run out and the leader steps down
        status, body = read(cl, leader, sid, "leader")
        assert status == 503 and body["error"]["code"] in ("not_leader", "no_quorum"), body
        status, body = read(cl, leader, sid, "linearizable")  # the barrier cannot commit
        assert status == 503 and body["error"]["code"] in ("no_quorum", "outcome_unknown"), body
        status, body = read(cl, leader, sid, "local")  # what it has, it can still say
        assert status == 200 and body["session_id"] == sid, body
    finally:
        for i in followers:
            cl.members[i].launch()
        for i in followers:
            cl.members[i].wait_ready()
            cl.down.discard(i)
    cl.start_load()
    cl.wait_progress(10)
    cl.stop_load()
    cl.converge()
