"""Point-in-time restore and the erasure of a user's content from copies of the database.

Point-in-time restore replays the command journal (store/journal.py) through a fresh
``StateMachine`` on top of the newest backup at or before the target, or on an empty
database: the state machine is deterministic, so the replayed state at log index i is the
state the node had at i, with the same ledger (same leaves, same root). Targets are a ledger
size (the log index whose leaf made the tree that size) or a time (the longest prefix of the
log stamped at or before it).

Erasure is forever: content a user had erased (or that retention removed) after the target
is removed from the restored copy too, and the journal entries of erased messages carry no
content, so no restore can bring it back. The same purge rewrites existing backups.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw
import msgspec

from ccn_node.clock import normalize_iso
from ccn_node.ledger.schema import ledger_schema_sql
from ccn_node.ledger.tree_store import MerkleTree
from ccn_node.replication import commands as c
from ccn_node.replication.search_index import index_pending
from ccn_node.replication.state_machine import StateMachine, erase_messages
from ccn_node.store import backup, journal
from ccn_node.store.database import open_connection
from ccn_node.store.schema import migrate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """Where to restore to: exactly one of a ledger size, a time (ISO 8601) or a log index."""

    size: int | None = None
    at: str | None = None
    index: int | None = None

    def describe(self) -> str:
        if self.size is not None:
            return f"ledger size {self.size}"
        if self.at is not None:
            return f"time {self.at}"
        return f"log index {self.index}"


def resolve(conn: apsw.Connection, target: Target) -> int:
    """The log index the target stands for, read from a journal; raises BackupError."""
    _, last = journal.bounds(conn)
    if last == 0:
        raise backup.BackupError("the source holds no command journal (it predates schema version 2)")
    if target.size is not None:
        if target.size < 0:
            raise backup.BackupError("the ledger size must be 0 or more")
        index = journal.index_at_size(conn, target.size)
        if index is None:
            size = MerkleTree(conn).size()
            raise backup.BackupError(f"ledger size {target.size} was never reached in the journal (size is {size})")
        return index
    if target.at is not None:
        try:
            at = normalize_iso(target.at)
        except ValueError:
            raise backup.BackupError(f"{target.at!r} is not an ISO 8601 time") from None
        return journal.index_at_time(conn, at)
    assert target.index is not None
    if not 0 <= target.index <= last:
        raise backup.BackupError(f"log index {target.index} is outside the journal (1..{last})")
    return target.index


def purge_user(conn: apsw.Connection, user_id: str, before: str | None, erased_at: str) -> int:
    """Apply an erasure's effect to a copy (not through the log): content → '', hash kept,
    journal entries scrubbed. Returns the number of messages changed."""
    index_pending(conn)
    return erase_messages(conn, user_id, before, erased_at, recount_replayed=False)


def _rebuild_entries(src: apsw.Connection, batch: list[tuple[int, bytes, int | None]]) -> list[tuple[int, bytes]]:
    """The journal's entries as the log committed them. A message the journal left to the
    corpus (``journal.HELD_BY_CORPUS``) is its ledger leaf with the content of its row put
    back; if that content was erased since, the entry comes back erased (hash kept), as the
    erasure would have rewritten a stored entry: erased content never returns."""
    held = {i: leaf for i, entry, leaf in batch if entry == journal.HELD_BY_CORPUS}
    if not held:
        return [(i, entry) for i, entry, _ in batch]
    leaves = MerkleTree(src).leaf_bytes_many([leaf for leaf in held.values() if leaf is not None])
    commands: dict[int, c.AppendMessage] = {}
    for i, leaf in held.items():
        try:
            command = c.decode(leaves[leaf])  # type: ignore[index]
        except (KeyError, msgspec.DecodeError, msgspec.ValidationError):
            command = None
        if not isinstance(command, c.AppendMessage) or not command.content.startswith(c.LEAF_CONTENT_PREFIX):
            raise backup.BackupError(f"journal entry {i}: its ledger leaf {leaf} is missing or not a message")
        commands[i] = command
    rows: dict[str, tuple[str, str | None]] = {
        message_id: (content, erased_at)
        for message_id, content, erased_at in src.execute(
            "SELECT message_id, content, erased_at FROM messages WHERE message_id IN (SELECT value FROM json_each(?))",
            (json.dumps([command.message_id for command in commands.values()]),),
        )
    }
    out = []
    for i, entry, _ in batch:
        command = commands.get(i)
        if command is not None:
            digest = command.content[len(c.LEAF_CONTENT_PREFIX):]
            row = rows.get(command.message_id)
            if row is None:
                raise backup.BackupError(f"journal entry {i}: message {command.message_id} is missing from the source")
            content, erased_at = row
            if c.content_sha256(content) == digest:
                command = msgspec.structs.replace(command, content=content)
            elif erased_at is not None:
                command = msgspec.structs.replace(command, content="", content_sha256=digest, erased_at=erased_at)
            else:
                raise backup.BackupError(
                    f"journal entry {i}: the content of message {command.message_id} does not match its ledger leaf"
                )
            entry = c.encode(command)
        out.append((i, entry))
    return out


def _replay(sm: StateMachine, batch: list[tuple[int, bytes]]) -> None:
    """Apply journal entries under their own numbers. The journal is keyed by command index
    (rows record it as ``log_index``); Raft batches several commands in one log entry, and a
    journal has no gap only for commands, so each entry is applied as command ``ci`` of a log
    whose index is ``ci`` too: the restored node continues as a single node from there."""
    sm.begin()
    for ci, entry in batch:
        sm.applied_index = ci - 1
        sm.command_index = ci - 1
        sm.apply(ci, entry)
    sm.commit()


def _compact(conn: apsw.Connection) -> None:
    """Drop erased text physically: merge the FTS index (its old segments still hold the
    tokens) and rebuild the file (freed pages still hold the bytes)."""
    conn.execute("INSERT INTO messages_fts(messages_fts) VALUES ('optimize')")
    conn.execute("VACUUM")


@dataclass
class PitrReport:
    target: str
    log_index: int
    base: str
    replayed: int
    purged: int
    ledger_size: int
    ledger_root: str
    seconds: float


def _pick_base(src: apsw.Connection, index: int, bases: list[backup.BackupInfo]) -> backup.BackupInfo | None:
    """Newest backup at or before ``index`` whose ledger root is the source's root at its size
    (so it is a prefix of the same history), and from which the journal reaches the target."""
    first, _ = journal.bounds(src)
    tree = MerkleTree(src)
    for info in sorted(bases, key=lambda i: i.journal_index, reverse=True):
        if info.journal_index > index or info.journal_index < first - 1:
            continue
        try:
            if tree.root(info.ledger_size).hex() != info.ledger_root:
                continue
        except ValueError:
            continue
        return info
    return None


def point_in_time(
    source: Path,
    target: Target,
    workdir: Path,
    *,
    bases: list[backup.BackupInfo] | None = None,
    key: bytes | None = None,
    verifiers: list[Any] | None = None,
) -> tuple[Path, PitrReport]:
    """Build, in ``workdir``, a verified database holding the state as of ``target``.

    ``source`` is a plain database holding the journal (the node's own file or a decrypted
    backup); ``bases`` are backups to start from instead of replaying from the beginning.
    """
    t0 = time.perf_counter()
    src = apsw.Connection(str(source), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        index = resolve(src, target)
        first, _ = journal.bounds(src)
        base = _pick_base(src, index, bases or [])
        if base is None and first > 1:
            raise backup.BackupError(
                f"the journal starts at log index {first} and no backup at or before {target.describe()}"
                f" (index {index}) is available to start from"
            )
        workdir.mkdir(parents=True, exist_ok=True)
        if base is not None:
            candidate, _ = backup.open_candidate(base.path, workdir, key=key, verifiers=verifiers)
        else:
            candidate = workdir / f".pitr-{os.getpid()}-{time.time_ns()}.sqlite3"
        try:
            conn = open_connection(candidate, synchronous="off")
            try:
                migrate(conn, [ledger_schema_sql()])
                sm = StateMachine(conn, ledger=MerkleTree(conn))
                replayed = 0
                for batch in journal.entries(src, sm.command_index, index):
                    _replay(sm, _rebuild_entries(src, batch))
                    replayed += len(batch)
                sm.catch_up_search_index()  # the restored file carries a complete full-text index
                purged = 0
                with conn:
                    for user_id, before, erased_at in src.execute(
                        "SELECT user_id, before, erased_at FROM erasures WHERE log_index > ? ORDER BY log_index",
                        (index,),
                    ):
                        purged += purge_user(conn, user_id, before, erased_at)
                if purged:
                    _compact(conn)
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.execute("PRAGMA journal_mode = DELETE")
            finally:
                conn.close()
            check = backup.verify_database(candidate, verifiers)
            if target.size is not None and check.ledger_size != target.size:
                raise backup.BackupError(f"replay reached ledger size {check.ledger_size}, not {target.size}")
            want_root = MerkleTree(src).root(check.ledger_size).hex()
            if check.ledger_root != want_root:
                raise backup.BackupError(
                    f"replayed ledger root {check.ledger_root} differs from the source's root at size"
                    f" {check.ledger_size} ({want_root})"
                )
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()
            raise
    finally:
        src.close()
    report = PitrReport(
        target=target.describe(),
        log_index=index,
        base=base.file if base is not None else "empty database",
        replayed=replayed,
        purged=purged,
        ledger_size=check.ledger_size,
        ledger_root=check.ledger_root,
        seconds=time.perf_counter() - t0,
    )
    return candidate, report


def purge_backups(
    directory: Path,
    user_id: str,
    before: str | None,
    erased_at: str,
    *,
    key: bytes | None,
    verifiers: list[Any] | None = None,
) -> list[dict[str, Any]]:
    """Rewrite every verified backup without the user's content, re-verified and re-encrypted.

    A backup that cannot be rewritten (bad key, damaged) is deleted rather than left holding
    erased content; the report says which.
    """
    with backup.dir_lock(directory):
        return [_purge_one(info, user_id, before, erased_at, key, verifiers) for info in backup.list_backups(directory)]


def _purge_one(
    info: backup.BackupInfo, user_id: str, before: str | None, erased_at: str, key: bytes | None, verifiers: Any
) -> dict[str, Any]:
    directory = info.path.parent
    entry: dict[str, Any] = {"file": info.file}
    try:
        plain, _ = backup.open_candidate(info.path, directory, key=key, verifiers=verifiers)
    except backup.BackupError as exc:
        _delete(info)
        entry.update(action="deleted", reason=str(exc))
        return entry
    try:
        conn = apsw.Connection(str(plain))
        try:
            with conn:
                changed = purge_user(conn, user_id, before, erased_at)
            if changed:
                _compact(conn)
        finally:
            conn.close()
        if changed:
            check = backup.verify_database(plain, verifiers)
            out = plain
            if info.encrypted and key is not None:
                out = plain.with_suffix(".enc")
                backup.encrypt_file(plain, out, key)
                plain.unlink()
            os.chmod(out, 0o600)
            os.replace(out, info.path)
            info.sha256 = backup.sha256_file(info.path)
            info.bytes = info.path.stat().st_size
            info.messages = check.messages
            info.audit = check.audit
            info.purged.append({"user_id": user_id, "before": before, "erased_at": erased_at, "messages": changed})
            info.save()
            entry.update(action="rewritten", messages=changed)
        else:
            entry.update(action="unchanged", messages=0)
    except (backup.BackupError, apsw.Error, OSError) as exc:
        _delete(info)
        entry.update(action="deleted", reason=str(exc))
    finally:
        for p in (plain, plain.with_suffix(".enc")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    return entry


def _delete(info: backup.BackupInfo) -> None:
    for p in (info.path, Path(info.file + backup.SIDECAR_SUFFIX)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
