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
