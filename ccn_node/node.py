"""The node: wires storage, command log, ledger, model backend, services and API together.

This is the only module that knows all the parts. ``Node.start`` opens the database (which
replays nothing: SQLite is durable), records THE PLATE if it changed, starts the command log
and the HTTP server, then tells systemd it is ready.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import time
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ccn_node.api.app import create_app
from ccn_node.api.auth import TokenAuthority
from ccn_node.api.context import ApiServices
from ccn_node.api.ratelimit import DailyTokenBudget, RateLimiter
from ccn_node.clock import now_iso
from ccn_node.config import (
    Config,
    ConfigError,
    cluster_secret,
    jwt_secret,
    ledger_origin,
    model_api_key,
    parse_listen,
    previous_jwt_secrets,
    read_secret_file,
    write_secret_file,
)
from ccn_node.continuity.consensus_service import ConsensusService
from ccn_node.continuity.context import ContextAssembler
from ccn_node.continuity.conversation import ConversationService, TurnHooks, TurnResult
from ccn_node.continuity.instances import InstanceManager, SpawnRecord
from ccn_node.continuity.plate import Plate, PlateError, load_plate
from ccn_node.continuity.retention import RetentionService
from ccn_node.ledger.chain import last_block
from ccn_node.ledger.federation import Federation
from ccn_node.ledger.ledger import Ledger, load_signer
from ccn_node.ledger.note import CosignatureSigner, parse_vkey
from ccn_node.ledger.schema import ledger_schema_sql
from ccn_node.ledger.tree_store import MerkleTree
from ccn_node.ledger.witness import PinnedLog, Witness, WitnessStore
from ccn_node.llm.base import ModelBackend
from ccn_node.llm.factory import ModelSettings, make_backend
from ccn_node.monitoring import Monitoring
from ccn_node.replication import commands as c
from ccn_node.replication.block_sealer import BlockSealer
from ccn_node.replication.local_log import LocalLog
from ccn_node.replication.log import CommandLog, CommandLogError
from ccn_node.replication.proposer import CommandRejected, Proposer
from ccn_node.replication.raft_log import ClusterSettings, RaftLog
from ccn_node.replication.search_index import MAX_LAG_S
from ccn_node.replication.state_machine import StateMachine
from ccn_node.sd_notify import notify, watchdog_interval
from ccn_node.store import queries
from ccn_node.store.backup import BackupError, BackupService, DatabaseLock, backup_key, newest_age_s
from ccn_node.store.database import Store, StoreError
from ccn_node.tls import reload as reload_tls
from ccn_node.tls import server_context

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
        # One process per database: restore and a second `serve` see this lock (store/backup.py).
        self.db_lock = DatabaseLock(cfg.database_path)
        try:
            self.db_lock.acquire()
        except BackupError as exc:
            raise StartupError(str(exc)) from None
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
        self.store.start_checkpointer()
        key_file = cfg.path(cfg.ledger.key_file)
        try:
            signer = load_signer(ledger_origin(cfg), read_secret_file(key_file, file=cfg.source, key="ledger.key_file"))
        except ValueError as exc:
            raise ConfigError(cfg.source, "ledger.key_file", f"cannot load the ledger key {key_file}: {exc}") from None
        self.ledger = Ledger(self.store.writer, signer)
        self.federation = self._federation(signer)
        self.state_machine = StateMachine(self.store.writer, ledger=self.ledger)
        self.store.search_index_catch_up = self.state_machine.catch_up_search_index
        self.cluster = cluster_settings(cfg)
        # Set when the node must exit non-zero (raft fail-stop, keys that differ from the cluster's).
        self.failure: str | None = None
        self.failed = asyncio.Event()
        self._key_fingerprint = hashlib.sha256(signer.vkey().encode()).hexdigest()[:32]
        self.joined = self.cluster is None  # cluster start-up duties done (plate, key check)
        if self.cluster is None:
            self.log: CommandLog = LocalLog(self.state_machine)
        else:
            raft = RaftLog(self.state_machine, self.cluster)
            raft.add_fatal_listener(lambda exc: self.fail(f"the raft log stopped this node: {exc}"))
            self.log = raft
        self.proposer = Proposer(self.log, cfg.limits.propose_timeout_s)
        self.sealer = BlockSealer(self.store, self.proposer, every_entries=cfg.ledger.block_entries,
                                  every_seconds=cfg.ledger.block_seconds)
        self.log.add_leadership_listener(self.sealer.on_leadership)
        try:
            self.backend: ModelBackend = make_backend(model_settings(cfg))
        except ValueError as exc:
            raise ConfigError(cfg.source, "model", str(exc)) from None
        self.monitoring = Monitoring()
        self.limiter = RateLimiter(cfg.limits.requests_per_minute, cfg.limits.burst)
        self.token_budget = DailyTokenBudget(cfg.limits.model_tokens_per_day)
        previous_keys, previous_until = previous_jwt_secrets(cfg)
        self.tokens = TokenAuthority(jwt_secret(cfg), issuer=cfg.auth.issuer, ttl_s=cfg.auth.token_ttl_s,
                                     previous_keys=previous_keys, previous_until=previous_until)
        self.ssl_context: ssl.SSLContext | None = server_context(cfg)
        self.retention = RetentionService(self.store, self.proposer, default_days=cfg.retention.default_days,
                                          interval_s=cfg.retention.sweep_interval_s, is_leader=self.log.is_leader)
        self.backups: BackupService | None = None
        if cfg.backup.enabled:
            self.backups = BackupService(
                cfg.database_path, cfg.path(cfg.backup.dir), interval_s=cfg.backup.interval_s, keep=cfg.backup.keep,
                key=backup_key(cfg), verifiers=[signer.verifier()], node_name=cfg.node.name,
                step_pages=cfg.backup.step_pages, pause_s=cfg.backup.step_pause_ms / 1000,
            )
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
        self.instances = InstanceManager(
            store=self.store,
            proposer=self.proposer,
            backend=self.backend,
            plate=self.plate,
            assembler=self.conversations.assembler,
            settings=cfg.continuity,
            node_id=cfg.node.name,
            state_loader=self.conversations.context_state,
            max_output_tokens=cfg.model.max_tokens,
            validation_timeout_s=cfg.model.timeout_s,
            on_spawn=self._on_spawn,
        )
        self.conversations.hooks.instance_for = self.instances.instance_for
        self.state_machine.add_commit_listener(self.instances.on_commit)
        self.consensus = ConsensusService(
            store=self.store,
            proposer=self.proposer,
            log=self.log,
            settings=cfg.continuity,
            node_id=cfg.node.name,
            on_round=self._on_round,
        )
        self.log.add_leadership_listener(self.consensus.on_leadership)
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
                extra={"instances": self.instances, "consensus": self.consensus, "ops": self.ops_status,
                       "retention": self.retention, "backups": self.backups, "federation": self.federation,
                       "ledger_vkey": signer.vkey()},
            )
        )

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self.started_at = time.time()
        await self.log.start()
        if self.cluster is None:
            await self._record_plate()
        else:  # a follower may start before there is a leader: never block start-up on it
            self._tasks.append(asyncio.create_task(self._join_cluster()))
        self.instances.start()
        if self.cfg.retention.enabled:
            self.retention.start()
        if self.backups is not None:
            self.backups.start()
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=10.0)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True, ssl_context=self.ssl_context)
        await self._site.start()
        if self.port == 0:
            server = self._site._server  # private: the only way to read the bound port
            if server is not None and server.sockets:
                self.port = server.sockets[0].getsockname()[1]
        await self.federation.start()
        self._tasks.append(asyncio.create_task(self._search_index_timer()))
        interval = watchdog_interval()
        if interval:
            self._tasks.append(asyncio.create_task(self._watchdog(interval)))
        self.ready_at = time.time()
        notify("READY=1\nSTATUS=serving")
        log.info("node %s serving on %s", self.cfg.node.name, self.url)

    async def stop(self) -> None:
        """Graceful stop: refuse new work, let running turns finish (bounded), flush, close."""
        if self._stopping:
            return
        self._stopping = True
        notify("STOPPING=1")
        for task in self._tasks:
            task.cancel()
        await self.sealer.stop()
        await self.federation.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.consensus.stop()
        await self.instances.stop()
        await self.retention.stop()
        if self.backups is not None:
            await self.backups.stop()
        await self.log.stop()
        try:  # a clean file carries a complete full-text index
            self.state_machine.catch_up_search_index()
        except Exception:
            log.exception("the full-text index could not catch up before closing")
        await self.backend.aclose()
        self.store.close()
        self.federation.witness.store.close()
        self.db_lock.release()

    def _federation(self, signer: Any) -> Federation:
        """This node as a witness of its pinned peers (ledger/DESIGN.md "Federation").

        The cosigning key is the node's own (``federation.witness_key_file``, created on first
        start), never the organisation's shared ledger key: each node is one witness with one
        linear view, so a key never vouches for two views (see "Witness state").
        """
        cfg = self.cfg
        fed = cfg.federation
        key_file = cfg.path(fed.witness_key_file)
        if not key_file.exists():
            write_secret_file(key_file, Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        key = serialization.load_pem_private_key(
            read_secret_file(key_file, file=cfg.source, key="federation.witness_key_file"), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(cfg.source, "federation.witness_key_file", "not an Ed25519 private key")
        cosigner = CosignatureSigner(fed.witness_name or f"{cfg.node.name}/witness", key)
        logs = {p.origin: PinnedLog(p.origin, tuple(parse_vkey(v) for v in p.vkeys), p.url.rstrip("/"),
                                    tuple(parse_vkey(v) for v in p.witness_vkeys))  # type: ignore[misc]
                for p in fed.peers}
        witness = Witness(WitnessStore(cfg.path(fed.database), synchronous=cfg.storage.synchronous), cosigner, logs)

        async def own_checkpoint() -> str | None:
            block = await self.store.read(last_block)
            return None if block is None else block.checkpoint

        async def own_proof(size1: int, size2: int) -> list[bytes]:
            return await self.store.read(lambda conn: MerkleTree(conn).consistency_proof(size1, size2))

        async def own_root(size: int) -> bytes | None:
            def run(conn: Any) -> bytes | None:
                tree = MerkleTree(conn)
                return tree.root(size) if size <= tree.size() else None

            return await self.store.read(run)

        return Federation(witness, origin=ledger_origin(cfg), own_verifiers=[signer.verifier()],
                          own_checkpoint=own_checkpoint, own_proof=own_proof, own_root=own_root,
                          interval_s=fed.pull_interval_s, timeout_s=fed.request_timeout_s,
                          witnesses_required=fed.witnesses_required, max_age_s=fed.max_age_s)

    def backup_age_s(self) -> float | None:
        """Seconds since the newest verified backup (one listing of the backup directory, so a
        `ccn-node backup` run beside the node counts too); None when there is none or backups are off."""
        return None if self.backups is None else newest_age_s(self.backups.directory)

    def ledger_size(self) -> int:
        """Leaves committed to the Merkle log, read on a reader connection (the writer's may be
        inside the apply thread's transaction, and a read there would wait for it)."""
        return self.store.read_sync(lambda conn: MerkleTree(conn).size())

    def witness_status(self) -> dict[str, float]:
        """The ccn_witness_status gauge: cosignatures on our latest checkpoint, its size, forks."""
        block = self.store.read_sync(last_block)
        out = {"witnesses": 0.0, "cosigned_size": 0.0,
               "fork_detected": float(bool(self.federation.witness.store.forked_origins()))}
        if block is not None:
            n = len(self.federation.witness.store.cosignatures(block.tree_size, block.root))
            out.update(witnesses=float(n), cosigned_size=float(block.tree_size if n else 0))
        return out

    async def _search_index_timer(self) -> None:
        """Messages written while nobody searches reach the full-text index within
        search_index.MAX_LAG_S even when no further write comes to carry them."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(MAX_LAG_S / 4)
            if self.state_machine.search_index.due():
                try:
                    await loop.run_in_executor(None, self.state_machine.catch_up_search_index)
                except Exception:
                    log.exception("the full-text index could not catch up")

    async def _watchdog(self, interval: float) -> None:
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def fail(self, reason: str) -> None:
        """Stop serving and exit non-zero (run_until_signalled); a restart replays the journal."""
        if self.failure is None:
            log.critical("node %s stops: %s", self.cfg.node.name, reason)
            self.failure = reason
        self.failed.set()

    async def _join_cluster(self) -> None:
        """Cluster start-up duties that need a leader, retried until done; readiness stays false."""
        while not self._stopping:
            try:
                await self._check_cluster_keys()
                await self._record_plate()
            except CommandLogError as exc:
                log.info("waiting for the cluster: %s", exc)
                await asyncio.sleep(0.5)
                continue
            except StartupError as exc:
                self.fail(str(exc))
                return
            self.joined = True
            log.info("node %s joined the cluster", self.cfg.node.name)
            return

    async def _check_cluster_keys(self) -> None:
        """Refuse to run with a ledger key or origin other than the cluster's.

        The first member to start records a fingerprint of its ledger verifier key (origin +
        public key) through the log as a Noop's request id; every member compares its own with
        the first one recorded. Checkpoints are signed inside apply, so a differing key would
        make this node's ledger differ from the others'.
        """
        ours = _KEYS_PREFIX + self._key_fingerprint
        await self.log.barrier(self.cfg.limits.propose_timeout_s)
        first = await self.store.read(_first_key_record)
        if first is None:
            try:
                await self.proposer.submit(c.Noop(request_id=ours))
            except CommandRejected as exc:
                raise StartupError(f"cannot record the cluster key fingerprint: {exc}") from None
            first = await self.store.read(_first_key_record)
        if first != ours:
            raise StartupError(
                f"this node's ledger key or cluster.name differ from the cluster's (fingerprint"
                f" {ours[len(_KEYS_PREFIX):]}, the cluster recorded {str(first)[len(_KEYS_PREFIX):]}):"
                " copy keys/node.ed25519 from a member"
                " (ccn-node init --ledger-key-file) and use the same cluster.name"
            )

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
        except CommandLogError:
            if self.cluster is None:
                raise StartupError("cannot record THE PLATE: the command log failed") from None
            raise  # a cluster member retries until there is a leader
        except Exception as exc:
            raise StartupError(f"cannot record THE PLATE: {exc}") from None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def reload(self) -> None:
        """SIGHUP: re-read the JWT keys (rotation) and the TLS pair (renewal) without closing the
        listener. A file that fails its checks keeps the old key or certificate in use, and is logged."""
        try:
            previous_keys, previous_until = previous_jwt_secrets(self.cfg)
            self.tokens.set_keys(jwt_secret(self.cfg), previous_keys, previous_until)
            log.info("reloaded JWT keys (%d previous)", len(previous_keys))
        except ConfigError as exc:
            log.error("JWT keys not reloaded: %s", exc)
        if self.ssl_context is not None:
            try:
                reload_tls(self.ssl_context, self.cfg)
                log.info("reloaded TLS certificate")
            except ConfigError as exc:
                log.error("TLS certificate not reloaded: %s", exc)

    # -- observation ---------------------------------------------------------------------

    def readiness(self) -> dict[str, Any]:
        status = self.log.status()
        checks = {
            "storage": not self._stopping,
            "command_log": status.has_quorum,
            "model_backend": self.backend.configured(),
            "serving": self.ready_at is not None and not self._stopping,
            "cluster_joined": self.joined and self.failure is None,
        }
        return {
            "ready": all(checks.values()),
            "checks": checks,
            "node": self.cfg.node.name,
            "model": self.backend.describe(),
            "log": {"kind": status.kind, "role": status.role, "term": status.term, "leader": status.leader,
                    "has_quorum": status.has_quorum, "commit_index": status.commit_index,
                    "applied_index": status.applied_index},
        }

    def _on_spawn(self, spawn: SpawnRecord) -> None:
        self.monitoring.spawn_seconds.observe(spawn.seconds)
        if spawn.tokens:
            self.monitoring.api_tokens.labels("validation").inc(spawn.tokens)
        if spawn.cost_usd:
            self.monitoring.api_cost.inc(spawn.cost_usd)

    def _on_round(self, result: dict[str, Any]) -> None:
        self.monitoring.consensus_rounds.inc()
        self.monitoring.consensus_latency.observe(result["latency_ms"] / 1000)
        if result["outliers"]:
            self.monitoring.outliers.inc(len(result["outliers"]))

    def _on_turn(self, user_id: str, result: TurnResult) -> None:
        self.instances.touch(result.session_id)
        self.monitoring.observe_turn(result.session_id, result.usage, result.cost_usd, result.metrics,
                                     result.latency_ms / 1000)

    def _register_state_gauges(self) -> None:
        def counts() -> dict[str, float]:
            return {k: float(v) for k, v in self.store.read_sync(queries.counts).items()}

        self.monitoring.add_state("ccn_total_conversations", "Conversations stored",
                                  lambda: {"": counts()["conversations"]})
        self.monitoring.add_state("ccn_ledger_size", "Entries in the Merkle log",
                                  lambda: {"": float(self.ledger_size())})
        self.monitoring.add_state("ccn_applied_index", "Last command log index applied on this node",
                                  lambda: {"": float(self.state_machine.applied_index)})
        self.monitoring.add_state("ccn_active_instances", "Instances with status active (all nodes)",
                                  lambda: {"": float(self.store.read_sync(queries.count_active_instances))})
        self.monitoring.add_state_group(self.log.status, {
            "ccn_raft_role": ("Command log role of this node (1 = current)",
                              lambda st: _one_hot(st.role, ("leader", "follower", "candidate"))),
            "ccn_raft_term": ("Raft term (0 on a single node)", lambda st: {"": float(st.term)}),
            "ccn_raft_commit_index": ("Highest command log index known committed",
                                      lambda st: {"": float(st.commit_index)}),
            "ccn_raft_applied_index": ("Highest command log index applied on this node",
                                       lambda st: {"": float(st.applied_index)}),
            "ccn_raft_peers_connected": ("Peers this node is connected to",
                                         lambda st: {"": float(sum(p.connected for p in st.peers))}),
        })
        self.monitoring.add_state("ccn_witness_status", "Witness view of the ledger (cosignatures, forks)",
                                  self.witness_status)
        self.monitoring.add_state("ccn_ledger_forks", "Confirmed forks of pinned logs (fork evidence kept)",
                                  lambda: {"": float(sum(f.confirmed for f in self.federation.witness.store.forks()))})
        self.monitoring.add_state_group(self.federation.peer_status, {
            "ccn_federation_peer_up": ("Pinned peer answered the last federation round (1/0)",
                                       lambda peers: {s["origin"]: float(bool(s["reachable"])) for s in peers}),
            "ccn_federation_peer_witnessed": ("Peer checkpoint cosigned by k of its witnesses within max age (1/0)",
                                              lambda peers: {s["origin"]: float(s["witnessed"]) for s in peers}),
        })
        self.monitoring.add_state("ccn_backup_age_seconds", "Seconds since the last verified backup; -1 = none",
                                  lambda: {"": _or_minus_one(self.backup_age_s())})

    def ops_status(self) -> dict[str, Any]:
        """Cluster, ledger, witness and backup state for the dashboard (no message content)."""
        status = self.log.status()
        return {
            "node": self.cfg.node.name,
            "uptime_s": time.time() - (self.started_at or time.time()),
            "cluster": {
                "kind": status.kind, "role": status.role, "term": status.term, "leader": status.leader,
                "self": status.self_address, "commit_index": status.commit_index,
                "applied_index": status.applied_index, "has_quorum": status.has_quorum,
                "peers": [{"address": p.address, "connected": p.connected, "lag": p.lag} for p in status.peers],
            },
            "ledger": {"size": self.ledger_size(),
                       "witness": self.witness_status()},
            "backup_age_s": self.backup_age_s(),
        }


_KEYS_PREFIX = "cluster-keys:"


def _first_key_record(conn: Any) -> str | None:
    rows = conn.execute(
        "SELECT request_id FROM applied_requests WHERE request_id LIKE 'cluster-keys:%' ORDER BY log_index LIMIT 1"
    ).fetchall()
    return rows[0][0] if rows else None


def cluster_settings(cfg: Config) -> ClusterSettings | None:
    """``[cluster]`` → ClusterSettings (None without peers); a setting raft refuses names the key."""
    cl = cfg.cluster
    if not cl.enabled:
        return None
    tunables = ("heartbeat_s", "election_min_s", "election_max_s", "leader_fallback_s", "connection_timeout_s",
                "connect_retry_s", "max_in_flight", "commands_queue_size", "compaction_min_entries",
                "compaction_min_time_s", "max_batch_bytes", "max_batch_commands", "tick_wait_s")
    settings = ClusterSettings(
        self_address=cl.address, peers=list(cl.peers), secret=cluster_secret(cfg), data_dir=str(cfg.data_dir),
        bind_address=cl.bind_address or None, durability=cl.durability,
        propose_timeout_s=cfg.limits.propose_timeout_s,
        **{k: getattr(cl, k) for k in tunables if getattr(cl, k) is not None},
    )
    try:
        settings.validate()
    except ValueError as exc:
        raise ConfigError(cfg.source, "cluster", str(exc)) from None
    return settings


def _one_hot(value: str, choices: tuple[str, ...]) -> dict[str, float]:
    return {choice: float(choice == value) for choice in choices}


def _or_minus_one(value: float | None) -> float:
    return -1.0 if value is None else float(value)


async def run_until_signalled(node: Node) -> None:
    """Serve until SIGINT or SIGTERM, then stop gracefully; SIGHUP reloads keys and certificate."""
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, node.reload)
    await node.start()
    try:
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(node.failed.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waits:
            waiter.cancel()
    finally:
        await node.stop()
    if node.failure is not None:
        raise SystemExit(f"ccn-node: {node.failure}")
