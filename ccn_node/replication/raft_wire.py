"""How pysyncobj's messages travel between cluster members: AES-256-GCM, not compressed.

pysyncobj frames every message as ``zlib.compress(pickle, 3)`` encrypted with Fernet
(AES-128-CBC, HMAC-SHA256, base64 — and its receiver checks the HMAC and decodes the base64
twice: once for the timestamp, once for the text). On a 2-core machine that cost ~1.3 ms to
send one 200-message Batch to one follower and ~0.8 ms to receive it, ~20 µs a replicated
message over a 3-node cluster, ~10 % of all the CPU a write costs (replication/DESIGN.md,
"The wire"). ``WireCipher`` is the object pysyncobj calls for the encryption (its
``encryptor``: ``encrypt_at_time``, ``extract_timestamp``, ``decrypt``) and
``store_uncompressed`` sets pysyncobj's zlib to level 0 (stored blocks: the receiver's
``zlib.decompress`` is unchanged); together ~0.06 ms to send and ~0.05 ms to receive.

The same guarantees as Fernet: only a holder of the cluster secret can produce a message
another member accepts (GCM authenticates the header and the text), and the timestamp
pysyncobj checks for monotony is the authenticated one. Each ``WireCipher`` (one a process)
picks a random 16-byte sender id and encrypts under a key derived from the secret and that
id, with a counter as the nonce: nonces never repeat under one key, however long the cluster
lives (random 96-bit nonces under one long-lived key would, eventually).

Format: ``CC 01 | timestamp (8, big-endian) | sender id (16) | counter (8) | ciphertext+tag``.
Every member of a cluster must speak it: a member still sending Fernet is refused (its
connection is dropped, and the log says why).
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
import threading
import time
import zlib
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger(__name__)

MAGIC = b"\xcc\x01"
_HEADER = struct.Struct(">2sq16sQ")  # magic, timestamp, sender id, counter
HEADER_BYTES = _HEADER.size
_FERNET_PREFIX = b"gAAAAA"  # base64 of Fernet's version byte 0x80 and a timestamp's high bytes
_KNOWN_SENDERS = 256  # keys of peers' sender ids kept; a restarted peer brings a new id
_MISMATCH_LOG_EVERY_S = 60.0


class WireError(ValueError):
    """A message that is not ours or not intact: pysyncobj drops the connection."""


class WireCipher:
    """pysyncobj's ``encryptor``, with AES-256-GCM under per-sender keys."""

    def __init__(self, secret: str | bytes) -> None:
        raw = secret.encode() if isinstance(secret, str) else secret
        if not raw:
            raise ValueError("the cluster secret is empty")
        # The secret is a file of >= 16 random bytes (config.py), not a password: HKDF is enough.
        self._master = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"ccn-node raft wire",
                            info=b"master v1").derive(raw)
        self._sender = os.urandom(16)
        self._send_key = AESGCM(self._key_for(self._sender))
        self._counter = itertools.count()
        self._peers: dict[bytes, AESGCM] = {}
        self._lock = threading.Lock()  # the peers' keys (pysyncobj uses one thread, tests may not)
        self._last_mismatch_log: float | None = None

    def _key_for(self, sender: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=sender, info=b"sender v1").derive(self._master)

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        counter = next(self._counter)
        header = _HEADER.pack(MAGIC, current_time, self._sender, counter)
        return header + self._send_key.encrypt(b"\x00\x00\x00\x00" + counter.to_bytes(8, "big"), data, header)

    def extract_timestamp(self, token: bytes) -> int:
        """The timestamp pysyncobj checks before ``decrypt`` (which authenticates it)."""
        return self._header(token)[0]

    def decrypt(self, token: bytes) -> bytes:
        _ts, sender, counter = self._header(token)
        header = bytes(token[:HEADER_BYTES])
        with self._lock:
            key = self._peers.get(sender)
        known = key is not None
        if key is None:
            key = AESGCM(self._key_for(sender))
        try:
            data = key.decrypt(b"\x00\x00\x00\x00" + counter.to_bytes(8, "big"), bytes(token[HEADER_BYTES:]), header)
        except InvalidTag:
            raise WireError("message not authenticated (another cluster secret?)") from None
        if not known:  # remembered only once a message under it was authentic
            with self._lock:
                if len(self._peers) >= _KNOWN_SENDERS:
                    self._peers.pop(next(iter(self._peers)))
                self._peers[sender] = key
        return data

    def _header(self, token: bytes) -> tuple[int, bytes, int]:
        if len(token) < HEADER_BYTES + 16 or token[:2] != MAGIC:
            if bytes(token[: len(_FERNET_PREFIX)]) == _FERNET_PREFIX:
                self._log_mismatch()
            raise WireError("not a ccn-node raft message")
        _magic, ts, sender, counter = _HEADER.unpack_from(token)
        return ts, sender, counter

    def _log_mismatch(self) -> None:
        now = time.monotonic()
        if self._last_mismatch_log is None or now - self._last_mismatch_log >= _MISMATCH_LOG_EVERY_S:
            self._last_mismatch_log = now
            log.error("a peer sent a raft message in pysyncobj's own Fernet format: it runs an older "
                      "ccn-node (before the AES-GCM wire) or bare pysyncobj; every member of a cluster "
                      "must run the same ccn-node version, upgrade it (its connection is refused)")


class _StoredZlib:
    """Stands in for the ``zlib`` module inside ``pysyncobj.tcp_connection``: level 0.

    Compressing a 95 KB Batch at level 3 took ~0.8 ms a follower on the leader's tick thread
    and saved bytes only on a network that is not the bottleneck on a LAN (Raft members
    here are on one site: heartbeats every 50 ms, elections in 0.4–0.8 s). Level 0 writes
    stored blocks, so any receiver's ``zlib.decompress`` reads them.
    """

    @staticmethod
    def compress(data: bytes, level: int = -1) -> bytes:
        return zlib.compress(data, 0)

    decompress = staticmethod(zlib.decompress)
    error = zlib.error


class WireMixin:
    """For a ``SyncObj`` subclass: pysyncobj's transport takes its ``encryptor`` from the
    SyncObj, so this property puts ``WireCipher`` on every connection. Call ``use_wire(conf)``
    before ``SyncObj.__init__`` (which builds the transport)."""

    _wire: WireCipher | None = None

    def use_wire(self, conf: Any) -> None:
        self._wire = WireCipher(conf.password) if conf.password else None
        store_uncompressed()

    @property
    def encryptor(self) -> WireCipher | None:  # (pysyncobj's _getEncryptor is never called)
        return self._wire


def store_uncompressed() -> None:
    """Make pysyncobj's connections send stored (uncompressed) zlib frames; idempotent.

    Process-wide (pysyncobj calls the module ``zlib`` it imported), and harmless to any other
    pysyncobj user in the process: what it sends stays readable by stock pysyncobj.
    """
    from pysyncobj import tcp_connection

    current: Any = getattr(tcp_connection, "zlib", None)
    if current is None:
        raise RuntimeError("unsupported pysyncobj version (tcp_connection has no zlib); RaftLog needs 0.3.17")
    if current is not _StoredZlib:
        tcp_connection.zlib = _StoredZlib  # type: ignore[attr-defined,assignment]
