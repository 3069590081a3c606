"""The node's ledger as the state machine sees it: append a leaf per command, seal blocks.

One object over the Merkle tree and the checkpoint signer, both working inside the state
machine's transaction. The signing key is the organisation's: every node of a cluster holds
the same key (copied at install like the JWT key), so a block sealed through the log is
byte-identical on every node — Ed25519 signatures are deterministic.
"""

from __future__ import annotations

import apsw
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ccn_node.ledger.chain import Block, CheckpointRefused, CheckpointSigner, insert_block, last_block, next_block
from ccn_node.ledger.note import NoteSigner
from ccn_node.ledger.tree_store import MerkleTree


class SealRefused(Exception):
    """A seal that cannot take effect (stale block number, size out of range)."""


def load_signer(origin: str, pem: bytes) -> NoteSigner:
    """The Ed25519 key from PEM (PKCS8) bytes, as a note signer named after the origin."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the file does not hold an Ed25519 private key")
    return NoteSigner(origin, key)


class Ledger:
    def __init__(self, conn: apsw.Connection, signer: NoteSigner | None) -> None:
        self.tree = MerkleTree(conn)
        self.signer = signer
        self._conn = conn
        self._checkpoints = CheckpointSigner(conn, signer) if signer is not None else None

    @property
    def origin(self) -> str | None:
        return self.signer.name if self.signer is not None else None

    def rebind(self, conn: apsw.Connection) -> None:
        """Follow the writer connection after a snapshot restore replaced the database."""
        self.__init__(conn, self.signer)  # type: ignore[misc]

    # -- LeafSink ------------------------------------------------------------------------

    def append(self, leaf_bytes: bytes, kind: str, ref: str) -> int:
        return self.tree.append(leaf_bytes, kind, ref)

    def defer(self) -> None:
        self.tree.defer()

    def flush(self) -> None:
        self.tree.flush()

    def held(self) -> int:
        return self.tree.held()

    def reset_cache(self) -> None:
        self.tree.reset_cache()

    # -- sealing -------------------------------------------------------------------------

    def seal(self, block_number: int, tree_size: int, timestamp_ms: int, data_snapshot: str) -> Block:
        """Seal the tree at ``tree_size`` into block ``block_number`` (in the caller's transaction)."""
        if self._checkpoints is None:
            raise SealRefused("this node has no ledger signing key")
        prev = last_block(self._conn)
        expected = 1 if prev is None else prev.block_number + 1
        if block_number != expected:
            raise SealRefused(f"block {block_number} proposed, the next block is {expected}")
        if tree_size > self.tree.size():
            raise SealRefused(f"tree size {tree_size} is beyond the ledger's {self.tree.size()}")
        if prev is not None and tree_size <= prev.tree_size:
            raise SealRefused(f"tree size {tree_size} is not beyond the last block's {prev.tree_size}")
        try:
            size, root, note = self._checkpoints.sign_tree(self.tree, tree_size)
        except CheckpointRefused as exc:
            raise SealRefused(str(exc)) from None
        block = next_block(prev, tree_size=size, root=root, timestamp=timestamp_ms, data_snapshot=data_snapshot,
                           checkpoint=note)
        insert_block(self._conn, block)
        return block
