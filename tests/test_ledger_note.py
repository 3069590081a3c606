"""Signed notes, checkpoints and cosignatures: interop with the published examples,
round trips, and every malformed or forged input the issue lists."""

from __future__ import annotations

import base64

import pytest

from ccn_node.ledger import note as n
from ccn_node.ledger.note import (
    Checkpoint,
    CosignatureSigner,
    InvalidSignature,
    MalformedNote,
    NoteSigner,
    UnverifiedNote,
)

# The example key and note from golang.org/x/mod/sumdb/note's package documentation:
# the same seed must give the same key id, vkey and (deterministic Ed25519) signature.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_NOTE = (
    GO_TEXT + "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNX"
    "gKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)

ROOT = bytes(range(32))


def test_go_sumdb_example_byte_for_byte() -> None:
    signer = NoteSigner.from_skey(GO_SKEY)
    assert signer.vkey() == GO_VKEY
    assert signer.skey() == GO_SKEY
    assert n.sign_note(GO_TEXT, signer) == GO_NOTE
    opened = n.open_note(GO_NOTE, [n.parse_vkey(GO_VKEY)])
    assert opened.text == GO_TEXT
    assert [s.name for s in opened.verified] == ["PeterNeumann"]


def test_c2sp_cosignature_example_parses() -> None:
    example = (
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
        "— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5"
        "/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
        "— witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dl"
        "rDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
    )
    parsed = n.parse_note(example)
    cp = n.parse_checkpoint(parsed.text)
    assert (cp.origin, cp.size) == ("example.com/behind-the-sofa", 20852163)
    cosig = parsed.signatures[1]
    assert cosig.key_id.hex() == "8d66cf3f"
    assert n.cosignature_timestamp(cosig) == 1679315147  # the spec's "time 1679315147"


def test_key_id_definition() -> None:
    import hashlib

    s = NoteSigner.generate("example.org/log")
    want = hashlib.sha256(b"example.org/log\n\x01" + s.public_key).digest()[:4]
    assert s.key_id == want
    c = CosignatureSigner(s.name, s.private_key)
    assert c.key_id == hashlib.sha256(b"example.org/log\n\x04" + s.public_key).digest()[:4]
    assert c.vkey().split("+", 2)[2] == base64.b64encode(b"\x04" + s.public_key).decode()


def test_checkpoint_round_trip() -> None:
    s = NoteSigner.generate("ccn.example/org-a")
    cp = Checkpoint("ccn.example/org-a", 1234, ROOT)
    text = n.sign_checkpoint(cp, s)
    assert text.startswith(f"ccn.example/org-a\n1234\n{base64.b64encode(ROOT).decode()}\n\n— ")
    got, note = n.open_checkpoint(text, [n.parse_vkey(s.vkey())], origin="ccn.example/org-a")
    assert got == cp
    assert note.encode() == text
    assert n.parse_checkpoint(Checkpoint("o", 0, ROOT).body()).size == 0


def test_cosignature_round_trip_and_merge() -> None:
    log = NoteSigner.generate("ccn.example/org-a")
    wit = CosignatureSigner.generate("ccn.example/org-b")
    body = Checkpoint(log.name, 99, ROOT).body()
    signed = n.sign_checkpoint(Checkpoint(log.name, 99, ROOT), log)
    cosig = n.cosign(body, wit, 1_700_000_000)
    merged = n.format_note(body, [*n.parse_note(signed).signatures, cosig])
    wv = n.parse_vkey(wit.vkey())
    assert isinstance(wv, n.CosignatureVerifier)
    opened = n.open_note(merged, [log.verifier(), wv])
    assert len(opened.verified) == 2
    assert n.verify_cosignature(body, cosig, wv, now=1_700_000_000) == 1_700_000_000
    # A cosignature key can't pass as the log key and the other way round.
    with pytest.raises(UnverifiedNote):
        n.open_checkpoint(signed, [wv])


