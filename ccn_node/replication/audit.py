"""``ccn-node verify``: the full local audit — every corpus row against the ledger leaf of the
command that wrote it, plus the tree, every block link and every signature (ledger.chain.audit).

The corpus check lives here, not in ``ledger``, because it has to know the commands. It
walks the leaves in order and the ``messages`` table in rowid order side by side (both are in
apply order), so the million-row case is two sequential scans, not a million lookups; the
other tables are small and read into dicts. It runs in a second process beside the tree
audit: both are per-row Python work, and the node runs on 2 cores.

What is compared: for each leaf, the fields its command set in the row it wrote. Mutable
state (an instance's status, a user's retention) is compared with the last command that set
it; derived rows (character_evolution, consciousness_metrics) are not checked.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw
import msgspec

from ccn_node.ledger.chain import AuditReport, Problem, audit
from ccn_node.replication import commands as c

_json_decode = msgspec.json.decode
_mp_encode = msgspec.msgpack.Encoder().encode
_mp_decode = msgspec.msgpack.decode
_Raw = msgspec.Raw
_NIL = _Raw(b"\xc0")


class _LeafMessage(msgspec.Struct, tag_field="t", tag="msg.append", kw_only=True, frozen=True, gc=False):
    """The ``msg.append`` leaf as the audit reads it: JSON-like fields stay raw msgpack (no
    dicts or float lists built per row) and instances are not GC-tracked — 3x faster to
    decode than ``commands.AppendMessage``. Lists every field of AppendMessage in its order
    (the base's ``request_id`` last, as msgspec orders it); checked at import below."""

    message_id: str
    session_id: str
    user_id: str
    role: str
    content: str
    created_at: str
    tokens: int
    idempotency_key: str | None = None
    reply_to: str | None = None
    model: str | None = None
    manifest: msgspec.Raw = _NIL
    usage: msgspec.Raw = _NIL
    character_snapshot: msgspec.Raw = _NIL
    relational_state: msgspec.Raw = _NIL
    metrics: msgspec.Raw = _NIL
    instance_id: str | None = None
    kind: str = "chat"
    content_sha256: str | None = None
    erased_at: str | None = None
    request_id: str


if (_LeafMessage.__struct_fields__, _LeafMessage.__struct_config__.tag) != (
    c.AppendMessage.__struct_fields__, c.AppendMessage.__struct_config__.tag
):  # drift would make the audit misread (or reject) every message leaf: fail at import instead
    raise ImportError(
        f"audit._LeafMessage fields {_LeafMessage.__struct_fields__} no longer match commands.AppendMessage"
        f" {c.AppendMessage.__struct_fields__}: update _LeafMessage"
    )

_decode_message = msgspec.msgpack.Decoder(_LeafMessage).decode

_MSG_COLUMNS = (
    "message_id", "session_id", "user_id", "role", "kind", "content_sha256", "created_at", "tokens",
    "idempotency_key", "reply_to", "model", "instance_id",
)
_MSG_JSON = ("manifest", "usage", "character_snapshot", "relational_state", "metrics")
_MSG_SQL = (f"SELECT rowid, {', '.join(_MSG_COLUMNS)}, {', '.join(_MSG_JSON)}, content, erased_at"
            " FROM messages ORDER BY rowid")
_MSG_RANGE_SQL = _MSG_SQL.replace(" ORDER BY", " WHERE rowid >= ? AND rowid < ? ORDER BY")
_LEAF_SQL = {
    # all leaves; leaves before the split plus every non-message leaf; message leaves from the split on
    "all": "SELECT idx, kind, ref, leaf_bytes FROM ledger_leaves WHERE ? <= ? ORDER BY idx",
    "head": "SELECT idx, kind, ref, leaf_bytes FROM ledger_leaves WHERE idx < ? OR kind != 'msg.append' ORDER BY idx",
    "tail": "SELECT idx, kind, ref, leaf_bytes FROM ledger_leaves WHERE idx >= ? AND kind = 'msg.append' ORDER BY idx",
}
_MAX_ROWID = (1 << 63) - 1
_N = len(_MSG_COLUMNS)


PARALLEL_SPLIT = 0.75
"""Share of the leaves whose corpus rows the second process checks (the tree audit costs this
process about half as much as the whole corpus check)."""


@dataclass(frozen=True)
class VerifyReport:
    """The ledger audit and the corpus check together; ``problem`` is the first failure."""

    ledger: AuditReport
    corpus_rows: int
    corpus_problem: Problem | None
    seconds: float

    @property
    def problem(self) -> Problem | None:
        return self.ledger.problem or self.corpus_problem

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if self.problem is not None:
            return f"verify FAILED: {self.problem}"
        return (f"verify OK: {self.ledger.leaves} leaves match {self.corpus_rows} corpus rows; tree, "
                f"{self.ledger.blocks} blocks and their signatures verified in {self.seconds:.2f} s")


class _Bad(Exception):
    def __init__(self, table: str, row: str, message: str) -> None:
        self.problem = Problem(table, row, message)


def _differs(table: str, row_id: str, fields: Iterable[str], have: Iterable[Any], want: Iterable[Any]) -> None:
    for name, h, w in zip(fields, have, want, strict=True):
        if h != w:
            raise _Bad(table, row_id, f"{name} is {_short(h)}, the ledger leaf says {_short(w)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_value(raw: str | None) -> Any:
    return None if raw is None else _json_decode(raw)


class CorpusCheck:
    """One forward pass over the leaves; raises _Bad at the first row that disagrees."""

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn
        self.rows = 0
        q = conn.execute
        self.users = {r[0]: r for r in q("SELECT user_id, name, role, created_at, retention_days FROM users")}
        self.plates = {r[0]: r for r in q("SELECT version, sha256, name, content, recorded_at FROM plates")}
        self.convs = {r[0]: r for r in q(
            "SELECT session_id, user_id, title, created_at, plate_version, plate_sha256, metadata, status, ended_at,"
            " end_reason FROM conversations")}
        self.instances = {r[0]: r for r in q(
            "SELECT instance_id, session_id, node_id, spawned_at, plate_version FROM instance_registry")}
        self.rounds = {r[0]: r for r in q(
            "SELECT round_id, created_at, term, node_id, instance_count, consensus_vector, outliers, drifts,"
            " latency_ms FROM consensus_log")}
        self.blocks = {r[0]: r for r in q("SELECT block_number, tree_size, timestamp, data_snapshot"
                                          " FROM verification_chain")}
        self.erasures = list(q("SELECT id, user_id, erased_at, before, reason FROM erasures ORDER BY id"))
        self.rows = sum(map(len, (self.users, self.plates, self.convs, self.instances, self.rounds, self.blocks,
                                  self.erasures)))
        self.seen: dict[str, set[str]] = {k: set() for k in ("users", "plates", "conversations",
                                                             "instance_registry", "consensus_log")}
        self.retention: dict[str, int | None] = {}
        self.ended: set[str] = set()
        self.erasure_i = 0

    def run(self, part: str = "all", split: tuple[int, int] = (0, 0)) -> None:
        """Check the leaves of ``part`` against their rows: "all", or the two halves of a
        split at (leaf index, messages rowid) — "head" (every non-message leaf, the message
        leaves and rows before the split, and the whole-table checks) and "tail" (the message
        leaves and rows from the split on)."""
        leaf_at, rowid_at = split
        lo, hi = {"all": (0, _MAX_ROWID), "head": (0, rowid_at), "tail": (rowid_at, _MAX_ROWID)}[part]
        msgs = self.conn.cursor().execute(_MSG_RANGE_SQL, (lo, hi))
        nxt = next(msgs, None)
        decode, decode_message = c.decode, _decode_message
        sha = hashlib.sha256
        for idx, kind, ref, data in self.conn.cursor().execute(
            _LEAF_SQL[part], (0, 0) if part == "all" else (leaf_at,)
        ):
            try:
                cmd = decode_message(data) if kind == "msg.append" else decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError, TypeError):
                raise _Bad("ledger_leaves", str(idx), f"leaf bytes are not a {kind} command") from None
            if kind == "msg.append":
                if nxt is not None and nxt[1] == ref:
                    row, nxt = nxt, next(msgs, None)
                else:
                    row = self._message_elsewhere(cmd, idx)
                    if row is None:
                        continue
                self.rows += 1
                digest = cmd.content.removeprefix(c.LEAF_CONTENT_PREFIX)
                want = (cmd.message_id, cmd.session_id, cmd.user_id, cmd.role, cmd.kind, digest, cmd.created_at,
                        cmd.tokens, cmd.idempotency_key, cmd.reply_to, cmd.model, cmd.instance_id)
                if row[1:_N + 1] != want:
                    _differs("messages", row[1], _MSG_COLUMNS, row[1:_N + 1], want)
                for i, name in enumerate(_MSG_JSON, _N + 1):
                    text, packed = row[i], getattr(cmd, name)
                    if text is None:
                        if packed != _NIL:
                            raise _Bad("messages", row[1], f"{name} is NULL, the ledger leaf has a value")
                    elif _Raw(_mp_encode(_json_decode(text))) != packed and _json_decode(text) != _mp_decode(packed):
                        raise _Bad("messages", row[1], f"{name} differs from the ledger leaf")
                content, erased = row[-2], row[-1]
                if erased is None:
                    if sha(content.encode()).hexdigest() != row[6]:
                        raise _Bad("messages", row[1], "content does not hash to content_sha256")
                elif content:
                    raise _Bad("messages", row[1], f"erased at {erased} but content is not empty")
            else:
                self._other(idx, kind, cmd)
        if nxt is not None:
            raise _Bad("messages", nxt[1], "no ledger leaf for this row")
        if part != "tail":
            self._finish()

    def _message_elsewhere(self, cmd: Any, idx: int) -> tuple[Any, ...] | None:
        """A leaf whose row is not next in rowid order: an idempotent retry (no new row), or a
        row deleted / moved out of order."""
        if not isinstance(cmd, _LeafMessage):
            raise _Bad("ledger_leaves", str(idx), "kind msg.append but the bytes are another command")
        row = self.conn.execute(_MSG_SQL.replace(" ORDER BY rowid", " WHERE message_id = ?"),
                                (cmd.message_id,)).fetchone()
        if row is not None:
            raise _Bad("messages", cmd.message_id, "row is out of apply order (rowid sequence disagrees with the "
                                                   "ledger)")
        if cmd.idempotency_key is not None and self.conn.execute(
            "SELECT 1 FROM messages WHERE session_id = ? AND idempotency_key = ?",
            (cmd.session_id, cmd.idempotency_key),
        ).fetchone() is not None:
            return None  # a retry answered from the existing row: a leaf, no row
        raise _Bad("messages", cmd.message_id, f"row is missing (ledger leaf {idx} records it)")

    def _other(self, idx: int, kind: str, cmd: Any) -> None:
        if isinstance(cmd, c.StartConversation):
            row = self._row(self.convs, "conversations", cmd.session_id, idx)
            _differs("conversations", cmd.session_id,
                     ("user_id", "title", "created_at", "plate_version", "plate_sha256", "metadata"),
                     (*row[1:6], _json_value(row[6])),
                     (cmd.user_id, cmd.title, cmd.created_at, cmd.plate_version, cmd.plate_sha256, cmd.metadata))
        elif isinstance(cmd, c.EndConversation):
            row = self._row(self.convs, "conversations", cmd.session_id, idx, mark=False)
            if cmd.session_id not in self.ended:
                self.ended.add(cmd.session_id)
                _differs("conversations", cmd.session_id, ("status", "ended_at", "end_reason"), row[7:10],
                         ("ended", cmd.ended_at, cmd.reason))
        elif isinstance(cmd, c.CreateUser):
            row = self._row(self.users, "users", cmd.user_id, idx)
            _differs("users", cmd.user_id, ("name", "role", "created_at"), row[1:4],
                     (cmd.name, cmd.role, cmd.created_at))
            self.retention[cmd.user_id] = cmd.retention_days
        elif isinstance(cmd, c.SetUserRetention):
            self._row(self.users, "users", cmd.user_id, idx, mark=False)
            self.retention[cmd.user_id] = cmd.retention_days
        elif isinstance(cmd, c.RecordPlate):
            row = self._row(self.plates, "plates", cmd.version, idx)
            want_hash = cmd.content.removeprefix(c.LEAF_CONTENT_PREFIX)
            if hashlib.sha256(row[3].encode()).hexdigest() != want_hash:
                raise _Bad("plates", cmd.version, "content does not hash to the ledger leaf's content hash")
            _differs("plates", cmd.version, ("sha256", "name"), row[1:3], (cmd.sha256, cmd.name))
        elif isinstance(cmd, c.RegisterInstance):
            row = self._row(self.instances, "instance_registry", cmd.instance_id, idx)
            _differs("instance_registry", cmd.instance_id, ("session_id", "node_id", "plate_version"),
                     (row[1], row[2], row[4]), (cmd.session_id, cmd.node_id, cmd.plate_version))
        elif isinstance(cmd, c.TerminateInstance):
            self._row(self.instances, "instance_registry", cmd.instance_id, idx, mark=False)
        elif isinstance(cmd, c.RecordConsensus):
            row = self._row(self.rounds, "consensus_log", cmd.round_id, idx)
            _differs("consensus_log", cmd.round_id,
                     ("created_at", "term", "node_id", "instance_count", "consensus_vector", "outliers", "drifts",
                      "latency_ms"),
                     (*row[1:5], *map(_json_value, row[5:8]), row[8]),
                     (cmd.created_at, cmd.term, cmd.node_id, cmd.instance_count, cmd.consensus_vector, cmd.outliers,
                      cmd.drifts, cmd.latency_ms))
        elif isinstance(cmd, c.SealBlock):
            row = self.blocks.get(cmd.block_number)
            if row is None:
                raise _Bad("verification_chain", str(cmd.block_number), f"block is missing (ledger leaf {idx})")
            _differs("verification_chain", str(cmd.block_number), ("tree_size", "timestamp", "data_snapshot"),
                     row[1:4], (cmd.tree_size, cmd.sealed_at_ms, cmd.data_snapshot))
        elif isinstance(cmd, c.EraseUserData):
            if self.erasure_i >= len(self.erasures):
                raise _Bad("erasures", "?", f"row is missing (ledger leaf {idx} records an erasure)")
            row = self.erasures[self.erasure_i]
            self.erasure_i += 1
            _differs("erasures", str(row[0]), ("user_id", "erased_at", "before", "reason"), row[1:5],
                     (cmd.user_id, cmd.erased_at, cmd.before, cmd.reason))
        else:
            raise _Bad("ledger_leaves", str(idx), f"unexpected command kind {kind!r} in the ledger")

    def _row(self, table: dict[str, Any], name: str, key: str, idx: int, mark: bool = True) -> Any:
        row = table.get(key)
        if row is None:
            raise _Bad(name, key, f"row is missing (ledger leaf {idx} records it)")
        if mark:
            self.seen[name].add(key)
        return row

    def _finish(self) -> None:
        for user_id, days in self.retention.items():
            if self.users[user_id][4] != days:
                raise _Bad("users", user_id, f"retention_days is {self.users[user_id][4]}, the ledger says {days}")
        for name, table in (("users", self.users), ("plates", self.plates), ("conversations", self.convs),
                            ("instance_registry", self.instances), ("consensus_log", self.rounds)):
            extra = set(table) - self.seen[name]
            if extra:
                raise _Bad(name, sorted(extra)[0], "no ledger leaf for this row")
        ended_rows = {k for k, r in self.convs.items() if r[7] == "ended"}
        if ended_rows - self.ended:
            raise _Bad("conversations", sorted(ended_rows - self.ended)[0], "ended, but no ledger leaf ends it")
        if self.erasure_i < len(self.erasures):
            raise _Bad("erasures", str(self.erasures[self.erasure_i][0]), "no ledger leaf for this row")


def check_corpus(conn: apsw.Connection, part: str = "all", split: tuple[int, int] = (0, 0)
                 ) -> tuple[int, Problem | None]:
    """Compare the corpus rows with their leaves on ``conn`` (one read transaction)."""
    conn.execute("BEGIN")
    try:
        check = CorpusCheck(conn)
        if part == "tail":
            check.rows = 0
        try:
            check.run(part, split)
        except _Bad as bad:
            return check.rows, bad.problem
        return check.rows, None
    finally:
        conn.execute("COMMIT")


def _split_point(conn: apsw.Connection, fraction: float) -> tuple[int, int] | None:
    """A message leaf near ``fraction`` of the log whose row exists: (leaf index, rowid)."""
    n = conn.execute("SELECT count(*) FROM ledger_leaves").fetchone()[0]
    for idx, ref in conn.execute("SELECT idx, ref FROM ledger_leaves WHERE idx >= ? AND kind = 'msg.append'"
                                 " ORDER BY idx LIMIT 8", (int(n * fraction),)):
        row = conn.execute("SELECT rowid FROM messages WHERE message_id = ?", (ref,)).fetchone()
        if row is not None:
            return idx, row[0]
    return None


def _check_file(path: str, part: str = "all", split: tuple[int, int] = (0, 0)
                ) -> tuple[int, tuple[str, str, str] | None]:
    """Child-process entry point: its own read-only connection."""
    conn = _open(path)
    try:
        rows, problem = check_corpus(conn, part, split)
    finally:
        conn.close()
    return rows, None if problem is None else (problem.table, problem.row, problem.message)


def _open(path: str) -> apsw.Connection:
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    conn.setbusytimeout(5000)
    conn.execute("PRAGMA cache_size = -65536; PRAGMA mmap_size = 1073741824")
    return conn


def verify_database(path: str | Path, verifiers: list[Any], *, origin: str | None,
                    parallel: bool = True) -> VerifyReport:
    """The full audit of a node's database file, read-only (the node may be running).

    With ``parallel`` a second process checks the first ``PARALLEL_SPLIT`` of the corpus while
    this one audits the tree and the chain, then checks the rest of the messages: the two
    halves cost about the same on 2 cores. Each reads its own consistent snapshot.
    """
    start = time.perf_counter()
    path = str(path)
    if parallel:
        conn = _open(path)
        try:
            split = _split_point(conn, PARALLEL_SPLIT)
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
                future = pool.submit(_check_file, path, "all" if split is None else "head", split or (0, 0))
                report = audit(conn, verifiers, origin=origin)
                rows_tail, tail = (0, None) if split is None else check_corpus(conn, "tail", split)
                rows, raw = future.result()
        finally:
            conn.close()
        problem = Problem(*raw) if raw is not None else tail
        rows += rows_tail
    else:
        conn = _open(path)
        try:
            report = audit(conn, verifiers, origin=origin)
            rows, problem = check_corpus(conn)
        finally:
            conn.close()
    return VerifyReport(report, rows, problem, time.perf_counter() - start)


def run_verify_bench(n: int = 1_000_000, block_every: int = 1000, per_conversation: int = 1000) -> dict[str, Any]:
    """``verify`` on an ``n``-message corpus (conversations of ``per_conversation`` messages,
    half of them assistant turns with usage and metrics), built in bulk in a temporary file:
    the corpus rows, their leaves, the tree and a signed block every ``block_every`` leaves.
    Returns the audit time with the corpus check (target ≤ 5 s at 1M) and the build time."""
    import tempfile

    from ccn_node.ledger.chain import CheckpointSigner, canonical_json, insert_block, next_block
    from ccn_node.ledger.note import NoteSigner
    from ccn_node.ledger.schema import ledger_schema_sql
    from ccn_node.ledger.tree_store import MerkleTree
    from ccn_node.store.schema import migrate

    origin = "bench.ccn.invalid/verify"
    key = NoteSigner.generate(origin)
    sha = hashlib.sha256
    with tempfile.TemporaryDirectory(prefix="ccn-verify-bench-") as tmp:
        path = Path(tmp) / "ccn.sqlite3"
        conn = apsw.Connection(str(path))
        conn.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF; PRAGMA cache_size=-65536")
        migrate(conn, [ledger_schema_sql()])
        for trig in ("messages_fts_insert", "messages_fts_delete", "messages_fts_update"):
            conn.execute(f"DROP TRIGGER IF EXISTS {trig}")  # bulk load: no full-text index needed here
        t0 = time.perf_counter()
        leaves: list[tuple[str, str, bytes]] = []
        msg_rows = []
        t_zero = "2025-01-01T00:00:00Z"
        user = c.CreateUser(request_id="r-u", user_id="u1", name="bench", role="user", created_at=t_zero)
        conn.execute("INSERT INTO users(user_id, name, role, created_at) VALUES ('u1', 'bench', 'user',"
                     " '2025-01-01T00:00:00Z')")
        leaves.append(("user.create", "u1", c.leaf_bytes(user)))
        conv_rows = []
        for i in range(n):
            s, seq = divmod(i, per_conversation)
            sid = f"c{s:07d}"
            if seq == 0:
                start = c.StartConversation(request_id=f"r-c{s}", session_id=sid, user_id="u1", title="",
                                            created_at=t_zero, plate_version="v1", plate_sha256="0" * 64)
                leaves.append(("conv.start", sid, c.leaf_bytes(start)))
                conv_rows.append((sid, min(per_conversation, n - i)))
            content = f"message {i} " + "lorem ipsum dolor sit amet " * 7
            assistant = i % 2 == 1
            usage = {"input_tokens": 100 + i % 50, "output_tokens": 40} if assistant else None
            metrics = {"ccc": 0.9, "phi": 0.5, "trust": 0.7} if assistant else None
            mid = f"m{i:08d}"
            created = f"2025-01-01T00:{(i // 60) % 60:02d}:{i % 60:02d}Z"
            cmd = c.AppendMessage(request_id=f"r{i}", message_id=mid, session_id=sid, user_id="u1",
                                  role="assistant" if assistant else "user", content=content, created_at=created,
                                  tokens=60, usage=usage, metrics=metrics, model="m" if assistant else None)
            leaves.append(("msg.append", mid, c.leaf_bytes(cmd)))
            digest = sha(content.encode()).hexdigest()
            msg_rows.append((mid, sid, "u1", seq + 1, cmd.role, content, digest, created, 60, cmd.model,
                             None if usage is None else json.dumps(usage, separators=(",", ":")),
                             None if metrics is None else json.dumps(metrics, separators=(",", ":")), i + 2))
        with conn:
            conn.executemany("INSERT INTO conversations(session_id, user_id, status, created_at, plate_version,"
                             " plate_sha256, message_count) VALUES (?, 'u1', 'active', '2025-01-01T00:00:00Z', 'v1', ?,"
                             " ?)", ((sid, "0" * 64, count) for sid, count in conv_rows))
            conn.executemany("INSERT INTO messages(message_id, session_id, user_id, seq, role, content,"
                             " content_sha256, created_at, tokens, model, usage, metrics, log_index)"
                             " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                             msg_rows)
            del msg_rows
            conn.executemany("INSERT INTO ledger_leaves(idx, kind, ref, leaf_bytes) VALUES (?, ?, ?, ?)",
                             ((i, k, r, b) for i, (k, r, b) in enumerate(leaves)))
            level = b"".join([sha(b"\x00" + b).digest() for _, _, b in leaves])
            total = len(leaves)
            del leaves
            lv = 0
            while True:
                count = len(level) // 32
                conn.executemany("INSERT INTO ledger_nodes(level, idx, hash) VALUES (?, ?, ?)",
                                 ((lv, i, level[32 * i: 32 * i + 32]) for i in range(count)))
                if count < 2:
                    break
                level = b"".join([sha(b"\x01" + level[i: i + 64]).digest() for i in range(0, 64 * (count // 2), 64)])
                lv += 1
            tree = MerkleTree(conn)
            signer = CheckpointSigner(conn, key)
            prev = None
            for size in range(block_every, total + 1, block_every):
                size, root, note = signer.sign_tree(tree, size)
                prev = next_block(prev, tree_size=size, root=root, timestamp=1_700_000_000_000 + size,
                                  data_snapshot=canonical_json({"ledger_size": size}), checkpoint=note)
                insert_block(conn, prev)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        build_s = time.perf_counter() - t0
        parallel = verify_database(path, [key.verifier()], origin=origin, parallel=True)
        serial = verify_database(path, [key.verifier()], origin=origin, parallel=False)
    return {
        "messages": n, "leaves": total, "build_s": build_s, "ok": parallel.ok and serial.ok,
        "summary": parallel.summary(),
        "verify_s": {"value": parallel.seconds, "target": 5.0, "met": parallel.seconds <= 5.0},
        "verify_serial_s": serial.seconds, "tree_and_chain_s": serial.ledger.seconds,
    }
