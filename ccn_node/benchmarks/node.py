"""`ccn-node bench …`: the dispatcher, and the node-level benchmarks (turn overhead, ingest,
start-up time and idle memory). Every figure is measured in this run and printed next to its
target; nothing here asserts — tests assert behaviour, benchmarks report speed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from ccn_node.loopback import free_port


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Seconds from now until GET /ready answers 200 (the process was just started)."""
    import http.client

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"node exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/ready")
            if conn.getresponse().status == 200:
                return time.perf_counter() - t0
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"node not ready in {timeout} s")


class _ServedNode:
    """A `ccn-node serve` child process in a temporary data directory."""

    def __init__(self, data_dir: Path, extra: str = "", name: str = "bench") -> None:
        from ccn_node.datadir import init_data_dir

        self.port = free_port()
        self.config = init_data_dir(data_dir, listen=f"127.0.0.1:{self.port}", name=name)
        if extra:
            self.config.write_text(self.config.read_text() + "\n" + extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "node.log"  # the node's output: what a failed bench run shows

    def start(self) -> float:
        """Launch and wait for /ready; seconds from launch to ready."""
        self.launch()
        return self.wait_ready(30.0)

    def launch(self) -> None:
        """Start the process without waiting (a cluster member is ready only once a leader is known)."""
        env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ccn_node", "serve", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float) -> float:
        assert self.proc is not None
        return wait_ready(self.port, self.proc, timeout)

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def token(self, user: str, role: str = "user") -> str:
        """A one-hour token signed with this node's JWT key, minted as `ccn-node token` does."""
        from ccn_node.cli import _issue_token
        from ccn_node.config import load_config

        return _issue_token(load_config(self.config), user, role, 3600)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 15)


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_startup_bench(runs: int = 5) -> dict[str, Any]:
    """Time from process start to /ready, and RSS after 2 s idle."""
    times, rss = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            node = _ServedNode(Path(tmp))
            try:
                times.append(node.start())
                time.sleep(2.0)
                rss.append(node.rss_mb())
            finally:
                node.stop()
    return {
        "start_to_ready_s": {"median": statistics.median(times), "max": max(times), "target": 1.5},
        "idle_rss_mb": {"median": statistics.median(rss), "max": max(rss), "target": 80},
        "runs": runs,
    }


