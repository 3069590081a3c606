"""The state machine: the only code that writes the corpus tables.

``apply`` turns one committed log entry into its effect, deterministically: every id,
timestamp and derived value comes from the command, or from state that is identical on every
node. It is exactly-once twice over: entries at or below the stored applied index are skipped
(journal replay after a restart), and a request id seen before returns its stored outcome
(a client retry). It never raises for a bad command: the error becomes the stored outcome,
because a Raft log entry that cannot be applied would stall the log forever.

A recovery tool can run it on its own: ``StateMachine(store.writer).apply_batch(entries)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import apsw
import msgspec

from ccn_node.replication import commands as c
from ccn_node.replication.log import ApplyResult
from ccn_node.replication.search_index import SearchIndexLag
from ccn_node.store import journal, meta
from ccn_node.store.database import insert_many
from ccn_node.store.schema import SCHEMA_VERSION, SchemaTooNewError

log = logging.getLogger(__name__)

_result_encoder = msgspec.msgpack.Encoder()
_result_decoder = msgspec.msgpack.Decoder(ApplyResult)


class _PartialWrite(Exception):
    """A command without a savepoint of its own failed after writing: undo its Batch."""


class Rejected(Exception):
    """A command that cannot take effect; its code and message become the stored outcome."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class LedgerSink(Protocol):
    """The ledger inside the apply transaction: a leaf per command, and block seals."""

    def append(self, leaf_bytes: bytes, kind: str, ref: str) -> int: ...

    def defer(self) -> None:
        """Hold the rows of the next appends (a Batch) until ``flush()``."""

    def flush(self) -> None:
        """Write the held rows and stop holding."""

    def held(self) -> int:
        """Leaves held since ``defer()``."""
        ...

    def reset_cache(self) -> None: ...

    def seal(self, block_number: int, tree_size: int, timestamp_ms: int, data_snapshot: str) -> Any: ...


_STORAGE_FAILURES = (apsw.IOError, apsw.FullError, apsw.CorruptError, apsw.CantOpenError, apsw.NotADBError)

CommitListener = Callable[[list[tuple[c.Command | None, ApplyResult]]], None]


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), allow_nan=False)


class _BatchWrites:
    """A Batch's fast path: the rows held for multi-row INSERTs at its end (StateMachine._flush)
    and what the commands after them in the same Batch must see of them."""

    __slots__ = ("conversations", "counters", "held", "journal", "message_keys", "messages", "outcomes", "requests")

    def __init__(self, stored_outcomes: dict[str, bytes]) -> None:
        self.held = 0  # rows held (changes with every held write: the _PartialWrite check)
        self.messages: list[tuple[Any, ...]] = []
        self.message_keys: dict[tuple[str, str], tuple[str, int]] = {}  # (session, idempotency key) → (id, seq)
        self.conversations: dict[str, tuple[str, str, int]] = {}  # session → (user_id, status, message_count)
        self.counters: dict[str, tuple[int, str]] = {}  # session → (message_count, last_message_at) to write
        self.requests: list[tuple[str, int, bytes]] = []  # applied_requests rows
        self.outcomes = stored_outcomes  # request id → encoded outcome: stored before, or held here
        self.journal: list[tuple[int, str | None, int | None, bytes]] = []


