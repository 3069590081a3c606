"""Merkle hashing and proofs: the shared RFC 6962 vectors, and random trees checked
against a naive recursive implementation of RFC 9162 §2.1 and against the SQLite store."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
from pathlib import Path

import apsw
import pytest

from ccn_node.ledger import merkle
from ccn_node.ledger.tree_store import MerkleTree, ledger_schema_sql


def _testdata() -> Path:
    env = os.environ.get("CCN_TESTDATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared/testdata"


VECTORS = _testdata() / "tlog-vectors"


def _vector_files(kind: str) -> list[Path]:
    if not (VECTORS / kind).is_dir():
        return []
    return sorted((VECTORS / kind).rglob("*.json"))


def _b64(s: str) -> bytes:
    return base64.b64decode(s)


_needs_vectors = pytest.mark.skipif(
    not VECTORS.is_dir(), reason=f"tlog vectors not found at {VECTORS} (set CCN_TESTDATA)"
)


@_needs_vectors
def test_vectors_present() -> None:
    assert len(_vector_files("inclusion")) > 50
    assert len(_vector_files("consistency")) > 50


@_needs_vectors
@pytest.mark.parametrize("path", _vector_files("inclusion"), ids=lambda p: str(p.relative_to(VECTORS)))
def test_inclusion_vector(path: Path) -> None:
    v = json.loads(path.read_text())
    args = (
        v["leafIdx"],
        v["treeSize"],
        _b64(v["leafHash"]),
        [_b64(p) for p in v["proof"] or []],
        _b64(v["root"]),
    )
    if v["wantErr"]:
        with pytest.raises(merkle.ProofError):
            merkle.verify_inclusion(*args)
    else:
        merkle.verify_inclusion(*args)


@_needs_vectors
@pytest.mark.parametrize("path", _vector_files("consistency"), ids=lambda p: str(p.relative_to(VECTORS)))
def test_consistency_vector(path: Path) -> None:
    v = json.loads(path.read_text())
    args = (
        v["size1"],
        v["size2"],
        [_b64(p) for p in v["proof"] or []],
        _b64(v["root1"]),
        _b64(v["root2"]),
    )
    if v["wantErr"]:
        with pytest.raises(merkle.ProofError):
            merkle.verify_consistency(*args)
    else:
        merkle.verify_consistency(*args)


# --- naive RFC 9162 §2.1 definitions, written straight from the text -------------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + naive_mth(d[:k]) + naive_mth(d[k:])).digest()


def naive_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*naive_path(m, d[:k]), naive_mth(d[k:])]
    return [*naive_path(m - k, d[k:]), naive_mth(d[:k])]


def naive_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [naive_mth(d)]
    k = _k(n)
    if m <= k:
        return [*naive_subproof(m, d[:k], b), naive_mth(d[k:])]
    return [*naive_subproof(m - k, d[k:], False), naive_mth(d[:k])]


def _entries(n: int, seed: int = 7) -> list[bytes]:
    rnd = random.Random(seed)
    return [rnd.randbytes(rnd.randrange(0, 40)) for _ in range(n)]


def test_known_roots() -> None:
    assert merkle.root_of([]) == hashlib.sha256(b"").digest()
    assert merkle.leaf_hash(b"") == bytes.fromhex("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")


@pytest.mark.parametrize("n", [*range(1, 34), 63, 64, 65, 100, 127, 128, 129])
def test_random_tree_against_naive(n: int) -> None:
    d = _entries(n, seed=n)
    hashes = [merkle.leaf_hash(x) for x in d]
    root = merkle.root_of(hashes)
    assert root == naive_mth(d)
    for m in range(n):
        proof = merkle.inclusion_proof_of(hashes, m)
        assert proof == naive_path(m, d)
        merkle.verify_inclusion(m, n, hashes[m], proof, root)
    for m in range(1, n + 1):
        proof = merkle.consistency_proof_of(hashes, m)
        assert proof == naive_subproof(m, d, True)
        merkle.verify_consistency(m, n, proof, naive_mth(d[:m]), root)


def test_tampered_proofs_fail() -> None:
    d = _entries(37)
    hashes = [merkle.leaf_hash(x) for x in d]
    root = merkle.root_of(hashes)
    proof = merkle.inclusion_proof_of(hashes, 11)
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        with pytest.raises(merkle.ProofError):
            merkle.verify_inclusion(11, 37, hashes[11], bad, root)
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(11, 37, hashes[11], proof[:-1], root)
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(11, 37, hashes[11], [*proof, proof[0]], root)
    cproof = merkle.consistency_proof_of(hashes, 13)
    root13 = merkle.root_of(hashes[:13])
    merkle.verify_consistency(13, 37, cproof, root13, root)
    for i in range(len(cproof)):
        bad = list(cproof)
        bad[i] = bad[i][:31] + bytes([bad[i][31] ^ 0x80])
        with pytest.raises(merkle.ProofError):
            merkle.verify_consistency(13, 37, bad, root13, root)
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(13, 37, cproof[:-1], root13, root)
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(13, 37, [*cproof, root], root13, root)
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(13, 37, cproof, root, root13)


def _tree(n: int) -> tuple[apsw.Connection, MerkleTree, list[bytes]]:
    conn = apsw.Connection(":memory:")
    conn.execute(ledger_schema_sql())
    tree = MerkleTree(conn)
    d = _entries(n, seed=99)
    with conn:
        for i, x in enumerate(d):
            assert tree.append(x, "test", f"r{i}") == i
    return conn, tree, d


def test_store_matches_naive_at_every_size() -> None:
    n = 70
    _, tree, d = _tree(n)
    assert tree.size() == n
    for s in range(n + 1):
        assert tree.root(s) == naive_mth(d[:s])
    for s in (1, 2, 3, 5, 8, 13, 21, 34, 64, 65, 70):
        for m in range(s):
            assert tree.inclusion_proof(m, s) == naive_path(m, d[:s])
        for m in range(1, s + 1):
            assert tree.consistency_proof(m, s) == naive_subproof(m, d[:s], True)
    leaf = tree.leaf(5)
    assert leaf.leaf_bytes == d[5] and leaf.kind == "test" and leaf.ref == "r5"
    assert leaf.leaf_hash == merkle.leaf_hash(d[5])
    assert tree.find("r5") == [5]


def test_store_random_sizes_large() -> None:
    rnd = random.Random(3)
    n = 1500
    _, tree, d = _tree(n)
    hashes = [merkle.leaf_hash(x) for x in d]
    for _ in range(60):
        s = rnd.randrange(1, n + 1)
        m = rnd.randrange(0, s)
        root = merkle.root_of(hashes[:s])
        assert tree.root(s) == root
        merkle.verify_inclusion(m, s, hashes[m], tree.inclusion_proof(m, s), root)
        s1 = rnd.randrange(1, s + 1)
        merkle.verify_consistency(s1, s, tree.consistency_proof(s1, s), merkle.root_of(hashes[:s1]), root)


def test_append_survives_rollback() -> None:
    conn, tree, d = _tree(10)
    before = tree.root()
    with pytest.raises(RuntimeError), conn:
        tree.append(b"lost", "test", "x")
        tree.append(b"lost2", "test", "y")
        raise RuntimeError("abort the transaction")
    # The cache still believes in 12 leaves; the tree must notice and reload.
    assert tree.size() == 10
    assert tree.root() == before
    with conn:
        assert tree.append(b"kept", "test", "z") == 10
    assert tree.root() == naive_mth([*d, b"kept"])
    tree.reset_cache()
    with conn:
        assert tree.append(b"kept2", "test", "w") == 11
    assert tree.root() == naive_mth([*d, b"kept", b"kept2"])


def test_out_of_range_requests() -> None:
    _, tree, _ = _tree(5)
    with pytest.raises(merkle.ProofError):
        tree.inclusion_proof(5, 5)
    with pytest.raises(merkle.ProofError):
        tree.inclusion_proof(0, 6)
    with pytest.raises(merkle.ProofError):
        tree.consistency_proof(3, 6)
    with pytest.raises(merkle.ProofError):
        tree.root(6)
    assert tree.consistency_proof(5, 5) == []
    assert tree.root(0) == merkle.EMPTY_ROOT
