"""Read-only corpus queries. Every query about conversations filters by owner in SQL.

Each function takes a reader connection as its first argument so it can run through
``Store.read`` on a reader thread; none of them writes.
"""

from __future__ import annotations

import json
from typing import Any

import apsw

from ccn_node.store import meta
from ccn_node.store.database import rows_as_dicts

_JSON_COLUMNS = ("manifest", "usage", "character_snapshot", "relational_state", "metrics", "metadata", "validation")

MESSAGE_COLUMNS = (
    "message_id, seq, role, content, content_sha256, erased_at, created_at, tokens, idempotency_key, reply_to,"
    " model, instance_id, manifest, usage, character_snapshot, relational_state, metrics, log_index"
)


def _decode_json(row: dict[str, Any]) -> dict[str, Any]:
    for key in _JSON_COLUMNS:
        value = row.get(key)
        if isinstance(value, str):
            row[key] = json.loads(value)
    return row


def get_conversation(conn: apsw.Connection, user_id: str, session_id: str) -> dict[str, Any] | None:
    rows = rows_as_dicts(
        conn.execute(
            "SELECT session_id, user_id, title, status, created_at, ended_at, end_reason, plate_version,"
            " plate_sha256, message_count, last_message_at, metadata FROM conversations"
            " WHERE session_id = ? AND user_id = ?",
            (session_id, user_id),
        )
    )
    return _decode_json(rows[0]) if rows else None


def started_conversation(
    session_id: str, user_id: str, title: str, created_at: str, plate_version: str, plate_sha256: str,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """What ``get_conversation`` returns for a conversation just started with these values,
    without reading it (keep the two in step: tests/test_store_queries.py compares them)."""
    return {
        "session_id": session_id,
        "user_id": user_id,
        "title": title,
        "status": "active",
        "created_at": created_at,
        "ended_at": None,
        "end_reason": None,
        "plate_version": plate_version,
        "plate_sha256": plate_sha256,
        "message_count": 0,
        "last_message_at": None,
        "metadata": metadata,
    }


def list_conversations(
    conn: apsw.Connection, user_id: str, *, limit: int = 50, offset: int = 0
) -> list[dict[str, Any]]:
    return [
        _decode_json(r)
        for r in rows_as_dicts(
            conn.execute(
                "SELECT session_id, title, status, created_at, ended_at, message_count, last_message_at, metadata"
                " FROM conversations WHERE user_id = ? ORDER BY created_at DESC LIMIT ? OFFSET ?",
                (user_id, limit, offset),
            )
        )
    ]


def list_messages(
    conn: apsw.Connection,
    user_id: str,
    session_id: str,
    *,
    up_to_seq: int | None = None,
    up_to_time: str | None = None,
    include_validation: bool = False,
    detail: bool = True,
) -> list[dict[str, Any]]:
    """Messages of one conversation in order; optionally only those up to a seq or a time."""
    sql = f"SELECT {MESSAGE_COLUMNS if detail else 'message_id, seq, role, content, created_at'} FROM messages"
    sql += " WHERE session_id = ? AND user_id = ?"
    args: list[Any] = [session_id, user_id]
    if not include_validation:
        sql += " AND kind = 'chat'"
    if up_to_seq is not None:
        sql += " AND seq <= ?"
        args.append(up_to_seq)
    if up_to_time is not None:
        sql += " AND created_at <= ?"
        args.append(up_to_time)
    sql += " ORDER BY seq"
    return [_decode_json(r) for r in rows_as_dicts(conn.execute(sql, args))]


def find_by_idempotency_key(
    conn: apsw.Connection, session_id: str, key: str
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The user message stored under an idempotency key, and the assistant reply to it if any."""
    rows = rows_as_dicts(
        conn.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = ? AND idempotency_key = ?", (session_id, key)
        )
    )
    if not rows:
        return None, None
    question = _decode_json(rows[0])
    return question, reply_to(conn, question["message_id"])


def reply_to(conn: apsw.Connection, message_id: str) -> dict[str, Any] | None:
    rows = rows_as_dicts(
        conn.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE reply_to = ? AND role = 'assistant' ORDER BY seq LIMIT 1",
            (message_id,),
        )
    )
    return _decode_json(rows[0]) if rows else None


def character_state_at(
    conn: apsw.Connection, session_id: str, *, up_to_time: str | None = None
) -> dict[str, Any] | None:
    """The last character and relational state measured in a conversation, as of a time."""
    sql = (
        "SELECT message_id, created_at, character_vector, relational_state, drift_baseline, drift_consensus"
        " FROM character_evolution WHERE session_id = ?"
    )
    args: list[Any] = [session_id]
    if up_to_time is not None:
        sql += " AND created_at <= ?"
        args.append(up_to_time)
    sql += " ORDER BY created_at DESC, id DESC LIMIT 1"
    rows = rows_as_dicts(conn.execute(sql, args))
    if not rows:
        return None
    row = rows[0]
    row["character_vector"] = json.loads(row["character_vector"])
    if row["relational_state"] is not None:
        row["relational_state"] = json.loads(row["relational_state"])
    return row


def user_character_state(conn: apsw.Connection, user_id: str) -> dict[str, Any] | None:
    """The most recent character state across this user's conversations (for a new one)."""
    rows = rows_as_dicts(
        conn.execute(
            "SELECT ce.character_vector, ce.relational_state, ce.created_at FROM character_evolution ce"
            " JOIN conversations c ON c.session_id = ce.session_id WHERE c.user_id = ?"
            " ORDER BY ce.created_at DESC LIMIT 1",
            (user_id,),
        )
    )
    if not rows:
        return None
    row = rows[0]
    row["character_vector"] = json.loads(row["character_vector"])
    if row["relational_state"] is not None:
        row["relational_state"] = json.loads(row["relational_state"])
    return row


def seq_at_time(conn: apsw.Connection, session_id: str, at: str) -> int:
    rows = conn.execute(
        "SELECT coalesce(max(seq), 0) FROM messages WHERE session_id = ? AND created_at <= ?", (session_id, at)
    ).fetchall()
    return int(rows[0][0])


def time_of_seq(conn: apsw.Connection, session_id: str, seq: int) -> str | None:
    rows = conn.execute(
        "SELECT created_at FROM messages WHERE session_id = ? AND seq = ?", (session_id, seq)
    ).fetchall()
    return rows[0][0] if rows else None


def counts(conn: apsw.Connection) -> dict[str, int]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM conversations), (SELECT count(*) FROM conversations WHERE status = 'active'),"
        " (SELECT coalesce(max(rowid), 0) FROM messages), (SELECT count(*) FROM users)"
    ).fetchall()[0]
    return {"conversations": row[0], "active_conversations": row[1], "messages": row[2], "users": row[3]}


