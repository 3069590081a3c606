"""Blocks, the non-forking checkpoint signer, and the audit: every kind of tampering is
caught and the first bad row is named. Real SQLite files, real keys."""

from __future__ import annotations

import hashlib
from pathlib import Path

import apsw
import pytest

from ccn_node.ledger import chain
from ccn_node.ledger.chain import CheckpointRefused, CheckpointSigner
from ccn_node.ledger.note import NoteSigner, open_checkpoint
from ccn_node.ledger.tree_store import STORED_FROM_LEVEL, MerkleTree, ledger_schema_sql

ORIGIN = "ccn.example/org-a"
N_LEAVES = 230
BLOCK_EVERY = 50


class Ledger:
    def __init__(self, path: Path) -> None:
        self.conn = apsw.Connection(str(path))
        self.conn.execute(ledger_schema_sql())
        self.tree = MerkleTree(self.conn)
        self.key = NoteSigner.generate(ORIGIN)
        self.signer = CheckpointSigner(self.conn, self.key)
        self.vkeys = [self.key.verifier()]

    def fill(self, n: int, every: int) -> None:
        with self.conn:
            for i in range(n):
                self.tree.append(f"leaf {i}".encode(), "message", f"m{i}")
                if (i + 1) % every == 0:
                    self.seal(1_700_000_000_000 + i)

    def seal(self, ts: int) -> chain.Block:
        return chain.seal_block(
            self.conn, self.tree, self.signer, timestamp=ts, data_snapshot=chain.canonical_json({"ccc": 0.9, "n": ts})
        )

    def audit(self, **kw: object) -> chain.AuditReport:
        return chain.audit(self.conn, self.vkeys, origin=ORIGIN, **kw)  # type: ignore[arg-type]


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    lg = Ledger(tmp_path / "ledger.db")
    lg.fill(N_LEAVES, BLOCK_EVERY)
    return lg


