"""The metrics endpoints on a real node: one conversation's per-turn series and aggregate (owner
only), the caller's realtime view, and the WebSocket `metrics` frame carrying ccc and phi."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from nodeproc import NodeProcess


@pytest.fixture(scope="module")
def liv(node: NodeProcess) -> str:
    return node.token("liv")


def start(node: NodeProcess, token: str) -> str:
    return node.request("POST", "/api/v1/conversation/start", token=token, json_body={}).json()["session_id"]


def say(node: NodeProcess, token: str, sid: str, text: str) -> dict[str, Any]:
    r = node.request("POST", f"/api/v1/conversation/{sid}/message", token=token, json_body={"content": text})
    assert r.status == 200, r
    return r.json()


def test_conversation_series_and_aggregate(node: NodeProcess, liv: str) -> None:
    sid = start(node, liv)
    replies = [say(node, liv, sid, t) for t in ("How do bees find flowers?", "And in the rain?")]
    r = node.request("GET", f"/api/v1/metrics/conversation/{sid}", token=liv)
    assert r.status == 200, r
    body = r.json()
    assert [t["seq"] for t in body["turns"]] == [2, 4]
    assert [t["message_id"] for t in body["turns"]] == [x["message_id"] for x in replies]
    assert [t["metrics"] for t in body["turns"]] == [x["metrics"] for x in replies]
    agg = body["aggregate"]
    assert agg["turns"] == 2
    phis = [x["metrics"]["phi"] for x in replies]
    assert agg["phi"]["n"] == 2 and agg["phi"]["last"] == phis[-1] and agg["phi"]["min"] == min(phis)
    assert agg["phi"]["mean"] == pytest.approx(sum(phis) / 2)
    for name in ("ccc", "trust", "emergence", "drift_baseline"):
        assert 0.0 <= agg[name]["mean"] <= 1.0


def test_conversation_metrics_are_private(node: NodeProcess, liv: str) -> None:
    sid = start(node, liv)
    say(node, liv, sid, "private thoughts")
    assert node.request("GET", f"/api/v1/metrics/conversation/{sid}").status == 401
    other = node.request("GET", f"/api/v1/metrics/conversation/{sid}", token=node.token("mallory"))
    assert other.status == 404 and other.json()["error"]["code"] == "not_found"
    assert node.request("GET", "/api/v1/metrics/conversation/c_nope", token=liv).status == 404
    assert node.request("GET", f"/api/v1/metrics/conversation/{'x' * 200}", token=liv).status == 404
    fresh = start(node, liv)
    empty = node.request("GET", f"/api/v1/metrics/conversation/{fresh}", token=liv).json()
    assert empty["turns"] == [] and empty["aggregate"]["turns"] == 0 and empty["aggregate"]["phi"] is None


def test_realtime(node: NodeProcess) -> None:
    nina = node.token("nina")
    active, ended = start(node, nina), start(node, nina)
    last = [say(node, nina, active, "first"), say(node, nina, active, "second")][-1]
    say(node, nina, ended, "short one")
    node.request("DELETE", f"/api/v1/conversation/{ended}", token=nina)
    body = node.request("GET", "/api/v1/metrics/realtime", token=nina).json()
    sessions = {c["session_id"]: c for c in body["conversations"]}
    assert set(sessions) == {active}
    assert sessions[active]["metrics"] == last["metrics"] and sessions[active]["message_count"] == 4
    assert body["instances"]["active_yours"] == 1 and body["instances"]["active"] >= 1
    assert "consensus" in body
    other = node.request("GET", "/api/v1/metrics/realtime", token=node.token("oscar")).json()
    assert other["conversations"] == [] and other["instances"]["active_yours"] == 0
    assert node.request("GET", "/api/v1/metrics/realtime").status == 401


def test_websocket_metrics_frame_carries_ccc_and_phi(node: NodeProcess, liv: str) -> None:
    sid = start(node, liv)

    async def talk() -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as session:
            url = f"{node.url.replace('http', 'ws', 1)}/ws/conversation/{sid}?access_token={liv}"
            async with session.ws_connect(url) as ws:
                await ws.send_str(json.dumps({"type": "message", "content": "hello over the socket"}))
                async with asyncio.timeout(10):
                    while not frames or frames[-1]["type"] not in ("metrics", "error"):
                        frames.append(json.loads((await ws.receive()).data))
        return frames

    frames = asyncio.run(talk())
    kinds = [f["type"] for f in frames]
    assert kinds[-2:] == ["response", "metrics"], kinds
    metrics = frames[-1]
    assert 0.0 <= metrics["ccc"] <= 1.0 and 0.0 <= metrics["phi"] <= 1.0
    assert frames[-2]["metrics"]["ccc"] == metrics["ccc"]
