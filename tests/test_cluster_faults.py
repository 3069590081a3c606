"""Fault tests of a 3-node cluster of real `ccn-node serve` processes on 127.0.0.1.

A continuous write load (``POST /api/v1/conversation/start`` on every node, each a command
through the Raft log) records every acknowledged write. After each fault: every acknowledged
write is present exactly once on every node, all nodes have byte-identical corpus checksums
and the same ledger root, and a minority refuses writes with 503. Only processes started here
are signalled, by their pid; network namespaces made here are deleted here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import GENEROUS_LIMITS
from nodeproc import NodeProcess, free_port

from ccn_node.datadir import init_cluster_member
from ccn_node.ledger.tree_store import MerkleTree
from ccn_node.store.database import open_connection

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CLUSTER_EXTRA = GENEROUS_LIMITS + """
[limits]
propose_timeout_s = 3.0

[retention]
enabled = false

[backup]
enabled = false
"""
# the 503 error codes that mean "may not have happened, retry"
_RETRYABLE = ("no_quorum", "not_leader", "outcome_unknown", "overloaded", "stopping")
# small journal compaction thresholds so that a wiped node must catch up from a snapshot
CLUSTER_TUNING = "compaction_min_entries = 150\ncompaction_min_time_s = 1.0\n"


class Member(NodeProcess):
    """A NodeProcess whose start does not wait for /ready (a lone member cannot be ready)."""

    def __init__(self, data_dir: Path, raft: str, members: list[str], shared: Path, *, listen_host: str = "127.0.0.1",
                 netns: str | None = None) -> None:
        super().__init__(data_dir, config_extra=CLUSTER_EXTRA)
        self.host = listen_host
        self.netns = netns
        self.raft = raft
        text = self.config_path.read_text().replace("127.0.0.1:", f"{listen_host}:", 1)
        self.config_path.write_text(text)
        init_cluster_member(data_dir, raft_address=raft, peers=members, secret_file=shared / "cluster.secret",
                            jwt_key_file=shared / "jwt.key", ledger_key_file=shared / "ledger.pem",
                            cluster_name="ccn-test-org")
        self.config_path.write_text(self.config_path.read_text() + CLUSTER_TUNING)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def launch(self) -> None:
        log = self.log_path.open("ab")
        cmd = [sys.executable, "-m", "ccn_node", "serve", "--config", str(self.config_path)]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            try:
                if self.request("GET", "/ready", timeout=2).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"node not ready in {timeout}s: {self.log_path.read_text()[-3000:]}")

    def request(self, method: str, path: str, **kw: Any) -> Any:  # talk to listen_host, not 127.0.0.1
        import http.client
        import json

        from nodeproc import Response

        conn = http.client.HTTPConnection(self.host, self.port, timeout=kw.get("timeout", 30.0))
        headers = dict(kw.get("headers") or {})
        if kw.get("token"):
            headers["Authorization"] = f"Bearer {kw['token']}"
        try:
            body = json.dumps(kw["json_body"]).encode() if kw.get("json_body") is not None else None
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def wipe(self) -> None:
        """Delete everything but the config, the keys and THE PLATE."""
        for entry in self.data_dir.iterdir():
            if entry.name in ("ccn.toml", "keys", "plate.md", "node.log"):
                continue
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def status(self, token: str) -> dict[str, Any]:
        return self.request("GET", "/api/v1/cluster", token=token, timeout=3).json()


class Cluster:
    def __init__(self, root: Path, members: list[Member]) -> None:
        self.root = root
        self.members = members
        self.admin = members[0].token("admin", "admin")
        self.user = members[0].token("loader")
        self.acked: set[str] = set()
        self.refused = 0
        # answers other than 201 / a 503 with a retryable code: asserts in the load threads would
        # be lost with the thread, so they are collected here and checked by converge()
        self.unexpected: list[tuple[int, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.down: set[int] = set()  # members the load must not pick (killed or stopped)

    def start_all(self) -> None:
        for m in self.members:
            m.launch()
        for m in self.members:
            m.wait_ready()

    def leader(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, m in enumerate(self.members):
                if i in self.down:
                    continue
                try:
                    if m.status(self.admin).get("role") == "leader":
                        return i
                except (OSError, ValueError):
                    pass
            time.sleep(0.1)
        raise AssertionError("no leader")

    def write(self, i: int, timeout: float = 6.0) -> int:
        try:
            resp = self.members[i].request("POST", "/api/v1/conversation/start", token=self.user, timeout=timeout)
        except OSError:
            return 0
        if resp.status == 201:
            with self._lock:
                self.acked.add(resp.json()["session_id"])
        elif resp.status == 503 and resp.json()["error"]["code"] in _RETRYABLE:
            with self._lock:
                self.refused += 1
        else:
            with self._lock:
                self.unexpected.append((resp.status, resp.body[:300]))
        return resp.status

    def start_load(self, writers: int = 4) -> None:
        self._stop.clear()

        def run(seed: int) -> None:
            rnd = random.Random(seed)
            while not self._stop.is_set():
                live = [i for i in range(len(self.members)) if i not in self.down]
                if not live:
                    time.sleep(0.05)
                    continue
                if self.write(rnd.choice(live)) != 201:
                    time.sleep(0.05)

        self._threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(writers)]
        for t in self._threads:
            t.start()

    def stop_load(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)

    def wait_progress(self, n: int = 10, timeout: float = 10.0) -> float:
        """Seconds until ``n`` more writes were acknowledged."""
        start, target = time.monotonic(), self.acked_count() + n
        while self.acked_count() < target:
            assert time.monotonic() - start < timeout, f"writes stalled ({self.acked_count()} acked)"
            time.sleep(0.02)
        return time.monotonic() - start

    def converge(self, timeout: float = 30.0) -> dict[str, Any]:
        """All members at the same applied index with identical checksums; every ack on every node once."""
        assert not self.unexpected, f"writes answered neither 201 nor a retryable 503: {self.unexpected[:5]}"
        deadline = time.monotonic() + timeout
        while True:
            views = [corpus_view(m.config_path.parent / "ccn.sqlite3") for m in self.members]
            same = all(v["checksum"] == views[0]["checksum"] and v["root"] == views[0]["root"] for v in views)
            if same and all(self.acked <= v["sessions"] for v in views):
                for v in views:
                    assert v["duplicates"] == 0 and v["unledgered"] == 0, v
                return views[0]
            if time.monotonic() > deadline:
                missing = [len(self.acked - v["sessions"]) for v in views]
                raise AssertionError(f"not converged: missing acked per node {missing}, sizes "
                                     f"{[len(v['sessions']) for v in views]}, roots {[v['root'][:8] for v in views]}"
                                     + self.diagnosis(views))
            time.sleep(0.3)

    def diagnosis(self, views: list[dict[str, Any]]) -> str:
        """What a failed convergence needs to be understood later: each node's indexes, the
        sessions not on every node (and where they are), its Raft status and its log's tail."""
        everywhere = set.intersection(*(v["sessions"] for v in views))
        lines = []
        for i, (m, v) in enumerate(zip(self.members, views, strict=True)):
            conn = open_connection(m.config_path.parent / "ccn.sqlite3", readonly=True)
            try:
                meta = dict(conn.execute("SELECT key, value FROM meta WHERE key LIKE '%index'").fetchall())
                extra = sorted(v["sessions"] - everywhere)
                rows = [conn.execute("SELECT session_id, created_at, log_index FROM conversations WHERE session_id = ?",
                                     (sid,)).fetchall() for sid in extra[:5]]
            finally:
                conn.close()
            try:
                status = m.request("GET", "/api/v1/cluster", token=self.admin, timeout=5).body[:600]
            except Exception as exc:  # a dead member says so
                status = repr(exc).encode()
            tail = m.log_path.read_text(errors="replace")[-2500:] if m.log_path.exists() else ""
            lines.append(f"\n--- node {i}: meta {meta}; sessions only here or on some {extra[:5]} {rows};"
                         f" cluster {status!r}\n{tail}")
        return "".join(lines)

    def stop_all(self) -> None:
        self.stop_load()
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                with_signal(m, signal.SIGCONT)
            m.stop()