def test_cosignature_refusals() -> None:
    wit = CosignatureSigner.generate("w.example")
    wv = wit.verifier()
    body = Checkpoint("log.example", 5, ROOT).body()
    now = 1_700_000_000
    future = n.cosign(body, wit, now + 301)
    with pytest.raises(InvalidSignature, match="future"):
        n.verify_cosignature(body, future, wv, now=now)
    assert n.verify_cosignature(body, n.cosign(body, wit, now + 300), wv, now=now) == now + 300
    other_body = Checkpoint("log.example", 6, ROOT).body()
    with pytest.raises(InvalidSignature):
        n.verify_cosignature(other_body, n.cosign(body, wit, now), wv, now=now)
    good = n.cosign(body, wit, now)
    forged_ts = n.Signature(good.name, good.key_id, (now - 10).to_bytes(8, "big") + good.sig[8:])
    with pytest.raises(InvalidSignature):
        n.verify_cosignature(body, forged_ts, wv, now=now)
    huge = n.Signature(good.name, good.key_id, (1 << 63).to_bytes(8, "big") + good.sig[8:])
    with pytest.raises(MalformedNote):
        n.verify_cosignature(body, huge, wv, now=now)
    with pytest.raises(MalformedNote):
        n.verify_cosignature(body, n.Signature(good.name, good.key_id, good.sig[:40]), wv, now)
    with pytest.raises(UnverifiedNote):
        n.verify_cosignature(body, good, CosignatureSigner.generate("w.example").verifier(), now)
    with pytest.raises(MalformedNote):  # witnesses refuse extension lines
        n.cosign(body + "ext\n", wit, now)


@pytest.fixture
def signed() -> tuple[NoteSigner, str]:
    s = NoteSigner.generate("log.example")
    return s, n.sign_checkpoint(Checkpoint("log.example", 42, ROOT), s)


def _sig_b64(text: str) -> str:
    return text.rsplit(" ", 1)[1].rstrip("\n")


def test_forged_signature(signed: tuple[NoteSigner, str]) -> None:
    s, text = signed
    raw = bytearray(base64.b64decode(_sig_b64(text)))
    raw[10] ^= 1
    forged = text.replace(_sig_b64(text), base64.b64encode(bytes(raw)).decode())
    with pytest.raises(InvalidSignature):
        n.open_checkpoint(forged, [s.verifier()])
    # The same signature over a different body.
    other = text.replace("\n42\n", "\n43\n")
    with pytest.raises(InvalidSignature):
        n.open_checkpoint(other, [s.verifier()])


def test_truncated_signature(signed: tuple[NoteSigner, str]) -> None:
    s, text = signed
    raw = base64.b64decode(_sig_b64(text))
    for cut in (raw[:-1], raw[:36], raw[:5]):
        t = text.replace(_sig_b64(text), base64.b64encode(cut).decode())
        with pytest.raises(InvalidSignature):
            n.open_checkpoint(t, [s.verifier()])
    t = text.replace(_sig_b64(text), base64.b64encode(raw[:4]).decode())
    with pytest.raises(MalformedNote):
        n.open_checkpoint(t, [s.verifier()])
    with pytest.raises(MalformedNote):  # cut inside the base64 text
        n.open_checkpoint(text[:-10] + "\n", [s.verifier()])


def test_unknown_key_and_unknown_origin(signed: tuple[NoteSigner, str]) -> None:
    s, text = signed
    stranger = NoteSigner.generate("log.example")  # same name, other key: other key id
    with pytest.raises(UnverifiedNote):
        n.open_checkpoint(text, [stranger.verifier()])
    renamed = NoteSigner("other.example", s.private_key)  # same key, other name
    with pytest.raises(UnverifiedNote):
        n.open_checkpoint(text, [renamed.verifier()])
    with pytest.raises(UnverifiedNote):
        n.open_checkpoint(text, [s.verifier()], origin="other.example")
    with pytest.raises(UnverifiedNote):
        n.open_checkpoint(text, [])


@pytest.mark.parametrize(
    "body",
    [
        "log.example\n42\n" + base64.b64encode(ROOT).decode() + "\nextension line\n",
        "log.example\n42\n" + base64.b64encode(ROOT).decode() + "\n\n",
        "log.example\n042\n" + base64.b64encode(ROOT).decode() + "\n",
        "log.example\n+42\n" + base64.b64encode(ROOT).decode() + "\n",
        "log.example\n-1\n" + base64.b64encode(ROOT).decode() + "\n",
        "log.example\n 42\n" + base64.b64encode(ROOT).decode() + "\n",
        f"log.example\n{1 << 63}\n" + base64.b64encode(ROOT).decode() + "\n",
        "log.example\n99999999999999999999999\n" + base64.b64encode(ROOT).decode() + "\n",
        "log.example\n42\n" + base64.b64encode(ROOT).decode().rstrip("=") + "\n",
        "log.example\n42\n" + base64.b64encode(ROOT[:31]).decode() + "\n",
        "log.example\n42\n" + base64.urlsafe_b64encode(b"\xff" * 32).decode() + "\n",
        "\n42\n" + base64.b64encode(ROOT).decode() + "\n",
        "log.example\n42\n",
        "log.example\n42\n" + base64.b64encode(ROOT).decode(),
    ],
)
def test_bad_checkpoint_bodies(body: str) -> None:
    with pytest.raises(MalformedNote):
        n.parse_checkpoint(body)


