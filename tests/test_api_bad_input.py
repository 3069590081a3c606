"""Bad input gets a clear 4xx and changes nothing — against a real node process."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import aiohttp
import jwt
import pytest
from nodeproc import NodeProcess


@pytest.fixture(scope="module")
def alice(node: NodeProcess) -> str:
    return node.token("alice")


@pytest.fixture(scope="module")
def sid(node: NodeProcess, alice: str) -> str:
    r = node.request("POST", "/api/v1/conversation/start", token=alice, json_body={})
    return r.json()["session_id"]


def count_messages(node: NodeProcess, token: str, sid: str) -> int:
    return len(node.request("GET", f"/api/v1/conversation/{sid}", token=token).json()["messages"])


def error(r) -> dict:
    body = r.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
    return body["error"]


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        (b'{"content": "unterminated', "invalid_json", None),
        (b"not json at all", "invalid_json", None),
        (b"", "invalid_json", None),
        (b'{"content": 42}', "invalid_request", "content"),
        (b'{"content": ["a"]}', "invalid_request", "content"),
        (b'{"content": "hi", "evil": true}', "invalid_request", "evil"),
        (b'{"content": ""}', "invalid_request", "content"),
        (b'{"content": "   "}', "invalid_request", "content"),
        (b'{"content": "nul \\u0000 inside"}', "invalid_request", "content"),
        (b'{"content": "\xff\xfe broken utf-8"}', "invalid_encoding", None),
        (b'{"content": "hi", "wait": "yes"}', "invalid_request", "wait"),
        (b"[1, 2, 3]", "invalid_request", None),
    ],
)
def test_bad_message_bodies(node: NodeProcess, alice: str, sid: str, body: bytes, code: str, field: str | None) -> None:
    before = count_messages(node, alice, sid)
    r = node.request("POST", f"/api/v1/conversation/{sid}/message", token=alice, body=body,
                     headers={"Content-Type": "application/json"})
    assert r.status == 400, r
    err = error(r)
    assert err["code"] == code
    if field is not None:
        assert err["field"] == field
    assert count_messages(node, alice, sid) == before


def test_ten_megabyte_body_is_413(node: NodeProcess, alice: str, sid: str) -> None:
    before = count_messages(node, alice, sid)
    big = b'{"content": "' + b"a" * (10 * 1024 * 1024) + b'"}'
    r = node.request("POST", f"/api/v1/conversation/{sid}/message", token=alice, body=big)
    assert r.status == 413 and error(r)["code"] == "payload_too_large"
    assert count_messages(node, alice, sid) == before


def test_message_longer_than_limit(node: NodeProcess, alice: str, sid: str) -> None:
    r = node.request("POST", f"/api/v1/conversation/{sid}/message", token=alice,
                     json_body={"content": "x" * 100_001})
    assert r.status == 400 and error(r)["field"] == "content"


@pytest.mark.parametrize(
    "q",
    ['"', '""', "*", "a*", "NEAR(", "NEAR(a b", "OR", "AND", "NOT", "a OR", "(", ")", "((a)", "a)b(",
     "content:foo", "^start", "-minus", "{a b}", "a + b", "'", "\\", "x" * 999, "NEAR(\"a\" \"b\", 5)",
     "💥 emoji", "日本語", "\u202e rtl"],
)
def test_hostile_search_strings_are_text(node: NodeProcess, alice: str, q: str) -> None:
    r = node.request("GET", "/api/v1/search?" + _qs(q), token=alice)
    assert r.status == 200, r
    assert isinstance(r.json()["hits"], list)


def test_search_finds_punctuation_heavy_text(node: NodeProcess, alice: str, sid: str) -> None:
    node.request("POST", f"/api/v1/conversation/{sid}/message", token=alice,
                 json_body={"content": 'the operator said "NEAR(quokka OR wombat)" twice'})
    hits = node.request("GET", "/api/v1/search?" + _qs('NEAR(quokka OR'), token=alice).json()["hits"]
    assert any("quokka" in h["snippet"] for h in hits)


def test_search_parameter_errors(node: NodeProcess, alice: str) -> None:
    assert node.request("GET", "/api/v1/search", token=alice).status == 400
    assert node.request("GET", "/api/v1/search?q=a&limit=abc", token=alice).status == 400
    assert node.request("GET", "/api/v1/search?q=a&limit=100000", token=alice).status == 400
    assert node.request("GET", "/api/v1/search?" + _qs("x" * 1001), token=alice).status == 400
    assert node.request("GET", "/api/v1/search?q=a%00b", token=alice).status == 400


def _qs(q: str) -> str:
    from urllib.parse import urlencode

    return urlencode({"q": q})


def _forge(claims: dict, key: bytes | str | None, alg: str) -> str:
    return jwt.encode(claims, key, algorithm=alg)


def test_bad_tokens_are_401(node: NodeProcess, sid: str) -> None:
    now = int(time.time())
    base = {"sub": "mallory", "role": "admin", "iss": "ccn-node", "iat": now, "exp": now + 600}
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=")
    payload = base64.urlsafe_b64encode(json.dumps(base).encode()).rstrip(b"=")
    unsigned = (header + b"." + payload + b".").decode()
    expired_key = node.token("alice")  # right key, but we need an expired one: forge with the node's key
    key = (node.data_dir / "keys" / "jwt.key").read_bytes().strip()
    expired = _forge({**base, "iat": now - 7200, "exp": now - 3600}, key, "HS256")
    foreign = _forge(base, b"some-other-organisation-key-0123456789", "HS256")
    wrong_issuer = _forge({**base, "iss": "someone-else"}, key, "HS256")
    for token in (unsigned, expired, foreign, wrong_issuer, "garbage", "a.b.c", expired_key[:-4] + "AAAA"):
        r = node.request("GET", "/api/v1/conversations", token=token)
        assert r.status == 401, (token, r)
        assert error(r)["code"] == "unauthorized"
    assert node.request("GET", "/api/v1/conversations").status == 401
    r = node.request("GET", "/api/v1/conversations", headers={"Authorization": "Basic abc"})
    assert r.status == 401


def test_unknown_conversation_is_404(node: NodeProcess, alice: str) -> None:
    for path in ("/api/v1/conversation/c_doesnotexist", "/api/v1/conversation/" + "x" * 500):
        r = node.request("GET", path, token=alice)
        assert r.status == 404 and error(r)["code"] == "not_found"


def test_unknown_route_and_method_are_json(node: NodeProcess, alice: str) -> None:
    r = node.request("GET", "/api/v1/nope", token=alice)
    assert r.status == 404 and error(r)["code"] == "not_found"
    r = node.request("PUT", "/api/v1/conversation/start", token=alice)
    assert r.status == 405 and error(r)["code"] == "method_not_allowed"


def test_start_with_bad_body(node: NodeProcess, alice: str) -> None:
    r = node.request("POST", "/api/v1/conversation/start", token=alice, json_body={"title": 5})
    assert r.status == 400 and error(r)["field"] == "title"
    r = node.request("POST", "/api/v1/conversation/start", token=alice, json_body={"title": "t" * 201})
    assert r.status == 400


def test_websocket_bad_frames_keep_the_connection(node: NodeProcess, alice: str, sid: str) -> None:
    async def run() -> list[dict]:
        frames = []
        url = node.url.replace("http", "ws") + f"/ws/conversation/{sid}"
        async with aiohttp.ClientSession() as http, http.ws_connect(
            url, headers={"Authorization": f"Bearer {alice}"}, timeout=aiohttp.ClientWSTimeout(ws_close=5)
        ) as ws:
            for bad in ("not json", '{"type": "message"}', '{"type": "message", "content": 5}',
                        '{"type": "bogus"}', json.dumps({"type": "message", "content": "x" * 300_000})):
                await ws.send_str(bad)
                frames.append(await asyncio.wait_for(ws.receive_json(), 10))
            await ws.send_bytes(b"\xff\xfe")
            frames.append(await asyncio.wait_for(ws.receive_json(), 10))
            await ws.send_json({"type": "ping"})
            frames.append(await asyncio.wait_for(ws.receive_json(), 10))
            await ws.send_json({"type": "message", "content": "still usable?"})
            while True:
                frame = await asyncio.wait_for(ws.receive_json(), 10)
                frames.append(frame)
                if frame["type"] in ("metrics", "error"):
                    break
        return frames

    frames = asyncio.run(run())
    assert [f["type"] for f in frames[:6]] == ["error"] * 6
    assert frames[0]["code"] == "invalid_json"
    assert frames[4]["code"] == "payload_too_large"
    assert frames[5]["code"] == "invalid_encoding"
    assert frames[6] == {"type": "pong"}
    kinds = [f["type"] for f in frames[7:]]
    assert "delta" in kinds and kinds[-2:] == ["response", "metrics"]
    assert {"ccc", "phi"} <= set(frames[-1])


def test_websocket_needs_a_valid_token(node: NodeProcess, sid: str) -> None:
    async def run() -> int:
        url = node.url.replace("http", "ws") + f"/ws/conversation/{sid}?access_token=garbage"
        async with aiohttp.ClientSession() as http:
            try:
                async with http.ws_connect(url):
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    assert asyncio.run(run()) == 401