def with_signal(m: Member, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        m.signal(sig)


def corpus_view(db: Path) -> dict[str, Any]:
    """The corpus checksum: sha256 over every row of users, conversations and messages, in key
    order, each row as its repr (types included); plus the Merkle root of the ledger."""
    conn = open_connection(db, readonly=True)
    try:
        conn.execute("BEGIN")  # one snapshot for all three tables and the tree
        digest = hashlib.sha256()
        for table, key in (("users", "user_id"), ("conversations", "session_id"), ("messages", "message_id")):
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY {key}"):
                digest.update(repr(row).encode() + b"\n")
        sessions = [r[0] for r in conn.execute("SELECT session_id FROM conversations")]
        # exactly once: one conv.start leaf per conversation (session_id is the primary key, so
        # the table alone cannot show a write applied twice; the ledger can)
        leaves, refs = conn.execute(
            "SELECT count(*), count(DISTINCT ref) FROM ledger_leaves WHERE kind = 'conv.start'"
        ).fetchone()
        tree = MerkleTree(conn)
        root = tree.root().hex() if tree.size() else ""
        conn.execute("COMMIT")
    finally:
        conn.close()
    return {"checksum": digest.hexdigest(), "root": root, "sessions": set(sessions),
            "duplicates": leaves - refs, "unledgered": len(sessions) - refs}


def make_cluster(root: Path, hosts: list[str] | None = None, netns: list[str | None] | None = None) -> Cluster:
    hosts = hosts or ["127.0.0.1"] * 3
    netns = netns or [None] * 3
    shared = root / "shared"
    raft = [f"{h}:{free_port()}" for h in hosts]
    members = [Member(root / f"n{i}", raft[i], raft, shared, listen_host=hosts[i], netns=netns[i]) for i in range(3)]
    cl = Cluster(root, members)
    cl.start_all()
    return cl


def module_cluster(name: str) -> Any:
    """A module-scoped fixture: one 3-member cluster for the tests of a module, stopped after them."""

    @pytest.fixture(scope="module")
    def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
        cl = make_cluster(tmp_path_factory.mktemp(name))
        try:
            yield cl
        finally:
            cl.stop_all()

    return cluster


cluster = module_cluster("cluster")


def test_kill_leader_then_restart(cluster: Cluster) -> None:
    cl = cluster
    cl.start_load()
    cl.wait_progress(20)
    old = cl.leader()
    cl.down.add(old)
    cl.members[old].kill()
    resumed = cl.wait_progress(10, timeout=10)
    new = cl.leader()
    assert new != old
    time.sleep(1.0)
    cl.members[old].launch()
    cl.members[old].wait_ready()
    cl.down.discard(old)
    cl.wait_progress(20)
    cl.stop_load()
    view = cl.converge()
    print(f"acked {len(cl.acked)}; writes resumed {resumed:.2f}s after kill -9 of the leader; root {view['root'][:16]}")


def test_minority_refuses_then_kill_all_and_restart(cluster: Cluster) -> None:
    cl = cluster
    cl.start_load()
    cl.wait_progress(20)
    survivor = cl.leader()
    for i in range(3):
        if i != survivor:
            cl.down.add(i)
            cl.members[i].kill()
    cl.stop_load()
    # a lone member is a minority: it refuses writes with 503 (and a request id to retry with)
    resp = cl.members[survivor].request("POST", "/api/v1/conversation/start", token=cl.user, timeout=10)
    assert resp.status == 503, resp
    assert resp.json()["error"]["code"] in ("no_quorum", "outcome_unknown") and "retry-after" in resp.headers
    assert cl.members[survivor].request("GET", "/ready").status == 503
    cl.members[survivor].kill()  # … and now all three are dead at once
    cl.down.clear()
    cl.start_all()
    cl.start_load()
    cl.wait_progress(20)
    cl.stop_load()
    cl.converge()


def test_sigstop_leader_does_not_ack_stale_writes(cluster: Cluster) -> None:
    cl = cluster
    cl.start_load()
    cl.wait_progress(20)
    old = cl.leader()
    cl.down.add(old)
    stale_results: list[int] = []
    cl.members[old].signal(signal.SIGSTOP)
    try:
        # writes sent to the frozen leader: answered only after SIGCONT, and must then be true
        stale = [threading.Thread(target=lambda: stale_results.append(cl.write(old, timeout=15))) for _ in range(4)]
        for t in stale:
            t.start()
        cl.wait_progress(10, timeout=10)  # the others elect a leader and go on
        time.sleep(1.0)  # well past election_max_s
    finally:
        cl.members[old].signal(signal.SIGCONT)
    for t in stale:
        t.join(20)
    # each stale request got a real answer: a 201 only if committed (converge checks it), else 503
    assert len(stale_results) == 4 and all(s in (201, 503) for s in stale_results), stale_results
    cl.down.discard(old)
    cl.wait_progress(20)
    cl.stop_load()
    cl.converge()  # every 201 (the stale node's included) is on every node
    assert cl.leader() in range(3)
    print(f"stale leader answered {stale_results}")


def test_wiped_follower_catches_up_by_snapshot(cluster: Cluster) -> None:
    cl = cluster
    leader = cl.leader()
    wiped = (leader + 1) % 3
    cl.down.add(wiped)
    cl.members[wiped].kill()
    cl.members[wiped].wipe()
    cl.start_load()
    cl.wait_progress(400, timeout=40)  # > compaction_min_entries: the leader compacts its journal
    deadline = time.monotonic() + 15
    while cl.members[leader].status(cl.admin)["counters"]["snapshots_written"] == 0:
        assert time.monotonic() < deadline, "the leader never compacted"
        cl.wait_progress(20)
    cl.members[wiped].launch()
    cl.members[wiped].wait_ready()
    cl.down.discard(wiped)
    cl.wait_progress(20)
    cl.stop_load()
    cl.converge()
    assert cl.members[wiped].status(cl.admin)["counters"]["snapshots_installed"] >= 1


# -- a real network partition ------------------------------------------------------------------


def _netns_available() -> str | None:
    """None if `ip netns` works here, else why not."""
    if shutil.which("ip") is None:
        return "the `ip` command is not installed"
    name = f"ccn-probe-{os.getpid()}"
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns add` failed: {probe.stderr.strip() or probe.returncode} (needs root / CAP_SYS_ADMIN)"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def partitionable(tmp_path: Path) -> Iterator[tuple[Cluster, str]]:
    """Member 2 lives in its own network namespace, linked to the host by a veth pair."""
    why = _netns_available()
    if why is not None:
        pytest.skip(f"no network partition test: {why}")
    tag = f"{os.getpid() % 10000}"
    ns, host_if, ns_if = f"ccn-part-{tag}", f"ccnh{tag}", f"ccnn{tag}"
    octet = 100 + os.getpid() % 100
    host_ip, ns_ip = f"10.{octet}.7.1", f"10.{octet}.7.2"
    _ip("netns", "add", ns)
    cl = None
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        _ip("addr", "add", f"{host_ip}/24", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/24", "dev", ns_if)
        _ip("netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        cl = make_cluster(tmp_path, hosts=[host_ip, host_ip, ns_ip], netns=[None, None, ns])
        yield cl, host_if
    finally:
        if cl is not None:
            cl.stop_all()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_network_partition(partitionable: tuple[Cluster, str]) -> None:
    """Cut member 2 off (veth down): the majority goes on, the minority answers writes with 503."""
    cl, host_if = partitionable
    cl.start_load()
    cl.wait_progress(20)
    _ip("link", "set", host_if, "down")
    try:
        cl.down.add(2)
        time.sleep(1.5)  # > election_max_s and leader_fallback_s: a minority-side leader stepped down
        cl.wait_progress(10, timeout=10)
        assert cl.leader() in (0, 1)
        # the minority's API is on its side of the cut: ask it from inside the namespace
        ns = cl.members[2].netns
        assert ns is not None
        script = (
            "import http.client,sys;c=http.client.HTTPConnection(sys.argv[1],int(sys.argv[2]),timeout=15);"
            "c.request('POST','/api/v1/conversation/start',headers={'Authorization':'Bearer '+sys.argv[3]});"
            "r=c.getresponse();print(r.status, r.read().decode())"
        )
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script, cl.members[2].host,
                              str(cl.members[2].port), cl.user], capture_output=True, text=True, timeout=30)
        assert out.stdout.startswith("503 "), out
    finally:
        _ip("link", "set", host_if, "up")
    cl.down.discard(2)
    cl.wait_progress(20)
    cl.stop_load()
    cl.converge()
