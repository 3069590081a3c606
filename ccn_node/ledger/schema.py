"""DDL of the ledger tables, in one place so the store's migration runs one string."""

from __future__ import annotations

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_nodes(
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB    NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger_leaves(
    idx        INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL,
    ref        TEXT NOT NULL,
    leaf_bytes BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_leaves_ref ON ledger_leaves(ref);
CREATE TABLE IF NOT EXISTS verification_chain(
    block_number  INTEGER PRIMARY KEY,
    previous_hash TEXT    NOT NULL,
    current_hash  TEXT    NOT NULL,
    tree_size     INTEGER NOT NULL,
    root          TEXT    NOT NULL,
    timestamp     INTEGER NOT NULL,
    data_snapshot TEXT    NOT NULL,
    checkpoint    TEXT    NOT NULL,
    verified      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS ledger_signed(
    origin    TEXT PRIMARY KEY,
    tree_size INTEGER NOT NULL,
    root      BLOB    NOT NULL,
    note      TEXT    NOT NULL
);
"""


def ledger_schema_sql() -> str:
    """CREATE TABLE/INDEX IF NOT EXISTS statements for every ledger table."""
    return _SCHEMA


# The witness's tables live in their own file (``federation.database``), never in the
# replicated corpus database: a Raft snapshot, a backup restore or a point-in-time restore
# of the corpus must not roll a witness's view back, or it could cosign a checkpoint that
# contradicts one it cosigned before.
_WITNESS_SCHEMA = """
CREATE TABLE IF NOT EXISTS witness_heads(
    origin     TEXT PRIMARY KEY,
    tree_size  INTEGER NOT NULL,
    root       BLOB    NOT NULL,
    note       TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS witness_forks(
    id          INTEGER PRIMARY KEY,
    origin      TEXT    NOT NULL,
    pair        TEXT    NOT NULL UNIQUE,
    note_a      TEXT    NOT NULL,
    note_b      TEXT    NOT NULL,
    proof       TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    confirmed   INTEGER NOT NULL,
    sources     TEXT    NOT NULL,
    detected_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS witness_forks_origin ON witness_forks(origin);
CREATE TABLE IF NOT EXISTS witness_cosignatures(
    witness   TEXT    NOT NULL,
    key_id    BLOB    NOT NULL,
    tree_size INTEGER NOT NULL,
    root      BLOB    NOT NULL,
    line      TEXT    NOT NULL,
    timestamp INTEGER NOT NULL,
    PRIMARY KEY (witness, key_id)
) WITHOUT ROWID;
"""


def witness_schema_sql() -> str:
    """The node-local witness tables: heads of peer logs, fork evidence, cosignatures collected."""
    return _WITNESS_SCHEMA
