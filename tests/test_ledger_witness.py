"""The witness (c2sp.org/tlog-witness add-checkpoint) on a real SQLite file: what it cosigns,
and every bad input it must refuse with nothing stored."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest

from ccn_node.api.routes_ledger import _witness_error
from ccn_node.ledger import merkle
from ccn_node.ledger.federation import keep_cosignatures
from ccn_node.ledger.note import (
    Checkpoint,
    CosignatureSigner,
    NoteSigner,
    Signature,
    cosign,
    open_note,
    sign_checkpoint,
    sign_note,
)
from ccn_node.ledger.witness import (
    MAX_BODY_BYTES,
    TLOG_SIZE_TYPE,
    PinnedLog,
    Witness,
    WitnessError,
    WitnessStore,
    format_add_checkpoint,
    local_witness,
    parse_signature_lines,
)

ORIGIN = "log.example/a"


class Log:
    """A log kept in memory: leaves, and checkpoints signed with its key."""

    def __init__(self, origin: str = ORIGIN, key: NoteSigner | None = None) -> None:
        self.key = key or NoteSigner.generate(origin)
        self.origin = origin
        self.leaves: list[bytes] = []

    def grow(self, n: int, tag: str = "x") -> None:
        start = len(self.leaves)
        self.leaves += [merkle.leaf_hash(f"{tag}{i}".encode()) for i in range(start, start + n)]

    def note(self, size: int | None = None) -> str:
        size = len(self.leaves) if size is None else size
        return sign_checkpoint(Checkpoint(self.origin, size, merkle.root_of(self.leaves[:size])), self.key)

    def proof(self, old: int, new: int | None = None) -> list[bytes]:
        new = len(self.leaves) if new is None else new
        return merkle.consistency_proof_of(self.leaves[:new], old) if 0 < old < new else []

    def body(self, old: int, new: int | None = None) -> bytes:
        return format_add_checkpoint(old, self.proof(old, new), self.note(new))


@pytest.fixture
def log() -> Log:
    lg = Log()
    lg.grow(10)
    return lg


@pytest.fixture
def witness(tmp_path: Path, log: Log) -> Witness:
    return local_witness(tmp_path / "witness.sqlite3", "witness.example/w1", PinnedLog(ORIGIN, (log.key.verifier(),)))


def refused(w: Witness, body: bytes, status: int) -> WitnessError:
    before = w.store.heads(), w.store.forks()
    with pytest.raises(WitnessError) as exc:
        w.add_checkpoint(body)
    assert exc.value.status == status, exc.value.message
    assert (w.store.heads(), w.store.forks()) == before, "a refused request changed the witness state"
    return exc.value


def test_cosigns_first_sight_then_only_consistent_growth(witness: Witness, log: Log) -> None:
    line = witness.add_checkpoint(log.body(0))
    sig = parse_signature_lines(line)[0]
    note = open_note(log.note() + line, [witness.verifier()])  # the tlog-witness way to read a response
    assert note.verified == (sig,)
    assert int.from_bytes(sig.sig[:8], "big") > time.time() - 5
    head = witness.store.head(ORIGIN)
    assert head is not None and (head.size, head.root) == (10, merkle.root_of(log.leaves))
    log.grow(7)
    witness.add_checkpoint(log.body(10))
    assert witness.store.head(ORIGIN).size == 17  # type: ignore[union-attr]
    # The same checkpoint again (old = size): cosigned again, nothing changes.
    witness.add_checkpoint(log.body(17))
    assert witness.store.head(ORIGIN).size == 17  # type: ignore[union-attr]


def test_409_names_the_size_last_seen(witness: Witness, log: Log) -> None:
    witness.add_checkpoint(log.body(0))
    log.grow(3)
    exc = refused(witness, log.body(0), 409)
    assert exc.size == 10
    # Over HTTP the size is the whole body, typed for tlog-witness clients.
    resp = _witness_error(exc)
    assert (resp.status, resp.content_type, resp.text) == (409, TLOG_SIZE_TYPE, "10\n")


def test_replayed_older_checkpoint(witness: Witness, log: Log) -> None:
    witness.add_checkpoint(log.body(0, 5))
    witness.add_checkpoint(log.body(5, 10))
    refused(witness, format_add_checkpoint(10, [], log.note(5)), 400)  # old > size
    refused(witness, log.body(0, 5), 409)


def test_forged_truncated_and_unknown_signatures(witness: Witness, log: Log) -> None:
    note = log.note()
    text, sigline = note.rsplit("\n\n", 1)
    name, b64 = sigline.strip().rsplit(" ", 1)
    raw = bytearray(base64.b64decode(b64))
    raw[-1] ^= 1
    forged = f"{text}\n\n{name} {base64.b64encode(bytes(raw)).decode()}\n"
    refused(witness, format_add_checkpoint(0, [], forged), 403)
    truncated = f"{text}\n\n{name} {base64.b64encode(bytes(raw[:40])).decode()}\n"
    refused(witness, format_add_checkpoint(0, [], truncated), 403)
    other = Log(ORIGIN)  # same origin, a key nobody pinned: its key id matches no pinned key
    other.grow(10)
    refused(witness, other.body(0), 403)
    stranger = Log("log.example/unknown")
    stranger.grow(3)
    refused(witness, stranger.body(0), 403)


def test_bad_proofs(witness: Witness, log: Log) -> None:
    witness.add_checkpoint(log.body(0, 6))
    proof = log.proof(6)
    note = log.note()
    assert proof
    refused(witness, format_add_checkpoint(6, proof[:-1], note), 422)  # too short
    refused(witness, format_add_checkpoint(6, [*proof, proof[0]], note), 422)  # too long
    flipped = bytearray(proof[0])
    flipped[5] ^= 0x10
    refused(witness, format_add_checkpoint(6, [bytes(flipped), *proof[1:]], note), 422)
    refused(witness, format_add_checkpoint(0, proof, note), 422)  # old 0 needs an empty proof
    witness.add_checkpoint(format_add_checkpoint(6, proof, note))


def test_malformed_bodies(witness: Witness, log: Log) -> None:
    note = log.note()
    proof_line = base64.b64encode(bytes(32)).decode()
    noncanonical = proof_line[:-2] + "B="  # non-zero padding bits: decodes, but does not re-encode the same
    for body in (
        b"",
        b"old 0\n" + note.encode(),  # no blank line
        b"old 01\n\n" + note.encode(),  # leading zero
        b"new 0\n\n" + note.encode(),
        f"old {2**63}\n\n{note}".encode(),  # size over 2^63 - 1
        f"old 3\n{noncanonical}\n\n{note}".encode(),
        f"old 3\n{proof_line[:-1]}\n\n{note}".encode(),  # missing padding
        f"old 3\n{base64.b64encode(bytes(31)).decode()}\n\n{note}".encode(),  # 31-byte hash
        b"old 0\n\n" + note.replace("\n10\n", "\n010\n").encode(),
        b"old 0\n\n\xff\xfe",
        b"old 3\n" + (proof_line + "\n").encode() * 64 + b"\n" + note.encode(),  # > 63 proof lines
    ):
        refused(witness, body, 400)
    # A checkpoint with an extension line, even correctly signed, is refused.
    body = Checkpoint(ORIGIN, 10, merkle.root_of(log.leaves)).body() + "extension\n"
    refused(witness, format_add_checkpoint(0, [], sign_note(body, log.key)), 400)
    # A checkpoint size over 2^63 - 1.
    big = f"{ORIGIN}\n{2**63}\n{base64.b64encode(bytes(32)).decode()}\n"
    refused(witness, format_add_checkpoint(0, [], sign_note(big, log.key)), 400)
    # Non-canonical base64 in the root line.
    root = base64.b64encode(merkle.root_of(log.leaves)).decode()
    bad_root = f"{ORIGIN}\n10\n{root.rstrip('=')}\n"
    refused(witness, format_add_checkpoint(0, [], sign_note(bad_root, log.key)), 400)


def test_oversized_body(witness: Witness, log: Log) -> None:
    body = log.body(0) + b" " * MAX_BODY_BYTES
    refused(witness, body, 413)


def test_same_size_other_root_is_kept_as_a_fork_and_the_origin_is_no_longer_cosigned(
    witness: Witness, log: Log
) -> None:
    witness.add_checkpoint(log.body(0))
    evil = Log(ORIGIN, key=log.key)
    evil.grow(10, tag="y")
    with pytest.raises(WitnessError) as exc:
        witness.add_checkpoint(evil.body(10))
    assert exc.value.status == 422
    forks = witness.store.forks()
    assert len(forks) == 1 and forks[0].confirmed and forks[0].origin == ORIGIN
    assert witness.store.head(ORIGIN).root == merkle.root_of(log.leaves)  # type: ignore[union-attr]
    log.grow(2)
    refused(witness, log.body(10), 403)


def test_cosignatures_from_the_future_or_unknown_keys_are_not_kept(tmp_path: Path, log: Log) -> None:
    store = WitnessStore(tmp_path / "ours.sqlite3")
    peer_witness = CosignatureSigner.generate("peer.example/w")
    stranger = CosignatureSigner.generate("peer.example/w")
    cp = Checkpoint(ORIGIN, 10, merkle.root_of(log.leaves))
    now = int(time.time())

    def line(signer: CosignatureSigner, ts: int) -> str:
        return cosign(cp.body(), signer, ts).line() + "\n"

    assert keep_cosignatures(store, [peer_witness.verifier()], cp, line(peer_witness, now + 301), now=now) == 0
    assert keep_cosignatures(store, [peer_witness.verifier()], cp, line(stranger, now), now=now) == 0
    forged = cosign(cp.body(), peer_witness, now)
    bad = Signature(forged.name, forged.key_id, forged.sig[:-1] + bytes([forged.sig[-1] ^ 1])).line() + "\n"
    assert keep_cosignatures(store, [peer_witness.verifier()], cp, bad, now=now) == 0
    assert store.cosignatures(cp.size, cp.root) == []
    assert keep_cosignatures(store, [peer_witness.verifier()], cp, line(peer_witness, now + 60), now=now) == 1
    assert len(store.cosignatures(cp.size, cp.root)) == 1


def test_http_endpoint_statuses(node) -> None:  # type: ignore[no-untyped-def]
    """The node's own endpoint: 403, 400 and 413 (its 409 answer: test_409_names_the_size_last_seen)."""
    lg = Log("not.pinned/here")
    lg.grow(4)
    r = node.request("POST", "/api/v1/ledger/add-checkpoint", body=lg.body(0))
    assert r.status == 403
    r = node.request("POST", "/api/v1/ledger/add-checkpoint", body=b"old 0\n")
    assert r.status == 400
    r = node.request("POST", "/api/v1/ledger/add-checkpoint", body=b"x" * (MAX_BODY_BYTES + 1))
    assert r.status == 413
    for q in ("from=-1&to=2", "from=2&to=1", f"from=1&to={2**63}", "from=a&to=2", "from=0&to=2"):
        assert node.request("GET", f"/api/v1/ledger/proof/consistency?{q}").status == 400, q
    for q in (f"index=0&size={2**64}", "index=-1&size=2", "index=3&size=2"):
        assert node.request("GET", f"/api/v1/ledger/proof/inclusion?{q}").status == 400, q
    assert node.request("GET", "/api/v1/ledger/blocks?limit=0").status == 400
    assert node.request("GET", "/api/v1/ledger/proof/inclusion?message_id=nope").status == 404