def _with_lower_levels(lg: Ledger, leaves: int | None = None) -> None:
    """Add the node rows below STORED_FROM_LEVEL, as files written before that rule hold them
    (for the first ``leaves`` only: a file upgraded after that many)."""
    hashes = b"".join(hashlib.sha256(b"\x00" + bytes(d)).digest()
                      for (d,) in lg.conn.execute("SELECT leaf_bytes FROM ledger_leaves ORDER BY idx"))
    if leaves is not None:
        hashes = hashes[: 32 * leaves]
    rows = []
    for level in range(STORED_FROM_LEVEL):
        rows += [(level, i, hashes[32 * i : 32 * i + 32]) for i in range(len(hashes) // 32)]
        hashes = chain._parents(hashes)
    with lg.conn:
        lg.conn.executemany("INSERT INTO ledger_nodes VALUES (?, ?, ?)", rows)


def test_small_subtrees_are_not_stored_and_older_files_still_verify(ledger: Ledger) -> None:
    """Every node row of level 3 and up, none below; a file that also holds the lower rows
    (written before) gives the same roots and proofs and passes the audit."""
    levels = dict(ledger.conn.execute("SELECT level, count(*) FROM ledger_nodes GROUP BY level").fetchall())
    assert min(levels) == STORED_FROM_LEVEL and levels[STORED_FROM_LEVEL] == N_LEAVES >> STORED_FROM_LEVEL
    before = [ledger.tree.root(n) for n in (1, 7, 8, 9, 100, N_LEAVES)]
    proofs = [ledger.tree.inclusion_proof(i, N_LEAVES) for i in (0, 37, N_LEAVES - 1)]
    _with_lower_levels(ledger, leaves=100)  # upgraded after 100 leaves: lower rows for those only
    assert ledger.audit().ok
    assert [ledger.tree.root(n) for n in (1, 7, 8, 9, 100, N_LEAVES)] == before
    assert [ledger.tree.inclusion_proof(i, N_LEAVES) for i in (0, 37, N_LEAVES - 1)] == proofs
    ledger.conn.execute("UPDATE ledger_nodes SET hash = ? WHERE level = 1 AND idx = 20", (b"\x22" * 32,))
    p = _problem(ledger)  # a lower row that exists must be right
    assert (p.table, p.row) == ("ledger_nodes", "level=1,idx=20")


def _problem(lg: Ledger) -> chain.Problem:
    report = lg.audit()
    assert not report.ok, "tampering went unnoticed"
    assert report.problem is not None
    assert "BROKEN" in report.summary()
    return report.problem


def test_clean_ledger_audits(ledger: Ledger) -> None:
    report = ledger.audit()
    assert report.ok, report.summary()
    assert report.leaves == N_LEAVES and report.blocks == N_LEAVES // BLOCK_EVERY
    assert report.summary().startswith("ledger OK")
    b = chain.last_block(ledger.conn)
    assert b is not None and b.tree_size == 200 and b.block_number == 4
    cp, _ = open_checkpoint(b.checkpoint, ledger.vkeys, ORIGIN)
    assert cp.root == ledger.tree.root(200) == b.root


def test_empty_ledger_audits(tmp_path: Path) -> None:
    assert Ledger(tmp_path / "e.db").audit().ok


def test_block_hash_encoding() -> None:
    prev, root = "ab" * 32, bytes(range(32))
    enc = (
        b"ccn-block/v1\n"
        + (7).to_bytes(8, "big")
        + bytes.fromhex(prev)
        + (99).to_bytes(8, "big")
        + root
        + (1234).to_bytes(8, "big")
        + (2).to_bytes(4, "big")
        + b"{}"
        + (3).to_bytes(4, "big")
        + b"cp\n"
    )
    want = hashlib.sha256(enc).hexdigest()
    assert chain.block_hash(7, prev, 99, root, 1234, "{}", "cp\n") == want
    b1 = chain.next_block(None, tree_size=1, root=root, timestamp=5, data_snapshot="{}", checkpoint="x")
    assert b1.block_number == 1 and b1.previous_hash == chain.GENESIS_PREVIOUS_HASH
    b2 = chain.next_block(b1, tree_size=1, root=root, timestamp=6, data_snapshot="{}", checkpoint="y")
    assert b2.previous_hash == b1.current_hash and b2.computed_hash() == b2.current_hash
    with pytest.raises(ValueError):
        chain.next_block(b2, tree_size=0, root=root, timestamp=7, data_snapshot="{}", checkpoint="z")
    assert chain.canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'


# -- tampering with leaves and nodes ------------------------------------------------------


def test_edited_leaf_bytes(ledger: Ledger) -> None:
    """Named to its block of 8 leaves (the lowest stored subtree); to the leaf in an older
    file that stores leaf hashes."""
    ledger.conn.execute("UPDATE ledger_leaves SET leaf_bytes = ? WHERE idx = 37", (b"evil",))
    p = _problem(ledger)
    assert (p.table, p.row) == ("ledger_leaves", "32..39")
    assert "leaf_bytes hash" in p.message
    ledger.conn.execute("UPDATE ledger_leaves SET leaf_bytes = ? WHERE idx = 37", (b"leaf 37",))
    _with_lower_levels(ledger)
    ledger.conn.execute("UPDATE ledger_leaves SET leaf_bytes = ? WHERE idx = 37", (b"evil",))
    p = _problem(ledger)
    assert (p.table, p.row) == ("ledger_leaves", "37")
    assert "leaf_bytes hash" in p.message


def test_deleted_leaf_row(ledger: Ledger) -> None:
    ledger.conn.execute("DELETE FROM ledger_leaves WHERE idx = 120")
    p = _problem(ledger)
    assert (p.table, p.row) == ("ledger_leaves", "120") and "missing" in p.message


def test_reordered_leaf_rows(ledger: Ledger) -> None:
    with ledger.conn:
        ledger.conn.execute("UPDATE ledger_leaves SET idx = -1 WHERE idx = 10")
        ledger.conn.execute("UPDATE ledger_leaves SET idx = 10 WHERE idx = 11")
        ledger.conn.execute("UPDATE ledger_leaves SET idx = 11 WHERE idx = -1")
    p = _problem(ledger)
    assert (p.table, p.row) == ("ledger_leaves", "8..15")  # the block of 8 whose stored subtree no longer fits


def test_edited_node_hash(ledger: Ledger) -> None:
    ledger.conn.execute("UPDATE ledger_nodes SET hash = ? WHERE level = 3 AND idx = 5", (b"\x11" * 32,))
    p = _problem(ledger)
    assert (p.table, p.row) == ("ledger_nodes", "level=3,idx=5")
    assert "recomputed" in p.message


def test_edited_leaf_node_hash(ledger: Ledger) -> None:
    _with_lower_levels(ledger)
    ledger.conn.execute("UPDATE ledger_nodes SET hash = ? WHERE level = 0 AND idx = 8", (b"\x11" * 32,))
    p = _problem(ledger)
    assert (p.table, p.row) == ("ledger_nodes", "level=0,idx=8")


def test_deleted_node_and_extra_node(ledger: Ledger, tmp_path: Path) -> None:
    ledger.conn.execute("DELETE FROM ledger_nodes WHERE level = 3 AND idx = 3")
    p = _problem(ledger)
    assert (p.table, p.row) == ("ledger_nodes", "level=3,idx=3") and "missing" in p.message
    other = Ledger(tmp_path / "x.db")
    other.fill(20, 10)
    other.conn.execute("INSERT INTO ledger_nodes VALUES (1, 999, ?)", (b"\0" * 32,))
    p = _problem(other)
    assert (p.table, p.row) == ("ledger_nodes", "level=1,idx=999")
    other.conn.execute("DELETE FROM ledger_nodes WHERE level = 1 AND idx = 999")
    other.conn.execute("INSERT INTO ledger_nodes VALUES (30, 0, ?)", (b"\0" * 32,))
    p = _problem(other)
    assert (p.table, p.row) == ("ledger_nodes", "level=30,idx=0")


def _rewrite_history(lg: Ledger, idx: int, data: bytes) -> None:
    """Edit a leaf and recompute every node, as a careful attacker would."""
    lg.conn.execute("UPDATE ledger_leaves SET leaf_bytes = ? WHERE idx = ?", (data, idx))
    rows = list(lg.conn.execute("SELECT leaf_bytes, kind, ref FROM ledger_leaves ORDER BY idx"))
    scratch = apsw.Connection(":memory:")
    scratch.execute(ledger_schema_sql())
    t = MerkleTree(scratch)
    for leaf, kind, ref in rows:
        t.append(leaf, kind, ref)
    with lg.conn:
        lg.conn.execute("DELETE FROM ledger_nodes")
        lg.conn.executemany(
            "INSERT INTO ledger_nodes VALUES (?,?,?)", list(scratch.execute("SELECT * FROM ledger_nodes"))
        )
    lg.tree.reset_cache()


def test_rewritten_history_with_consistent_tree_is_caught_by_blocks(ledger: Ledger) -> None:
    """Only the signed roots remain to tell: the first block covering the leaf is named."""
    _rewrite_history(ledger, 160, b"evil")
    p = _problem(ledger)
    assert (p.table, p.row) == ("verification_chain", "4")
    assert "tree root" in p.message


def test_check_leaf_callback(ledger: Ledger) -> None:
    seen: list[int] = []

    def check(index: int, kind: str, ref: str, data: bytes) -> str | None:
        seen.append(index)
        assert kind == "message" and ref == f"m{index}"
        return "messages row m77 content hash differs" if index == 77 else None

    report = ledger.audit(check_leaf=check)
    assert report.problem == chain.Problem("ledger_leaves", "77", "messages row m77 content hash differs")
    assert seen == list(range(78))


# -- tampering with blocks -----------------------------------------------------------------


def test_edited_block(ledger: Ledger) -> None:
    ledger.conn.execute("UPDATE verification_chain SET data_snapshot = '{\"ccc\":1.0}' WHERE block_number = 2")
    p = _problem(ledger)
    assert (p.table, p.row) == ("verification_chain", "2") and "current_hash" in p.message


def test_edited_block_root(ledger: Ledger) -> None:
    ledger.conn.execute("UPDATE verification_chain SET tree_size = 60 WHERE block_number = 1")
    p = _problem(ledger)
    assert (p.table, p.row) == ("verification_chain", "1") and "checkpoint is for" in p.message


def test_broken_link_and_missing_block(ledger: Ledger) -> None:
    ledger.conn.execute("UPDATE verification_chain SET previous_hash = ? WHERE block_number = 3", ("00" * 32,))
    p = _problem(ledger)
    assert (p.table, p.row) == ("verification_chain", "3") and "previous_hash" in p.message


def test_deleted_block(ledger: Ledger) -> None:
    ledger.conn.execute("DELETE FROM verification_chain WHERE block_number = 2")
    p = _problem(ledger)
    assert (p.table, p.row) == ("verification_chain", "2") and "missing" in p.message


def test_swapped_signatures(ledger: Ledger) -> None:
    notes = dict(ledger.conn.execute("SELECT block_number, checkpoint FROM verification_chain"))
    sig1 = notes[1].split("\n\n")[1]
    sig3 = notes[3].split("\n\n")[1]
    with ledger.conn:
        ledger.conn.execute(
            "UPDATE verification_chain SET checkpoint = ? WHERE block_number = 1",
            (notes[1].split("\n\n")[0] + "\n\n" + sig3,),
        )
        ledger.conn.execute(
            "UPDATE verification_chain SET checkpoint = ? WHERE block_number = 3",
            (notes[3].split("\n\n")[0] + "\n\n" + sig1,),
        )
    p = _problem(ledger)
    assert (p.table, p.row) == ("verification_chain", "1")
    assert "does not verify" in p.message and "invalid signature" in p.message


def test_checkpoint_signed_by_another_key(ledger: Ledger) -> None:
    from ccn_node.ledger.note import Checkpoint, sign_checkpoint

    b = chain.get_block(ledger.conn, 2)
    assert b is not None
    forged = sign_checkpoint(Checkpoint(ORIGIN, b.tree_size, b.root), NoteSigner.generate(ORIGIN))
    ledger.conn.execute("UPDATE verification_chain SET checkpoint = ? WHERE block_number = 2", (forged,))
    p = _problem(ledger)
    assert (p.table, p.row) == ("verification_chain", "2") and "not signed by any known key" in p.message


def test_tampered_signed_record(ledger: Ledger) -> None:
    ledger.conn.execute("UPDATE ledger_signed SET root = ?", (b"\0" * 32,))
    p = _problem(ledger)
    assert (p.table, p.row) == ("ledger_signed", ORIGIN)


# -- the signer never forks ----------------------------------------------------------------


def test_signer_refuses_smaller_and_different(ledger: Ledger) -> None:
    s = ledger.signer
    assert s.last_signed() == (200, ledger.tree.root(200))
    with pytest.raises(CheckpointRefused, match="below"):
        s.sign(150, ledger.tree.root(150))
    with pytest.raises(CheckpointRefused, match="different root"):
        s.sign(200, b"\x01" * 32)
    with pytest.raises(CheckpointRefused, match="proof"):
        s.sign(230, ledger.tree.root(230))
    proof = ledger.tree.consistency_proof(200, 230)
    with pytest.raises(CheckpointRefused, match="inconsistent"):
        s.sign(230, ledger.tree.root(230), [*proof[:-1], b"\x02" * 32])
    with pytest.raises(CheckpointRefused, match="inconsistent"):
        s.sign(230, b"\x03" * 32, proof)
    assert s.last_signed() == (200, ledger.tree.root(200))  # nothing stored on refusal
    # The same head again is fine (and deterministic), a consistent extension too.
    assert s.sign(200, ledger.tree.root(200)) == chain.last_block(ledger.conn).checkpoint
    s.sign(230, ledger.tree.root(230), proof)
    assert s.last_signed() == (230, ledger.tree.root(230))


def test_signer_refuses_rewritten_storage(ledger: Ledger) -> None:
    """If the stored tree no longer extends what was signed, sealing fails."""
    signed = ledger.signer.last_signed()
    assert signed is not None
    _rewrite_history(ledger, 3, b"evil")
    with pytest.raises(CheckpointRefused, match="inconsistent"), ledger.conn:
        ledger.seal(1)
    assert ledger.signer.last_signed() == signed  # the refused seal stored nothing
    assert chain.last_block(ledger.conn).block_number == 4


def test_rollback_of_seal_leaves_no_state(ledger: Ledger) -> None:
    before = ledger.signer.last_signed()
    with pytest.raises(RuntimeError), ledger.conn:
        ledger.tree.append(b"x", "message", "mx")
        ledger.seal(5)
        raise RuntimeError("abort")
    assert ledger.signer.last_signed() == before
    assert ledger.audit().ok
    with ledger.conn:
        ledger.tree.append(b"y", "message", "my")
        ledger.seal(6)
    assert ledger.audit().ok


def test_values_of_the_wrong_type_are_named(ledger: Ledger) -> None:
    ledger.conn.execute("UPDATE ledger_leaves SET leaf_bytes = 'text' WHERE idx = 12")
    p = _problem(ledger)
    assert (p.table, p.row) == ("ledger_leaves", "12") and "not a blob" in p.message
    ledger.conn.execute("UPDATE ledger_leaves SET leaf_bytes = ? WHERE idx = 12", (b"leaf 12",))
    assert ledger.audit().ok
    ledger.conn.execute("UPDATE ledger_nodes SET hash = 'x' WHERE level = 4 AND idx = 1")
    p = _problem(ledger)
    assert (p.table, p.row) == ("ledger_nodes", "level=4,idx=1") and "not a blob" in p.message
