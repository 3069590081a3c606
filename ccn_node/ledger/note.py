"""C2SP signed notes, tlog checkpoints and tlog cosignatures (Ed25519), parsed strictly.

Formats follow, byte for byte, c2sp.org/signed-note (signature lines, key IDs,
verifier keys as in golang.org/x/mod/sumdb/note), c2sp.org/tlog-checkpoint and
c2sp.org/tlog-cosignature (``cosignature/v1``), so that notes made here open with
the Go tools and the other way round. Parsing refuses anything a peer could use to
smuggle a second meaning in: non-canonical base64, control characters, extension
lines, sizes beyond 2^63-1, oversized notes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ALG_ED25519 = 0x01
"""signed-note signature type: plain Ed25519 over the note text."""
ALG_COSIGNATURE_V1 = 0x04
"""signed-note signature type: timestamped Ed25519 witness cosignature."""

MAX_NOTE_BYTES = 8192
"""Largest note accepted: 16+ Ed25519 signature lines fit several times over."""
MAX_SIGNATURES = 100
MAX_TREE_SIZE = (1 << 63) - 1
SIG_DASH = "\u2014 "  # em dash, space
COSIGNATURE_HEADER = b"cosignature/v1\n"

_SIZE_RE = re.compile(r"(?:0|[1-9][0-9]{0,18})")


class NoteError(ValueError):
    """A note, key or checkpoint was refused."""


class MalformedNote(NoteError):
    """The bytes are not a well-formed note, checkpoint, key or signature (HTTP 400)."""


class UnverifiedNote(NoteError):
    """No signature by a known key (unknown key id, unknown origin) (HTTP 403)."""


class InvalidSignature(NoteError):
    """A signature by a known key does not verify (HTTP 403)."""


# -- encodings ------------------------------------------------------------------------


def b64decode_strict(text: str) -> bytes:
    """Standard padded base64 (RFC 4648 §4) that re-encodes to exactly ``text``."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise MalformedNote("invalid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise MalformedNote("non-canonical base64")
    return raw


def b64encode(raw: bytes) -> str:
    """Standard padded base64 as text."""
    return base64.b64encode(raw).decode("ascii")


def valid_key_name(name: str) -> bool:
    """Non-empty, no Unicode space, no '+', no control character (signed-note §Format)."""
    return bool(name) and "+" not in name and not any(c.isspace() for c in name) and all(ord(c) >= 0x20 for c in name)


def key_id(name: str, alg: int, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || alg || public key)[:4], the signed-note key ID."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public_key).digest()[:4]


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


# -- verifiers and signers -----------------------------------------------------------


