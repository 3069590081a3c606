"""Consensus rounds, run by the leader: agree on the current character, re-initialise outliers.

Why only the leader: a round is one decision for the whole cluster (the median of the
active instances' character vectors, and which instances drifted from it). Computing it on
one node and committing the result through the command log means every node stores the
same round, and no two nodes flag different outliers from slightly different reads. The
loop starts when this node becomes leader and stops when it stops being leader (on a
single node, the node is always leader).

A round reads the vectors from ``instance_registry`` (each active instance's latest answer),
checks every vector at the boundary (NaN, ±inf, wrong length or out of [0, 1] → that
instance is skipped and named in ``rejected``, never fed to the median or stored), runs the
pure ``consensus_round``, commits ``RecordConsensus`` and then one ``TerminateInstance``
per outlier (reason "outlier: …"); the instance's node forgets it on commit and its next
turn spawns and validates a new one. A round with no instances is a no-op: nothing is
committed, the result says ``noop``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from ccn_node.clock import new_id, now_iso
from ccn_node.config import ContinuitySettings
from ccn_node.continuity.consensus import consensus_round
from ccn_node.continuity.instances import OUTLIER_REASON
from ccn_node.continuity.metrics import validate_vector
from ccn_node.continuity.probe import DIMENSIONS
from ccn_node.replication import commands as c
from ccn_node.replication.leadership import LeaderTask
from ccn_node.replication.log import CommandLog
from ccn_node.replication.proposer import Proposer
from ccn_node.store import queries
from ccn_node.store.database import Store

__all__ = ["ConsensusService", "NotLeader"]

log = logging.getLogger(__name__)


class NotLeader(Exception):
    """Rounds are computed by the leader; ``leader`` says where to ask (None if unknown)."""

    def __init__(self, leader: str | None) -> None:
        super().__init__(f"consensus rounds run on the leader ({leader or 'unknown'})")
        self.leader = leader


class ConsensusService:
    """The periodic round on the leader, and one on demand (``run_round``)."""

    def __init__(
        self,
        *,
        store: Store,
        proposer: Proposer,
        log: CommandLog,
        settings: ContinuitySettings,
        node_id: str,
        on_round: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.store = store
        self.proposer = proposer
        self.log = log
        self.settings = settings
        self.node_id = node_id
        self.on_round = on_round
        self._lock = asyncio.Lock()
        self._duty = LeaderTask("consensus-rounds", self._loop)
        self.last_round: dict[str, Any] | None = None

    # -- leadership ----------------------------------------------------------------------

    def on_leadership(self, leader: bool) -> None:
        """Leadership listener: rounds run only while this node leads."""
        self._duty.on_leadership(leader)

    async def stop(self) -> None:
        await self._duty.stop()

    @property
    def running(self) -> bool:
        return self._duty.running

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.consensus_interval_s)
            try:
                await self.run_round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # lost quorum or leadership mid-round: the next round retries
                log.warning("consensus round failed: %s", exc)

    # -- one round -----------------------------------------------------------------------

    async def run_round(self) -> dict[str, Any]:
        """Compute a round over the active instances and commit it (unless it is empty)."""
        if not self.log.is_leader():
            raise NotLeader(self.log.status().leader)
        async with self._lock:
            t0 = time.perf_counter()
            stored = await self.store.read(queries.active_instance_vectors)
            vectors, rejected = {}, {}
            for instance_id, raw in stored.items():
                try:
                    vectors[instance_id] = validate_vector(raw, len(DIMENSIONS), name=f"instance {instance_id}")
                except ValueError as exc:
                    rejected[instance_id] = str(exc)
            threshold = self.settings.outlier_threshold
            result = consensus_round(vectors, threshold)
            latency_ms = round((time.perf_counter() - t0) * 1000, 3)
            created_at = now_iso()
            out: dict[str, Any] = {
                "round_id": None,
                "created_at": created_at,
                "node_id": self.node_id,
                "term": self.log.status().term,
                "instance_count": result.instance_count,
                "consensus_vector": None,
                "consensus": None,
                "outliers": list(result.outliers),
                "drifts": {k: round(v, 6) for k, v in result.drifts.items()},
                "threshold": threshold,
                "spread": msgspec.to_builtins(result.spread) if result.spread is not None else None,
                "rejected": rejected,
                "latency_ms": latency_ms,
                "noop": result.noop,
                "committed": False,
                "reinitialised": [],
            }
            if result.noop or result.vector is None:
                self.last_round = out
                return out
            vector = [round(x, 6) for x in result.vector]
            cmd = c.RecordConsensus(
                request_id=new_id("r"), round_id=new_id("k"), created_at=created_at, term=out["term"],
                node_id=self.node_id, instance_count=result.instance_count, consensus_vector=vector,
                outliers=list(result.outliers), drifts=out["drifts"], latency_ms=latency_ms,
            )
            await self.proposer.submit(cmd)
            out.update(round_id=cmd.round_id, consensus_vector=vector, committed=True,
                       consensus=dict(zip(DIMENSIONS, vector, strict=True)))
            reasons = {i: f"{OUTLIER_REASON}: drift {result.drifts[i]:.4f} > {threshold:g} in round {cmd.round_id}"
                       for i in result.outliers}
            done = await asyncio.gather(
                *(self.proposer.submit(c.TerminateInstance(request_id=new_id("r"), instance_id=i, at=now_iso(),
                                                           reason=reason)) for i, reason in reasons.items()),
                return_exceptions=True,
            )
            out["reinitialised"] = [i for i, d in zip(reasons, done, strict=True) if not isinstance(d, BaseException)]
            self.last_round = out
        if self.on_round is not None:
            self.on_round(out)
        return out