def user_exists(conn: apsw.Connection, user_id: str) -> bool:
    return bool(conn.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchall())


def current_plate(conn: apsw.Connection) -> dict[str, Any] | None:
    rows = rows_as_dicts(
        conn.execute("SELECT version, sha256, name, recorded_at FROM plates ORDER BY log_index DESC LIMIT 1")
    )
    return rows[0] if rows else None


def applied_index(conn: apsw.Connection) -> int:
    return meta.get_int(conn, "applied_index")


# -- instances, consensus rounds and metrics (continuity/instances.py, consensus_service.py) --

INSTANCE_COLUMNS = (
    "instance_id, session_id, node_id, status, spawned_at, last_heartbeat, terminated_at, termination_reason,"
    " plate_version, validation, character_vector, drift"
)


def list_instances(
    conn: apsw.Connection, *, status: str | None = None, limit: int = 200, offset: int = 0
) -> list[dict[str, Any]]:
    """Instances of every node, newest first (admin view; the registry holds no message content)."""
    sql = f"SELECT {INSTANCE_COLUMNS} FROM instance_registry"
    args: list[Any] = []
    if status is not None:
        sql += " WHERE status = ?"
        args.append(status)
    sql += " ORDER BY spawned_at DESC, instance_id LIMIT ? OFFSET ?"
    args += [limit, offset]
    rows = [_decode_json(r) for r in rows_as_dicts(conn.execute(sql, args))]
    for row in rows:
        if isinstance(row.get("character_vector"), str):
            row["character_vector"] = json.loads(row["character_vector"])
    return rows