async def _turn_load(node: _ServedNode, turns: int, clients: int) -> dict[str, Any]:
    token = node.token("bench")
    headers = {"Authorization": f"Bearer {token}"}
    overhead: list[float] = []
    total: list[float] = []
    async with aiohttp.ClientSession(headers=headers) as http:
        sessions = []
        for _ in range(clients):
            async with http.post(f"{node.url}/api/v1/conversation/start", json={}) as r:
                sessions.append((await r.json())["session_id"])

        async def client(sid: str, n: int) -> None:
            for i in range(n):
                t0 = time.perf_counter()
                async with http.post(f"{node.url}/api/v1/conversation/{sid}/message",
                                     json={"content": f"benchmark turn {i}: tell me about topic {i % 17}"}) as r:
                    body = await r.json()
                    if r.status != 200:
                        raise RuntimeError(f"turn failed: {body}")
                elapsed = (time.perf_counter() - t0) * 1000
                total.append(elapsed)
                overhead.append(elapsed - float(body["usage"].get("latency_ms", 0.0)))

        per = max(1, turns // clients)
        # warm-up
        await client(sessions[0], 5)
        overhead.clear()
        total.clear()
        t0 = time.perf_counter()
        await asyncio.gather(*(client(s, per) for s in sessions))
        wall = time.perf_counter() - t0
    return {
        "turns": len(total),
        "clients": clients,
        "overhead_ms": {"p50": _pct(overhead, 50), "p95": _pct(overhead, 95), "target_p95": 25.0},
        "total_ms": {"p50": _pct(total, 50), "p95": _pct(total, 95)},
        "turns_per_s": len(total) / wall,
    }


def run_turn_bench(turns: int = 300, clients: int = 1) -> dict[str, Any]:
    """Node overhead per turn: HTTP in → reply stored, model time (offline backend) excluded."""
    with tempfile.TemporaryDirectory() as tmp:
        node = _ServedNode(Path(tmp), "[limits]\nrequests_per_minute = 1000000\nburst = 100000\n"
                                      "model_tokens_per_day = 1000000000\n")
        try:
            node.start()
            sequential = asyncio.run(_turn_load(node, turns, 1))
            concurrent = asyncio.run(_turn_load(node, turns, max(clients, 8)))
        finally:
            node.stop()
    return {"sequential": sequential, "concurrent": concurrent}


def run_ingest_bench(messages: int = 20_000, writers: int = 256) -> dict[str, Any]:
    """Messages/s through the command path (LocalLog → state machine → SQLite + FTS + ledger)."""
    from ccn_node.clock import new_id, now_iso
    from ccn_node.ledger.schema import ledger_schema_sql
    from ccn_node.ledger.tree_store import MerkleTree
    from ccn_node.replication import commands as c
    from ccn_node.replication.local_log import LocalLog
    from ccn_node.replication.state_machine import StateMachine
    from ccn_node.store.database import Store

    async def run(path: Path, writers: int) -> dict[str, Any]:
        store = Store(path, extra_schema=[ledger_schema_sql()])
        store.start_checkpointer()  # as a serving node does
        sm = StateMachine(store.writer, ledger=MerkleTree(store.writer))
        log = LocalLog(sm)
        await log.start()
        try:
            await log.propose(c.encode(c.CreateUser(request_id="u", user_id="u", name="u", role="user",
                                                    created_at=now_iso())), "u")
            sessions = []
            for i in range(100):
                sid = f"s{i}"
                await log.propose(c.encode(c.StartConversation(
                    request_id=sid, session_id=sid, user_id="u", title="", created_at=now_iso(),
                    plate_version="1", plate_sha256="x")), sid)
                sessions.append(sid)
            body = ("The quick brown fox considers continuity across sessions and machines. " * 5)[:300]
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(messages):
                queue.put_nowait(i)
            latencies: list[float] = []

            async def writer() -> None:
                while True:
                    try:
                        i = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    cmd = c.AppendMessage(request_id=new_id("r"), message_id=new_id("m"), session_id=sessions[i % 100],
                                          user_id="u", role="user", content=body, created_at=now_iso(), tokens=75)
                    t0 = time.perf_counter()
                    await log.propose(c.encode(cmd), cmd.request_id)
                    latencies.append((time.perf_counter() - t0) * 1000)

            t0 = time.perf_counter()
            await asyncio.gather(*(writer() for _ in range(writers)))
            await asyncio.get_running_loop().run_in_executor(None, sm.catch_up_search_index)  # counted: indexed too
            wall = time.perf_counter() - t0
        finally:
            await log.stop()
            store.close()
        return {"messages": messages, "writers": writers, "messages_per_s": messages / wall,
                "commit_ms": {"p50": _pct(latencies, 50), "p99": _pct(latencies, 99)}}

    with tempfile.TemporaryDirectory() as tmp:
        many = asyncio.run(run(Path(tmp) / "a.sqlite3", writers))
    with tempfile.TemporaryDirectory() as tmp:
        one = asyncio.run(run(Path(tmp) / "b.sqlite3", 1))
    return {f"writers_{writers}": many, "writers_1": one}


def run_context_bench_sizes(sizes: list[int], *, samples: int = 300, data_dir: str | None = None) -> dict[str, Any]:
    """Context assembly and search p50/p95 on synthetic corpora of each size (1,000 conversations).

    With ``data_dir`` the corpus of each size is kept in DATA_DIR/corpus-N and reused by later runs.
    """
    from ccn_node.continuity.bench_context import generate_corpus, run_context_bench

    out: dict[str, Any] = {"target_context_p95_ms_at_1M": 15.0}
    for size in sizes:
        if data_dir is not None:
            where = Path(data_dir) / f"corpus-{size}"
            built = None
            if not (where / "ccn.sqlite3").exists():
                built = generate_corpus(where, size)
            out[str(size)] = {"corpus": built or "reused", **run_context_bench(where, samples=samples)}
            continue
        with tempfile.TemporaryDirectory() as tmp:
            built = generate_corpus(tmp, size)
            out[str(size)] = {"corpus": built, **run_context_bench(tmp, samples=samples)}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    what = args.what
    if what == "retrieval":
        from ccn_node.continuity.bench_retrieval import run_retrieval_bench

        if not args.locomo:
            raise SystemExit("ccn-node bench retrieval needs --locomo FILE")
        return run_retrieval_bench(args.locomo, budget=args.budget)
    if what == "context":
        sizes = [int(x) for x in args.sizes.split(",") if x]
        return run_context_bench_sizes(sizes, samples=args.samples, data_dir=args.data_dir)
    if what == "turn":
        return {"turn": run_turn_bench(), "ingest": run_ingest_bench()}
    if what == "startup":
        return run_startup_bench()
    if what == "ledger":
        from ccn_node.ledger.bench import run_ledger_bench, run_witness_bench
        from ccn_node.replication.audit import run_verify_bench

        return {"ledger": run_ledger_bench(), "verify_with_corpus": run_verify_bench(),
                "witness_round_trip": run_witness_bench()}
    if what == "continuity":
        from ccn_node.continuity.bench_spawn import run_all

        return run_all()
    if what == "cluster":
        from ccn_node.benchmarks.cluster_http import run_http_cluster_bench
        from ccn_node.replication.bench_raft import run_cluster_bench

        result = run_cluster_bench()
        result["http"] = run_http_cluster_bench()  # end to end, for the reader: no target of its own
        return result
    if what == "ops":
        from ccn_node.benchmarks.backup import run as run_backup_bench
        from ccn_node.benchmarks.ops import run_ops_bench

        return {"ops": run_ops_bench(), "backup": run_backup_bench(args.messages)}
    raise SystemExit(f"unknown benchmark {what}")


def render(result: dict[str, Any], indent: int = 0) -> str:
    lines = []
    for key, value in result.items():
        if isinstance(value, dict):
            lines.append(" " * indent + f"{key}:")
            lines.append(render(value, indent + 2))
        elif isinstance(value, float):
            lines.append(" " * indent + f"{key}: {value:.4g}")
        else:
            lines.append(" " * indent + f"{key}: {value}")
    return "\n".join(lines)
