"""Every write to the node, as a command: a msgspec tagged union encoded as msgpack.

A command carries everything its effect needs — ids, timestamps, derived values — so that
applying it is deterministic on every node. ``request_id`` makes it exactly-once: the state
machine stores the outcome of each request id and returns it again for a duplicate.

Append-only rule: never rename or remove a tag or a field; add new fields with defaults, so
journals and snapshots written by older versions keep decoding.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import msgspec


class Command(msgspec.Struct, tag_field="t", kw_only=True, frozen=True, omit_defaults=True):
    """Base of every command; ``request_id`` is chosen by the proposer."""

    request_id: str


class Noop(Command, tag="noop"):
    """A barrier: committing it proves the proposer's view of the log is current."""


class Batch(Command, tag="batch"):
    """Several encoded commands in one log entry (Raft batches the proposals of one tick)."""

    entries: list[bytes]


class CreateUser(Command, tag="user.create"):
    user_id: str
    name: str
    role: str
    created_at: str
    retention_days: int | None = None


class SetUserRetention(Command, tag="user.retention"):
    user_id: str
    retention_days: int | None


class RecordPlate(Command, tag="plate.record"):
    """A new version of THE PLATE (or the first one) became current."""

    version: str
    sha256: str
    name: str
    content: str
    recorded_at: str


class StartConversation(Command, tag="conv.start"):
    session_id: str
    user_id: str
    title: str
    created_at: str
    plate_version: str
    plate_sha256: str
    metadata: dict[str, Any] = {}


class EndConversation(Command, tag="conv.end"):
    session_id: str
    ended_at: str
    reason: str = "client"


class AppendMessage(Command, tag="msg.append"):
    """One message of a conversation; an assistant message carries what produced it."""

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
    manifest: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    character_snapshot: list[float] | None = None
    relational_state: list[float] | None = None
    metrics: dict[str, float] | None = None
    instance_id: str | None = None
    kind: str = "chat"  # "chat" or "validation" (validation answers are never shown)
    # Set only in journal entries rewritten by an erasure: the content is gone ('') and these
    # keep the original hash and the time of the erasure, so a replay gives the same leaf.
    content_sha256: str | None = None
    erased_at: str | None = None


class RegisterInstance(Command, tag="inst.register"):
    instance_id: str
    session_id: str
    node_id: str
    spawned_at: str
    plate_version: str
    validation: dict[str, Any] | None = None
    status: str = "active"


class TerminateInstance(Command, tag="inst.terminate"):
    instance_id: str
    at: str
    reason: str


class RecordConsensus(Command, tag="consensus.record"):
    round_id: str
    created_at: str
    term: int
    node_id: str
    instance_count: int
    consensus_vector: list[float]
    outliers: list[str]
    drifts: dict[str, float]
    latency_ms: float


class SealBlock(Command, tag="ledger.seal"):
    """Close the next block of the verification chain at a tree size fixed by the proposer.

    Every node applies it identically: the block's hash and its Ed25519-signed checkpoint are
    deterministic given the tree, this command and the organisation's ledger key.
    """

    block_number: int
    tree_size: int
    sealed_at_ms: int
    data_snapshot: str  # canonical JSON: the character consensus summary at sealing time


class EraseUserData(Command, tag="erase.user"):
    """Erase message content of a user (older than ``before`` when given); hashes stay."""

    user_id: str
    erased_at: str
    before: str | None = None
    reason: str = "request"


AnyCommand = (
    Noop
    | Batch
    | CreateUser
    | SetUserRetention
    | RecordPlate
    | StartConversation
    | EndConversation
    | AppendMessage
    | RegisterInstance
    | TerminateInstance
    | RecordConsensus
    | SealBlock
    | EraseUserData
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyCommand)


def encode(command: Command) -> bytes:
    return _encoder.encode(command)


def decode(entry: bytes) -> Command:
    """Decode a log entry; raises msgspec.DecodeError / ValidationError on bad bytes."""
    return _decoder.decode(entry)


def erased_entry(entry: bytes, erased_at: str) -> bytes | None:
    """A journal entry with its message content removed (hash kept); None if not a message."""
    command = decode(entry)
    if not isinstance(command, AppendMessage) or command.erased_at is not None:
        return None
    scrubbed = msgspec.structs.replace(
        command, content="", content_sha256=content_sha256(command.content), erased_at=erased_at
    )
    return encode(scrubbed)


@functools.lru_cache(maxsize=16)
def content_sha256(content: str) -> str:
    """Hex SHA-256 of a message's text. Cached: applying a message asks twice (the row's
    ``content_sha256`` and the ledger leaf, ``leaf_bytes``), and a Python str caches its hash."""
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


LEAF_CONTENT_PREFIX = "sha256:"
"""In a leaf, a message's content is replaced by this and the hex SHA-256 of the content."""


def leaf_bytes(command: Command) -> bytes:
    """The canonical bytes the ledger commits to for a command.

    Message content is replaced by its SHA-256 so that erasing content later keeps every
    proof valid: the leaf commits to the hash, and the hash stays in the row.
    """
    if isinstance(command, AppendMessage):
        digest = command.content_sha256 or content_sha256(command.content)
        return _encoder.encode(
            msgspec.structs.replace(command, content=LEAF_CONTENT_PREFIX + digest, content_sha256=None, erased_at=None)
        )
    if isinstance(command, RecordPlate):
        return _encoder.encode(
            msgspec.structs.replace(command, content=LEAF_CONTENT_PREFIX + content_sha256(command.content))
        )
    return _encoder.encode(command)
