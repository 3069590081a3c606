"""The persistent Merkle log in SQLite: the leaves, and every complete subtree hash of
``STORED_FROM_LEVEL`` and up, stored once.

Each append writes the leaf row and the parents of level 3 and up it completes (a quarter
of a node row per leaf, amortised, at most log2 n), so roots and proofs at *any* past size
are folds of at most 2·log2 n hashes: the stored ones fetched with one query, the ones
below level 3 rehashed from the (at most 8) leaf rows under them. The subtrees under 8
leaves are not stored because every node applies every command: their rows were most of
the tree's cost per message, and a proof rehashes at most 8 leaves (ledger/DESIGN.md). The
tree never opens or commits a transaction: it runs inside the caller's (the state
machine's), so a leaf exists exactly when the command that produced it was applied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import apsw

from ccn_node.ledger import merkle
from ccn_node.ledger.merkle import NodeId, ProofError
from ccn_node.ledger.schema import ledger_schema_sql
from ccn_node.store.database import insert_many

__all__ = ["Leaf", "MerkleTree", "ledger_schema_sql"]

STORED_FROM_LEVEL = 3
"""Subtrees of 2**3 = 8 leaves and up are stored; smaller ones are rehashed from their leaves.
Files written before keep their lower rows: they are never read, and ``chain.audit`` checks
those that exist."""

_ROWS_PER_INSERT = 1000  # 4 parameters a row: 10 KiB of SQL, short enough to stay prepared (insert_many)


@dataclass(frozen=True, slots=True)
class Leaf:
    """One ledger entry as stored: its canonical bytes and what it refers to."""

    index: int
    leaf_hash: bytes
    kind: str
    ref: str
    leaf_bytes: bytes


class MerkleTree:
    """RFC 6962 tree over ``ledger_leaves`` / ``ledger_nodes`` on one apsw connection.

    Keeps the right frontier (the complete subtrees of the current size) in memory
    so an append needs no reads but one check; the check (last stored leaf index and
    hash equal the cached ones) makes a rolled-back transaction harmless: the
    cache is then reloaded from the database. ``reset_cache()`` forces that.
    """

    def __init__(self, conn: apsw.Connection | apsw.Cursor) -> None:
        self._conn = conn
        self._size: int | None = None
        self._frontier: list[tuple[int, bytes]] = []  # (level, hash), largest first
        self._last_leaf: bytes = b""
        # Between defer() and flush(): leaf and node rows waiting for multi-row INSERTs.
        self._leaf_rows: list[tuple[int, str, str, bytes]] | None = None
        self._node_rows: list[tuple[int, int, bytes]] = []

    # -- writes ------------------------------------------------------------------------

    def append(self, leaf_bytes: bytes, kind: str, ref: str) -> int:
        """Add one leaf; returns its index. Must run inside the caller's transaction."""
        deferred = self._leaf_rows
        if deferred is None:
            size = self._checked_size()
        else:
            assert self._size is not None
            size = self._size
        h = merkle.leaf_hash(leaf_bytes)
        rows = []
        frontier = self._frontier
        i, level, node = size, 0, h
        while i & 1:
            _, left = frontier.pop()
            node = merkle.node_hash(left, node)
            i >>= 1
            level += 1
            if level >= STORED_FROM_LEVEL:
                rows.append((level, i, node))
        frontier.append((level, node))
        if deferred is None:
            self._conn.execute(
                "INSERT INTO ledger_leaves(idx, kind, ref, leaf_bytes) VALUES (?, ?, ?, ?)",
                (size, kind, ref, leaf_bytes),
            )
            if rows:
                self._conn.executemany("INSERT INTO ledger_nodes(level, idx, hash) VALUES (?, ?, ?)", rows)
        else:
            deferred.append((size, kind, ref, leaf_bytes))
            self._node_rows.extend(rows)
        self._size = size + 1
        self._last_leaf = h
        return size

    def defer(self) -> None:
        """Hold the rows of the next appends for one ``flush()`` (a Batch's fast path: a few
        multi-row INSERTs cost less than two statements per leaf). Reads of the tree see only
        flushed rows, so flush before anything reads it (a seal, a proof)."""
        if self._leaf_rows is None:
            self._checked_size()
            self._leaf_rows, self._node_rows = [], []

    def flush(self) -> None:
        """Write the held rows and stop holding; a no-op when nothing is held."""
        leaves, nodes = self._leaf_rows, self._node_rows
        self._leaf_rows, self._node_rows = None, []
        if not leaves:
            return
        insert_many(self._conn, "INSERT INTO ledger_leaves(idx, kind, ref, leaf_bytes)", "(?,?,?,?)", leaves,
                    per_statement=_ROWS_PER_INSERT)
        insert_many(self._conn, "INSERT INTO ledger_nodes(level, idx, hash)", "(?,?,?)", nodes,
                    per_statement=_ROWS_PER_INSERT)

    def held(self) -> int:
        """Leaves appended since ``defer()`` and not yet flushed."""
        return len(self._leaf_rows or ())

    def reset_cache(self) -> None:
        """Forget the cached frontier and any held rows (after a rollback, or a restore)."""
        self._size = None
        self._frontier = []
        self._last_leaf = b""
        self._leaf_rows, self._node_rows = None, []

    def _checked_size(self) -> int:
        row = self._conn.execute("SELECT idx, leaf_bytes FROM ledger_leaves ORDER BY idx DESC LIMIT 1").fetchone()
        db_size, db_last = (0, b"") if row is None else (row[0] + 1, merkle.leaf_hash(row[1]))
        if self._size != db_size or self._last_leaf != db_last:
            self._load(db_size, db_last)
        return db_size

    def _load(self, size: int, last: bytes) -> None:
        ids = merkle.perfect_subtrees(0, size)
        found = self._nodes(ids)
        try:
            self._frontier = [(nid[0], found[nid]) for nid in ids]
        except KeyError as exc:
            raise ProofError(f"stored tree lacks node (level, idx) = {exc.args[0]}") from None
        self._size = size
        self._last_leaf = last

    # -- reads -------------------------------------------------------------------------

    def size(self) -> int:
        """Number of leaves stored (read from the database, not the cache)."""
        row = self._conn.execute("SELECT max(idx) FROM ledger_leaves").fetchone()
        return 0 if row is None or row[0] is None else row[0] + 1

    def root(self, size: int | None = None) -> bytes:
        """Root hash at ``size`` (default: now): a fold of <= log2 n stored nodes."""
        current = self.size()
        if size is None:
            size = current
        if not 0 <= size <= current:
            raise ProofError(f"tree size {size} not reached (size is {current})")
        if size == 0:
            return merkle.EMPTY_ROOT
        ids = merkle.perfect_subtrees(0, size)
        found = self._nodes(ids)
        try:
            return merkle.fold_range([found[nid] for nid in ids])
        except KeyError as exc:
            raise ProofError(f"stored tree lacks node (level, idx) = {exc.args[0]}") from None

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """Audit path for leaf ``index`` in the tree of ``size`` leaves (RFC 9162 §2.1.3.1)."""
        return self._proof(merkle.inclusion_ranges(index, size), size)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """Consistency proof from ``size1`` to ``size2`` (RFC 9162 §2.1.4.1)."""
        return self._proof(merkle.consistency_ranges(size1, size2), size2)

    def _proof(self, ranges: list[tuple[int, int]], size: int) -> list[bytes]:
        """One query for every node of the proof plus leaf ``size - 1``: the latter tells
        that the tree has reached ``size`` without a separate read."""
        parts = [merkle.perfect_subtrees(lo, hi) for lo, hi in ranges]
        last = (0, size - 1)
        wanted = {nid for p in parts for nid in p}
        wanted.add(last)
        found = self._nodes(list(wanted))
        if last not in found:
            raise ProofError(f"tree size {size} not reached")
        try:
            return [merkle.fold_range([found[nid] for nid in p]) for p in parts]
        except KeyError as exc:
            raise ProofError(f"stored tree lacks node (level, idx) = {exc.args[0]}") from None

    def leaf(self, index: int) -> Leaf:
        """The stored leaf at ``index`` with its stored hash; KeyError if absent."""
        row = self._conn.execute(
            "SELECT kind, ref, leaf_bytes FROM ledger_leaves WHERE idx = ?", (index,)
        ).fetchone()
        if row is None:
            raise KeyError(index)
        return Leaf(index, merkle.leaf_hash(row[2]), row[0], row[1], row[2])

    def leaf_bytes_many(self, indexes: list[int]) -> dict[int, bytes]:
        """The stored bytes of many leaves (missing ones are absent), with one query."""
        rows = self._conn.execute(
            "SELECT idx, leaf_bytes FROM ledger_leaves WHERE idx IN (SELECT value FROM json_each(?))",
            (json.dumps(indexes),),
        )
        return {idx: bytes(data) for idx, data in rows}

    def find(self, ref: str, kind: str | None = None) -> list[int]:
        """Leaf indices recorded for ``ref`` (e.g. a message id), oldest first."""
        if kind is None:
            rows = self._conn.execute("SELECT idx FROM ledger_leaves WHERE ref = ? ORDER BY idx", (ref,))
        else:
            rows = self._conn.execute(
                "SELECT idx FROM ledger_leaves WHERE ref = ? AND kind = ? ORDER BY idx",
                (ref, kind),
            )
        return [r[0] for r in rows]

    def _nodes(self, ids: list[NodeId]) -> dict[NodeId, bytes]:
        """The hashes of complete subtrees, with one query: the stored ones (row-value IN over
        the primary key) and the leaves under the small ones, which are rehashed here."""
        if not ids:
            return {}
        stored = [nid for nid in ids if nid[0] >= STORED_FROM_LEVEL]
        small = [nid for nid in ids if nid[0] < STORED_FROM_LEVEL]
        parts, args = [], []
        if stored:
            parts.append("SELECT level, idx, hash FROM ledger_nodes WHERE (level, idx) IN (VALUES "
                         + ",".join(["(?,?)"] * len(stored)) + ")")
            args += [x for nid in stored for x in nid]
        spans: list[list[int]] = []  # the leaf ranges under the small subtrees, merged
        for lo, hi in sorted((idx << level, (idx + 1) << level) for level, idx in small):
            if spans and lo <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], hi)
            else:
                spans.append([lo, hi])
        for lo, hi in spans:
            parts.append("SELECT -1, idx, leaf_bytes FROM ledger_leaves WHERE idx >= ? AND idx < ?")
            args += [lo, hi]
        found: dict[NodeId, bytes] = {}
        leaves: dict[int, bytes] = {}
        for level, idx, value in self._conn.execute(" UNION ALL ".join(parts), args):
            if level < 0:
                leaves[idx] = value
            else:
                found[(level, idx)] = value
        leaf_hash = merkle.leaf_hash
        for level, idx in small:
            first = idx << level
            data = [leaves.get(i) for i in range(first, first + (1 << level))]
            if None not in data:
                hashes = [leaf_hash(d) for d in data]  # type: ignore[arg-type]
                found[(level, idx)] = hashes[0] if level == 0 else merkle.root_of(hashes)
        return found
