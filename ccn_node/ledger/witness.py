"""The witness: this node's own record of every pinned peer log, and C2SP add-checkpoint.

For each pinned origin the witness keeps the latest checkpoint it verified (size, root,
signed note) and never moves it back: a new checkpoint is accepted only with a valid RFC
6962 consistency proof from the recorded one, checked and stored in one SQLite write
transaction (c2sp.org/tlog-witness: check-and-persist must be atomic). Two valid signed
checkpoints of one origin that are not consistent are kept as self-contained fork evidence,
and that origin is no longer cosigned.

The state is node-local, in its own file (see DESIGN.md "Witness state"): each node is an
independent witness with its own cosigning key, so one key never speaks for two views.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw

from ccn_node.ledger import merkle
from ccn_node.ledger.merkle import ProofError
from ccn_node.ledger.note import (
    MAX_TREE_SIZE,
    Checkpoint,
    CosignatureSigner,
    CosignatureVerifier,
    Ed25519Verifier,
    MalformedNote,
    NoteError,
    Signature,
    b64decode_strict,
    b64encode,
    cosign,
    open_checkpoint,
    parse_checkpoint,
    parse_note,
    parse_signature_line,
    verify_cosignature,
)
from ccn_node.ledger.schema import witness_schema_sql

MAX_BODY_BYTES = 8192
"""Largest add-checkpoint body: 63 proof lines (~2.9 KB) plus a note with a dozen signatures."""
MAX_PROOF_LINES = 63
MAX_FUTURE_S = 300
"""Cosignatures dated more than 5 minutes ahead are refused (a fast clock would make a stale
view look fresh later)."""
MAX_FORKS_PER_ORIGIN = 50
"""Evidence rows kept per origin; reports come unauthenticated, so the table is bounded."""
TLOG_SIZE_TYPE = "text/x.tlog.size"

# The issue fixes these two statuses; c2sp.org/tlog-witness says 404 for an unknown origin
# and 409 for a same-size, different-root checkpoint (DESIGN.md "Status codes").
STATUS_UNKNOWN_ORIGIN = 403
STATUS_SAME_SIZE_OTHER_ROOT = 422

_OLD_RE = re.compile(r"old (0|[1-9][0-9]*)")


class WitnessError(Exception):
    """An add-checkpoint (or fork report) refused; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, code: str, message: str, size: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.size = size  # for 409: the size this witness last recorded


@dataclass(frozen=True)
class PinnedLog:
    """A peer log as pinned in ``[[federation.peers]]``: its origin, its log keys (several while
    a key rotates), where to reach it, and the cosigning keys of its own nodes."""

    origin: str
    verifiers: tuple[Ed25519Verifier, ...]
    url: str = ""
    witnesses: tuple[CosignatureVerifier, ...] = ()


@dataclass(frozen=True)
class AddCheckpoint:
    """A parsed add-checkpoint body: old size, consistency proof, the checkpoint note."""

    old_size: int
    proof: tuple[bytes, ...]
    note: str


@dataclass(frozen=True)
class Head:
    """The latest checkpoint of one origin this witness verified."""

    origin: str
    size: int
    root: bytes
    note: str
    source: str
    updated_ms: int

    def to_json(self) -> dict[str, Any]:
        return {"origin": self.origin, "size": self.size, "root": b64encode(self.root), "note": self.note,
                "source": self.source, "updated_ms": self.updated_ms}


@dataclass(frozen=True)
class ForkEvidence:
    """Two signed checkpoints of ``origin`` that cannot both be true, and why.

    Self-contained: anyone holding the origin's public key checks both notes; equal sizes
    with different roots need nothing else, otherwise ``proof`` is the consistency proof that
    was offered (or none) and fails to join the two roots.
    """

    origin: str
    note_a: str
    note_b: str
    proof: tuple[str, ...]
    reason: str
    confirmed: bool
    sources: tuple[str, ...] = ()
    detected_ms: int = 0
    id: int = 0

    @property
    def pair(self) -> str:
        """Order-independent identity of the two notes' checkpoint bodies."""
        a, b = sorted((_body(self.note_a), _body(self.note_b)))
        return hashlib.sha256(f"{self.origin}\n{a}\n{b}".encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "origin": self.origin, "note_a": self.note_a, "note_b": self.note_b,
                "proof": list(self.proof), "reason": self.reason, "confirmed": self.confirmed,
                "sources": list(self.sources), "detected_ms": self.detected_ms}