class StateMachine:
    """Applies commands to the database on the writer connection, one transaction per batch."""

    def __init__(self, conn: apsw.Connection, ledger: LedgerSink | None = None) -> None:
        self.conn = conn
        self.ledger = ledger
        self._in_txn = False
        self._pending: list[tuple[c.Command | None, ApplyResult]] = []
        self._listeners: list[CommitListener] = []
        self._lock = threading.RLock()
        self.applied_index = 0
        self.command_index = 0
        self._start = (0, 0)
        # Inside a Batch's fast path: the rows held for multi-row INSERTs (see _flush); None
        # outside it (every row goes in at once).
        self._batch: _BatchWrites | None = None
        self.batch_redos = 0  # Batches that left the fast path (a command failed after writing)
        # Messages reach the full-text index in chunks, not by a trigger per INSERT
        # (replication/search_index.py).
        self.search_index = SearchIndexLag()
        self._load_indexes()
        self._handlers: dict[type, Callable[[Any, int], dict[str, Any]]] = {
            c.Noop: self._noop,
            c.CreateUser: self._create_user,
            c.SetUserRetention: self._set_retention,
            c.RecordPlate: self._record_plate,
            c.StartConversation: self._start_conversation,
            c.EndConversation: self._end_conversation,
            c.AppendMessage: self._append_message,
            c.RegisterInstance: self._register_instance,
            c.TerminateInstance: self._terminate_instance,
            c.RecordConsensus: self._record_consensus,
            c.SealBlock: self._seal_block,
            c.EraseUserData: self._erase_user_data,
        }

    # -- transaction control -------------------------------------------------------------

    def _load_indexes(self) -> None:
        """Log-entry index (for replay skipping), command index (one per applied command), and
        the messages not in the full-text index yet."""
        self.applied_index = meta.get_int(self.conn, "applied_index")
        self.command_index = meta.get_int(self.conn, "command_index", self.applied_index)
        self.search_index.load(self.conn)

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Called after each COMMIT with the commands and outcomes it made durable."""
        self._listeners.append(listener)

    def rebind(self, conn: apsw.Connection) -> None:
        """Use a new writer connection (after a snapshot restore replaced the file)."""
        with self._lock:
            self.conn = conn
            self._load_indexes()
            if self.ledger is not None:
                self.ledger.reset_cache()

    def begin(self) -> None:
        """Open the write transaction (idempotent while this thread has one open); waits while
        another thread has one open (a reader's search-index catch-up beside the apply thread).

        The lock comes first: ``_in_txn`` seen without it may be another thread's transaction,
        and joining it made the apply thread's entries fail when that transaction committed
        under them ("apply() outside begin()/commit()"), which stops the node."""
        self._lock.acquire()
        if self._in_txn:  # ours: the lock is re-entrant, so only this thread can see it open here
            self._lock.release()
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        self._in_txn = True
        self._start = (self.applied_index, self.command_index)

    def commit(self) -> None:
        """Record the indexes in the same transaction as the effects, then COMMIT. A full chunk
        of messages waiting for the full-text index is left to ``index_if_due()``."""
        if not self._in_txn:
            return
        try:
            search = self.search_index
            rows = search.meta_rows()
            if (self.applied_index, self.command_index) != self._start:
                rows += [("applied_index", self.applied_index), ("command_index", self.command_index)]
            meta.put(self.conn, rows)
            try:
                self.conn.execute("COMMIT")
            except apsw.Error:
                self._rollback_open()
                raise
            search.committed()
            self._in_txn = False
            pending, self._pending = self._pending, []
        finally:
            self._lock.release()
        for listener in self._listeners:
            try:
                listener(pending)
            except Exception:  # a listener must never break the log
                log.exception("commit listener failed")

    def abort(self) -> None:
        """Roll back the open transaction (the log fail-stops, or a COMMIT failed)."""
        if not self._in_txn:
            return
        try:
            self._rollback_open()
        finally:
            self._lock.release()

    def _rollback_open(self) -> None:
        with contextlib.suppress(apsw.Error):
            self.conn.execute("ROLLBACK")
        self._in_txn = False
        self._pending = []
        self._load_indexes()
        if self.ledger is not None:
            self.ledger.reset_cache()

    def apply_batch(self, entries: Sequence[tuple[int, bytes]]) -> list[ApplyResult]:
        """Apply entries in one transaction, then index a due chunk (a tool's or a test's unit;
        the logs answer their callers between the two)."""
        self.begin()
        results = [r for index, entry in entries for r in self.apply_entry(index, entry)]
        self.commit()
        self.index_if_due()
        return results

    def index_if_due(self) -> None:
        """Index the messages waiting for the full-text index if a chunk is full or the oldest
        has waited ``MAX_LAG_S``, in a transaction of its own. The logs call it after they have
        answered for what the last COMMIT made durable, so those answers never wait for a
        chunk (~10 ms for 1,024 messages): search_index.py. A failure is logged, not raised:
        the rows are derived, and the next chunk or catch-up retries."""
        if not self.search_index.due():
            return
        try:
            self.catch_up_search_index()
        except Exception:
            log.exception("indexing messages for search failed")

    # -- snapshots (Raft) ----------------------------------------------------------------

    def backup_to(self, path: str) -> None:
        """A consistent copy of the whole database, from its own connection (applies go on)."""
        src = apsw.Connection(self.conn.filename, flags=apsw.SQLITE_OPEN_READONLY)
        dst = apsw.Connection(path)
        try:
            with dst.backup("main", src, "main") as backup:
                while not backup.done:
                    backup.step(1024)
        finally:
            dst.close()
            src.close()

    def restore_from(self, path: str) -> bool:
        """Replace the live database by a snapshot, only if the snapshot is ahead of it; a
        snapshot written by a newer ccn-node (schema) is refused: SchemaTooNewError."""
        src = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            version = src.execute("PRAGMA user_version").fetchall()[0][0]
            if version > SCHEMA_VERSION:
                raise SchemaTooNewError(
                    f"raft snapshot schema version {version} is newer than this ccn-node ({SCHEMA_VERSION})"
                )
            ahead = meta.get_int(src, "applied_index")
            if ahead <= self.applied_index:
                return False
            with self._lock:
                with self.conn.backup("main", src, "main") as backup:
                    while not backup.done:
                        backup.step(-1)
                self.rebind(self.conn)
        finally:
            src.close()
        return True

    # -- one entry -----------------------------------------------------------------------

    def apply(self, index: int, entry: bytes) -> ApplyResult:
        """Apply one committed single-command entry inside the open transaction."""
        return self.apply_entry(index, entry)[0]

    def apply_entry(self, index: int, entry: bytes) -> list[ApplyResult]:
        """Apply one committed log entry — a command or a Batch of them — in the open transaction.

        Never raises for bad input: a refusal, a constraint violation or a bug in a handler
        becomes the command's stored outcome. Only storage failures (I/O, disk full,
        corruption) propagate, because skipping the entry would make this node diverge.
        """
        if not self._in_txn:
            raise RuntimeError("apply() outside begin()/commit()")
        if index <= self.applied_index:
            return [ApplyResult(index=index, request_id="", ok=True, duplicate=True, value={"replayed": True})]
        self.applied_index = index
        try:
            command = c.decode(entry)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return [self._bad_entry(exc)]
        if not isinstance(command, c.Batch):
            return [self._apply_command(command, entry)]
        if len(command.entries) < 2:
            return self._apply_subs(self._decode_subs(command.entries))
        # One savepoint for the whole Batch, none per command, and its rows held for a few
        # multi-row INSERTs at the end: a savepoint and a few statements per command cost
        # more than the command itself (its messages reach the full-text index later, in a
        # chunk: search_index.py). A command
        # that fails *after* it wrote something (rare: the handlers validate before writing)
        # undoes the Batch and redoes it with a savepoint per command, so the stored outcome
        # is the same as if every command had had its own.
        subs = self._decode_subs(command.entries)
        command_index, pending = self.command_index, len(self._pending)
        indexing = self.search_index.state()
        self.conn.execute("SAVEPOINT batch")
        try:
            self._batch = _BatchWrites(self._stored_outcomes(subs))
            if self.ledger is not None:
                self.ledger.defer()
            try:
                results = self._apply_subs(subs)
                self._flush()
                if self.ledger is not None:
                    self.ledger.flush()  # and stop holding
            except BaseException:
                if self.ledger is not None:
                    self.ledger.reset_cache()  # drops what a Batch that did not finish held
                raise
            finally:
                self._batch = None
        except _PartialWrite:
            self.batch_redos += 1
            self.conn.execute("ROLLBACK TO batch")
            if self.ledger is not None:
                self.ledger.reset_cache()
            self.command_index = command_index
            self.search_index.restore(indexing)
            del self._pending[pending:]
            results = self._apply_subs(subs)
        self.conn.execute("RELEASE batch")
        return results

    @staticmethod
    def _decode_subs(subs: Sequence[bytes]) -> list[tuple[bytes, c.Command | Exception]]:
        decoded: list[tuple[bytes, c.Command | Exception]] = []
        for sub in subs:
            try:
                decoded.append((sub, c.decode(sub)))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                decoded.append((sub, exc))
        return decoded

    def _stored_outcomes(self, subs: list[tuple[bytes, c.Command | Exception]]) -> dict[str, bytes]:
        """The stored outcomes of the Batch's request ids, with one query (one prepared
        statement for every Batch size: the ids travel as one JSON array)."""
        ids = json.dumps([cmd.request_id for _, cmd in subs if not isinstance(cmd, Exception)])
        rows = self.conn.execute(
            "SELECT request_id, result FROM applied_requests WHERE request_id IN (SELECT value FROM json_each(?))",
            (ids,),
        )
        return {rid: bytes(result) for rid, result in rows}

    def _apply_subs(self, subs: list[tuple[bytes, c.Command | Exception]]) -> list[ApplyResult]:
        results = []
        for sub, command in subs:
            if isinstance(command, Exception):
                results.append(self._bad_entry(command))
                continue
            if type(command) is not c.AppendMessage:
                self._flush_and_hold()  # every other command sees the tables as they are
            results.append(self._apply_command(command, sub))
        return results

    def _flush_and_hold(self) -> None:
        """Inside a Batch, before something reads the tables: write what it holds so far, and
        go on holding the rows of the commands after it."""
        batch = self._batch
        if batch is not None and batch.held:
            self._flush()
            if self.ledger is not None:
                self.ledger.defer()

    def _flush(self) -> None:
        """Write the rows the Batch holds: messages, conversation counters, ledger leaves and
        nodes, outcomes and journal entries, each with multi-row INSERTs.

        A row that fails here (a constraint) undoes the Batch, which is then redone with a
        savepoint and statements per command.
        """
        batch = self._batch
        if batch is None or not batch.held:
            return
        rows, batch.messages, batch.held = batch.messages, [], 0
        requests, batch.requests = batch.requests, []
        entries, batch.journal = batch.journal, []
        counters = list(batch.counters.items())
        batch.counters.clear()
        batch.conversations.clear()
        conn = self.conn
        try:
            insert_many(conn, _INSERT_MESSAGE, _MESSAGE_VALUES, rows, per_statement=_ROWS_PER_INSERT)
            for session_id, (count, last_at) in counters:
                conn.execute(
                    "UPDATE conversations SET message_count = ?, last_message_at = ? WHERE session_id = ?",
                    (count, last_at, session_id),
                )
            if self.ledger is not None:
                self.ledger.flush()
            insert_many(conn, "INSERT INTO applied_requests(request_id, log_index, result)", "(?,?,?)", requests,
                        per_statement=_ROWS_PER_INSERT)
            journal.record_many(conn, entries)
        except _STORAGE_FAILURES:
            raise
        except Exception:  # a constraint: the caller redoes the Batch command by command
            raise _PartialWrite() from None

    def _bad_entry(self, exc: Exception) -> ApplyResult:
        self.command_index += 1
        result = ApplyResult(index=self.command_index, request_id="", ok=False, error_code="bad_entry",
                             error_message=str(exc))
        self._pending.append((None, result))
        return result

    def _apply_command(self, command: c.Command, entry: bytes) -> ApplyResult:
        """Apply one command: in its own savepoint, or inside a Batch's fast path (no savepoint
        of its own; a failure that left writes behind raises _PartialWrite for the caller to undo)."""
        batch = self._batch
        first = self._stored_outcome(command.request_id)
        if first is not None:
            first.duplicate = True
            self._pending.append((command, first))
            return first
        if type(command) is not c.AppendMessage:
            self.search_index.index(self.conn)  # it may change or erase messages (its savepoint stays empty of this)
        self.command_index += 1
        index = self.command_index
        if batch is None:
            self.conn.execute("SAVEPOINT cmd")
        else:
            mark = self._write_mark(batch)
        try:
            value = self._handlers[type(command)](command, index)
            if self.ledger is not None and not isinstance(command, c.Noop):
                leaf = self.ledger.append(c.leaf_bytes(command), type(command).__struct_config__.tag, _ref(command))
                value["leaf_index"] = leaf
            if batch is None:
                self.conn.execute("RELEASE cmd")
            result = ApplyResult(index=index, request_id=command.request_id, ok=True, value=value)
        except (_PartialWrite, *_STORAGE_FAILURES):
            raise
        except Exception:
            if batch is not None and self._write_mark(batch) != mark:
                raise _PartialWrite() from None
            if batch is None:
                self._rollback_savepoint()
            # else: the mark shows it wrote nothing, held nothing, appended no leaf: nothing to undo
            result = self._failure(command, index)
        encoded = _result_encoder.encode(result)
        value = result.value or {}
        at, leaf_index = _stamp(command), value.get("leaf_index")
        if leaf_index is not None and type(command) is c.AppendMessage and not value.get("existing"):
            entry = journal.HELD_BY_CORPUS  # its leaf and its row hold it (recovery._rebuild_entries)
        if batch is None:
            self.conn.execute(
                "INSERT INTO applied_requests(request_id, log_index, result) VALUES (?, ?, ?)",
                (command.request_id, index, encoded),
            )
            journal.record(self.conn, index, entry, at, leaf_index)
        else:
            batch.requests.append((command.request_id, index, encoded))
            batch.outcomes[command.request_id] = encoded
            batch.journal.append((index, at, leaf_index, entry))
            batch.held += 1
        self._pending.append((command, result))
        return result

    def catch_up_search_index(self) -> bool:
        """Index every message not in the full-text index yet, now (a reader of the index wants
        what was written before it; search_index.py). Waits for an apply transaction under way.
        Returns whether there was anything to index."""
        if self.search_index.since is None:
            return False
        with self._lock:
            if self.search_index.since is None or self._in_txn:
                return False
            # Not fsynced: it holds only derived rows and the watermark, lost or kept together,
            # and the next fsynced COMMIT makes it durable (WAL frames are ordered).
            synchronous = self.conn.execute("PRAGMA synchronous").fetchall()[0][0]
            self.conn.execute("PRAGMA synchronous = OFF")
            try:
                self.begin()
                try:
                    self.search_index.index(self.conn)
                except BaseException:
                    self.abort()
                    raise
                self.commit()
            finally:
                self.conn.execute(f"PRAGMA synchronous = {int(synchronous)}")
            return True

    def _stored_outcome(self, request_id: str) -> ApplyResult | None:
        """The first outcome of a request id seen before (a client retry), else None."""
        batch = self._batch
        if batch is not None:
            raw = batch.outcomes.get(request_id)
        else:
            row = self._one("SELECT result FROM applied_requests WHERE request_id = ?", (request_id,))
            raw = row[0] if row else None
        return None if raw is None else _result_decoder.decode(raw)

    def _write_mark(self, batch: _BatchWrites) -> tuple[int, int, int]:
        """What a command has written so far, directly or held (compared around a failure)."""
        return (self.conn.total_changes(), batch.held, self.ledger.held() if self.ledger is not None else 0)

    @staticmethod
    def _failure(command: c.Command, index: int) -> ApplyResult:
        """The stored outcome of the exception being handled (called inside ``except``)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, Rejected):
            return ApplyResult(
                index=index, request_id=command.request_id, ok=False, error_code=exc.code, error_message=exc.message
            )
        if isinstance(exc, (apsw.ConstraintError, ValueError, TypeError)):
            return ApplyResult(
                index=index, request_id=command.request_id, ok=False, error_code="invalid", error_message=str(exc)
            )
        # a bug in a handler: deterministic on every node, so store it
        log.error("command %s failed to apply", type(command).__name__, exc_info=exc)
        return ApplyResult(
            index=index, request_id=command.request_id, ok=False, error_code="internal",
            error_message=f"{type(exc).__name__}: {exc}",
        )

    def _rollback_savepoint(self) -> None:
        self.conn.execute("ROLLBACK TO cmd")
        self.conn.execute("RELEASE cmd")
        if self.ledger is not None:
            self.ledger.reset_cache()

    # -- handlers ------------------------------------------------------------------------

    def _one(self, sql: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        rows = self.conn.execute(sql, args).fetchall()
        return rows[0] if rows else None

    def _noop(self, cmd: c.Noop, index: int) -> dict[str, Any]:
        return {}

    def _create_user(self, cmd: c.CreateUser, index: int) -> dict[str, Any]:
        if cmd.role not in ("user", "admin"):
            raise Rejected("invalid", f"role must be user or admin, not {cmd.role!r}")
        existing = self._one("SELECT user_id, role FROM users WHERE name = ?", (cmd.name,))
        if existing is not None:
            raise Rejected("conflict", f"user {cmd.name!r} exists")
        self.conn.execute(
            "INSERT INTO users(user_id, name, role, created_at, retention_days) VALUES (?, ?, ?, ?, ?)",
            (cmd.user_id, cmd.name, cmd.role, cmd.created_at, cmd.retention_days),
        )
        return {"user_id": cmd.user_id}

    def _set_retention(self, cmd: c.SetUserRetention, index: int) -> dict[str, Any]:
        changed = self.conn.execute(
            "UPDATE users SET retention_days = ? WHERE user_id = ? RETURNING user_id", (cmd.retention_days, cmd.user_id)
        ).fetchall()
        if not changed:
            raise Rejected("not_found", "no such user")
        return {"user_id": cmd.user_id}

    def _record_plate(self, cmd: c.RecordPlate, index: int) -> dict[str, Any]:
        existing = self._one("SELECT sha256 FROM plates WHERE version = ?", (cmd.version,))
        if existing is not None:
            if existing[0] != cmd.sha256:
                raise Rejected("conflict", f"plate version {cmd.version!r} is recorded with other content")
            return {"version": cmd.version, "new": False}
        self.conn.execute(
            "INSERT INTO plates(version, sha256, name, content, recorded_at, log_index) VALUES (?, ?, ?, ?, ?, ?)",
            (cmd.version, cmd.sha256, cmd.name, cmd.content, cmd.recorded_at, index),
        )
        return {"version": cmd.version, "new": True}

    def _start_conversation(self, cmd: c.StartConversation, index: int) -> dict[str, Any]:
        if self._one("SELECT 1 FROM users WHERE user_id = ?", (cmd.user_id,)) is None:
            raise Rejected("not_found", "no such user")
        if self._one("SELECT 1 FROM conversations WHERE session_id = ?", (cmd.session_id,)) is not None:
            raise Rejected("conflict", "session id exists")
        self.conn.execute(
            "INSERT INTO conversations(session_id, user_id, title, status, created_at, plate_version, plate_sha256,"
            " metadata) VALUES (?, ?, ?, 'active', ?, ?, ?, ?)",
            (
                cmd.session_id,
                cmd.user_id,
                cmd.title,
                cmd.created_at,
                cmd.plate_version,
                cmd.plate_sha256,
                _json(cmd.metadata),
            ),
        )
        return {"session_id": cmd.session_id}

    def _end_conversation(self, cmd: c.EndConversation, index: int) -> dict[str, Any]:
        row = self._one("SELECT status, message_count FROM conversations WHERE session_id = ?", (cmd.session_id,))
        if row is None:
            raise Rejected("not_found", "no such conversation")
        if row[0] == "ended":
            return {"session_id": cmd.session_id, "already_ended": True, "message_count": row[1]}
        self.conn.execute(
            "UPDATE conversations SET status = 'ended', ended_at = ?, end_reason = ? WHERE session_id = ?",
            (cmd.ended_at, cmd.reason, cmd.session_id),
        )
        self.conn.execute(
            "UPDATE instance_registry SET status = 'terminated', terminated_at = ?, termination_reason = ?"
            " WHERE session_id = ? AND status != 'terminated'",
            (cmd.ended_at, "conversation ended", cmd.session_id),
        )
        return {"session_id": cmd.session_id, "already_ended": False, "message_count": row[1]}

    def _conversation(self, session_id: str) -> tuple[str, str, int] | None:
        """(user_id, status, message_count); inside a Batch as its held rows left them."""
        batch = self._batch
        if batch is not None:
            known = batch.conversations.get(session_id)
            if known is not None:
                return known
        row = self._one("SELECT user_id, status, message_count FROM conversations WHERE session_id = ?", (session_id,))
        if row is not None and batch is not None:
            batch.conversations[session_id] = row  # type: ignore[assignment]
        return row  # type: ignore[return-value]

    def _append_message(self, cmd: c.AppendMessage, index: int) -> dict[str, Any]:
        conv = self._conversation(cmd.session_id)
        if conv is None:
            raise Rejected("not_found", "no such conversation")
        if conv[0] != cmd.user_id:
            raise Rejected("not_found", "no such conversation")
        if conv[1] != "active":
            raise Rejected("conversation_ended", "the conversation has ended")
        if cmd.role not in ("user", "assistant"):
            raise Rejected("invalid", f"role must be user or assistant, not {cmd.role!r}")
        batch = self._batch
        if cmd.idempotency_key is not None:
            known = batch.message_keys.get((cmd.session_id, cmd.idempotency_key)) if batch is not None else None
            if known is not None:
                return {"message_id": known[0], "seq": known[1], "existing": True}
            existing = self._one(
                "SELECT message_id, seq FROM messages WHERE session_id = ? AND idempotency_key = ?",
                (cmd.session_id, cmd.idempotency_key),
            )
            if existing is not None:
                return {"message_id": existing[0], "seq": existing[1], "existing": True}
        if cmd.kind == "validation":
            self._flush_and_hold()  # the query below reads the messages table
            # Validation answers (continuity/instances.py) take seq -1, -2, …: the conversation's
            # own seq and message_count stay dense and count only what its owner sees.
            low = self._one("SELECT min(seq) FROM messages WHERE session_id = ? AND seq < 0", (cmd.session_id,))
            seq = (low[0] if low is not None and low[0] is not None else 0) - 1
        elif cmd.kind == "chat":
            seq = conv[2] + 1
        else:
            raise Rejected("invalid", f"kind must be chat or validation, not {cmd.kind!r}")
        digest = cmd.content_sha256 or c.content_sha256(cmd.content)
        if cmd.content_sha256 is not None and cmd.content:  # only an erased journal entry has a hash alone
            raise Rejected("invalid", "content_sha256 is only for erased (empty) content")
        row = (
            cmd.message_id,
            cmd.session_id,
            cmd.user_id,
            seq,
            cmd.role,
            cmd.kind,
            cmd.content,
            digest,
            cmd.created_at,
            cmd.tokens,
            cmd.idempotency_key,
            cmd.reply_to,
            cmd.model,
            cmd.instance_id,
            _json(cmd.manifest),
            _json(cmd.usage),
            _json(cmd.character_snapshot),
            _json(cmd.relational_state),
            _json(cmd.metrics),
            index,
            cmd.erased_at,
        )
        if cmd.kind == "chat":
            self.search_index.note_append(self.conn)
        if batch is None:
            self.conn.execute(_INSERT_MESSAGE + " VALUES " + _MESSAGE_VALUES, row)
            if cmd.kind == "chat":
                self.conn.execute(
                    "UPDATE conversations SET message_count = ?, last_message_at = ? WHERE session_id = ?",
                    (seq, cmd.created_at, cmd.session_id),
                )
        else:
            batch.messages.append(row)
            batch.held += 1
            if cmd.idempotency_key is not None:
                batch.message_keys[(cmd.session_id, cmd.idempotency_key)] = (cmd.message_id, seq)
            if cmd.kind == "chat":
                batch.conversations[cmd.session_id] = (conv[0], conv[1], seq)
                batch.counters[cmd.session_id] = (seq, cmd.created_at)
        metrics = cmd.metrics or {}
        if cmd.character_snapshot is not None:
            self.conn.execute(
                "INSERT INTO character_evolution(session_id, message_id, instance_id, created_at, character_vector,"
                " relational_state, drift_baseline, drift_consensus) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    cmd.session_id,
                    cmd.message_id,
                    cmd.instance_id,
                    cmd.created_at,
                    _json(cmd.character_snapshot),
                    _json(cmd.relational_state),
                    metrics.get("drift_baseline"),
                    metrics.get("drift_consensus"),
                ),
            )
        if cmd.metrics is not None:
            self.conn.execute(
                "INSERT INTO consciousness_metrics(session_id, message_id, created_at, phi, ccc, trust, emergence,"
                " drift, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    cmd.session_id,
                    cmd.message_id,
                    cmd.created_at,
                    metrics.get("phi"),
                    metrics.get("ccc"),
                    metrics.get("trust"),
                    metrics.get("emergence"),
                    metrics.get("drift_baseline"),
                    _json(metrics),
                ),
            )
        if cmd.instance_id is not None:
            self.conn.execute(
                "UPDATE instance_registry SET last_heartbeat = ?,"
                " character_vector = coalesce(?, character_vector), drift = coalesce(?, drift)"
                " WHERE instance_id = ?",
                (cmd.created_at, _json(cmd.character_snapshot), metrics.get("drift_consensus"), cmd.instance_id),
            )
        return {"message_id": cmd.message_id, "seq": seq, "existing": False}

    def _register_instance(self, cmd: c.RegisterInstance, index: int) -> dict[str, Any]:
        self.conn.execute(
            "INSERT INTO instance_registry(instance_id, session_id, node_id, status, spawned_at, last_heartbeat,"
            " plate_version, validation) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(instance_id) DO UPDATE SET status = excluded.status, validation = excluded.validation,"
            " last_heartbeat = excluded.last_heartbeat",
            (
                cmd.instance_id,
                cmd.session_id,
                cmd.node_id,
                cmd.status,
                cmd.spawned_at,
                cmd.spawned_at,
                cmd.plate_version,
                _json(cmd.validation),
            ),
        )
        return {"instance_id": cmd.instance_id}

    def _terminate_instance(self, cmd: c.TerminateInstance, index: int) -> dict[str, Any]:
        changed = self.conn.execute(
            "UPDATE instance_registry SET status = 'terminated', terminated_at = ?, termination_reason = ?"
            " WHERE instance_id = ? AND status != 'terminated' RETURNING instance_id",
            (cmd.at, cmd.reason, cmd.instance_id),
        ).fetchall()
        return {"instance_id": cmd.instance_id, "terminated": bool(changed)}

    def _record_consensus(self, cmd: c.RecordConsensus, index: int) -> dict[str, Any]:
        if not math.isfinite(cmd.latency_ms):  # SQLite would store ±inf in a REAL column
            raise Rejected("invalid", "latency_ms must be a finite number")
        self.conn.execute(
            "INSERT INTO consensus_log(round_id, created_at, term, node_id, instance_count, consensus_vector,"
            " outliers, drifts, latency_ms, log_index) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                cmd.round_id,
                cmd.created_at,
                cmd.term,
                cmd.node_id,
                cmd.instance_count,
                _json(cmd.consensus_vector),
                _json(cmd.outliers),
                _json(cmd.drifts),
                cmd.latency_ms,
                index,
            ),
        )
        return {"round_id": cmd.round_id}

    def _seal_block(self, cmd: c.SealBlock, index: int) -> dict[str, Any]:
        if self.ledger is None:
            raise Rejected("unavailable", "this node keeps no ledger")
        try:
            block = self.ledger.seal(cmd.block_number, cmd.tree_size, cmd.sealed_at_ms, cmd.data_snapshot)
        except Exception as exc:  # SealRefused, or a key problem: a stored refusal, never a stalled log
            raise Rejected("conflict", str(exc)) from None
        return {"block_number": block.block_number, "tree_size": block.tree_size, "current_hash": block.current_hash}

    def _erase_user_data(self, cmd: c.EraseUserData, index: int) -> dict[str, Any]:
        # On a journal replay the messages this erasure removed arrive already erased (their
        # journal entries were scrubbed) with this very time: count them again.
        erased = erase_messages(self.conn, cmd.user_id, cmd.before, cmd.erased_at, recount_replayed=True)
        self.conn.execute(
            "INSERT INTO erasures(user_id, erased_at, before, reason, messages_erased, log_index)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (cmd.user_id, cmd.erased_at, cmd.before, cmd.reason, erased, index),
        )
        return {"messages_erased": erased}


