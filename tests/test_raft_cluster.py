"""RaftLog with real node processes on 127.0.0.1: replication, follower writes, kill -9 of
the leader under load, restart catch-up, snapshot catch-up of a wiped node.

Each node is ``tests/raft_node.py`` (real Store, StateMachine, RaftLog, HTTP control API).
Only processes started here are killed, by their pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ccn_node.loopback import free_ports

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

NODE_SCRIPT = str(Path(__file__).with_name("raft_node.py"))


def _call(port: int, method: str, path: str, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method, data=b"" if method == "POST" else None
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class Cluster:
    """Three node processes; ``nodes[i]`` keeps its ports and directory across restarts."""

    def __init__(self, root: Path, size: int = 3, **options: Any) -> None:
        ports = free_ports(size * 2)
        self.raft = [f"127.0.0.1:{p}" for p in ports[:size]]
        self.http = ports[size:]
        self.dirs = [root / f"n{i}" for i in range(size)]
        self.options = options
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size

    def start(self, i: int) -> None:
        cmd = [sys.executable, NODE_SCRIPT, "--dir", str(self.dirs[i]), "--raft", self.raft[i]]
        cmd += [x for p in self.raft if p != self.raft[i] for x in ("--peer", p)]
        cmd += ["--http", str(self.http[i])]
        for key, value in self.options.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        log = open(self.dirs[i].with_suffix(".log"), "ab")  # noqa: SIM115 (the child owns it)
        self.dirs[i].mkdir(parents=True, exist_ok=True)
        self.procs[i] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
        line = self.procs[i].stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == b"READY", f"node {i} did not start: {line!r}"

    def start_all(self) -> None:
        for i in range(len(self.raft)):
            self.start(i)

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        self.procs[i] = None

    def stop_all(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.kill(i)
            self.procs[i] = None

    def alive(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p is not None]

    def status(self, i: int) -> dict[str, Any]:
        return _call(self.http[i], "GET", "/status")[1]

    def leader(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leaders = [i for i in self.alive() if self.status(i).get("is_leader")]
            if len(leaders) == 1:
                return leaders[0]
            time.sleep(0.05)
        raise AssertionError("no single leader")

    def write(self, i: int, n: int, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
        return _call(self.http[i], "POST", f"/write?i={n}&timeout={timeout}", timeout=timeout + 5)

    def messages(self, i: int) -> list[str]:
        status, body = _call(self.http[i], "POST", "/barrier")
        assert status == 200, body
        return _call(self.http[i], "GET", "/messages")[1]["ids"]

    def converged(self, expected: set[str], timeout: float = 15.0) -> list[list[str]]:
        """Every live node holds every id of ``expected`` (and writes whose outcome was unknown to
        the client may be there too), each once, in the same order on every node."""
        deadline = time.monotonic() + timeout
        while True:
            views = [self.messages(i) for i in self.alive()]
            if all(set(v) >= expected and len(v) == len(set(v)) for v in views) and all(v == views[0] for v in views):
                return views
            if time.monotonic() > deadline:
                raise AssertionError(f"not converged: sizes {[len(v) for v in views]}, expected {len(expected)}")
            time.sleep(0.1)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made: list[Cluster] = []

    def make(**options: Any) -> Cluster:
        cl = Cluster(tmp_path, **options)
        made.append(cl)
        cl.start_all()
        leader = cl.leader(timeout=30)  # slow heartbeats (an option) make slow first elections
        assert _call(cl.http[leader], "POST", "/setup")[0] == 200
        return cl

    yield make  # type: ignore[misc]
    for cl in made:
        cl.stop_all()


def test_replication_and_follower_writes(cluster: Any) -> None:
    cl: Cluster = cluster()
    leader = cl.leader()
    follower = next(i for i in range(3) if i != leader)
    acked = set()
    for n in range(30):
        status, body = cl.write(leader, n)
        assert status == 200 and body["ok"], body
        acked.add(f"m{n}")
    for n in range(30, 60):
        status, body = cl.write(follower, n)
        assert status == 200 and body["ok"], body
        acked.add(f"m{n}")
        # the reply comes after the entry is applied on the node that answered
        assert f"m{n}" in _call(cl.http[follower], "GET", "/messages")[1]["ids"]
    # a retry with the same request id returns the first outcome, no second write
    status, body = cl.write(follower, 5)
    assert status == 200 and body["duplicate"] and body["value"]["seq"] == 6
    views = cl.converged(acked)
    assert len(views[0]) == 60
    deadline = time.monotonic() + 3  # the status is published at most every 100 ms
    st = cl.status(leader)
    while not all(p["connected"] for p in st["peers"]) and time.monotonic() < deadline:
        time.sleep(0.05)
        st = cl.status(leader)
    assert st["role"] == "leader" and st["has_quorum"] and all(p["connected"] for p in st["peers"]), st
    assert _call(cl.http[leader], "GET", "/leader-read")[0] == 200
    assert _call(cl.http[follower], "GET", "/leader-read")[1]["error"] == "not_leader"


def test_followers_hear_the_commit_index_without_waiting_for_a_heartbeat(cluster: Any) -> None:
    """A follower learns that entries are committed from the append_entries the leader sends
    when it commits them, not from the next heartbeat: with heartbeats 1 s apart, a follower
    still applies a leader's write, and answers a write of its own, at once."""
    cl: Cluster = cluster(heartbeat=1.0)
    leader = cl.leader(timeout=30)
    followers = [i for i in range(3) if i != leader]
    for n in range(5):
        start = time.monotonic()
        status, body = cl.write(leader, n)
        assert status == 200 and body["ok"], body
        target = cl.status(leader)["sm_applied_index"]
        while any(cl.status(i)["sm_applied_index"] < target for i in followers):
            assert time.monotonic() - start < 0.5, "a follower waited for a heartbeat to apply"
            time.sleep(0.01)
        start = time.monotonic()
        status, body = cl.write(followers[n % 2], 100 + n)
        assert status == 200 and body["ok"], body
        assert time.monotonic() - start < 0.5, "a follower's write waited for a heartbeat"
        time.sleep(0.3)  # the next write starts with no entries in flight


