"""Membership changes of a running cluster through `ccn-node cluster add|remove`, and the
refusal of a member whose ledger key differs from the cluster's: real `ccn-node serve`
processes on 127.0.0.1 under a continuous write load (see test_cluster_faults.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nodeproc import free_port
from test_cluster_faults import Cluster, Member, module_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


def cli(member: Member, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ccn_node", "cluster", *args, "--config", str(member.config_path)],
                          capture_output=True, text=True, timeout=60, env=member.env)


def peers_seen_by(cl: Cluster, i: int) -> set[str]:
    return {p["address"] for p in cl.members[i].status(cl.admin)["peers"]}


def wait_for(predicate, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


cluster = module_cluster("membership")


def test_add_then_remove_members_with_the_cli(cluster: Cluster) -> None:
    cl = cluster
    root, shared = cl.root, cl.root / "shared"
    addresses = [m.raft for m in cl.members]
    cl.start_load()
    cl.wait_progress(10)

    # a fourth node, configured with the full new member list, joins once it is added
    new_raft = f"127.0.0.1:{free_port()}"
    newcomer = Member(root / "n3", new_raft, [*addresses, new_raft], shared)
    newcomer.launch()

    def answers() -> bool:
        try:
            return newcomer.request("GET", "/health", timeout=2).status == 200
        except OSError:
            return False

    wait_for(answers, "the new node's HTTP server")
    time.sleep(1.0)
    assert newcomer.proc is not None and newcomer.proc.poll() is None
    assert newcomer.request("GET", "/ready", timeout=3).status == 503  # not a member yet: never ready

    leader = cl.leader()
    done = cli(cl.members[(leader + 1) % 3], "add", new_raft)  # asked of a follower: forwarded to the leader
    assert done.returncode == 0, done.stderr
    assert f"add {new_raft}: committed" in done.stdout
    newcomer.wait_ready()
    cl.members.append(newcomer)
    wait_for(lambda: new_raft in peers_seen_by(cl, cl.leader()), "the leader to list the new member")
    cl.wait_progress(20)

    # adding it twice, or an address that is not HOST:PORT, is refused and changes nothing
    again = cli(cl.members[0], "add", new_raft)
    assert again.returncode == 1 and "409" in again.stderr, again.stderr
    bad = cli(cl.members[0], "add", "not-an-address")
    assert bad.returncode == 1 and "400" in bad.stderr, bad.stderr

    # remove a follower that is not the newcomer, then stop it: four members minus one
    leader = cl.leader()
    gone = next(i for i in range(3) if i != leader)
    removed = cli(cl.members[leader], "remove", addresses[gone])
    assert removed.returncode == 0, removed.stderr
    wait_for(lambda: addresses[gone] not in peers_seen_by(cl, cl.leader()), "the leader to drop the member")
    cl.down.add(gone)
    cl.members[gone].kill()
    cl.wait_progress(20)
    twice = cli(cl.members[leader], "remove", addresses[gone])
    assert twice.returncode == 1 and "409" in twice.stderr, twice.stderr
    cl.stop_load()

    status = cl.members[cl.leader()].status(cl.admin)
    assert status["role"] == "leader" and len(status["peers"]) == 2, status
    # the remaining three hold every acknowledged write, identically (the removed one is not asked)
    stopped = cl.members.pop(gone)
    try:
        cl.converge()
    finally:
        cl.members.insert(gone, stopped)


def test_member_with_another_ledger_key_exits(cluster: Cluster, tmp_path: Path) -> None:
    """Blocks are signed inside apply with the cluster's ledger key: a member holding another
    key would seal different blocks, so it refuses to run (non-zero exit, the reason logged)."""
    cl = cluster
    live = [i for i in range(len(cl.members)) if i not in cl.down]
    other_shared = tmp_path / "other-shared"
    other_shared.mkdir()
    for name in ("cluster.secret", "jwt.key"):  # same secret and tokens, but a new ledger key
        shutil.copy2(cl.root / "shared" / name, other_shared / name)
    raft = f"127.0.0.1:{free_port()}"
    stranger = Member(tmp_path / "stranger", raft, [*(cl.members[i].raft for i in live), raft], other_shared)
    stranger.launch()
    try:
        added = cli(cl.members[live[0]], "add", raft)
        assert added.returncode == 0, added.stderr
        assert stranger.proc is not None
        stranger.proc.wait(30)
        assert stranger.proc.returncode != 0
        assert "ledger key or cluster.name differ from the cluster's" in stranger.log_path.read_text()
    finally:
        stranger.stop()
        removed = cli(cl.members[live[0]], "remove", raft)
        assert removed.returncode == 0, removed.stderr
    # the cluster goes on without it
    cl.start_load()
    cl.wait_progress(10)
    cl.stop_load()
