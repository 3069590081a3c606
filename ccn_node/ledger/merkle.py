"""RFC 6962 / RFC 9162 Merkle tree hashing, proof shapes and proof verification.

Pure functions only: no storage. Proof *generation* is split in two so that a
store can answer a proof with one batched read: ``inclusion_ranges`` /
``consistency_ranges`` say which leaf ranges the proof consists of (RFC 9162
§2.1.3.1 PATH and §2.1.4.1 SUBPROOF, computed on indices only), and
``perfect_subtrees`` splits each range into the stored, complete subtrees whose
hashes fold into the range hash (``fold_range``).

A complete subtree is named ``(level, idx)``: it covers leaves
``[idx << level, (idx + 1) << level)``; level 0 holds the leaf hashes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256

NodeId = tuple[int, int]
"""(level, idx) of a complete subtree."""


class ProofError(ValueError):
    """A proof does not verify, or the request for one is out of range."""


def leaf_hash(data: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d): the 0x00 prefix keeps leaves apart from nodes."""
    return _sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the interior node hash."""
    return _sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over in-memory leaf hashes, by folding the complete subtrees (O(n))."""
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    stack: list[tuple[int, bytes]] = []  # (level, hash) of the right frontier
    for i, h in enumerate(leaf_hashes):
        level = 0
        while i & 1:
            _, left = stack.pop()
            h = node_hash(left, h)
            i >>= 1
            level += 1
        stack.append((level, h))
    h = stack[-1][1]
    for _, left in reversed(stack[:-1]):
        h = node_hash(left, h)
    return h


def perfect_subtrees(lo: int, hi: int) -> list[NodeId]:
    """Split the leaf range [lo, hi) into complete subtrees, largest (leftmost) first.

    Valid for the ranges that occur in RFC 6962 trees: ``lo`` is a multiple of the
    largest power of two not exceeding ``hi - lo``.
    """
    out: list[NodeId] = []
    while lo < hi:
        size = hi - lo
        level = size.bit_length() - 1
        out.append((level, lo >> level))
        lo += 1 << level
    return out


def fold_range(nodes: Sequence[bytes]) -> bytes:
    """Hash of a range from its ``perfect_subtrees`` hashes: fold right to left."""
    h = nodes[-1]
    for left in reversed(nodes[:-1]):
        h = node_hash(left, h)
    return h


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges of PATH(index, D[size]) (RFC 9162 §2.1.3.1), bottom-up."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} out of range for tree size {size}")
    out: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
    out.reverse()
    return out


def consistency_ranges(size1: int, size2: int) -> list[tuple[int, int]]:
    """Leaf ranges of PROOF(size1, D[size2]) (RFC 9162 §2.1.4.1), bottom-up.

    Empty when size1 == size2; RFC 9162 defines the proof only for 0 < size1.
    """
    if not 0 < size1 <= size2:
        raise ProofError(f"no consistency proof from size {size1} to size {size2}")
    out: list[tuple[int, int]] = []
    lo, hi, m, complete = 0, size2, size1, True
    while True:
        n = hi - lo
        if m == n:
            if not complete:
                out.append((lo, hi))
            break
        k = _split(n)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
            m -= k
            complete = False
    out.reverse()
    return out


def proof_from_ranges(
    ranges: Sequence[tuple[int, int]], lookup: Callable[[list[NodeId]], dict[NodeId, bytes]]
) -> list[bytes]:
    """Materialise a proof: one ``lookup`` call for every stored node it needs."""
    parts = [perfect_subtrees(lo, hi) for lo, hi in ranges]
    wanted = sorted({nid for p in parts for nid in p})
    found = lookup(wanted)
    try:
        return [fold_range([found[nid] for nid in p]) for p in parts]
    except KeyError as exc:
        raise ProofError(f"stored tree lacks node (level, idx) = {exc.args[0]}") from None


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2: the root implied by an inclusion proof (raises if malformed)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} out of range for tree size {size}")
    if len(leaf) != HASH_SIZE:
        raise ProofError("leaf hash must be 32 bytes")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if len(p) != HASH_SIZE:
            raise ProofError("proof element must be 32 bytes")
        if sn == 0:
            raise ProofError("inclusion proof too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof too short")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Raise ProofError unless ``proof`` shows leaf hash ``leaf`` at ``index`` under ``root``."""
    if root_from_inclusion_proof(index, size, leaf, proof) != root:
        raise ProofError("inclusion proof does not lead to the root")


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """RFC 9162 §2.1.4.2: raise ProofError unless root2 extends root1.

    Equal sizes need an empty proof and equal roots (the empty tree's root must be
    SHA-256("")). size1 == 0 is refused: the RFC defines no proof from the empty tree,
    and callers treat "nothing seen yet" separately.
    """
    if size1 < 0 or size2 < 0:
        raise ProofError("negative tree size")
    if size1 > size2:
        raise ProofError(f"size1 {size1} > size2 {size2}")
    if size1 == size2:
        if proof:
            raise ProofError("proof must be empty for equal sizes")
        if root1 != root2:
            raise ProofError("equal sizes with different roots")
        if size1 == 0 and root1 != EMPTY_ROOT:
            raise ProofError("root of the empty tree must be SHA-256 of nothing")
        return
    if size1 == 0:
        raise ProofError("no consistency proof from the empty tree")
    if not proof:
        raise ProofError("empty consistency proof")
    if any(len(p) != HASH_SIZE for p in proof):
        raise ProofError("proof element must be 32 bytes")
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # exact power of two
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof too short")
    if fr != root1:
        raise ProofError("consistency proof does not lead to root1")
    if sr != root2:
        raise ProofError("consistency proof does not lead to root2")


def inclusion_proof_of(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """Inclusion proof over in-memory leaf hashes (small trees, tests, tools)."""
    return proof_from_ranges(inclusion_ranges(index, len(leaf_hashes)), _memory_lookup(leaf_hashes))


def consistency_proof_of(leaf_hashes: Sequence[bytes], size1: int) -> list[bytes]:
    """Consistency proof from size1 to len(leaf_hashes), over in-memory leaf hashes."""
    return proof_from_ranges(consistency_ranges(size1, len(leaf_hashes)), _memory_lookup(leaf_hashes))


def _memory_lookup(leaf_hashes: Sequence[bytes]) -> Callable[[list[NodeId]], dict[NodeId, bytes]]:
    def lookup(ids: list[NodeId]) -> dict[NodeId, bytes]:
        out = {}
        for level, idx in ids:
            lo = idx << level
            out[(level, idx)] = root_of(leaf_hashes[lo : lo + (1 << level)])
        return out

    return lookup
