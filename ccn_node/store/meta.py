"""The ``meta`` table: node-local bookkeeping as text values by key (applied and command
indexes, the full-text index's watermark). Written by the state machine inside its
transaction; read by it, by backups and by status queries."""

from __future__ import annotations

from collections.abc import Iterable

import apsw

_UPSERT = "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"


def get(conn: apsw.Connection, key: str) -> str | None:
    rows = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchall()
    return str(rows[0][0]) if rows else None


def get_int(conn: apsw.Connection, key: str, default: int = 0) -> int:
    value = get(conn, key)
    return default if value is None else int(value)


def put(conn: apsw.Connection, items: Iterable[tuple[str, int | str]]) -> None:
    """Set each key's value, in the caller's transaction."""
    conn.executemany(_UPSERT, [(key, str(value)) for key, value in items])
