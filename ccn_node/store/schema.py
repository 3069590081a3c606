"""The SQLite schema and its forward migrations.

Each migration is a list of statements applied once, in order, in one transaction; the
schema version lives in ``PRAGMA user_version``. Never edit a released migration: add one.
JSON columns are TEXT checked with ``json_valid``; timestamps are fixed-width ISO 8601 UTC
text, so they sort and compare as text.
"""

from __future__ import annotations

import apsw

MIGRATION_1 = [
    # Node-local bookkeeping: applied log index, node identity. Written only by the state machine.
    """CREATE TABLE meta(
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID""",
    # Outcome of every applied request id: exactly-once for retries and journal replays.
    """CREATE TABLE applied_requests(
        request_id TEXT PRIMARY KEY,
        log_index INTEGER NOT NULL,
        result BLOB NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE users(
        user_id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL CHECK (role IN ('user', 'admin')),
        created_at TEXT NOT NULL,
        retention_days INTEGER CHECK (retention_days IS NULL OR retention_days > 0)
    )""",
    """CREATE TABLE plates(
        version TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL,
        name TEXT NOT NULL,
        content TEXT NOT NULL,
        recorded_at TEXT NOT NULL,
        log_index INTEGER NOT NULL
    )""",
    """CREATE TABLE conversations(
        session_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(user_id),
        title TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL CHECK (status IN ('active', 'ended')),
        created_at TEXT NOT NULL,
        ended_at TEXT,
        end_reason TEXT,
        plate_version TEXT NOT NULL,
        plate_sha256 TEXT NOT NULL,
        message_count INTEGER NOT NULL DEFAULT 0,
        last_message_at TEXT,
        metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata))
    )""",
    "CREATE INDEX conversations_by_user ON conversations(user_id, created_at)",
    """CREATE TABLE messages(
        rowid INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL UNIQUE,
        session_id TEXT NOT NULL REFERENCES conversations(session_id),
        user_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        kind TEXT NOT NULL DEFAULT 'chat' CHECK (kind IN ('chat', 'validation')),
        content TEXT NOT NULL,
        content_sha256 TEXT NOT NULL,
        erased_at TEXT,
        created_at TEXT NOT NULL,
        tokens INTEGER NOT NULL,
        idempotency_key TEXT,
        reply_to TEXT,
        model TEXT,
        instance_id TEXT,
        manifest TEXT CHECK (manifest IS NULL OR json_valid(manifest)),
        usage TEXT CHECK (usage IS NULL OR json_valid(usage)),
        character_snapshot TEXT CHECK (character_snapshot IS NULL OR json_valid(character_snapshot)),
        relational_state TEXT CHECK (relational_state IS NULL OR json_valid(relational_state)),
        metrics TEXT CHECK (metrics IS NULL OR json_valid(metrics)),
        log_index INTEGER NOT NULL,
        UNIQUE (session_id, seq)
    )""",
    "CREATE INDEX messages_by_user_time ON messages(user_id, created_at)",
    "CREATE INDEX messages_by_time ON messages(created_at)",
    """CREATE UNIQUE INDEX messages_by_idempotency_key ON messages(session_id, idempotency_key)
        WHERE idempotency_key IS NOT NULL""",
    "CREATE INDEX messages_by_reply_to ON messages(reply_to) WHERE reply_to IS NOT NULL",
    # Full-text index over message content, kept in step by triggers in the writer's transaction.
    """CREATE VIRTUAL TABLE messages_fts USING fts5(
        content, content='messages', content_rowid='rowid',
        tokenize='porter unicode61 remove_diacritics 2'
    )""",
    """CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages
        WHEN new.kind = 'chat' BEGIN
        INSERT INTO messages_fts(rowid, content) VALUES (new.rowid, new.content);
    END""",
    """CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
        WHEN old.kind = 'chat' BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.rowid, old.content);
    END""",
    """CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages
        WHEN old.kind = 'chat' BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.rowid, old.content);
        INSERT INTO messages_fts(rowid, content) VALUES (new.rowid, new.content);
    END""",
    """CREATE TABLE instance_registry(
        instance_id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        node_id TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('spawning', 'active', 'idle', 'terminated', 'failed')),
        spawned_at TEXT NOT NULL,
        last_heartbeat TEXT NOT NULL,
        terminated_at TEXT,
        termination_reason TEXT,
        plate_version TEXT NOT NULL,
        validation TEXT CHECK (validation IS NULL OR json_valid(validation)),
        character_vector TEXT CHECK (character_vector IS NULL OR json_valid(character_vector)),
        drift REAL
    )""",
    "CREATE INDEX instances_by_session ON instance_registry(session_id)",
    "CREATE INDEX instances_by_status ON instance_registry(status)",
    """CREATE TABLE character_evolution(
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        instance_id TEXT,
        created_at TEXT NOT NULL,
        character_vector TEXT NOT NULL CHECK (json_valid(character_vector)),
        relational_state TEXT CHECK (relational_state IS NULL OR json_valid(relational_state)),
        drift_baseline REAL,
        drift_consensus REAL
    )""",
    "CREATE INDEX character_evolution_by_session ON character_evolution(session_id, created_at)",
    "CREATE INDEX character_evolution_by_time ON character_evolution(created_at)",
    """CREATE TABLE consciousness_metrics(
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        phi REAL, ccc REAL, trust REAL, emergence REAL, drift REAL,
        data TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(data))
    )""",
    "CREATE INDEX consciousness_metrics_by_session ON consciousness_metrics(session_id, created_at)",
    "CREATE INDEX consciousness_metrics_by_time ON consciousness_metrics(created_at)",
    """CREATE TABLE consensus_log(
        round_id TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        term INTEGER NOT NULL,
        node_id TEXT NOT NULL,
        instance_count INTEGER NOT NULL,
        consensus_vector TEXT NOT NULL CHECK (json_valid(consensus_vector)),
        outliers TEXT NOT NULL CHECK (json_valid(outliers)),
        drifts TEXT NOT NULL CHECK (json_valid(drifts)),
        latency_ms REAL NOT NULL,
        log_index INTEGER NOT NULL
    )""",
    "CREATE INDEX consensus_log_by_time ON consensus_log(created_at)",
    # verification_chain (the specification's block table) is owned by ccn_node/ledger/schema.py.
    """CREATE TABLE erasures(
        id INTEGER PRIMARY KEY,
        user_id TEXT NOT NULL,
        erased_at TEXT NOT NULL,
        before TEXT,
        reason TEXT NOT NULL,
        messages_erased INTEGER NOT NULL,
        log_index INTEGER NOT NULL
    )""",
]

