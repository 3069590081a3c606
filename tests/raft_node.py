"""One cluster member for the Raft tests: the real Store, StateMachine and RaftLog behind a
tiny HTTP control API on 127.0.0.1, run as its own process so tests can kill -9 it.

    python tests/raft_node.py --dir D --raft HOST:PORT --peer HOST:PORT ... --http PORT

Routes: GET /status, POST /setup, POST /write?i=N, POST /barrier, GET /messages,
POST /compact, GET /leader-read.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import apsw
import msgspec
from aiohttp import web

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ccn_node.replication import commands as c
from ccn_node.replication.log import CommandLogError
from ccn_node.replication.raft_log import ClusterSettings, RaftLog
from ccn_node.replication.state_machine import StateMachine
from ccn_node.store.database import Store

BODY = "x" * 300
USER = "u-raft-test"
SESSION = "s-raft-test"
STAMP = "2025-01-01T00:00:00.000000Z"


def _error(exc: CommandLogError) -> web.Response:
    return web.json_response({"error": exc.code, "message": str(exc)}, status=503)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--raft", required=True)
    ap.add_argument("--peer", action="append", default=[])
    ap.add_argument("--http", type=int, required=True)
    ap.add_argument("--durability", default="fsync")
    ap.add_argument("--compact-entries", type=int, default=50_000)
    ap.add_argument("--compact-time", type=float, default=3600.0)
    ap.add_argument("--heartbeat", type=float, default=0.05, help="heartbeat_s; elections at 4x-8x")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format=f"{args.raft} %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ccn_node.replication.raft_log").setLevel(logging.INFO)

    os.makedirs(args.dir, exist_ok=True)
    store = Store(os.path.join(args.dir, "ccn.sqlite3"), synchronous="normal")
    sm = StateMachine(store.writer)
    settings = ClusterSettings(
        self_address=args.raft,
        peers=args.peer,
        secret="test-secret",
        data_dir=args.dir,
        durability=args.durability,
        compaction_min_entries=args.compact_entries,
        compaction_min_time_s=args.compact_time,
        heartbeat_s=args.heartbeat,
        election_min_s=max(0.4, 4 * args.heartbeat),
        election_max_s=max(0.8, 8 * args.heartbeat),
        connection_timeout_s=max(3.5, 8 * args.heartbeat),
    )
    raft = RaftLog(sm, settings)
    await raft.start()

    async def status(_: web.Request) -> web.Response:
        body = msgspec.to_builtins(raft.status())
        body["is_leader"] = raft.is_leader()
        body["sm_applied_index"] = sm.applied_index
        body["counters"] = raft.counters
        return web.json_response(body)

    async def propose(cmd: c.Command, timeout: float) -> web.Response:
        try:
            result = await raft.propose(c.encode(cmd), cmd.request_id, timeout=timeout)
        except CommandLogError as exc:
            return _error(exc)
        return web.json_response(msgspec.to_builtins(result))

    async def setup(request: web.Request) -> web.Response:
        user = c.CreateUser(request_id="setup-user", user_id=USER, name="raft", role="user", created_at=STAMP)
        conv = c.StartConversation(
            request_id="setup-conv",
            session_id=SESSION,
            user_id=USER,
            title="t",
            created_at=STAMP,
            plate_version="v1",
            plate_sha256="0" * 64,
        )
        first = await propose(user, 10.0)
        if first.status != 200:
            return first
        return await propose(conv, 10.0)

    async def write(request: web.Request) -> web.Response:
        i = int(request.query["i"])
        cmd = c.AppendMessage(
            request_id=f"w{i}",
            message_id=f"m{i}",
            session_id=SESSION,
            user_id=USER,
            role="user",
            content=f"{i}:{BODY}",
            created_at=STAMP,
            tokens=1,
        )
        return await propose(cmd, float(request.query.get("timeout", "5")))

    async def barrier(_: web.Request) -> web.Response:
        try:
            await raft.barrier(timeout=5.0)
        except CommandLogError as exc:
            return _error(exc)
        return web.json_response({"applied_index": sm.applied_index})

    async def messages(_: web.Request) -> web.Response:
        def read(conn: apsw.Connection) -> list[str]:
            return [r[0] for r in conn.execute("SELECT message_id FROM messages ORDER BY seq")]

        ids = await store.read(read)
        return web.json_response({"ids": ids, "applied_index": sm.applied_index})

    async def compact(_: web.Request) -> web.Response:
        raft.force_compaction()
        return web.json_response({})

    async def leader_read(_: web.Request) -> web.Response:
        try:
            raft.check_leader_read()
        except CommandLogError as exc:
            return _error(exc)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_post("/setup", setup)
    app.router.add_post("/write", write)
    app.router.add_post("/barrier", barrier)
    app.router.add_get("/messages", messages)
    app.router.add_post("/compact", compact)
    app.router.add_get("/leader-read", leader_read)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.http).start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    raft.add_fatal_listener(lambda exc: stop.set())
    print("READY", flush=True)
    await stop.wait()
    await runner.cleanup()
    await raft.stop()
    store.close()


if __name__ == "__main__":
    asyncio.run(main())
