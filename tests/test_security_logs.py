"""Logs are JSON lines and never hold message content, tokens or keys — even at log_level debug,
with the offline backend and with the real `anthropic` SDK (whose own debug logging would print
request bodies) talking to the local fake Messages API."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import aiohttp
import pytest
from fake_messages_api import Behaviour, FakeMessagesAPI
from nodeproc import NodeProcess

pytestmark = pytest.mark.slow


def exercise(node: NodeProcess, token: str, marker: str) -> None:
    """Every way content reaches the node: JSON turn, SSE turn, WebSocket turn, search, bad input."""
    sid = node.start_conversation(token, title=f"title {marker}")
    r = node.send(sid, token, f"Remember the code word {marker}, please.")
    assert r.status == 200, r
    r = node.send(sid, token, f"Say {marker} again", stream=True)
    assert r.status == 200 and b"event: response" in r.body, r
    assert node.request("GET", f"/api/v1/search?q={marker}", token=token).status == 200
    for bad in (f'{{"content": 5, "x": "{marker}"}}', f'{{"content": "{marker}"', f'{{"{marker}": 1}}'):
        assert node.request("POST", f"/api/v1/conversation/{sid}/message", token=token, body=bad.encode(),
                            headers={"Content-Type": "application/json"}).status == 400
    assert node.request("GET", "/api/v1/whoami", token=token + marker).status == 401

    async def ws_turn() -> None:
        url = node.url.replace("http", "ws") + f"/ws/conversation/{sid}?access_token={token}"
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            await ws.send_str(f"not json {marker}")
            await asyncio.wait_for(ws.receive_json(), 10)
            await ws.send_json({"type": "message", "content": f"websocket {marker}"})
            kinds: list[str] = []
            while not kinds or kinds[-1] not in ("metrics", "error"):
                kinds.append((await asyncio.wait_for(ws.receive_json(), 20))["type"])

    asyncio.run(ws_turn())
    node.request("GET", f"/api/v1/conversation/{sid}/export?format=markdown", token=token)


def check_log(node: NodeProcess, forbidden: list[str]) -> None:
    node.stop()
    text = node.log_path.read_text()
    for secret in forbidden:
        assert secret not in text, f"{secret[:12]}… found in the node log"
    records = 0
    for line in text.splitlines():
        if line.startswith("ccn-node ") or not line.strip():
            continue  # the banner printed on stdout
        entry = json.loads(line)  # every log line is one JSON object
        assert {"ts", "level", "logger", "msg"} <= set(entry)
        records += 1
    assert records >= 1


def test_offline_node_logs_no_content_or_tokens(tmp_path: Path) -> None:
    marker = f"ZEBRA{secrets.token_hex(6)}"
    node = NodeProcess(tmp_path / "data", config_extra='[node]\nlog_level = "debug"\n').start()
    try:
        token = node.token("logged-user")
        exercise(node, token, marker)
    finally:
        node.stop()
    jwt_key = (node.data_dir / "keys" / "jwt.key").read_text().strip()
    check_log(node, [marker, token, token.split(".")[2], jwt_key])


def test_anthropic_node_logs_no_content_or_keys(tmp_path: Path) -> None:
    marker = f"OKAPI{secrets.token_hex(6)}"
    api_key = f"sk-ant-test-{secrets.token_hex(8)}"
    with FakeMessagesAPI() as fake:
        fake.reset(Behaviour())
        extra = (f'[node]\nlog_level = "debug"\n[model]\nbackend = "anthropic"\nbase_url = "{fake.base_url}"\n'
                 "[continuity]\nvalidation = \"never\"\n")
        node = NodeProcess(tmp_path / "data", config_extra=extra, env={"ANTHROPIC_API_KEY": api_key})
        node.config_path.write_text(node.config_path.read_text().replace('backend = "auto"\n', ""))
        node.start()
        try:
            token = node.token("logged-user")
            exercise(node, token, marker)
            assert any(marker in json.dumps(r.body) for r in fake.requests)  # the content did reach the model
        finally:
            node.stop()
    check_log(node, [marker, token, api_key])
