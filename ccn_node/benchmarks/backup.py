"""`ccn-node bench ops` (backup part): an online backup of a large corpus while a served node
answers reads, the read latency with and without the backup running, and the command
journal's cost on ingest. Figures only; nothing here asserts.
"""

from __future__ import annotations

import http.client
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ccn_node.benchmarks.node import _pct, _ServedNode
from ccn_node.replication import commands as c

WORDS = [
    "garden", "orchid", "river", "memory", "continuity", "kiwi", "violin", "harbour", "lantern", "quartz",
    "meadow", "signal", "archive", "compass", "thunder", "velvet", "pepper", "glacier", "canyon", "ember",
]


def generate(db_path: Path, messages: int, conversations: int = 1000, user: str = "bench",
             journal_enabled: bool = True, synchronous: str = "normal") -> dict[str, float]:
    """Write a synthetic corpus through the real state machine (FTS, ledger, journal)."""
    from ccn_node.ledger.schema import ledger_schema_sql
    from ccn_node.ledger.tree_store import MerkleTree
    from ccn_node.replication.state_machine import StateMachine
    from ccn_node.store import journal
    from ccn_node.store.database import Store

    store = Store(db_path, synchronous=synchronous, extra_schema=[ledger_schema_sql()])
    sm = StateMachine(store.writer, ledger=MerkleTree(store.writer))
    original = journal.record
    if not journal_enabled:
        journal.record = lambda *a, **k: None  # type: ignore[assignment]
    try:
        index = sm.applied_index
        t0 = time.perf_counter()

        def stamp(i: int) -> str:
            return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1_700_000_000 + i)) + ".000000Z"

        head = [c.CreateUser(request_id=f"u:{user}", user_id=user, name=user, role="user", created_at=stamp(0))]
        head += [c.StartConversation(request_id=f"s{k}", session_id=f"c_bench{k:05d}", user_id=user, title="",
                                     created_at=stamp(0), plate_version="bench", plate_sha256="0" * 64)
                 for k in range(conversations)]
        entries = []
        for cmd in head:
            index += 1
            entries.append((index, c.encode(cmd)))
        sm.apply_batch(entries)
        t_ingest = time.perf_counter()
        batch: list[tuple[int, bytes]] = []
        for i in range(messages):
            words = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(40))
            cmd = c.AppendMessage(request_id=f"r{i}", message_id=f"m_bench{i:09d}",
                                  session_id=f"c_bench{i % conversations:05d}", user_id=user,
                                  role="user" if i % 2 == 0 else "assistant", content=f"{i}: {words}",
                                  created_at=stamp(i + 1), tokens=60)
            index += 1
            batch.append((index, c.encode(cmd)))
            if len(batch) == 512:
                sm.apply_batch(batch)
                batch = []
        if batch:
            sm.apply_batch(batch)
        elapsed = time.perf_counter() - t_ingest
    finally:
        journal.record = original  # type: ignore[assignment]
        store.close()
    return {"messages": messages, "seconds": elapsed, "messages_per_s": messages / elapsed,
            "total_s": time.perf_counter() - t0}


def journal_cost(messages: int = 20_000) -> dict[str, Any]:
    """Ingest rate through the state machine (batches of 512, synchronous=FULL as a node runs)
    with and without the journal row; the same corpus both ways, best of two runs each."""
    out: dict[str, Any] = {}
    for enabled in (False, True, False, True):
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "j.sqlite3"
            r = generate(db, messages, conversations=100, journal_enabled=enabled, synchronous="full")
            size = db.stat().st_size
        key = "with_journal" if enabled else "without_journal"
        best = out.get(key)
        if best is None or r["messages_per_s"] > best["messages_per_s"]:
            out[key] = {"messages_per_s": r["messages_per_s"], "db_bytes": size}
    out["messages"] = messages
    with_j, without_j = out["with_journal"], out["without_journal"]
    out["ingest_cost_pct"] = 100 * (1 - with_j["messages_per_s"] / without_j["messages_per_s"])
    out["size_cost_pct"] = 100 * (out["with_journal"]["db_bytes"] / out["without_journal"]["db_bytes"] - 1)
    return out


def _get(port: int, path: str, token: str, method: str = "GET", timeout: float = 600) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _sample(port: int, token: str, seconds: float, stop: threading.Event | None = None) -> list[float]:
    """Sequential reads of a user's conversation list (an indexed read of the corpus)."""
    lat = []
    end = time.perf_counter() + seconds
    i = 0
    while (stop is None and time.perf_counter() < end) or (stop is not None and not stop.is_set()):
        t0 = time.perf_counter()
        status, _ = _get(port, f"/api/v1/conversations?limit=20&offset={(i * 20) % 900}", token)
        lat.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            raise RuntimeError(f"read endpoint answered {status}")
        i += 1
    return lat


def run_backup_bench(messages: int = 100_000, baseline_s: float = 5.0, encrypt: bool = True) -> dict[str, Any]:
    """Online backup of a ``messages`` corpus inside a served node, and read p95 around it."""
    from ccn_node.config import load_config, write_secret_file
    from ccn_node.store import backup

    with tempfile.TemporaryDirectory() as tmp:
        extra = "[limits]\nrequests_per_minute = 1000000\nburst = 100000\n[backup]\ninterval_s = 86400\n"
        if encrypt:
            extra += 'key_file = "keys/backup.key"\n'
        node = _ServedNode(Path(tmp), extra)
        if encrypt:
            write_secret_file(Path(tmp) / "keys" / "backup.key", backup.new_key_text())
        cfg = load_config(node.config)
        gen = generate(cfg.database_path, messages)
        db_bytes = cfg.database_path.stat().st_size
        node.start()
        try:
            token = node.token("bench")
            admin = node.token("root", "admin")
            _sample(node.port, token, 1.0)  # warm up
            quiet = _sample(node.port, token, baseline_s)
            stop = threading.Event()
            during: list[float] = []
            sampler = threading.Thread(target=lambda: during.extend(_sample(node.port, token, 0, stop)))
            sampler.start()
            t0 = time.perf_counter()
            status, body = _get(node.port, "/api/v1/admin/backup", admin, method="POST", timeout=3600)
            wall = time.perf_counter() - t0
            stop.set()
            sampler.join()
            if status != 200:
                raise RuntimeError(f"backup failed: {body[:500]!r}")
            info = json.loads(body)
        finally:
            node.stop()
    return {
        "corpus": {"messages": messages, "db_mb": db_bytes / 2**20, "generate_msgs_per_s": gen["messages_per_s"]},
        "backup": {
            "wall_s": wall, "copy_s": info["copy_seconds"], "verify_s": info["verify_seconds"],
            "file_mb": info["bytes"] / 2**20, "encrypted": info["encrypted"], "audit": info["audit"],
        },
        "read_p95_ms": {
            "without_backup": _pct(quiet, 95), "during_backup": _pct(during, 95),
            "p50_without": statistics.median(quiet) if quiet else float("nan"),
            "p50_during": statistics.median(during) if during else float("nan"),
            "samples": [len(quiet), len(during)],
        },
    }


def run(messages: int = 100_000) -> dict[str, Any]:
    return {"backup": run_backup_bench(messages), "journal": journal_cost()}


if __name__ == "__main__":  # python -m ccn_node.benchmarks.backup [messages]
    import sys

    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000), indent=2))