def erase_messages(
    conn: apsw.Connection, user_id: str, before: str | None, erased_at: str, *, recount_replayed: bool
) -> int:
    """Empty the content of a user's messages (created before ``before``, if given), keep their
    hash, stamp ``erased_at`` and scrub their journal entries, so no replay brings the content
    back. Returns how many messages it erased; with ``recount_replayed`` the messages already
    erased at this very time (a journal replay of the erasure) count too."""
    sql = "UPDATE messages SET content = '', erased_at = ? WHERE user_id = ?"
    args: list[Any] = [erased_at, user_id]
    if recount_replayed:
        sql += " AND (erased_at IS NULL OR erased_at = ?)"
        args.append(erased_at)
    else:
        sql += " AND erased_at IS NULL"
    if before is not None:
        sql += " AND created_at < ?"
        args.append(before)
    rows = conn.execute(sql + " RETURNING log_index", args).fetchall()
    journal.rewrite(conn, [r[0] for r in rows], lambda e: c.erased_entry(e, erased_at))
    return len(rows)


_INSERT_MESSAGE = (
    "INSERT INTO messages(message_id, session_id, user_id, seq, role, kind, content, content_sha256,"
    " created_at, tokens, idempotency_key, reply_to, model, instance_id, manifest, usage,"
    " character_snapshot, relational_state, metrics, log_index, erased_at)"
)
_MESSAGE_VALUES = "(" + ",".join("?" * 21) + ")"
_ROWS_PER_INSERT = 256  # 21 parameters a row: 11 KiB of SQL, short enough to stay prepared (insert_many)

_STAMPS = ("created_at", "recorded_at", "ended_at", "spawned_at", "at", "erased_at")


def _stamp(command: c.Command) -> str | None:
    """The proposer's timestamp of a command (for the journal's time index), if it has one."""
    for attr in _STAMPS:
        value = getattr(command, attr, None)
        if isinstance(value, str):
            return value
    return None


def _ref(command: c.Command) -> str:
    """The corpus row a leaf belongs to, so an audit can compare leaf and row."""
    for attr in ("message_id", "session_id", "instance_id", "round_id", "user_id", "version"):
        value = getattr(command, attr, None)
        if isinstance(value, str):
            return value
    if isinstance(command, c.SealBlock):
        return str(command.block_number)
    return command.request_id
