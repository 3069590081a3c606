"""`ccn-node bench cluster`, end to end: 3 `ccn-node serve` processes in a Raft group on
127.0.0.1, driven over HTTP as users drive them.

`replication/bench_raft.py` measures the command log itself (writers inside the leader's
process, no HTTP); this part adds what a client sees: JSON over HTTP, JWT auth, rate limits,
writes on followers forwarded to the leader, and whole turns (context assembly, the offline
model, two messages stored). Clients are spread over the three nodes. The load generator is
this process, on the same cores as the nodes: its own CPU is printed beside theirs, because on
a 2-core machine the figure is a CPU budget shared by both.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from ccn_node.benchmarks.node import _pct, _ServedNode
from ccn_node.cpu_usage import busy_fraction, machine_jiffies, process_cpu
from ccn_node.loopback import free_ports
from ccn_node.replication.log import RETRYABLE_CODES

# Limits out of the way (the figure is the node's, not the rate limiter's), no background
# backup or retention job in the middle of a 3-second run.
_EXTRA = """
[limits]
requests_per_minute = 100000000
burst = 10000000
model_tokens_per_day = 100000000000

[retention]
enabled = false

[backup]
enabled = false
"""


class _Cluster:
    """Three served members with shared cluster secret, JWT key and ledger key."""

    def __init__(self, root: Path) -> None:
        from ccn_node.datadir import init_cluster_member

        raft = [f"127.0.0.1:{p}" for p in free_ports(3)]
        self.members: list[_ServedNode] = []
        for i, address in enumerate(raft):
            node = _ServedNode(root / f"n{i}", _EXTRA, name=f"bench-{i}")
            init_cluster_member(root / f"n{i}", raft_address=address, peers=raft, secret_file=root / "cluster.secret",
                                jwt_key_file=root / "jwt.key", ledger_key_file=root / "ledger.pem",
                                cluster_name="ccn-bench-org")
            self.members.append(node)

    def start(self) -> None:
        for m in self.members:
            m.launch()
        for m in self.members:
            m.wait_ready(60.0)

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def cpu(self) -> list[float | None]:
        return [process_cpu(m.proc.pid) if m.proc is not None else None for m in self.members]


class _Load:
    """Counts and latencies of one load, and the CPU it took on every process."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.refused = 0  # 503 with a retryable code: counted, not retried
        self.failed: list[str] = []

    def summary(self, cluster: _Cluster, cpu0: list[float | None], cpu1: list[float | None], own: float,
                jiffies: tuple[Any, Any], elapsed: float, per_op: int = 1) -> dict[str, Any]:
        done = len(self.latencies)
        nodes = {}
        for i, (a, b) in enumerate(zip(cpu0, cpu1, strict=True)):
            if a is not None and b is not None:
                cores = (b - a) / elapsed
                nodes[f"node_{i}"] = {"cores": round(cores, 3),
                                      "cpu_us_per_msg": round(cores / max(done * per_op / elapsed, 1e-9) * 1e6, 1)}
        out: dict[str, Any] = {
            "count": done,
            "elapsed_s": elapsed,
            "ops_per_s": done / elapsed,
            "p50_ms": _pct(self.latencies, 50) * 1000,
            "p99_ms": _pct(self.latencies, 99) * 1000,
            "refused_503": self.refused,
            "cpu": {**nodes, "load_generator": {"cores": round(own / elapsed, 3)},
                    "machine_busy": busy_fraction(*jiffies)},
        }
        if self.failed:
            out["failed"] = {"count": len(self.failed), "first": self.failed[0][:300]}
        return out


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, Any], load: _Load, ok: int) -> Any:
    t0 = time.perf_counter()
    async with http.post(url, json=body) as resp:
        data = await resp.json(content_type=None)
        if resp.status == ok:
            load.latencies.append(time.perf_counter() - t0)
            return data
        code = (data or {}).get("error", {}).get("code") if isinstance(data, dict) else None
        if resp.status == 503 and code in RETRYABLE_CODES:
            load.refused += 1
        else:
            load.failed.append(f"{resp.status}: {data}")
        return None