def test_largest_size_accepted() -> None:
    body = f"o\n{(1 << 63) - 1}\n" + base64.b64encode(ROOT).decode() + "\n"
    assert n.parse_checkpoint(body).size == (1 << 63) - 1


def test_non_canonical_base64() -> None:
    canon = base64.b64encode(b"\x01\x02").decode()  # "AQI="
    assert n.b64decode_strict(canon) == b"\x01\x02"
    for bad in ("AQJ=", "AQI", "AQI==", " AQI=", "AQ I=", "AQI=\n", "AQ-_", "ＡQI="):
        with pytest.raises(MalformedNote):
            n.b64decode_strict(bad)


def test_non_canonical_signature_base64(signed: tuple[NoteSigner, str]) -> None:
    s, text = signed
    b64 = _sig_b64(text)  # 68 bytes -> ends in "=="? no: 68 % 3 == 2 -> one "="
    assert b64.endswith("=") and not b64.endswith("==")
    last = b64[-2]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    sibling = alphabet[alphabet.index(last) ^ 1]  # differs only in the unused low bits
    assert base64.b64decode(b64[:-2] + sibling + "=") == base64.b64decode(b64)
    with pytest.raises(MalformedNote):
        n.open_checkpoint(text.replace(b64, b64[:-2] + sibling + "="), [s.verifier()])


def test_malformed_notes(signed: tuple[NoteSigner, str]) -> None:
    s, text = signed
    v = [s.verifier()]
    body, sigs = text.split("\n\n")
    bad = [
        text.replace("\n", "\r\n"),  # control character
        text.replace("log.example\n", "log.example\t\n", 1),
        text[:-1],  # no final newline
        text + "trailing garbage\n",
        text + "\n",
        body + "\n" + sigs,  # no blank line
        text.replace("— ", "-- "),
        text.replace("— ", "—"),
        text.replace("— log.example ", "— log.example  "),
        text.replace("— log.example ", "— log+example "),
        text.encode()[:-3] + b"\xff\n",
    ]
    for msg in bad:
        with pytest.raises(MalformedNote):
            n.open_checkpoint(msg, v)


def test_size_limit(signed: tuple[NoteSigner, str]) -> None:
    s, text = signed
    extra = "".join(n.Signature(f"w{i}.example", b"\0\0\0\0", b"\1" * 64).line() + "\n" for i in range(80))
    big = text + extra
    assert len(big.encode()) > n.MAX_NOTE_BYTES
    with pytest.raises(MalformedNote, match="larger"):
        n.open_checkpoint(big, [s.verifier()])
    # 16 cosignatures must fit (signed-note: accept at least 16 signatures).
    ok = text + "".join(
        n.Signature(f"witness-{i}.example.org/w", b"\0\0\0\0", b"\1" * 72).line() + "\n" for i in range(16)
    )
    assert n.open_checkpoint(ok, [s.verifier()])[0].size == 42


def test_unknown_signatures_are_ignored_but_known_bad_rejects(
    signed: tuple[NoteSigner, str],
) -> None:
    s, text = signed
    extra = n.Signature("stranger.example", b"abcd", b"\2" * 64).line() + "\n"
    _, note = n.open_checkpoint(text + extra, [s.verifier()])
    assert len(note.signatures) == 2 and len(note.verified) == 1
    bad_known = n.Signature(s.name, s.key_id, b"\2" * 64).line() + "\n"
    with pytest.raises(InvalidSignature):
        n.open_checkpoint(text.split("\n\n")[0] + "\n\n" + bad_known, [s.verifier()])


@pytest.mark.parametrize(
    "vkey",
    [
        GO_VKEY.replace("c74f20a3", "c74f20a4"),  # id does not match
        GO_VKEY.replace("c74f20a3", "C74F20A3"),
        GO_VKEY.replace("ARpc", "Arpc"),  # key changed under the id
        GO_VKEY.replace("+ARpc", "+Apc"),
        GO_VKEY.replace("PeterNeumann", "Peter Neumann"),
        "PeterNeumann+c74f20a3",
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        GO_VKEY + "+x",
        "a+00000000+" + base64.b64encode(b"\x09" + b"\0" * 32).decode(),  # unknown type
    ],
)
def test_bad_vkeys(vkey: str) -> None:
    with pytest.raises(MalformedNote):
        n.parse_vkey(vkey)


def test_bad_skeys() -> None:
    with pytest.raises(MalformedNote):
        NoteSigner.from_skey(GO_SKEY.replace("c74f20a3", "00000000"))
    with pytest.raises(MalformedNote):
        NoteSigner.from_skey(GO_SKEY.replace("PRIVATE+KEY+", ""))
    with pytest.raises(MalformedNote):
        NoteSigner("bad name", NoteSigner.generate("x").private_key)
