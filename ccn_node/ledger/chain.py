"""Blocks of the ``verification_chain``, the checkpoint signer that never forks, and the
full local audit.

A block seals the Merkle log at one size: it links to the previous block by hash and
carries the signed checkpoint of (size, root), so the chain and the tree vouch for
each other. Everything here runs inside the caller's transaction; nothing commits.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import apsw
import numpy as np

from ccn_node.ledger import merkle
from ccn_node.ledger.merkle import ProofError
from ccn_node.ledger.note import (
    Checkpoint,
    NoteError,
    NoteSigner,
    Verifier,
    open_checkpoint,
    sign_checkpoint,
)
from ccn_node.ledger.schema import ledger_schema_sql
from ccn_node.ledger.tree_store import STORED_FROM_LEVEL, MerkleTree

__all__ = [
    "GENESIS_PREVIOUS_HASH",
    "AuditReport",
    "Block",
    "CheckpointRefused",
    "CheckpointSigner",
    "Problem",
    "audit",
    "block_hash",
    "blocks_after",
    "canonical_json",
    "get_block",
    "insert_block",
    "last_block",
    "ledger_schema_sql",
    "next_block",
    "seal_block",
]

BLOCK_DOMAIN = b"ccn-block/v1\n"
GENESIS_PREVIOUS_HASH = "0" * 64
"""previous_hash of block 1: there is nothing before it."""

_BLOCK_COLUMNS = (
    "block_number, previous_hash, current_hash, tree_size, root, timestamp, data_snapshot, checkpoint, verified"
)


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys, no spaces, no NaN: one text per value, so hashes repeat."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def block_hash(
    block_number: int,
    previous_hash: str,
    tree_size: int,
    root: bytes,
    timestamp: int,
    data_snapshot: str,
    checkpoint: str,
) -> str:
    """Lowercase hex SHA-256 of the block's canonical encoding (see DESIGN.md):

    ``"ccn-block/v1\\n" || u64 block_number || previous_hash (32 raw bytes) ||
    u64 tree_size || root (32) || u64 timestamp_ms || u32 len || data_snapshot (UTF-8)
    || u32 len || checkpoint (UTF-8)``, integers big-endian. Fixed widths and length
    prefixes leave no two field values with the same bytes.
    """
    prev = bytes.fromhex(previous_hash)
    if len(prev) != 32 or len(root) != 32:
        raise ValueError("previous_hash and root must be 32 bytes")
    snap = data_snapshot.encode()
    note = checkpoint.encode()
    h = hashlib.sha256(BLOCK_DOMAIN)
    h.update(block_number.to_bytes(8, "big"))
    h.update(prev)
    h.update(tree_size.to_bytes(8, "big"))
    h.update(root)
    h.update(timestamp.to_bytes(8, "big"))
    h.update(len(snap).to_bytes(4, "big"))
    h.update(snap)
    h.update(len(note).to_bytes(4, "big"))
    h.update(note)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Block:
    """One ``verification_chain`` row. ``timestamp`` is Unix milliseconds, fixed by the
    proposer; ``verified`` (witnessed) is mutable state and not hashed."""

    block_number: int
    previous_hash: str
    current_hash: str
    tree_size: int
    root: bytes
    timestamp: int
    data_snapshot: str
    checkpoint: str
    verified: bool = False

    def computed_hash(self) -> str:
        """The hash this block's fields imply (equal to current_hash when intact)."""
        return block_hash(
            self.block_number,
            self.previous_hash,
            self.tree_size,
            self.root,
            self.timestamp,
            self.data_snapshot,
            self.checkpoint,
        )


def next_block(
    prev: Block | None,
    *,
    tree_size: int,
    root: bytes,
    timestamp: int,
    data_snapshot: str,
    checkpoint: str,
) -> Block:
    """Build the block after ``prev`` (block 1 when ``prev`` is None)."""
    if prev is not None and tree_size < prev.tree_size:
        raise ValueError(f"tree size {tree_size} is below the previous block's {prev.tree_size}")
    number = 1 if prev is None else prev.block_number + 1
    previous = GENESIS_PREVIOUS_HASH if prev is None else prev.current_hash
    current = block_hash(number, previous, tree_size, root, timestamp, data_snapshot, checkpoint)
    return Block(number, previous, current, tree_size, root, timestamp, data_snapshot, checkpoint)