def _body(note: str) -> str:
    try:
        return parse_note(note).text
    except NoteError:
        return note


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- parsing --------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """A tree size as ASCII decimal without leading zeros, at most 2^63-1."""
    if not re.fullmatch(r"0|[1-9][0-9]{0,18}", text) or int(text) > MAX_TREE_SIZE:
        raise MalformedNote(f"invalid tree size {text[:32]!r}")
    return int(text)


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """Split ``old <size>\\n`` + proof lines + ``\\n`` + note; 400 (or 413) on anything else."""
    if len(body) > MAX_BODY_BYTES:
        raise WitnessError(413, "payload_too_large", f"add-checkpoint bodies are at most {MAX_BODY_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WitnessError(400, "malformed", "body is not UTF-8") from None
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise WitnessError(400, "malformed", "body needs an old size line, proof lines, a blank line, a checkpoint")
    lines = head.split("\n")
    match = _OLD_RE.fullmatch(lines[0])
    if match is None:
        raise WitnessError(400, "malformed", "first line must be 'old <size>' (decimal, no leading zeros)")
    try:
        old = parse_size(match.group(1))
    except MalformedNote as exc:
        raise WitnessError(400, "malformed", str(exc)) from None
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise WitnessError(400, "malformed", f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof = []
    for i, line in enumerate(lines[1:], 1):
        try:
            h = b64decode_strict(line)
        except MalformedNote as exc:
            raise WitnessError(400, "malformed", f"proof line {i}: {exc}") from None
        if len(h) != merkle.HASH_SIZE:
            raise WitnessError(400, "malformed", f"proof line {i}: a hash is 32 bytes")
        proof.append(h)
    return AddCheckpoint(old, tuple(proof), note)


def format_add_checkpoint(old_size: int, proof: Sequence[bytes], note: str) -> bytes:
    """The request body a log sends to a witness."""
    return ("".join([f"old {old_size}\n", *(b64encode(p) + "\n" for p in proof), "\n", note])).encode()


def parse_signature_lines(text: str, max_lines: int = 16) -> list[Signature]:
    """Signature lines of an add-checkpoint response (or appended to a note)."""
    if not text.endswith("\n") or len(text) > 4096:
        raise MalformedNote("signature lines must end with a newline and be short")
    out = []
    for line in text[:-1].split("\n"):
        out.append(parse_signature_line(line))
        if len(out) > max_lines:
            raise MalformedNote("too many signature lines")
    return out


def count_cosignatures(
    body: str, signatures: Iterable[Signature], witnesses: Iterable[CosignatureVerifier], *,
    now: float, max_age_s: float,
) -> list[tuple[str, int]]:
    """(witness name, timestamp) of each distinct witness key whose cosignature on ``body``
    verifies and is neither older than ``max_age_s`` nor more than 5 minutes ahead."""
    known = {(w.name, w.key_id): w for w in witnesses}
    seen: dict[tuple[str, bytes], int] = {}
    for sig in signatures:
        ident = (sig.name, sig.key_id)
        w = known.get(ident)
        if w is None or ident in seen:
            continue
        try:
            ts = verify_cosignature(body, sig, w, int(now), MAX_FUTURE_S)
        except NoteError:
            continue
        if ts >= now - max_age_s:
            seen[ident] = ts
    return [(name, ts) for (name, _), ts in seen.items()]


# -- storage --------------------------------------------------------------------------


class WitnessStore:
    """The witness's SQLite file: one connection, used under a lock from any thread.

    Every check-and-update runs in one ``BEGIN IMMEDIATE`` transaction, so two requests for
    one origin can never both pass the old-size check (the race in tlog-witness).
    """

    def __init__(self, path: str | Path, *, synchronous: str = "full") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = apsw.Connection(str(self.path))
        self._conn.setbusytimeout(5000)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        with self._conn:
            self._conn.execute(witness_schema_sql())
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def transaction(self, fn: Callable[[apsw.Connection], Any]) -> Any:
        """Run ``fn(conn)`` in one immediate write transaction (rolled back if it raises)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return out

    def read(self, fn: Callable[[apsw.Connection], Any]) -> Any:
        with self._lock:
            return fn(self._conn)

    # -- heads ---------------------------------------------------------------------------

    @staticmethod
    def head_in(conn: apsw.Connection, origin: str) -> Head | None:
        row = conn.execute(
            "SELECT origin, tree_size, root, note, source, updated_ms FROM witness_heads WHERE origin = ?", (origin,)
        ).fetchone()
        return None if row is None else Head(*row)

    @staticmethod
    def put_head(conn: apsw.Connection, cp: Checkpoint, note: str, source: str) -> None:
        conn.execute(
            "INSERT INTO witness_heads(origin, tree_size, root, note, source, updated_ms) VALUES (?,?,?,?,?,?)"
            " ON CONFLICT(origin) DO UPDATE SET tree_size = excluded.tree_size, root = excluded.root,"
            " note = excluded.note, source = excluded.source, updated_ms = excluded.updated_ms",
            (cp.origin, cp.size, cp.root, note, source, _now_ms()),
        )

    def head(self, origin: str) -> Head | None:
        return self.read(lambda conn: self.head_in(conn, origin))

    def heads(self) -> list[Head]:
        return self.read(lambda conn: [Head(*r) for r in conn.execute(
            "SELECT origin, tree_size, root, note, source, updated_ms FROM witness_heads ORDER BY origin")])

    def advance(self, cp: Checkpoint, note: str, source: str, expect: tuple[int, bytes] | None) -> bool:
        """Record ``cp`` if the stored head is still ``expect`` (None: no head yet)."""

        def run(conn: apsw.Connection) -> bool:
            head = self.head_in(conn, cp.origin)
            if (None if head is None else (head.size, head.root)) != expect:
                return False
            self.put_head(conn, cp, note, source)
            return True

        return self.transaction(run)

    # -- forks ---------------------------------------------------------------------------

    @staticmethod
    def add_fork_in(conn: apsw.Connection, ev: ForkEvidence, source: str) -> tuple[int, bool]:
        """Store evidence (or add ``source`` to the same pair's record); returns (id, new)."""
        pair = ev.pair
        row = conn.execute("SELECT id, sources, confirmed FROM witness_forks WHERE pair = ?", (pair,)).fetchone()
        if row is not None:
            sources = row[1].split(",")
            if source not in sources:
                sources.append(source)
            conn.execute("UPDATE witness_forks SET sources = ?, confirmed = max(confirmed, ?) WHERE id = ?",
                         (",".join(sources), int(ev.confirmed), row[0]))
            return row[0], False
        count = conn.execute("SELECT count(*) FROM witness_forks WHERE origin = ?", (ev.origin,)).fetchone()[0]
        if count >= MAX_FORKS_PER_ORIGIN:
            return 0, False
        conn.execute(
            "INSERT INTO witness_forks(origin, pair, note_a, note_b, proof, reason, confirmed, sources, detected_ms)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            (ev.origin, pair, ev.note_a, ev.note_b, "\n".join(ev.proof), ev.reason, int(ev.confirmed), source,
             _now_ms()),
        )
        return conn.last_insert_rowid(), True

    def add_fork(self, ev: ForkEvidence, source: str) -> tuple[int, bool]:
        return self.transaction(lambda conn: self.add_fork_in(conn, ev, source))

    def forks(self, origin: str | None = None) -> list[ForkEvidence]:
        sql = ("SELECT origin, note_a, note_b, proof, reason, confirmed, sources, detected_ms, id FROM witness_forks"
               + (" WHERE origin = ?" if origin else "") + " ORDER BY id")
        rows = self.read(lambda conn: conn.execute(sql, (origin,) if origin else ()).fetchall())
        return [ForkEvidence(r[0], r[1], r[2], tuple(x for x in r[3].split("\n") if x), r[4], bool(r[5]),
                             tuple(r[6].split(",")), r[7], r[8]) for r in rows]

    @staticmethod
    def forked_in(conn: apsw.Connection, origin: str) -> bool:
        return conn.execute("SELECT 1 FROM witness_forks WHERE origin = ? AND confirmed = 1 LIMIT 1",
                            (origin,)).fetchone() is not None

    def forked_origins(self) -> set[str]:
        return self.read(lambda conn: {r[0] for r in conn.execute(
            "SELECT DISTINCT origin FROM witness_forks WHERE confirmed = 1")})

    # -- cosignatures collected on our own checkpoints -----------------------------------

    def save_cosignature(self, sig: Signature, size: int, root: bytes, timestamp: int) -> None:
        """Keep the newest cosignature per witness key (older ones sign older checkpoints)."""

        def run(conn: apsw.Connection) -> None:
            conn.execute(
                "INSERT INTO witness_cosignatures(witness, key_id, tree_size, root, line, timestamp)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT(witness, key_id) DO UPDATE SET tree_size = excluded.tree_size,"
                " root = excluded.root, line = excluded.line, timestamp = excluded.timestamp"
                " WHERE excluded.tree_size >= witness_cosignatures.tree_size",
                (sig.name, sig.key_id, size, root, sig.line(), timestamp),
            )

        self.transaction(run)

    def cosignatures(self, size: int, root: bytes) -> list[str]:
        """Signature lines of the cosignatures on the checkpoint (size, root)."""
        return self.read(lambda conn: [r[0] for r in conn.execute(
            "SELECT line FROM witness_cosignatures WHERE tree_size = ? AND root = ? ORDER BY witness, key_id",
            (size, root))])


# -- the witness ----------------------------------------------------------------------


@dataclass
class Witness:
    """Answers add-checkpoint for the pinned logs and cosigns what it verified."""

    store: WitnessStore
    signer: CosignatureSigner
    logs: dict[str, PinnedLog]
    clock: Callable[[], float] = time.time
    on_fork: Callable[[ForkEvidence], None] | None = None
    suspects: dict[str, str] = field(default_factory=dict)
    """origin -> a signed note pushed with a proof that failed; the federation loop asks the
    log itself for a proof (a bad proof alone does not prove a fork)."""

    def vkey(self) -> str:
        return self.signer.vkey()

    def verifier(self) -> CosignatureVerifier:
        return self.signer.verifier()

    def open(self, note: str, origin: str | None = None) -> tuple[Checkpoint, PinnedLog]:
        """Verify a note against the keys pinned for its origin (WitnessError 400/403)."""
        try:
            cp = parse_checkpoint(parse_note(note).text)
        except MalformedNote as exc:
            raise WitnessError(400, "malformed", f"checkpoint: {exc}") from None
        if origin is not None and cp.origin != origin:
            raise WitnessError(403, "unknown_origin", "checkpoint is for another origin")
        log = self.logs.get(cp.origin)
        if log is None:
            raise WitnessError(STATUS_UNKNOWN_ORIGIN, "unknown_origin", "no log with this origin is pinned here")
        try:
            open_checkpoint(note, log.verifiers, log.origin)
        except MalformedNote as exc:
            raise WitnessError(400, "malformed", f"checkpoint: {exc}") from None
        except NoteError as exc:
            raise WitnessError(403, "bad_signature", str(exc)) from None
        return cp, log

    def add_checkpoint(self, body: bytes) -> str:
        """c2sp.org/tlog-witness add-checkpoint; returns the cosignature line(s) or raises."""
        req = parse_add_checkpoint(body)
        cp, _ = self.open(req.note)
        if req.old_size > cp.size:
            raise WitnessError(400, "malformed", f"old size {req.old_size} is above the checkpoint size {cp.size}")
        if req.old_size == 0 and req.proof:
            raise WitnessError(422, "bad_proof", "the proof must be empty when the old size is 0")

        def run(conn: apsw.Connection) -> ForkEvidence | None:
            if WitnessStore.forked_in(conn, cp.origin):
                raise WitnessError(403, "origin_forked", "this log forked; this witness no longer cosigns it")
            head = WitnessStore.head_in(conn, cp.origin)
            seen = 0 if head is None else head.size
            if req.old_size != seen:
                raise WitnessError(409, "size_mismatch", f"the last size recorded here is {seen}", size=seen)
            if head is not None and head.size == cp.size:
                if head.root != cp.root:
                    ev = ForkEvidence(cp.origin, head.note, req.note, (), "same size, different roots", True)
                    WitnessStore.add_fork_in(conn, ev, "self")
                    return ev
                WitnessStore.put_head(conn, cp, req.note, "add-checkpoint")
                return None
            if head is not None:
                try:
                    merkle.verify_consistency(head.size, cp.size, req.proof, head.root, cp.root)
                except ProofError as exc:
                    self.suspects[cp.origin] = req.note
                    raise WitnessError(422, "bad_proof", f"consistency proof: {exc}") from None
            WitnessStore.put_head(conn, cp, req.note, "add-checkpoint")
            return None

        fork = self.store.transaction(run)
        if fork is not None:
            if self.on_fork is not None:
                self.on_fork(fork)
            raise WitnessError(STATUS_SAME_SIZE_OTHER_ROOT, "fork",
                               "a different root was recorded at this size: fork evidence kept")
        return self.cosign(cp).line() + "\n"

    def cosign(self, cp: Checkpoint) -> Signature:
        """A cosignature/v1 line over ``cp``, dated now (never 0, as the spec requires)."""
        return cosign(cp.body(), self.signer, max(1, int(self.clock())))


def local_witness(path: str | Path, name: str, *logs: PinnedLog) -> Witness:
    """A witness of ``logs`` with a fresh cosigning key named ``name``, its state in ``path``
    (benchmarks and tests; a node loads its key from ``federation.witness_key_file``)."""
    return Witness(WitnessStore(path), CosignatureSigner.generate(name), {lg.origin: lg for lg in logs})
