"""``ccn-node bench ledger``: build an n-entry ledger in a temporary SQLite file and
measure what the issue sets targets for (audit, seal + sign, proofs), next to them.

The ledger is built in bulk (hashes computed in memory, rows inserted with
executemany) so that a million entries take seconds, not minutes; the blocks are sealed
through the real ``CheckpointSigner``, and appends and seals are then timed through the
real ``MerkleTree.append`` / ``seal_block`` path.
"""

from __future__ import annotations

import hashlib
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import apsw

from ccn_node.ledger import chain
from ccn_node.ledger.note import NoteSigner
from ccn_node.ledger.schema import ledger_schema_sql
from ccn_node.ledger.tree_store import STORED_FROM_LEVEL, MerkleTree
from ccn_node.loopback import free_port

TARGETS = {
    "audit_s": 5.0,
    "seal_sign_ms": 2.0,
    "inclusion_proof_us": 100.0,
    "consistency_proof_us": 100.0,
}
ORIGIN = "bench.ccn.invalid/ledger"
PRAGMAS = "PRAGMA cache_size=-65536; PRAGMA mmap_size=1073741824"
"""Connection settings the figures assume (64 MB page cache, memory-mapped reads)."""


def _leaf(i: int) -> bytes:
    """~100 bytes, the size of a leaf that commits to a content hash, not the content."""
    return b"ccn-bench/v1\x00" + i.to_bytes(8, "big") + hashlib.sha256(i.to_bytes(8, "big")).digest() * 2 + bytes(16)


def _bulk_fill(conn: apsw.Connection, n: int) -> None:
    sha = hashlib.sha256
    leaves = [_leaf(i) for i in range(n)]
    level = b"".join([sha(b"\x00" + x).digest() for x in leaves])
    conn.executemany(
        "INSERT INTO ledger_leaves(idx, kind, ref, leaf_bytes) VALUES (?, 'bench', ?, ?)",
        ((i, f"m{i}", x) for i, x in enumerate(leaves)),
    )
    del leaves
    lv = 0
    while True:
        count = len(level) // 32
        if lv >= STORED_FROM_LEVEL:  # as MerkleTree.append stores them
            conn.executemany(
                "INSERT INTO ledger_nodes(level, idx, hash) VALUES (?, ?, ?)",
                ((lv, i, level[32 * i : 32 * i + 32]) for i in range(count)),
            )
        if count < 2:
            break
        level = chain._parents(level)
        lv += 1


def _median_us(fn: Any, args: list[tuple[int, ...]]) -> float:
    times = []
    for a in args:
        t = time.perf_counter()
        fn(*a)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def run_ledger_bench(n: int = 1_000_000, block_every: int = 1000, seed: int = 1) -> dict[str, Any]:
    """Build an ``n``-entry ledger (a block every ``block_every`` entries) in a temporary
    file and return the measured figures with their targets."""
    rnd = random.Random(seed)
    key = NoteSigner.generate(ORIGIN)
    with tempfile.TemporaryDirectory(prefix="ccn-ledger-bench-") as tmp:
        path = Path(tmp) / "ledger.db"
        conn = apsw.Connection(str(path))
        conn.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; " + PRAGMAS)
        conn.execute(ledger_schema_sql())
        tree = MerkleTree(conn)
        signer = chain.CheckpointSigner(conn, key)

        t0 = time.perf_counter()
        with conn:
            _bulk_fill(conn, n)
            prev = None
            for size in range(block_every, n + 1, block_every):
                size, root, note = signer.sign_tree(tree, size)
                prev = chain.next_block(
                    prev,
                    tree_size=size,
                    root=root,
                    timestamp=1_700_000_000_000 + size,
                    data_snapshot=chain.canonical_json({"size": size}),
                    checkpoint=note,
                )
                chain.insert_block(conn, prev)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as autocheckpoint would, in time
        build_s = time.perf_counter() - t0

        # Proofs at n, from random points (fresh cursor work each time, like the API).
        inc = _median_us(tree.inclusion_proof, [(rnd.randrange(n), n) for _ in range(2000)])
        con = _median_us(tree.consistency_proof, [(rnd.randrange(1, n), n) for _ in range(2000)])

        # Full audit on a fresh connection.
        conn2 = apsw.Connection(str(path))
        conn2.execute(PRAGMAS)
        report = chain.audit(conn2, [key.verifier()], origin=ORIGIN)
        conn2.close()

        # Appends and seals through the real path (each seal after 100 appends).
        append_t: list[float] = []
        seal_t: list[float] = []
        for r in range(20):
            with conn:
                for i in range(100):
                    data = _leaf(n + 100 * r + i)
                    t = time.perf_counter()
                    tree.append(data, "bench", f"x{r}.{i}")
                    append_t.append(time.perf_counter() - t)
                t = time.perf_counter()
                chain.seal_block(
                    conn,
                    tree,
                    signer,
                    timestamp=1_800_000_000_000 + r,
                    data_snapshot=chain.canonical_json({"round": r}),
                )
                seal_t.append(time.perf_counter() - t)
        blocks = conn.execute("SELECT count(*) FROM verification_chain").fetchone()[0]
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db_bytes = path.stat().st_size
        conn.close()

    values = {
        "audit_s": report.seconds,
        "seal_sign_ms": statistics.median(seal_t) * 1e3,
        "inclusion_proof_us": inc,
        "consistency_proof_us": con,
        "append_us": statistics.median(append_t) * 1e6,
    }
    figures = {
        name: {"value": v, "target": TARGETS.get(name), "met": None if name not in TARGETS else v <= TARGETS[name]}
        for name, v in values.items()
    }
    return {
        "entries": n,
        "blocks": blocks,
        "block_every": block_every,
        "build_s": build_s,
        "db_mb": db_bytes / 1e6,
        "audit_ok": report.ok,
        "audit_summary": report.summary(),
        "cpus": os.cpu_count(),
        "figures": figures,
    }