def _row_block(row: tuple[Any, ...]) -> Block:
    return Block(row[0], row[1], row[2], row[3], bytes.fromhex(row[4]), row[5], row[6], row[7], bool(row[8]))


def insert_block(conn: apsw.Connection, block: Block) -> None:
    """Store a block (in the caller's transaction)."""
    conn.execute(
        f"INSERT INTO verification_chain({_BLOCK_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
        (
            block.block_number,
            block.previous_hash,
            block.current_hash,
            block.tree_size,
            block.root.hex(),
            block.timestamp,
            block.data_snapshot,
            block.checkpoint,
            int(block.verified),
        ),
    )


def last_block(conn: apsw.Connection) -> Block | None:
    """The newest block, or None before the first seal."""
    row = conn.execute(f"SELECT {_BLOCK_COLUMNS} FROM verification_chain ORDER BY block_number DESC LIMIT 1").fetchone()
    return None if row is None else _row_block(row)


def blocks_after(conn: apsw.Connection, after: int, limit: int) -> list[Block]:
    """Up to ``limit`` blocks numbered above ``after``, oldest first (the blocks API)."""
    return [_row_block(r) for r in conn.execute(
        f"SELECT {_BLOCK_COLUMNS} FROM verification_chain WHERE block_number > ? ORDER BY block_number LIMIT ?",
        (after, limit))]


def get_block(conn: apsw.Connection, block_number: int) -> Block | None:
    """Block by number, or None."""
    row = conn.execute(
        f"SELECT {_BLOCK_COLUMNS} FROM verification_chain WHERE block_number = ?",
        (block_number,),
    ).fetchone()
    return None if row is None else _row_block(row)


# -- signing -------------------------------------------------------------------------


class CheckpointRefused(Exception):
    """Signing would contradict a checkpoint this node already signed."""