def test_kill_leader_under_load_then_restart_catches_up(cluster: Any) -> None:
    cl: Cluster = cluster()
    acked: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()
    counter = iter(range(1_000_000))

    def writer(seed: int) -> None:
        target = seed % 3
        while not stop.is_set():
            with lock:
                n = next(counter)
            for _ in range(40):  # retry the same request id until it has an outcome
                if target not in cl.alive():
                    target = (target + 1) % 3
                    continue
                try:
                    status = cl.write(target, n, timeout=3.0)[0]
                except OSError:
                    status = 0
                if status == 200:
                    with lock:
                        acked.add(f"m{n}")
                    break
                target = (target + 1) % 3
                time.sleep(0.05)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    old = cl.leader()
    before = len(acked)
    cl.kill(old)
    t_kill = time.monotonic()
    new = cl.leader(timeout=10)
    assert new != old
    while len(acked) <= before + 5 and time.monotonic() - t_kill < 10:
        time.sleep(0.05)
    failover = time.monotonic() - t_kill
    time.sleep(1.0)
    cl.start(old)  # restart: replays its journal, then catches up from the leader
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) > before + 5, f"writes did not continue after the kill ({failover:.2f}s)"
    views = cl.converged(acked)
    assert len(views) == 3
    print(f"acked {len(acked)} writes; writes resumed {failover:.2f}s after kill -9")


def test_kill_all_three_then_restart(cluster: Any) -> None:
    cl: Cluster = cluster()
    leader = cl.leader()
    acked = set()
    for n in range(50):
        status, body = cl.write((leader + n) % 3, n)
        assert status == 200, body
        acked.add(f"m{n}")
    for i in range(3):
        cl.kill(i)
    cl.start_all()
    cl.leader()
    views = cl.converged(acked)
    assert len(views[0]) == 50


def test_wiped_follower_catches_up_from_snapshot(cluster: Any) -> None:
    cl: Cluster = cluster(compact_entries=40, compact_time=1.0)
    leader = cl.leader()
    acked = set()
    for n in range(120):
        status, body = cl.write(leader, n)
        assert status == 200, body
        acked.add(f"m{n}")
    wiped = next(i for i in range(3) if i != leader)
    cl.kill(wiped)
    shutil.rmtree(cl.dirs[wiped])
    for n in range(120, 200):
        status, body = cl.write(leader, n)
        assert status == 200, body
        acked.add(f"m{n}")
    # the leader's journal no longer starts at 1: only a snapshot can bring the node back
    deadline = time.monotonic() + 10
    while cl.status(leader)["counters"]["snapshots_written"] == 0 and time.monotonic() < deadline:
        _call(cl.http[leader], "POST", "/compact")
        time.sleep(0.3)
    assert cl.status(leader)["counters"]["snapshots_written"] > 0
    cl.start(wiped)
    views = cl.converged(acked)
    assert len(views[0]) == 200
    assert cl.status(wiped)["counters"]["snapshots_installed"] >= 1
