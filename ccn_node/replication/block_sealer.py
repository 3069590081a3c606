"""The leader's duty of sealing ledger blocks: every ``block_entries`` new leaves or every
``block_seconds``, whichever comes first, propose a ``SealBlock`` through the command log.

Only the leader runs it (it starts and stops with leadership). The proposer fixes the block
number, the tree size and the timestamp; two racing seals for one number cannot both apply —
the second is refused by the state machine as stale.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import apsw

from ccn_node.clock import new_id
from ccn_node.ledger.chain import canonical_json, last_block
from ccn_node.ledger.tree_store import MerkleTree
from ccn_node.replication import commands as c
from ccn_node.replication.leadership import LeaderTask
from ccn_node.replication.log import CommandLogError
from ccn_node.replication.proposer import CommandRejected, Proposer
from ccn_node.store.database import Store

log = logging.getLogger(__name__)


def _ledger_state(conn: apsw.Connection) -> tuple[int, int, int]:
    """(next block number, ledger size below or at which there is nothing new to seal, size now).

    A block's own SealBlock leaf lands right after the size it sealed, so the floor is one
    above it: an idle node would otherwise seal forever."""
    block = last_block(conn)
    size = MerkleTree(conn).size()
    if block is None:
        return 1, 0, size
    return block.block_number + 1, block.tree_size + 1, size


def _seal_inputs(conn: apsw.Connection) -> tuple[int, int, str] | None:
    """(next block number, tree size to seal, the consensus summary as canonical JSON), or None
    if the ledger did not grow since the last block. One read: the summary's ``ledger_size``
    is the sealed tree size."""
    number, floor, size = _ledger_state(conn)
    if size <= floor:
        return None
    rows = conn.execute(
        "SELECT round_id, created_at, instance_count, consensus_vector, outliers FROM consensus_log"
        " ORDER BY created_at DESC LIMIT 1"
    ).fetchall()
    summary: dict[str, Any] = {"ledger_size": size}
    if rows:
        round_id, created_at, count, vector, outliers = rows[0]
        summary["consensus"] = {"round_id": round_id, "at": created_at, "instances": count,
                                "vector": json.loads(vector), "outliers": json.loads(outliers)}
    return number, size, canonical_json(summary)


class BlockSealer:
    def __init__(self, store: Store, proposer: Proposer, *, every_entries: int, every_seconds: float) -> None:
        self.store = store
        self.proposer = proposer
        self.every_entries = every_entries
        self.every_seconds = every_seconds
        self.duty = LeaderTask("ccn-block-sealer", self._run)
        self.on_leadership = self.duty.on_leadership
        self.stop = self.duty.stop

    async def seal_now(self) -> dict[str, Any] | None:
        """Seal if the ledger grew since the last block; returns the applied outcome or None."""
        inputs = await self.store.read(_seal_inputs)
        if inputs is None:
            return None
        number, size, snapshot = inputs
        cmd = c.SealBlock(request_id=new_id("r"), block_number=number, tree_size=size,
                          sealed_at_ms=int(time.time() * 1000), data_snapshot=snapshot)
        try:
            return await self.proposer.submit(cmd)
        except CommandRejected as exc:
            log.info("seal of block %d refused: %s", number, exc)
            return None

    async def _run(self) -> None:
        last_seal = time.monotonic()
        while True:
            await asyncio.sleep(min(0.5, self.every_seconds))
            try:
                _, floor, size = await self.store.read(_ledger_state)
                due = size - floor >= self.every_entries or (
                    size > floor and time.monotonic() - last_seal >= self.every_seconds
                )
                if due:
                    await self.seal_now()
                    last_seal = time.monotonic()
            except CommandLogError as exc:
                log.warning("block sealing postponed: %s", exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("block sealing failed")