def run_witness_bench(rounds: int = 200, seed: int = 1) -> dict[str, Any]:
    """Median witness round trip between two parties on 127.0.0.1: a log (its tree in SQLite)
    sends ``old`` + a consistency proof + its signed checkpoint to a witness server (aiohttp in
    its own thread and event loop, state in its own SQLite file, synchronous=FULL); the witness
    verifies, persists and cosigns; the log verifies the cosignature and stores it.

    Each round the log grows by a few leaves, so every round carries a real proof.
    """
    import asyncio
    import threading

    import aiohttp
    from aiohttp import web

    from ccn_node.ledger.federation import keep_cosignatures
    from ccn_node.ledger.note import open_checkpoint
    from ccn_node.ledger.witness import PinnedLog, WitnessError, WitnessStore, format_add_checkpoint, local_witness

    rnd = random.Random(seed)
    key = NoteSigner.generate(ORIGIN)
    with tempfile.TemporaryDirectory(prefix="ccn-witness-bench-") as tmp:
        conn = apsw.Connection(str(Path(tmp) / "log.db"))
        conn.execute("PRAGMA journal_mode=WAL; " + PRAGMAS)
        conn.execute(ledger_schema_sql())
        tree = MerkleTree(conn)
        signer = chain.CheckpointSigner(conn, key)
        witness = local_witness(Path(tmp) / "witness.sqlite3", "bench.ccn.invalid/witness",
                                PinnedLog(ORIGIN, (key.verifier(),)))
        ours = WitnessStore(Path(tmp) / "collected.sqlite3")

        async def handle(request: web.Request) -> web.Response:
            body = await request.content.read(8193)
            try:
                line = await asyncio.to_thread(witness.add_checkpoint, body)
            except WitnessError as exc:
                return web.Response(status=exc.status, text=f"{exc.size}\n" if exc.size is not None else exc.message)
            return web.Response(text=line)

        port = free_port()
        ready = threading.Event()
        server_loop = asyncio.new_event_loop()

        def serve() -> None:
            asyncio.set_event_loop(server_loop)
            app = web.Application()
            app.router.add_post("/add-checkpoint", handle)
            runner = web.AppRunner(app, access_log=None)
            server_loop.run_until_complete(runner.setup())
            server_loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
            ready.set()
            server_loop.run_forever()
            server_loop.run_until_complete(runner.cleanup())

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        ready.wait(10)

        async def client() -> list[float]:
            times = []
            old = 0
            async with aiohttp.ClientSession() as session:
                for r in range(rounds + 5):
                    with conn:
                        for i in range(rnd.randint(1, 8)):
                            tree.append(_leaf(10_000 * r + i), "bench", f"w{r}.{i}")
                        size, _, note = signer.sign_tree(tree)
                    t = time.perf_counter()
                    proof = tree.consistency_proof(old, size) if 0 < old < size else []
                    async with session.post(f"http://127.0.0.1:{port}/add-checkpoint",
                                            data=format_add_checkpoint(old, proof, note)) as resp:
                        text = await resp.text()
                        if resp.status != 200:
                            raise RuntimeError(f"witness refused: {resp.status} {text}")
                    cp, _ = open_checkpoint(note, [key.verifier()], ORIGIN)
                    if keep_cosignatures(ours, [witness.verifier()], cp, text, now=time.time()) != 1:
                        raise RuntimeError(f"witness cosignature does not verify: {text!r}")
                    times.append(time.perf_counter() - t)
                    old = size
            return times[5:]  # the first rounds open the connection and warm the caches

        try:
            times = asyncio.run(client())
        finally:
            server_loop.call_soon_threadsafe(server_loop.stop)
            thread.join(10)
            witness.store.close()
            ours.close()
            conn.close()
    median_ms = statistics.median(times) * 1e3
    return {"rounds": rounds, "witness_round_trip_ms": {"value": median_ms, "target": 50.0, "met": median_ms <= 50.0},
            "p95_ms": sorted(times)[int(0.95 * len(times))] * 1e3}


def format_ledger_bench(result: dict[str, Any]) -> list[str]:
    """Printable lines, one figure each, next to its target."""
    units = {
        "audit_s": "s",
        "seal_sign_ms": "ms",
        "inclusion_proof_us": "µs",
        "consistency_proof_us": "µs",
        "append_us": "µs",
    }
    lines = [
        f"ledger bench: {result['entries']:,} entries, {result['blocks']} blocks, "
        f"{result['db_mb']:.0f} MB, built in {result['build_s']:.1f} s"
    ]
    for name, f in result["figures"].items():
        unit = units[name]
        target = "" if f["target"] is None else f"  (target ≤ {f['target']:g} {unit})"
        verdict = "" if f["met"] is None else ("  OK" if f["met"] else "  MISSED")
        lines.append(f"  {name:<22} {f['value']:>10.2f} {unit}{target}{verdict}")
    lines.append(f"  {result['audit_summary']}")
    return lines


if __name__ == "__main__":  # pragma: no cover - manual run
    import sys

    for line in format_ledger_bench(run_ledger_bench(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)):
        print(line)