MIGRATION_2 = [
    # Every applied command, as committed, for point-in-time restore (store/DESIGN.md). Written by
    # the state machine in the apply transaction. ``at`` is the command's own timestamp (fixed by
    # the proposer, so identical on every node), ``leaf_index`` the ledger leaf it produced. Erasure
    # rewrites the AppendMessage entries of the erased messages with their content removed.
    """CREATE TABLE command_journal(
        log_index INTEGER PRIMARY KEY,
        at TEXT,
        leaf_index INTEGER,
        entry BLOB NOT NULL
    )""",
]

# The full-text index with an ``owner`` column (continuity/retrieval.py): one token per user,
# so the per-user filter is a posting-list intersection inside FTS5 instead of a lookup of every
# matching row of every user. The token is 'o' + hex(user_id) + 64 'z': one token (hex has no
# separators), longer than 64 bytes so the porter stemmer passes it through unchanged, hence
# distinct per user. Queries always pair it with ``m.user_id = ?`` in SQL as well.
_FTS_OWNER = "'o' || hex({v}.user_id) || '" + "z" * 64 + "'"
MIGRATION_3 = [
    "DROP TRIGGER IF EXISTS messages_fts_insert",
    "DROP TRIGGER IF EXISTS messages_fts_delete",
    "DROP TRIGGER IF EXISTS messages_fts_update",
    "DROP TABLE IF EXISTS messages_fts",
    f"""CREATE VIEW messages_fts_source AS
        SELECT m.rowid AS rowid, m.content AS content, {_FTS_OWNER.format(v="m")} AS owner
        FROM messages AS m WHERE m.kind = 'chat'""",
    """CREATE VIRTUAL TABLE messages_fts USING fts5(
        content, owner, content='messages_fts_source', content_rowid='rowid',
        tokenize='porter unicode61 remove_diacritics 2'
    )""",
    f"""CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages
        WHEN new.kind = 'chat' BEGIN
        INSERT INTO messages_fts(rowid, content, owner) VALUES (new.rowid, new.content, {_FTS_OWNER.format(v="new")});
    END""",
    f"""CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
        WHEN old.kind = 'chat' BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content, owner)
            VALUES ('delete', old.rowid, old.content, {_FTS_OWNER.format(v="old")});
    END""",
    f"""CREATE TRIGGER messages_fts_update AFTER UPDATE OF content, user_id ON messages
        WHEN old.kind = 'chat' BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content, owner)
            VALUES ('delete', old.rowid, old.content, {_FTS_OWNER.format(v="old")});
        INSERT INTO messages_fts(rowid, content, owner) VALUES (new.rowid, new.content, {_FTS_OWNER.format(v="new")});
    END""",
    "INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')",
]

# New messages are added to the full-text index by the state machine, many in one statement
# (replication/search_index.py), instead of by a trigger per INSERT: FTS5 writes an index
# segment per statement, so messages indexed together cost much less CPU each (store/DESIGN.md
# "FTS5"). Deletes and updates keep their triggers.
MIGRATION_4 = [
    "DROP TRIGGER IF EXISTS messages_fts_insert",
]

# No query reads messages by time alone (retention and erasure go by user and time, a
# conversation by session): the index only cost every node a B-tree insert per message
# (replication/DESIGN.md, "Measured").
MIGRATION_5 = [
    "DROP INDEX IF EXISTS messages_by_time",
]

MIGRATIONS: list[list[str]] = [MIGRATION_1, MIGRATION_2, MIGRATION_3, MIGRATION_4, MIGRATION_5]
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNewError(RuntimeError):
    """The database was written by a newer ccn-node; refuse rather than corrupt it."""


def migrate(conn: apsw.Connection, extra: list[str] | None = None) -> int:
    """Bring the database to SCHEMA_VERSION; returns the version found before.

    ``extra`` are idempotent statements (CREATE … IF NOT EXISTS) owned by other packages,
    such as the ledger's tables, run in the same transaction.
    """
    found = conn.execute("PRAGMA user_version").fetchall()[0][0]
    if found > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"database schema version {found} is newer than this ccn-node ({SCHEMA_VERSION})"
        )
    with conn:
        for version in range(found, SCHEMA_VERSION):
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
        for statement in extra or []:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return found
