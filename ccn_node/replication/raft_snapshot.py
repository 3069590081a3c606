"""The Raft snapshot file: pysyncobj's raft data and a consistent copy of the SQLite database.

pysyncobj hands the serializer its own raft data (the last two applied entries and the
cluster) and later sends the *one* snapshot file to lagging followers in chunks, so both
parts must live in one file. Layout::

    b"CCNRAFT1" | u32 header length | msgpack header | SQLite database bytes

The header is msgpack, not pickle: the file crosses the network and sits on disk, and
nothing in it should be able to run code when it is read.
"""

from __future__ import annotations

import os
import shutil
import struct

import msgspec

MAGIC = b"CCNRAFT1"

VERSION = 2
"""2 since schema 5: the database in it stores no ledger subtree under 8 leaves and no journal
copy of a message (ledger/DESIGN.md, store/DESIGN.md). A member still running older code reads
only version 1, so it refuses such a snapshot and stops (it would otherwise fail its next
append, or worse) instead of installing it; this code reads both."""
READABLE_VERSIONS = (1, 2)
_LEN = struct.Struct("<I")
_COPY_CHUNK = 1 << 20


class SnapshotHeader(msgspec.Struct, kw_only=True):
    """pysyncobj's raft data, as plain values; ``entries`` are (command, index, term)."""

    version: int = VERSION
    last: tuple[bytes, int, int]
    prev: tuple[bytes, int, int]
    cluster: list[str]


class SnapshotFormatError(ValueError):
    """The snapshot file is not ours, truncated or from an unknown version."""


def write_snapshot(out_path: str, header: SnapshotHeader, db_path: str) -> None:
    """Write the container at ``out_path`` and fsync it (it replaces journal entries)."""
    encoded = msgspec.msgpack.encode(header)
    with open(out_path, "wb") as out, open(db_path, "rb") as db:
        out.write(MAGIC + _LEN.pack(len(encoded)) + encoded)
        shutil.copyfileobj(db, out, _COPY_CHUNK)
        out.flush()
        os.fsync(out.fileno())


def read_snapshot(path: str, db_out_path: str) -> SnapshotHeader:
    """Parse the header and extract the database part to ``db_out_path``."""
    with open(path, "rb") as f:
        prefix = f.read(len(MAGIC) + _LEN.size)
        if len(prefix) != len(MAGIC) + _LEN.size or prefix[: len(MAGIC)] != MAGIC:
            raise SnapshotFormatError(f"{path}: not a ccn-node raft snapshot")
        (length,) = _LEN.unpack(prefix[len(MAGIC) :])
        raw = f.read(length)
        if len(raw) != length:
            raise SnapshotFormatError(f"{path}: truncated snapshot header")
        try:
            header = msgspec.msgpack.decode(raw, type=SnapshotHeader)
        except msgspec.DecodeError as exc:
            raise SnapshotFormatError(f"{path}: bad snapshot header: {exc}") from exc
        if header.version not in READABLE_VERSIONS:
            raise SnapshotFormatError(f"{path}: snapshot version {header.version} is unknown")
        with open(db_out_path, "wb") as out:
            shutil.copyfileobj(f, out, _COPY_CHUNK)
    return header