def active_instance_vectors(conn: apsw.Connection) -> dict[str, Any]:
    """{instance id: character vector as stored (unchecked JSON)} of active instances that have one."""
    rows = conn.execute(
        "SELECT instance_id, character_vector FROM instance_registry"
        " WHERE status = 'active' AND character_vector IS NOT NULL"
    ).fetchall()
    return {r[0]: json.loads(r[1]) for r in rows}


def node_instances(
    conn: apsw.Connection, node_id: str, spawned_before: str, statuses: tuple[str, ...] = ("active", "spawning")
) -> list[str]:
    """Ids of the instances a node registered before a time that are still in one of ``statuses``."""
    marks = ", ".join("?" for _ in statuses)
    rows = conn.execute(
        f"SELECT instance_id FROM instance_registry WHERE node_id = ? AND spawned_at < ? AND status IN ({marks})",
        (node_id, spawned_before, *statuses),
    ).fetchall()
    return [r[0] for r in rows]


def last_passed_validation(conn: apsw.Connection, session_id: str) -> float | None:
    """Score of the last instance of a conversation whose validation ran and passed, else None."""
    rows = conn.execute(
        "SELECT validation ->> '$.score' FROM instance_registry WHERE session_id = ?"
        " AND validation ->> '$.ran' = 1 AND validation ->> '$.passed' = 1"
        " ORDER BY spawned_at DESC LIMIT 1",
        (session_id,),
    ).fetchall()
    return float(rows[0][0]) if rows and rows[0][0] is not None else None


def count_active_instances(conn: apsw.Connection, user_id: str | None = None) -> int:
    if user_id is None:
        return int(conn.execute("SELECT count(*) FROM instance_registry WHERE status = 'active'").fetchall()[0][0])
    rows = conn.execute(
        "SELECT count(*) FROM instance_registry i JOIN conversations c ON c.session_id = i.session_id"
        " WHERE i.status = 'active' AND c.user_id = ?",
        (user_id,),
    ).fetchall()
    return int(rows[0][0])


def last_consensus(conn: apsw.Connection) -> dict[str, Any] | None:
    rows = rows_as_dicts(
        conn.execute(
            "SELECT round_id, created_at, term, node_id, instance_count, consensus_vector, outliers, drifts,"
            " latency_ms FROM consensus_log ORDER BY log_index DESC LIMIT 1"
        )
    )
    if not rows:
        return None
    row = rows[0]
    for key in ("consensus_vector", "outliers", "drifts"):
        row[key] = json.loads(row[key])
    return row


def metrics_series(conn: apsw.Connection, user_id: str, session_id: str) -> list[dict[str, Any]] | None:
    """Per-turn seed metrics of one of the caller's conversations in order; None if not theirs."""
    if get_conversation(conn, user_id, session_id) is None:
        return None
    rows = rows_as_dicts(
        conn.execute(
            "SELECT m.message_id, m.seq, cm.created_at, cm.data FROM consciousness_metrics cm"
            " JOIN messages m ON m.message_id = cm.message_id"
            " WHERE cm.session_id = ? AND m.user_id = ? AND m.kind = 'chat' ORDER BY m.seq",
            (session_id, user_id),
        )
    )
    for row in rows:
        row["metrics"] = json.loads(row.pop("data"))
    return rows


def latest_metrics_by_conversation(conn: apsw.Connection, user_id: str, *, limit: int = 50) -> list[dict[str, Any]]:
    """The caller's active conversations, most recently active first, each with its last turn's metrics."""
    rows = rows_as_dicts(
        conn.execute(
            "SELECT c.session_id, c.title, c.message_count, c.last_message_at,"
            " (SELECT cm.data FROM consciousness_metrics cm WHERE cm.session_id = c.session_id"
            "  ORDER BY cm.id DESC LIMIT 1) AS metrics,"
            " (SELECT cm.created_at FROM consciousness_metrics cm WHERE cm.session_id = c.session_id"
            "  ORDER BY cm.id DESC LIMIT 1) AS measured_at"
            " FROM conversations c WHERE c.user_id = ? AND c.status = 'active'"
            " ORDER BY coalesce(c.last_message_at, c.created_at) DESC LIMIT ?",
            (user_id, limit),
        )
    )
    for row in rows:
        if isinstance(row["metrics"], str):
            row["metrics"] = json.loads(row["metrics"])
    return rows
