"""Limits against real node processes: requests per user per minute (429, Retry-After,
X-RateLimit-Remaining), model tokens per user per day (429 until the UTC day ends), request
body and WebSocket frame sizes (413; an error frame that leaves the socket usable; a close
1009 above the hard cap)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from nodeproc import NodeProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """Default request limits (100/min, burst 20), a tiny daily token budget."""
    node = NodeProcess(tmp_path_factory.mktemp("strict"), config_extra="[limits]\nmodel_tokens_per_day = 400\n")
    node.start()
    try:
        yield node
    finally:
        node.stop()


def test_requests_per_minute_per_user(strict: NodeProcess) -> None:
    alice, bob = strict.token("rl-alice"), strict.token("rl-bob")
    remaining, statuses, limited = [], [], None
    for _ in range(40):
        r = strict.request("GET", "/api/v1/whoami", token=alice)
        statuses.append(r.status)
        if r.status == 429:
            limited = r
            break
        remaining.append(int(r.headers["x-ratelimit-remaining"]))
        assert r.headers["x-ratelimit-limit"] == "100"
    assert limited is not None, statuses
    assert remaining == sorted(remaining, reverse=True) and remaining[-1] <= 1
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert limited.json()["error"]["code"] == "rate_limited"
    assert limited.headers["x-ratelimit-remaining"] == "0"
    # per user: bob is not affected
    assert strict.request("GET", "/api/v1/whoami", token=bob).status == 200


def test_daily_model_token_budget(strict: NodeProcess) -> None:
    carol = strict.token("budget-carol")
    sid = strict.start_conversation(carol)
    statuses = []
    for i in range(12):
        r = strict.send(sid, carol, f"Tell me a long story about bees, part {i}.")
        statuses.append(r.status)
        if r.status == 429:
            break
    assert statuses[0] == 200 and statuses[-1] == 429, statuses
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] != "rate_limited"  # the token quota, not the request rate
    assert strict.request("GET", f"/api/v1/conversation/{sid}", token=carol).status == 200  # reads still work
    dave = strict.token("budget-dave")
    sid2 = strict.start_conversation(dave)
    r = strict.send(sid2, dave, "hi")
    assert r.status == 200  # per user


def test_ten_megabyte_bodies_are_413(node: NodeProcess) -> None:
    erin = node.token("size-erin")
    big = b'{"title": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    for path in ("/api/v1/conversation/start", "/api/v1/conversation/conv_x/message"):
        r = node.request("POST", path, token=erin, body=big, headers={"Content-Type": "application/json"})
        assert r.status == 413, r
        assert r.json()["error"]["code"] == "payload_too_large"
    assert node.request("GET", "/health").status == 200


def test_websocket_frame_limits(node: NodeProcess, tmp_path: Path) -> None:
    frank = node.token("size-frank")
    sid = node.start_conversation(frank)
    url = node.url.replace("http", "ws") + f"/ws/conversation/{sid}"

    async def run() -> tuple[list[dict], int | None, list[str]]:
        frames: list[dict] = []
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url, headers={"Authorization": f"Bearer {frank}"}) as ws:
                # over limits.max_ws_frame_bytes (256 KiB): an error frame, the socket stays usable
                await ws.send_str(json.dumps({"type": "message", "content": "y" * 400_000}))
                frames.append(await asyncio.wait_for(ws.receive_json(), 10))
                await ws.send_json({"type": "ping"})
                frames.append(await asyncio.wait_for(ws.receive_json(), 10))
                # over the hard cap (limits.max_body_bytes, 1 MiB): the node closes with 1009
                await ws.send_str("z" * (2 * 1024 * 1024))
                msg = await asyncio.wait_for(ws.receive(), 10)
                close_code = ws.close_code if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                                           aiohttp.WSMsgType.CLOSING) else None
            # and a new socket works
            kinds = []
            async with http.ws_connect(url, headers={"Authorization": f"Bearer {frank}"}) as ws:
                await ws.send_json({"type": "message", "content": "short and fine"})
                while not kinds or kinds[-1] not in ("metrics", "error"):
                    kinds.append((await asyncio.wait_for(ws.receive_json(), 20))["type"])
        return frames, close_code, kinds

    frames, close_code, kinds = asyncio.run(run())
    assert frames[0]["type"] == "error" and frames[0]["code"] == "payload_too_large"
    assert frames[1] == {"type": "pong"}
    assert close_code == 1009
    assert kinds[-2:] == ["response", "metrics"]
