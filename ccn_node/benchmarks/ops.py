"""`ccn-node bench ops` (the operations part): /metrics scrape time with 1,000 conversations
tracked, zipapp cold and warm start to /ready, and — as issue 2 asks too — `ccn-node serve`
start → /ready time and idle RSS. Figures only: nothing here asserts.

Every figure comes from real processes on 127.0.0.1 (the node over HTTP, the shiv-built
zipapp started with `env -i`). The online-backup figures of `bench ops` live with the backup
code, not here.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from ccn_node.benchmarks.node import _pct, _ServedNode, run_startup_bench, stop_process, wait_ready
from ccn_node.loopback import free_port
from ccn_node.monitoring import Monitoring

SCRAPE_TARGET_MS = 10.0
GENEROUS = "[limits]\nrequests_per_minute = 1000000\nburst = 100000\n"


async def _fill(node: _ServedNode, conversations: int, concurrency: int = 16) -> None:
    """One measured turn in each of ``conversations`` conversations, so each has its series."""
    headers = {"Authorization": f"Bearer {node.token('ops-bench')}"}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(conversations):
        queue.put_nowait(i)
    async with aiohttp.ClientSession(headers=headers) as http:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                async with http.post(f"{node.url}/api/v1/conversation/start", json={}) as r:
                    sid = (await r.json())["session_id"]
                async with http.post(f"{node.url}/api/v1/conversation/{sid}/message",
                                     json={"content": f"ops bench conversation {i}"}) as r:
                    if r.status != 200:
                        raise RuntimeError(f"turn failed: {await r.text()}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def run_scrape_bench(conversations: int = 1000, scrapes: int = 100) -> dict[str, Any]:
    """GET /metrics on a node whose monitoring tracks ``conversations`` conversations."""
    with tempfile.TemporaryDirectory() as tmp:
        node = _ServedNode(Path(tmp), GENEROUS)
        try:
            node.start()
            t0 = time.perf_counter()
            asyncio.run(_fill(node, conversations))
            fill_s = time.perf_counter() - t0
            conn = http.client.HTTPConnection("127.0.0.1", node.url.rsplit(":", 1)[1], timeout=10)
            times, size = [], 0
            for i in range(scrapes + 5):
                t0 = time.perf_counter()
                conn.request("GET", "/metrics")
                body = conn.getresponse().read()
                if i >= 5:  # warm-up
                    times.append((time.perf_counter() - t0) * 1000)
                size = len(body)
            conn.close()
            series = sum(1 for line in body.decode().splitlines() if line.startswith("consciousness_ccc_score{"))
        finally:
            node.stop()
    # the collector alone, in process: what the scrape costs without HTTP and SQLite state gauges
    mon = Monitoring(max_conversations=conversations)
    for i in range(conversations):
        mon.observe_turn(f"conv_{i:06d}", {"input_tokens": 10, "output_tokens": 5}, 0.0,
                         {"phi": 0.1, "ccc": 0.5, "trust": 0.2, "emergence": 0.3, "drift_baseline": 0.05}, 0.01)
    render = []
    for _ in range(20):
        t0 = time.perf_counter()
        mon.render()
        render.append((time.perf_counter() - t0) * 1000)
    return {
        "conversations": conversations,
        "ccc_series_in_scrape": series,
        "scrape_bytes": size,
        "scrape_ms": {"p50": _pct(times, 50), "p95": _pct(times, 95), "max": max(times), "target": SCRAPE_TARGET_MS},
        "render_in_process_ms": {"p50": _pct(render, 50), "p95": _pct(render, 95)},
        "fill_s": fill_s,
    }


def build_zipapp(out: Path) -> float:
    """Build with packaging/build_zipapp.sh (from a source checkout); returns seconds taken."""
    script = Path(__file__).resolve().parents[2] / "packaging" / "build_zipapp.sh"
    if not script.exists():
        raise FileNotFoundError("packaging/build_zipapp.sh not found: pass --pyz FILE (bench from a checkout)")
    t0 = time.perf_counter()
    subprocess.run(["bash", str(script), str(out)], check=True, capture_output=True, timeout=900,
                   env={**os.environ, "PYTHON": sys.executable})
    return time.perf_counter() - t0


def run_zipapp_bench(pyz: str | None = None, runs: int = 3) -> dict[str, Any]:
    """Start → /ready of the zipapp in a clean environment: cold (empty SHIV_ROOT, so the archive
    is unpacked first) and warm (unpacked already)."""
    python = shutil.which("python3", path="/usr/bin:/bin:/usr/local/bin") or sys.executable
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if pyz is None:
            target = Path(tmp) / "ccn-node.pyz"
            result["build_s"] = build_zipapp(target)
        else:
            target = Path(pyz)
        result["pyz_mb"] = target.stat().st_size / 1e6
        cold, warm = [], []
        for run in range(runs):
            shiv_root = Path(tmp) / f"shiv-{run}"
            for kind in ("cold", "warm"):
                port = free_port()
                env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "SHIV_ROOT": str(shiv_root)}
                proc = subprocess.Popen(
                    ["env", "-i", *(f"{k}={v}" for k, v in env.items()), python, str(target), "serve",
                     "--data-dir", str(Path(tmp) / f"data-{run}"), "--listen", f"127.0.0.1:{port}"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
                try:
                    (cold if kind == "cold" else warm).append(wait_ready(port, proc, 120.0))
                finally:
                    stop_process(proc, 20)
        result.update({
            "python": python,
            "cold_start_to_ready_s": {"median": statistics.median(cold), "max": max(cold)},
            "warm_start_to_ready_s": {"median": statistics.median(warm), "max": max(warm)},
            "runs": runs,
        })
    return result


def run_ops_bench(*, conversations: int = 1000, pyz: str | None = None, zipapp: bool = True) -> dict[str, Any]:
    """Everything `ccn-node bench ops` reports from this module."""
    out: dict[str, Any] = {"metrics_scrape": run_scrape_bench(conversations)}
    out["serve"] = run_startup_bench(runs=3)
    if zipapp:
        try:
            out["zipapp"] = run_zipapp_bench(pyz)
        except (FileNotFoundError, subprocess.CalledProcessError) as exc:
            out["zipapp"] = {"skipped": str(exc)}
    return out
