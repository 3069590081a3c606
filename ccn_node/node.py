"""The node: wires storage, command log, ledger, model backend, services and API together.

This is the only module that knows all the parts. ``Node.start`` opens the database (which
replays nothing: SQLite is durable), records THE PLATE if it changed, starts the command log
and the HTTP server, then tells systemd it is ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from ccn_node.api.app import create_app
from ccn_node.api.auth import TokenAuthority
from ccn_node.api.context import ApiServices
from ccn_node.api.ratelimit import DailyTokenBudget, RateLimiter
from ccn_node.clock import now_iso
from ccn_node.config import Config, ConfigError, jwt_secret, model_api_key, parse_listen
from ccn_node.continuity.context import ContextAssembler
from ccn_node.continuity.conversation import ConversationService, TurnHooks, TurnResult
from ccn_node.continuity.plate import Plate, PlateError, load_plate
from ccn_node.ledger.schema import ledger_schema_sql
from ccn_node.ledger.tree_store import MerkleTree
from ccn_node.llm.base import ModelBackend
from ccn_node.llm.factory import ModelSettings, make_backend
from ccn_node.monitoring import Monitoring
from ccn_node.replication import commands as c
from ccn_node.replication.local_log import LocalLog
from ccn_node.replication.log import CommandLog
from ccn_node.replication.proposer import Proposer
from ccn_node.replication.state_machine import StateMachine
from ccn_node.sd_notify import notify, watchdog_interval
from ccn_node.store import queries
from ccn_node.store.database import Store, StoreError

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The node cannot start; the message says why and what to fix."""


def model_settings(cfg: Config) -> ModelSettings:
    m = cfg.model
    return ModelSettings(
        backend=m.backend,
        model=m.model,
        max_tokens=m.max_tokens,
        base_url=m.base_url,
        api_key=model_api_key(cfg),
        timeout_s=m.timeout_s,
        max_retries=m.max_retries,
        temperature=m.temperature,
        pricing=m.pricing,
        offline_latency_ms=m.offline_latency_ms,
    )


class Node:
    def __init__(self, cfg: Config, *, listen: str | None = None) -> None:
        self.cfg = cfg
        self.listen = listen or cfg.node.listen
        self.host, self.port = parse_listen(self.listen, file=cfg.source, key="node.listen")
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False
        try:
            self.plate: Plate = load_plate(cfg.path(cfg.plate.path))
        except PlateError as exc:
            raise StartupError(f"THE PLATE: {exc}") from None
        try:
            self.store = Store(
                cfg.database_path,
                synchronous=cfg.storage.synchronous,
                busy_timeout_ms=cfg.storage.busy_timeout_ms,
                readers=cfg.storage.readers,
                extra_schema=[ledger_schema_sql()],
            )
        except StoreError as exc:
            raise StartupError(str(exc)) from None
        self.tree = MerkleTree(self.store.writer)
        self.state_machine = StateMachine(self.store.writer, ledger=self.tree)
        self.log: CommandLog = LocalLog(self.state_machine)
        self.proposer = Proposer(self.log, cfg.limits.propose_timeout_s)
        try:
            self.backend: ModelBackend = make_backend(model_settings(cfg))
        except ValueError as exc:
            raise ConfigError(cfg.source, "model", str(exc)) from None
        self.monitoring = Monitoring()
        self.limiter = RateLimiter(cfg.limits.requests_per_minute, cfg.limits.burst)
        self.token_budget = DailyTokenBudget(cfg.limits.model_tokens_per_day)
        self.tokens = TokenAuthority(jwt_secret(cfg), issuer=cfg.auth.issuer, ttl_s=cfg.auth.token_ttl_s)
        self.conversations = ConversationService(
            store=self.store,
            proposer=self.proposer,
            assembler=ContextAssembler(self.plate, cfg.context),
            backend=self.backend,
            plate=self.plate,
            max_output_tokens=cfg.model.max_tokens,
            max_message_chars=cfg.limits.max_message_chars,
            turn_wait_s=cfg.limits.turn_wait_s,
            token_budget=self.token_budget,
            hooks=TurnHooks(on_turn=self._on_turn),
        )
        self._register_state_gauges()
        self.app = create_app(
            ApiServices(
                config=cfg,
                store=self.store,
                log=self.log,
                conversations=self.conversations,
                tokens=self.tokens,
                limiter=self.limiter,
                token_budget=self.token_budget,
                monitoring=self.monitoring,
                readiness=self.readiness,
            )
        )

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self.started_at = time.time()
        await self.log.start()
        await self._record_plate()
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=10.0)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()
        if self.port == 0:
            server = self._site._server  # noqa: SLF001 - the only way to read the bound port
            if server is not None and server.sockets:
                self.port = server.sockets[0].getsockname()[1]
        interval = watchdog_interval()
        if interval:
            self._tasks.append(asyncio.create_task(self._watchdog(interval)))
        self.ready_at = time.time()
        notify("READY=1\nSTATUS=serving")
        log.info("node %s serving on http://%s:%d", self.cfg.node.name, self.host, self.port)

    async def stop(self) -> None:
        """Graceful stop: refuse new work, let running turns finish (bounded), flush, close."""
        if self._stopping:
            return
        self._stopping = True
        notify("STOPPING=1")
        for task in self._tasks:
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.log.stop()
        await self.backend.aclose()
        self.store.close()

    async def _watchdog(self, interval: float) -> None:
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def _record_plate(self) -> None:
        current = await self.store.read(queries.current_plate)
        if current is not None and current["sha256"] == self.plate.sha256 and current["version"] == self.plate.version:
            return
        cmd = c.RecordPlate(
            request_id=f"plate:{self.plate.version}:{self.plate.sha256}",
            version=self.plate.version,
            sha256=self.plate.sha256,
            name=self.plate.name,
            content=self.plate.body,
            recorded_at=now_iso(),
        )
        try:
            await self.proposer.submit(cmd)
        except Exception as exc:
            raise StartupError(f"cannot record THE PLATE: {exc}") from None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- observation ---------------------------------------------------------------------

    def readiness(self) -> dict[str, Any]:
        status = self.log.status()
        checks = {
            "storage": not self._stopping,
            "command_log": status.has_quorum,
            "model_backend": self.backend.configured(),
            "serving": self.ready_at is not None and not self._stopping,
        }
        return {
            "ready": all(checks.values()),
            "checks": checks,
            "node": self.cfg.node.name,
            "model": self.backend.describe(),
            "log": {"kind": status.kind, "role": status.role, "applied_index": status.applied_index},
        }

    def _on_turn(self, user_id: str, result: TurnResult) -> None:
        self.monitoring.observe_turn(result.session_id, result.usage, result.cost_usd, result.metrics,
                                     result.latency_ms / 1000)

    def _register_state_gauges(self) -> None:
        def counts() -> dict[str, float]:
            return {k: float(v) for k, v in self.store.read_sync(queries.counts).items()}

        self.monitoring.add_state("ccn_total_conversations", "Conversations stored",
                                  lambda: {"": counts()["conversations"]})
        self.monitoring.add_state("ccn_ledger_size", "Entries in the Merkle log", lambda: {"": float(self.tree.size())})
        self.monitoring.add_state("ccn_applied_index", "Last command log index applied on this node",
                                  lambda: {"": float(self.state_machine.applied_index)})


async def run_until_signalled(node: Node) -> None:
    """Serve until SIGINT or SIGTERM, then stop gracefully."""
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    try:
        await stop.wait()
    finally:
        await node.stop()
