"""The wire between cluster members (replication/raft_wire.py): AES-256-GCM under per-sender
keys instead of pysyncobj's Fernet, stored (uncompressed) zlib frames, and a member that
speaks the old format refused with a reason in the log."""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Iterator

import pytest
from pysyncobj import SyncObj, SyncObjConf, replicated, tcp_connection
from pysyncobj.encryptor import getEncryptor

from ccn_node.loopback import free_ports
from ccn_node.replication import raft_wire
from ccn_node.replication.raft_wire import HEADER_BYTES, WireCipher, WireError, WireMixin

SECRET = "wire-test-secret-0123456789"


def test_round_trip_and_header() -> None:
    sender, receiver = WireCipher(SECRET), WireCipher(SECRET)
    first = sender.encrypt_at_time(b"hello raft", 1234)
    second = sender.encrypt_at_time(b"hello raft", 1235)
    assert first[:2] == raft_wire.MAGIC
    assert receiver.extract_timestamp(first) == 1234
    assert receiver.decrypt(first) == b"hello raft"
    assert receiver.decrypt(second) == b"hello raft"
    assert first[HEADER_BYTES:] != second[HEADER_BYTES:]  # a new nonce (counter) each message
    assert first[10:26] == second[10:26]  # one sender id a cipher
    assert WireCipher(SECRET).encrypt_at_time(b"x", 1)[10:26] != first[10:26]  # another process: another id


def test_a_receiver_reads_many_senders_and_itself() -> None:
    receiver = WireCipher(SECRET)
    senders = [WireCipher(SECRET) for _ in range(5)] + [receiver]
    for i, s in enumerate(senders):
        assert receiver.decrypt(s.encrypt_at_time(b"m%d" % i, i)) == b"m%d" % i


@pytest.mark.parametrize("offset", [0, 1, 2, 9, 10, 25, 26, 33, HEADER_BYTES, -1], ids=lambda o: f"byte{o}")
def test_any_changed_byte_is_refused(offset: int) -> None:
    token = bytearray(WireCipher(SECRET).encrypt_at_time(b"payload" * 10, 77))
    token[offset] ^= 0x01
    with pytest.raises(WireError):
        receiver = WireCipher(SECRET)
        receiver.extract_timestamp(bytes(token))
        receiver.decrypt(bytes(token))


def test_another_secret_and_short_or_foreign_data_are_refused() -> None:
    token = WireCipher(SECRET).encrypt_at_time(b"payload", 1)
    with pytest.raises(WireError, match="not authenticated"):
        WireCipher("another-secret-0123456789").decrypt(token)
    for bad in (b"", b"\xcc\x01", token[: HEADER_BYTES + 15], b"GET / HTTP/1.1\r\n\r\n" * 3):
        with pytest.raises(WireError):
            WireCipher(SECRET).decrypt(bad)
    with pytest.raises(ValueError):
        WireCipher("")


def test_only_authentic_senders_are_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raft_wire, "_KNOWN_SENDERS", 3)
    receiver = WireCipher(SECRET)
    forged = bytearray(WireCipher(SECRET).encrypt_at_time(b"x", 1))
    forged[-1] ^= 1
    with pytest.raises(WireError):
        receiver.decrypt(bytes(forged))
    assert receiver._peers == {}
    for _ in range(5):
        receiver.decrypt(WireCipher(SECRET).encrypt_at_time(b"x", 1))
    assert len(receiver._peers) == 3  # bounded: a restarted peer brings a new sender id


def test_a_fernet_message_is_refused_with_the_reason_logged(caplog: pytest.LogCaptureFixture) -> None:
    fernet = getEncryptor(SECRET).encrypt_at_time(zlib.compress(b"old member", 3), 5)
    receiver = WireCipher(SECRET)
    with caplog.at_level(logging.ERROR, logger="ccn_node.replication.raft_wire"):
        for _ in range(3):
            with pytest.raises(WireError):
                receiver.extract_timestamp(fernet)
    errors = [r for r in caplog.records if "Fernet" in r.getMessage()]
    assert len(errors) == 1  # once a minute, not once a message
    assert "upgrade" in errors[0].getMessage()


def test_frames_are_stored_and_stay_readable_by_stock_zlib() -> None:
    raft_wire.store_uncompressed()
    raft_wire.store_uncompressed()  # idempotent
    shim = tcp_connection.zlib
    data = b"the same words again " * 500
    frame = shim.compress(data, 3)  # pysyncobj asks for level 3
    assert zlib.decompress(frame) == data
    assert len(frame) > len(data)  # stored blocks, not compressed
    assert shim.decompress(zlib.compress(data, 9)) == data  # and reads a compressed frame too


# -- real pysyncobj members on 127.0.0.1 ---------------------------------------------------------------


class _Stock(SyncObj):
    """A counter on pysyncobj's own wire (Fernet, zlib)."""

    def __init__(self, me: str, others: list[str], conf: SyncObjConf) -> None:
        super().__init__(me, others, conf)
        self.value = 0

    @replicated
    def incr(self) -> int:
        self.value += 1
        return self.value


class _Wired(WireMixin, _Stock):
    """The same counter on ccn-node's wire."""

    def __init__(self, me: str, others: list[str], conf: SyncObjConf) -> None:
        self.use_wire(conf)
        super().__init__(me, others, conf)


def _conf(me: str) -> SyncObjConf:
    return SyncObjConf(password=SECRET, bindAddress=me, appendEntriesPeriod=0.05, raftMinTimeout=0.3,
                       raftMaxTimeout=0.6, connectionRetryTime=0.2)


@pytest.fixture
def pair(request: pytest.FixtureRequest) -> Iterator[list[SyncObj]]:
    kinds = request.param
    # pysyncobj connects from the higher address (as text) to the lower: the second kind connects.
    addrs = sorted(f"127.0.0.1:{p}" for p in free_ports(2))
    nodes = [kind(a, [o for o in addrs if o != a], _conf(a)) for kind, a in zip(kinds, addrs, strict=True)]
    yield nodes
    for n in nodes:
        n.destroy()


def _wait(pred: object, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("pair", [(_Wired, _Wired)], indirect=True, ids=["both-ccn-wire"])
def test_members_on_the_new_wire_elect_and_replicate(pair: list[SyncObj]) -> None:
    assert _wait(lambda: any(n._isLeader() for n in pair), 10)
    leader = next(n for n in pair if n._isLeader())
    assert leader.incr(sync=True, timeout=5) == 1
    assert _wait(lambda: all(n.value == 1 for n in pair), 5)


@pytest.mark.parametrize("pair", [(_Wired, _Stock)], indirect=True, ids=["ccn-wire-and-stock"])
def test_a_member_on_the_old_wire_is_refused(pair: list[SyncObj], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="ccn_node.replication.raft_wire"):
        # Two members need each other for a majority: no leader can be elected while they
        # cannot read each other, and the ccn side, receiving the stock one's first message, says why.
        assert not _wait(lambda: any(n._isLeader() for n in pair), 2.5)
    assert any("Fernet" in r.getMessage() for r in caplog.records)