async def _measure(cluster: _Cluster, clients: int, duration: float, one: Any, per_op: int = 1) -> dict[str, Any]:
    """Run ``one.prepare(http, k)`` once per client, then ``one(http, k, prepared, load)`` in a loop on
    ``clients`` clients for ``duration`` s."""
    load = _Load()
    token = cluster.members[0].token("bench")
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as http:
        prepared = [await one.prepare(http, k) for k in range(clients)]
        end = time.perf_counter() + duration

        async def client(k: int) -> None:
            while time.perf_counter() < end:
                await one(http, k, prepared[k], load)

        cpu0, own0, j0 = cluster.cpu(), time.process_time(), machine_jiffies()
        t0 = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        elapsed = time.perf_counter() - t0
        cpu1, own1, j1 = cluster.cpu(), time.process_time(), machine_jiffies()
    return load.summary(cluster, cpu0, cpu1, own1 - own0, (j0, j1), elapsed, per_op)


class _Writes:
    """``POST /api/v1/conversation/start``: one replicated command a request (client k on node k % 3)."""

    def __init__(self, cluster: _Cluster) -> None:
        self.urls = [f"{m.url}/api/v1/conversation/start" for m in cluster.members]

    async def prepare(self, http: aiohttp.ClientSession, k: int) -> None:
        return None  # nothing to set up: every request starts a conversation

    async def __call__(self, http: aiohttp.ClientSession, k: int, _: None, load: _Load) -> None:
        await _post(http, self.urls[k % len(self.urls)], {}, load, 201)


class _Turns:
    """``POST /api/v1/conversation/{id}/message``: a whole turn (context, offline model, two
    messages through the log); each client has its own conversation, on node k % 3."""

    def __init__(self, cluster: _Cluster) -> None:
        self.bases = [m.url for m in cluster.members]
        self.sent = 0

    async def prepare(self, http: aiohttp.ClientSession, k: int) -> str:
        base = self.bases[k % len(self.bases)]
        for _ in range(50):  # a follower may answer 503 while it learns who leads
            async with http.post(f"{base}/api/v1/conversation/start", json={}) as resp:
                if resp.status == 201:
                    return f"{base}/api/v1/conversation/{(await resp.json())['session_id']}/message"
            await asyncio.sleep(0.1)
        raise RuntimeError(f"could not start a conversation on {base}")

    async def __call__(self, http: aiohttp.ClientSession, k: int, url: str, load: _Load) -> None:
        self.sent += 1
        await _post(http, url, {"content": f"benchmark turn {self.sent}: tell me about topic {self.sent % 17}"},
                    load, 200)


def run_http_cluster_bench(duration: float = 3.0, write_clients: tuple[int, ...] = (1, 256),
                           turn_clients: int = 64) -> dict[str, Any]:
    """Writes/s and turns/s through HTTP on a 3-node cluster, clients on every node."""
    with tempfile.TemporaryDirectory(prefix="ccn-bench-http-") as tmp:
        cluster = _Cluster(Path(tmp))
        try:
            cluster.start()
            result: dict[str, Any] = {}
            asyncio.run(_measure(cluster, 8, min(1.0, duration), _Writes(cluster)))  # warm-up
            for clients in write_clients:
                writes = asyncio.run(_measure(cluster, clients, duration, _Writes(cluster)))
                result[f"writes_{clients}_clients"] = writes
            turns = asyncio.run(_measure(cluster, turn_clients, duration, _Turns(cluster), per_op=2))
            turns["messages_per_s"] = 2 * turns["ops_per_s"]
            result[f"turns_{turn_clients}_clients"] = turns
        except (aiohttp.ClientError, RuntimeError) as exc:  # say what the nodes said, not only the symptom
            logs = "\n".join(f"--- node {i} ---\n{m.log_tail()}" for i, m in enumerate(cluster.members))
            raise RuntimeError(f"the HTTP cluster bench failed: {exc!r}\n{logs}") from exc
        finally:
            with contextlib.suppress(Exception):
                cluster.stop()
    return result
