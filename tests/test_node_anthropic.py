"""A node process using the real `anthropic` SDK against the local fake Messages API:
prompt caching of THE PLATE, usage and cost stored, retries, and failures that store nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest
from fake_messages_api import Behaviour, FakeMessagesAPI, anthropic_node
from nodeproc import NodeProcess


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeMessagesAPI]:
    with FakeMessagesAPI() as api:
        yield api


@pytest.fixture(scope="module")
def anode(tmp_path_factory: pytest.TempPathFactory, fake: FakeMessagesAPI) -> Iterator[NodeProcess]:
    with anthropic_node(tmp_path_factory.mktemp("anode"), fake, 'validation = "never"', max_retries=2,
                        timeout_s=10) as proc:
        yield proc


def _start(node: NodeProcess, token: str) -> str:
    return node.request("POST", "/api/v1/conversation/start", token=token, json_body={}).json()["session_id"]


def test_plate_is_cached_and_cost_is_stored(anode: NodeProcess, fake: FakeMessagesAPI) -> None:
    fake.reset(Behaviour())
    token = anode.token("carol")
    sid = _start(anode, token)
    first = anode.request("POST", f"/api/v1/conversation/{sid}/message", token=token, json_body={"content": "hello"})
    second = anode.request("POST", f"/api/v1/conversation/{sid}/message", token=token, json_body={"content": "again"})
    assert first.status == second.status == 200, (first, second)
    calls = [r for r in fake.requests if r.path == "/v1/messages"]
    assert len(calls) == 2
    systems = [c.body["system"] for c in calls]
    assert systems[0][0]["text"] == systems[1][0]["text"], "the plate block must be byte-identical"
    assert systems[0][0]["cache_control"] == {"type": "ephemeral"}
    assert all(c.body["stream"] is True for c in calls)
    u1, u2 = first.json()["usage"], second.json()["usage"]
    assert u1["cache_creation_input_tokens"] > 0 and u2["cache_read_input_tokens"] > 0
    assert first.json()["is_language_model"] is True and first.json()["backend"] == "anthropic"
    assert second.json()["cost_usd"] > 0
    stored = anode.request("GET", f"/api/v1/conversation/{sid}", token=token).json()["messages"][-1]
    assert stored["usage"]["cache_read_input_tokens"] == u2["cache_read_input_tokens"]
    assert stored["usage"]["cost_usd"] == second.json()["cost_usd"]


def test_rate_limited_then_succeeds_with_sdk_retries(anode: NodeProcess, fake: FakeMessagesAPI) -> None:
    fake.reset(Behaviour(fail_first=2, fail_status=429, retry_after="0"))
    token = anode.token("carol")
    sid = _start(anode, token)
    r = anode.request("POST", f"/api/v1/conversation/{sid}/message", token=token, json_body={"content": "retry"})
    assert r.status == 200, r
    assert len([x for x in fake.requests if x.path == "/v1/messages"]) == 3


def test_overloaded_after_retries_is_503_and_nothing_half_stored(anode: NodeProcess, fake: FakeMessagesAPI) -> None:
    fake.reset(Behaviour(fail_first=10, fail_status=529, retry_after="0"))
    token = anode.token("carol")
    sid = _start(anode, token)
    r = anode.request("POST", f"/api/v1/conversation/{sid}/message", token=token, json_body={"content": "down?"})
    assert r.status == 503 and r.json()["error"]["code"] == "model_unavailable"
    assert "retry-after" in r.headers
    messages = anode.request("GET", f"/api/v1/conversation/{sid}", token=token).json()["messages"]
    assert [m["role"] for m in messages] == ["user"], "the question is kept, no answer is invented"


async def _frames_of_turn(ws: aiohttp.ClientWebSocketResponse) -> list[dict]:
    """The frames one sent message produces, up to its last one (`metrics`, or `error`)."""
    frames = []
    while True:
        frame = await asyncio.wait_for(ws.receive_json(), 20)
        frames.append(frame)
        if frame["type"] in ("error", "metrics"):
            return frames


def test_stream_failing_midway_is_an_error_frame_and_not_stored(anode: NodeProcess, fake: FakeMessagesAPI) -> None:
    fake.reset(Behaviour(error_after_deltas=2, delta_chars=5))
    token = anode.token("dave")
    sid = _start(anode, token)

    async def run() -> list[dict]:
        frames = []
        url = anode.url.replace("http", "ws") + f"/ws/conversation/{sid}"
        async with aiohttp.ClientSession() as http, http.ws_connect(
            url, headers={"Authorization": f"Bearer {token}"}
        ) as ws:
            await ws.send_json({"type": "message", "content": "tell me a long story", "idempotency_key": "k-1"})
            frames += await _frames_of_turn(ws)
            # the retry with the same key, once the model is healthy, answers the stored question once
            fake.reset(Behaviour())
            await ws.send_json({"type": "message", "content": "tell me a long story", "idempotency_key": "k-1"})
            frames += await _frames_of_turn(ws)
        return frames

    frames = asyncio.run(run())
    kinds = [f["type"] for f in frames]
    first_error = kinds.index("error")
    assert "delta" in kinds[:first_error], "some text streamed before the failure"
    assert frames[first_error]["code"] == "model_unavailable"
    assert kinds[-2:] == ["response", "metrics"]
    messages = anode.request("GET", f"/api/v1/conversation/{sid}", token=token).json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["content"] == frames[-2]["content"]


def test_ready_reports_the_anthropic_backend(anode: NodeProcess) -> None:
    ready = anode.request("GET", "/ready").json()
    assert ready["model"]["backend"] == "anthropic" and ready["checks"]["model_backend"] is True