class CheckpointSigner:
    """Signs checkpoints of one origin, never one that forks from the last it signed.

    The last signed (size, root) lives in ``ledger_signed`` and is written in the same
    transaction as the caller's block, before anything is published; it is read back on
    every call, so a rolled-back seal leaves no stale state behind.
    """

    def __init__(self, conn: apsw.Connection, signer: NoteSigner, origin: str | None = None):
        self._conn = conn
        self.signer = signer
        self.origin = origin or signer.name

    def last_signed(self) -> tuple[int, bytes] | None:
        """(size, root) of the latest checkpoint signed for this origin."""
        row = self._conn.execute(
            "SELECT tree_size, root FROM ledger_signed WHERE origin = ?", (self.origin,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def sign(self, size: int, root: bytes, proof: Sequence[bytes] | None = None) -> str:
        """Sign (size, root); ``proof`` must prove consistency from the last signed head."""
        return self._sign(self.last_signed(), size, root, proof)

    def _sign(self, last: tuple[int, bytes] | None, size: int, root: bytes, proof: Sequence[bytes] | None) -> str:
        if last is not None:
            last_size, last_root = last
            if size < last_size:
                raise CheckpointRefused(f"size {size} is below the signed size {last_size}")
            if size == last_size and root != last_root:
                raise CheckpointRefused(f"a different root was already signed at size {size}")
            if size > last_size > 0:
                if proof is None:
                    raise CheckpointRefused("a consistency proof from the signed size is needed")
                try:
                    merkle.verify_consistency(last_size, size, proof, last_root, root)
                except ProofError as exc:
                    raise CheckpointRefused(f"inconsistent with signed size {last_size}: {exc}") from None
        note = sign_checkpoint(Checkpoint(self.origin, size, root), self.signer)
        self._conn.execute(
            "INSERT INTO ledger_signed(origin, tree_size, root, note) VALUES (?,?,?,?) "
            "ON CONFLICT(origin) DO UPDATE SET tree_size = excluded.tree_size, "
            "root = excluded.root, note = excluded.note",
            (self.origin, size, root, note),
        )
        return note

    def sign_tree(self, tree: MerkleTree, size: int | None = None) -> tuple[int, bytes, str]:
        """Sign the stored tree at ``size`` (default: now), proving it extends the last
        signed head from storage; returns (size, root, note)."""
        size = tree.size() if size is None else size
        root = tree.root(size)
        last = self.last_signed()
        proof = None
        if last is not None and 0 < last[0] < size:
            proof = tree.consistency_proof(last[0], size)
        return size, root, self._sign(last, size, root, proof)


def seal_block(
    conn: apsw.Connection,
    tree: MerkleTree,
    signer: CheckpointSigner,
    *,
    timestamp: int,
    data_snapshot: str,
) -> Block:
    """Seal the tree's current size into the next block and store it (caller's transaction).

    ``timestamp`` (Unix ms) and ``data_snapshot`` are fixed by the proposer so every
    replica builds the same block; Ed25519 signing is deterministic, so the checkpoint
    repeats too.
    """
    prev = last_block(conn)
    size, root, note = signer.sign_tree(tree)
    block = next_block(
        prev, tree_size=size, root=root, timestamp=timestamp, data_snapshot=data_snapshot, checkpoint=note
    )
    insert_block(conn, block)
    return block


# -- audit ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """The first bad entry: which table, which row, what differs."""

    table: str
    row: str
    message: str

    def __str__(self) -> str:
        return f"{self.table} row {self.row}: {self.message}"


@dataclass(frozen=True, slots=True)
class AuditReport:
    """Outcome of ``audit``; ``problem`` is None when everything holds."""

    leaves: int
    blocks: int
    seconds: float
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        """One line for ``ccn-node verify``."""
        if self.problem is None:
            return (
                f"ledger OK: {self.leaves} leaves, tree, {self.blocks} blocks and their "
                f"signatures verified in {self.seconds:.2f} s"
            )
        return f"ledger BROKEN: {self.problem}"


LeafCheck = Callable[[int, str, str, bytes], "str | None"]


class _Stop(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


def audit(
    conn: apsw.Connection,
    verifiers: Iterable[Verifier],
    *,
    origin: str | None = None,
    check_leaf: LeafCheck | None = None,
) -> AuditReport:
    """Recompute every leaf hash, every stored tree node, every block link, hash and
    checkpoint signature; stop at the first bad entry and name it.

    ``check_leaf(index, kind, ref, leaf_bytes)`` lets the corpus owner compare each leaf
    with the row it stands for; it returns a problem description or None.
    """
    start = time.perf_counter()
    vs = list(verifiers)
    leaves = blocks = 0
    try:
        level0 = _audit_leaves(conn, check_leaf)
        leaves = len(level0) // 32
        levels = _audit_nodes(conn, level0)
        blocks = _audit_blocks(conn, levels, leaves, vs, origin)
        _audit_signed(conn, levels, leaves, vs)
        problem = None
    except _Stop as stop:
        problem = stop.problem
    return AuditReport(leaves, blocks, time.perf_counter() - start, problem)


def _first_diff(a: bytes, b: bytes) -> int:
    """Index of the first differing 32-byte hash of two equal-length concatenations."""
    x = np.frombuffer(a, dtype=np.uint8).reshape(-1, 32)
    y = np.frombuffer(b, dtype=np.uint8).reshape(-1, 32)
    return int(np.argmax((x != y).any(axis=1)))


def _audit_leaves(conn: apsw.Connection, check_leaf: LeafCheck | None) -> bytes:
    """Leaf hashes recomputed from ``ledger_leaves`` (checked to be numbered 0..n-1).

    The fast path is one list comprehension over one scan: per-row Python work is
    what a million-entry audit pays for.
    """
    sha = hashlib.sha256
    if check_leaf is None:
        try:
            out = [
                sha(b"\x00" + d).digest() for (d,) in conn.execute("SELECT leaf_bytes FROM ledger_leaves ORDER BY idx")
            ]
        except TypeError:  # a value that is not a blob: the row-by-row path names it
            out = None
        if out is not None:
            lo, hi = conn.execute("SELECT min(idx), max(idx) FROM ledger_leaves").fetchone()
            if not out or (lo == 0 and hi == len(out) - 1):  # idx is unique: a gap shows here
                return b"".join(out)
    out = []
    rows = conn.execute("SELECT idx, kind, ref, leaf_bytes FROM ledger_leaves ORDER BY idx")
    for expect, (idx, kind, ref, data) in enumerate(rows):
        if idx != expect:
            _missing_leaf(expect, idx)
        if not isinstance(data, bytes):
            raise _Stop(Problem("ledger_leaves", str(idx), f"leaf_bytes is {type(data).__name__}, not a blob"))
        msg = None if check_leaf is None else check_leaf(idx, kind, ref, data)
        if msg:
            raise _Stop(Problem("ledger_leaves", str(idx), msg))
        out.append(sha(b"\x00" + data).digest())
    return b"".join(out)


def _missing_leaf(expect: int, idx: int) -> None:
    if idx < 0:
        raise _Stop(Problem("ledger_leaves", str(idx), "negative leaf index"))
    raise _Stop(Problem("ledger_leaves", str(expect), f"missing (next stored index is {idx})"))


def _audit_nodes(conn: apsw.Connection, level0: bytes) -> list[bytes]:
    """Compare every stored level with its recomputation; returns the levels. Levels from
    ``STORED_FROM_LEVEL`` up must be complete; below it, rows are only in files written
    before that rule (tree_store.py), and those that exist must be right."""
    levels: list[bytes] = []
    want = level0
    level = 0
    while True:
        _compare_level(conn, level, want, complete=level >= STORED_FROM_LEVEL)
        levels.append(want)
        n = len(want) // 32
        if n < 2:
            break
        want = _parents(want)
        level += 1
    extra = conn.execute(
        "SELECT level, idx FROM ledger_nodes WHERE level > ? ORDER BY level, idx LIMIT 1",
        (len(levels) - 1 if len(level0) else -1,),
    ).fetchone()
    if extra is not None:
        raise _Stop(Problem("ledger_nodes", f"level={extra[0]},idx={extra[1]}", "node beyond the tree's height"))
    return levels


def _parents(level: bytes) -> bytes:
    """The next level up: SHA-256(0x01 || left || right) for each complete pair
    (memoryview slices: no copy of the pair before it is hashed)."""
    mv = memoryview(level)
    sha = hashlib.sha256
    end = 64 * (len(level) // 64)
    return b"".join([sha(b"\x01" + mv[i : i + 64]).digest() for i in range(0, end, 64)])


def _compare_level(conn: apsw.Connection, level: int, want: bytes, *, complete: bool) -> None:
    n = len(want) // 32
    hashes = [h for (h,) in conn.execute("SELECT hash FROM ledger_nodes WHERE level = ? ORDER BY idx", (level,))]
    if len(hashes) == n and all(type(h) is bytes for h in hashes) and b"".join(hashes) == want:
        # Same bytes from n rows; rule out renumbered rows or hashes of the wrong length
        # (idx is unique, so min 0 and max n-1 over n rows means exactly 0..n-1).
        lo, hi = conn.execute("SELECT min(idx), max(idx) FROM ledger_nodes WHERE level = ?", (level,)).fetchone()
        if (n == 0 or (lo == 0 and hi == n - 1)) and all(len(h) == 32 for h in hashes):
            return
    del hashes
    expect = 0
    for idx, h in conn.execute("SELECT idx, hash FROM ledger_nodes WHERE level = ? ORDER BY idx", (level,)):
        row = f"level={level},idx={idx}"
        if not complete and expect < idx:
            if idx >= n:
                raise _Stop(Problem("ledger_nodes", row, "node outside the tree"))
            expect = idx  # rows below STORED_FROM_LEVEL may be missing
        if idx != expect:
            if idx < expect or expect >= n:
                raise _Stop(Problem("ledger_nodes", row, "node outside the tree"))
            raise _Stop(Problem("ledger_nodes", f"level={level},idx={expect}", "missing"))
        if expect >= n:
            raise _Stop(Problem("ledger_nodes", row, "node outside the tree"))
        good = want[32 * idx : 32 * idx + 32]
        if not isinstance(h, bytes):
            raise _Stop(Problem("ledger_nodes", row, f"hash is {type(h).__name__}, not a blob"))
        if h != good:
            if level <= STORED_FROM_LEVEL and not _node_row_at_fault(conn, want, level, idx):
                # the leaves under it are what changed: a leaf if level-0 rows exist (older files),
                # else the block of 8 leaves whose subtree is the lowest stored
                first, last = idx << level, ((idx + 1) << level) - 1
                where = str(first) if level == 0 else f"{first}..{last}"
                raise _Stop(Problem("ledger_leaves", where,
                                    f"leaf_bytes hash to {good.hex()}, the tree holds {bytes(h).hex()}"))
            what = "leaf hash" if level == 0 else "node hash"
            raise _Stop(Problem("ledger_nodes", row, f"stored {what} {bytes(h).hex()} != recomputed {good.hex()}"))
        expect += 1
    if complete:
        raise _Stop(Problem("ledger_nodes", f"level={level},idx={expect}", "missing"))


def _node_row_at_fault(conn: apsw.Connection, hashes: bytes, level: int, idx: int) -> bool:
    """A stored node and its recomputation from the leaves differ: blame the node row when
    the stored parent still agrees with the leaves (someone edited the node), else the leaves."""
    sib = idx ^ 1
    if 32 * sib + 32 > len(hashes):
        return False
    pair = hashes[32 * (idx & ~1) : 32 * (idx & ~1) + 64]
    row = conn.execute("SELECT hash FROM ledger_nodes WHERE level = ? AND idx = ?", (level + 1, idx >> 1)).fetchone()
    return row is not None and row[0] == hashlib.sha256(b"\x01" + pair).digest()


def _root_at(levels: list[bytes], size: int) -> bytes:
    if size == 0:
        return merkle.EMPTY_ROOT
    parts = [levels[lv][32 * ix : 32 * ix + 32] for lv, ix in merkle.perfect_subtrees(0, size)]
    return merkle.fold_range(parts)


def _audit_blocks(
    conn: apsw.Connection,
    levels: list[bytes],
    leaves: int,
    verifiers: list[Verifier],
    origin: str | None,
) -> int:
    prev: Block | None = None
    count = 0
    for row in conn.execute(f"SELECT {_BLOCK_COLUMNS} FROM verification_chain ORDER BY block_number"):
        n = row[0]

        def bad(msg: str, n: int = n) -> _Stop:
            return _Stop(Problem("verification_chain", str(n), msg))

        try:
            b = _row_block(row)
        except (ValueError, TypeError):
            raise bad("root is not hex") from None
        expect_n = 1 if prev is None else prev.block_number + 1
        if n != expect_n:
            raise _Stop(Problem("verification_chain", str(expect_n), f"missing (next stored block is {n})"))
        expect_prev = GENESIS_PREVIOUS_HASH if prev is None else prev.current_hash
        if b.previous_hash != expect_prev:
            raise bad(f"previous_hash {b.previous_hash} != hash of block {n - 1} {expect_prev}")
        try:
            cp, _ = open_checkpoint(b.checkpoint, verifiers, origin)
        except NoteError as exc:
            raise bad(f"checkpoint does not verify: {exc}") from None
        if (cp.size, cp.root) != (b.tree_size, b.root):
            raise bad(
                f"checkpoint is for size {cp.size} root {cp.root.hex()}, block says "
                f"size {b.tree_size} root {b.root.hex()}"
            )
        try:
            computed = b.computed_hash()
        except ValueError as exc:
            raise bad(str(exc)) from None
        if computed != b.current_hash:
            raise bad(f"current_hash {b.current_hash} != recomputed {computed}")
        if prev is not None and b.tree_size < prev.tree_size:
            raise bad(f"tree size {b.tree_size} below previous block's {prev.tree_size}")
        if b.tree_size > leaves:
            raise bad(f"tree size {b.tree_size} exceeds the {leaves} stored leaves")
        actual = _root_at(levels, b.tree_size)
        if actual != b.root:
            raise bad(f"root {b.root.hex()} != tree root at size {b.tree_size} {actual.hex()}")
        prev = b
        count += 1
    return count


def _audit_signed(conn: apsw.Connection, levels: list[bytes], leaves: int, verifiers: list[Verifier]) -> None:
    """The last-signed record must be a valid note for a head of this very tree."""
    for origin, size, root, note in conn.execute(
        "SELECT origin, tree_size, root, note FROM ledger_signed ORDER BY origin"
    ):

        def bad(msg: str, origin: str = origin) -> _Stop:
            return _Stop(Problem("ledger_signed", origin, msg))

        try:
            cp, _ = open_checkpoint(note, verifiers, origin)
        except NoteError as exc:
            raise bad(f"note does not verify: {exc}") from None
        if (cp.size, cp.root) != (size, root):
            raise bad("note differs from the recorded size and root")
        if size > leaves or _root_at(levels, size) != root:
            raise bad(f"signed root at size {size} is not this tree's")