class Verifier(Protocol):
    """Checks signatures of one (name, key id) pair."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> bytes: ...

    def verify(self, text: bytes, sig: bytes) -> bool: ...


class Ed25519Verifier:
    """Verifier for signature type 0x01 (a log's checkpoint key)."""

    alg = ALG_ED25519
    __slots__ = ("_key", "key_id", "name", "public_key")

    def __init__(self, name: str, public_key: bytes) -> None:
        if not valid_key_name(name):
            raise MalformedNote(f"invalid key name {name!r}")
        if len(public_key) != 32:
            raise MalformedNote("Ed25519 public key must be 32 bytes")
        self.name = name
        self.public_key = public_key
        self.key_id = key_id(name, self.alg, public_key)
        self._key = Ed25519PublicKey.from_public_bytes(public_key)

    def verify(self, text: bytes, sig: bytes) -> bool:
        """Ed25519 over the note text (including its final newline)."""
        if len(sig) != 64:
            return False
        try:
            self._key.verify(sig, text)
        except _CryptoInvalidSignature:
            return False
        return True

    def vkey(self) -> str:
        """The C2SP verifier key text: name+hex(key id)+base64(alg || public key)."""
        return vkey_text(self.name, self.alg, self.public_key)


class CosignatureVerifier(Ed25519Verifier):
    """Verifier for signature type 0x04 (cosignature/v1): sig = u64 timestamp || Ed25519."""

    alg = ALG_COSIGNATURE_V1
    __slots__ = ()

    def verify(self, text: bytes, sig: bytes) -> bool:
        """Ed25519 over ``cosignature/v1\\ntime <t>\\n`` + the checkpoint body."""
        if len(sig) != 72:
            return False
        ts = int.from_bytes(sig[:8], "big")
        if ts > MAX_TREE_SIZE:
            return False
        return super().verify(cosignature_message(text, ts), sig[8:])


def vkey_text(name: str, alg: int, public_key: bytes) -> str:
    """Encode a verifier key: ``<name>+<8 hex key id>+<base64(alg || key)>``."""
    return f"{name}+{key_id(name, alg, public_key).hex()}+{b64encode(bytes([alg]) + public_key)}"


def parse_vkey(text: str) -> Ed25519Verifier:
    """Parse a verifier key (type 0x01 or 0x04); the key id must match its recomputation."""
    parts = text.strip().split("+", 2)  # base64 may itself contain '+'
    if len(parts) != 3:
        raise MalformedNote("verifier key must be name+keyid+key")
    name, hex_id, b64 = parts
    if not re.fullmatch(r"[0-9a-f]{8}", hex_id):
        raise MalformedNote("verifier key id must be 8 lowercase hex digits")
    raw = b64decode_strict(b64)
    if len(raw) != 33:
        raise MalformedNote("verifier key must hold a type byte and 32 key bytes")
    alg, pub = raw[0], raw[1:]
    cls: type[Ed25519Verifier]
    if alg == ALG_ED25519:
        cls = Ed25519Verifier
    elif alg == ALG_COSIGNATURE_V1:
        cls = CosignatureVerifier
    else:
        raise MalformedNote(f"unsupported verifier key type 0x{alg:02x}")
    v = cls(name, pub)
    if v.key_id.hex() != hex_id:
        raise MalformedNote("verifier key id does not match the key")
    return v


class NoteSigner:
    """Signs note text with an Ed25519 key under a name (type 0x01)."""

    alg = ALG_ED25519

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        if not valid_key_name(name):
            raise MalformedNote(f"invalid key name {name!r}")
        self.name = name
        self.private_key = private_key
        self.public_key = _raw_public(private_key)
        self.key_id = key_id(name, self.alg, self.public_key)

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        """A fresh random key."""
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_skey(cls, text: str) -> NoteSigner:
        """Parse ``PRIVATE+KEY+<name>+<hex id>+<base64(alg || seed)>`` (Go note format)."""
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise MalformedNote("signer key must be PRIVATE+KEY+name+keyid+key")
        raw = b64decode_strict(parts[4])
        if len(raw) != 33 or raw[0] != cls.alg:
            raise MalformedNote("signer key must hold the type byte and a 32-byte seed")
        signer = cls(parts[2], Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.key_id.hex() != parts[3]:
            raise MalformedNote("signer key id does not match the key")
        return signer

    def skey(self) -> str:
        """The private key text (keep secret); inverse of ``from_skey``."""
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        seed = self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return f"PRIVATE+KEY+{self.name}+{self.key_id.hex()}+{b64encode(bytes([self.alg]) + seed)}"

    def sign(self, text: bytes) -> bytes:
        """The raw signature bytes (without the key id)."""
        return self.private_key.sign(text)

    def verifier(self) -> Ed25519Verifier:
        """The matching verifier."""
        return Ed25519Verifier(self.name, self.public_key)

    def vkey(self) -> str:
        """The C2SP verifier key text to publish."""
        return vkey_text(self.name, self.alg, self.public_key)


class CosignatureSigner(NoteSigner):
    """Signs ``cosignature/v1`` statements over checkpoints (type 0x04)."""

    alg = ALG_COSIGNATURE_V1

    def sign_at(self, text: bytes, timestamp: int) -> bytes:
        """u64 big-endian timestamp || Ed25519 over the cosignature message."""
        if not 0 <= timestamp <= MAX_TREE_SIZE:
            raise MalformedNote("cosignature timestamp out of range")
        sig = self.private_key.sign(cosignature_message(text, timestamp))
        return timestamp.to_bytes(8, "big") + sig

    def sign(self, text: bytes) -> bytes:  # pragma: no cover - guard
        raise TypeError("cosignatures need a timestamp: use sign_at()")

    def verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier(self.name, self.public_key)


def cosignature_message(body: bytes, timestamp: int) -> bytes:
    """``cosignature/v1\\ntime <decimal>\\n`` || checkpoint body (tlog-cosignature)."""
    return COSIGNATURE_HEADER + b"time %d\n" % timestamp + body


# -- notes ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signature:
    """One signature line: key name, 4-byte key id and the signature bytes after it."""

    name: str
    key_id: bytes
    sig: bytes

    def line(self) -> str:
        """``— <name> <base64(key id || sig)>`` without the newline."""
        return f"{SIG_DASH}{self.name} {b64encode(self.key_id + self.sig)}"


@dataclass(frozen=True, slots=True)
class Note:
    """Note text (with its final newline) and its signatures, verified ones marked."""

    text: str
    signatures: tuple[Signature, ...]
    verified: tuple[Signature, ...] = ()

    def encode(self) -> str:
        """The note as sent: text, blank line, one signature line each."""
        return format_note(self.text, self.signatures)


def format_note(text: str, signatures: Iterable[Signature]) -> str:
    """Assemble a signed note."""
    if not text.endswith("\n"):
        raise MalformedNote("note text must end with a newline")
    lines = [s.line() + "\n" for s in signatures]
    if not lines:
        raise MalformedNote("a note needs at least one signature")
    return text + "\n" + "".join(lines)


def sign_note(text: str, *signers: NoteSigner, keep: Sequence[Signature] = ()) -> str:
    """Sign ``text`` with each signer; ``keep`` are earlier signatures to carry over."""
    if not text.endswith("\n"):
        raise MalformedNote("note text must end with a newline")
    raw = text.encode()
    new = [Signature(s.name, s.key_id, s.sign(raw)) for s in signers]
    replaced = {(s.name, s.key_id) for s in new}
    return format_note(text, [*(s for s in keep if (s.name, s.key_id) not in replaced), *new])


def parse_note(msg: str | bytes, max_bytes: int = MAX_NOTE_BYTES) -> Note:
    """Split a note into text and signature lines, refusing anything malformed."""
    raw = msg.encode() if isinstance(msg, str) else bytes(msg)
    if len(raw) > max_bytes:
        raise MalformedNote(f"note larger than {max_bytes} bytes")
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedNote("note is not valid UTF-8") from None
    if any(ord(c) < 0x20 and c != "\n" for c in s):
        raise MalformedNote("note contains a control character")
    split = s.rfind("\n\n")
    if split < 0:
        raise MalformedNote("note has no blank line before its signatures")
    text, block = s[: split + 1], s[split + 2 :]
    if not block or not block.endswith("\n"):
        raise MalformedNote("note must end with a signature line and a newline")
    sigs: list[Signature] = []
    for line in block[:-1].split("\n"):
        sigs.append(parse_signature_line(line))
        if len(sigs) > MAX_SIGNATURES:
            raise MalformedNote("too many signatures")
    return Note(text, tuple(sigs))


def parse_signature_line(line: str) -> Signature:
    """One ``— name base64(keyid‖sig)`` line (without its newline)."""
    if not line.startswith(SIG_DASH):
        raise MalformedNote("signature line must start with an em dash and a space")
    name, sep, b64 = line[len(SIG_DASH) :].partition(" ")
    if not sep or not valid_key_name(name) or not b64:
        raise MalformedNote("signature line must be '— name base64'")
    blob = b64decode_strict(b64)
    if len(blob) < 5:
        raise MalformedNote("signature too short")
    return Signature(name, blob[:4], blob[4:])


def open_note(msg: str | bytes, verifiers: Iterable[Verifier], max_bytes: int = MAX_NOTE_BYTES) -> Note:
    """Parse and verify: every signature by a known (name, key id) must verify, and at
    least one must exist. Unknown signatures are kept but not trusted (signed-note)."""
    note = parse_note(msg, max_bytes)
    known: dict[tuple[str, bytes], Verifier] = {}
    for v in verifiers:
        known[(v.name, v.key_id)] = v
    text = note.text.encode()
    verified: list[Signature] = []
    seen: set[tuple[str, bytes]] = set()
    for sig in note.signatures:
        ident = (sig.name, sig.key_id)
        v = known.get(ident)
        if v is None or ident in seen:
            continue
        seen.add(ident)
        if not v.verify(text, sig.sig):
            raise InvalidSignature(f"invalid signature by {sig.name}+{sig.key_id.hex()}")
        verified.append(sig)
    if not verified:
        raise UnverifiedNote("note is not signed by any known key")
    return Note(note.text, note.signatures, tuple(verified))


# -- checkpoints ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's tree head: origin line, tree size, RFC 6962 root (no extension lines)."""

    origin: str
    size: int
    root: bytes

    def body(self) -> str:
        """The note text: three lines, each ending in a newline."""
        if not self.origin or "\n" in self.origin:
            raise MalformedNote("invalid origin")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise MalformedNote("tree size out of range")
        if len(self.root) != 32:
            raise MalformedNote("root must be 32 bytes")
        return f"{self.origin}\n{self.size}\n{b64encode(self.root)}\n"


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint note *text* strictly: exactly three lines, no extensions."""
    if not text.endswith("\n"):
        raise MalformedNote("checkpoint must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise MalformedNote("checkpoint needs origin, size and root lines")
    if len(lines) > 3:
        raise MalformedNote("checkpoint extension lines are not accepted")
    origin, size_s, root_s = lines
    if not origin:
        raise MalformedNote("empty origin")
    if not _SIZE_RE.fullmatch(size_s):
        raise MalformedNote("tree size must be a decimal without leading zeros")
    size = int(size_s)
    if size > MAX_TREE_SIZE:
        raise MalformedNote("tree size exceeds 2^63-1")
    root = b64decode_strict(root_s)
    if len(root) != 32:
        raise MalformedNote("root hash must be 32 bytes")
    return Checkpoint(origin, size, root)


def sign_checkpoint(cp: Checkpoint, signer: NoteSigner) -> str:
    """The signed checkpoint note (the log signs with its origin as key name)."""
    return sign_note(cp.body(), signer)


def open_checkpoint(
    msg: str | bytes,
    verifiers: Iterable[Verifier],
    origin: str | None = None,
    max_bytes: int = MAX_NOTE_BYTES,
) -> tuple[Checkpoint, Note]:
    """Verify a checkpoint note against pinned keys and parse its body."""
    note = open_note(msg, verifiers, max_bytes)
    cp = parse_checkpoint(note.text)
    if origin is not None and cp.origin != origin:
        raise UnverifiedNote(f"checkpoint origin {cp.origin!r} is not {origin!r}")
    return cp, note


# -- cosignatures --------------------------------------------------------------------


def cosign(body: str, signer: CosignatureSigner, timestamp: int) -> Signature:
    """A witness's ``cosignature/v1`` signature line over a checkpoint body."""
    parse_checkpoint(body)
    return Signature(signer.name, signer.key_id, signer.sign_at(body.encode(), timestamp))


def cosignature_timestamp(sig: Signature) -> int:
    """The timestamp carried by a cosignature (seconds since the epoch)."""
    if len(sig.sig) != 72:
        raise MalformedNote("cosignature must be 8 + 64 bytes after the key id")
    return int.from_bytes(sig.sig[:8], "big")


def verify_cosignature(
    body: str,
    sig: Signature,
    verifier: CosignatureVerifier,
    now: int,
    max_future: int = 300,
) -> int:
    """Check one cosignature on ``body``; returns its timestamp.

    Refuses a timestamp more than ``max_future`` seconds ahead of ``now``: a witness
    clock that runs ahead would let a stale view look fresh later.
    """
    if (sig.name, sig.key_id) != (verifier.name, verifier.key_id):
        raise UnverifiedNote("cosignature is not by this witness key")
    ts = cosignature_timestamp(sig)
    if ts > MAX_TREE_SIZE:
        raise MalformedNote("cosignature timestamp exceeds 2^63-1")
    if ts > now + max_future:
        raise InvalidSignature(f"cosignature timestamp {ts} is in the future (now {now})")
    if not verifier.verify(body.encode(), sig.sig):
        raise InvalidSignature(f"invalid cosignature by {sig.name}+{sig.key_id.hex()}")
    return ts
