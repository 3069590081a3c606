"""The single node over real HTTP: start, turn (JSON and SSE), idempotency, get, time travel,
search isolation, export, end — against a real `ccn-node serve` process."""

from __future__ import annotations

import json

import pytest
from nodeproc import NodeProcess


@pytest.fixture(scope="module")
def alice(node: NodeProcess) -> str:
    return node.token("alice")


@pytest.fixture(scope="module")
def bob(node: NodeProcess) -> str:
    return node.token("bob")


def start(node: NodeProcess, token: str, title: str = "") -> str:
    r = node.request("POST", "/api/v1/conversation/start", token=token, json_body={"title": title})
    assert r.status == 201, r
    body = r.json()
    assert body["websocket_url"].startswith("ws://127.0.0.1:")
    assert body["websocket_url"].endswith(f"/ws/conversation/{body['session_id']}")
    assert body["metrics_url"].endswith(f"/api/v1/metrics/conversation/{body['session_id']}")
    return body["session_id"]


def say(node: NodeProcess, token: str, sid: str, text: str, **headers: str):
    return node.request("POST", f"/api/v1/conversation/{sid}/message", token=token,
                        json_body={"content": text}, headers=headers)


def test_start_answers_what_was_stored(node: NodeProcess, alice: str) -> None:
    # The service answers from the command it applied, without reading the row back.
    metadata = {"client": "tests", "n": 3, "ratio": 0.5, "flag": True, "none": None}
    r = node.request("POST", "/api/v1/conversation/start", token=alice,
                     json_body={"title": "stored as sent", "metadata": metadata})
    assert r.status == 201, r
    started = r.json()
    conv = node.request("GET", f"/api/v1/conversation/{started['session_id']}", token=alice).json()
    for key in ("session_id", "created_at", "plate_version", "status"):
        assert started[key] == conv[key], key
    assert conv["status"] == "active" and conv["message_count"] == 0 and conv["ended_at"] is None
    assert conv["title"] == "stored as sent" and conv["metadata"] == metadata


def test_health_and_ready_differ(node: NodeProcess) -> None:
    assert node.request("GET", "/health").json()["status"] == "ok"
    ready = node.request("GET", "/ready").json()
    assert ready["ready"] is True
    assert ready["checks"]["storage"] and ready["checks"]["model_backend"]
    assert ready["model"]["backend"] == "offline"


def test_turn_is_stored_with_manifest_and_metrics(node: NodeProcess, alice: str) -> None:
    sid = start(node, alice, "first")
    r = say(node, alice, sid, "My sister Ingrid lives in Tromsø and keeps bees.")
    assert r.status == 200, r
    reply = r.json()
    assert reply["backend"] == "offline" and reply["is_language_model"] is False
    assert reply["usage"]["output_tokens"] > 0
    assert 0.0 <= reply["metrics"]["ccc"] <= 1.0
    conv = node.request("GET", f"/api/v1/conversation/{sid}", token=alice).json()
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    answer = conv["messages"][1]
    assert answer["content"] == reply["content"]
    manifest = answer["manifest"]
    assert manifest["budget"] > 0 and manifest["total"] <= manifest["budget"]
    # The first turn: the user's message is the final message (its own section), not a recent turn.
    sections = manifest["sections"]
    assert sections["recent"]["message_ids"] == []
    assert sections["user"]["tokens"] > 0 and sections["plate"]["tokens"] > 0
    assert len(answer["character_snapshot"]) == 16
    # The second turn's recent window is the first exchange, oldest first.
    assert say(node, alice, sid, "The bees produced honey this year.").status == 200
    conv = node.request("GET", f"/api/v1/conversation/{sid}", token=alice).json()
    second = conv["messages"][3]["manifest"]["sections"]["recent"]
    assert second["message_ids"] == [m["message_id"] for m in conv["messages"][:2]]
    assert second["tokens"] > 0


def test_relevant_history_from_another_conversation_reaches_the_context(node: NodeProcess, alice: str) -> None:
    first = start(node, alice)
    assert say(node, alice, first, "The name of my sailing boat is Kittiwake.").status == 200
    second = start(node, alice)
    r = node.request("POST", f"/api/v1/conversation/{second}/context", token=alice,
                     json_body={"content": "What was the name of my sailing boat?"})
    assert r.status == 200, r
    ctx = r.json()
    assert ctx["system"][0]["kind"] == "plate" and ctx["system"][0]["cache"] is True
    text = "\n".join(b["text"] for b in ctx["system"])
    assert "Kittiwake" in text
    # the dry run stored nothing
    conv = node.request("GET", f"/api/v1/conversation/{second}", token=alice).json()
    assert conv["messages"] == []


def test_plate_block_is_byte_identical_across_turns(node: NodeProcess, alice: str) -> None:
    sid = start(node, alice)
    a = node.request("POST", f"/api/v1/conversation/{sid}/context", token=alice, json_body={"content": "one"}).json()
    say(node, alice, sid, "something in between")
    b = node.request("POST", f"/api/v1/conversation/{sid}/context", token=alice, json_body={"content": "two"}).json()
    assert a["system"][0]["text"] == b["system"][0]["text"]


def test_idempotency_key_stores_once_and_replays(node: NodeProcess, alice: str) -> None:
    sid = start(node, alice)
    first = say(node, alice, sid, "remember the number 4711", **{"Idempotency-Key": "abc-1"})
    again = say(node, alice, sid, "remember the number 4711", **{"Idempotency-Key": "abc-1"})
    assert first.status == again.status == 200
    assert again.json()["replayed"] is True
    assert again.json()["message_id"] == first.json()["message_id"]
    conv = node.request("GET", f"/api/v1/conversation/{sid}", token=alice).json()
    assert len(conv["messages"]) == 2
    other = say(node, alice, sid, "a different text", **{"Idempotency-Key": "abc-1"})
    assert other.status == 400 and other.json()["error"]["field"] == "Idempotency-Key"


def test_sse_stream(node: NodeProcess, alice: str) -> None:
    sid = start(node, alice)
    r = node.request("POST", f"/api/v1/conversation/{sid}/message", token=alice,
                     json_body={"content": "stream please"}, headers={"Accept": "text/event-stream"})
    assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [block for block in r.body.decode().split("\n\n") if block.strip()]
    kinds = [e.splitlines()[0].removeprefix("event: ") for e in events]
    assert kinds.count("delta") >= 2 and kinds[-2:] == ["response", "metrics"]
    deltas = "".join(json.loads(e.splitlines()[1].removeprefix("data: "))["content"]
                     for e in events if e.startswith("event: delta"))
    response = json.loads(events[-2].splitlines()[1].removeprefix("data: "))
    assert deltas == response["content"]


def test_users_never_see_each_other(node: NodeProcess, alice: str, bob: str) -> None:
    sid = start(node, alice)
    say(node, alice, sid, "alice's secret is periwinkle")
    assert node.request("GET", f"/api/v1/conversation/{sid}", token=bob).status == 404
    assert say(node, bob, sid, "let me in").status == 404
    assert node.request("DELETE", f"/api/v1/conversation/{sid}", token=bob).status == 404
    hits = node.request("GET", "/api/v1/search?q=periwinkle", token=bob).json()["hits"]
    assert hits == []
    hits = node.request("GET", "/api/v1/search?q=periwinkle", token=alice).json()["hits"]
    assert hits and all(h["session_id"] for h in hits)
    bob_sid = start(node, bob)
    ctx = node.request("POST", f"/api/v1/conversation/{bob_sid}/context", token=bob,
                       json_body={"content": "what is the secret periwinkle?"}).json()
    assert "alice's secret" not in json.dumps(ctx)


def test_time_travel_by_seq_and_timestamp(node: NodeProcess, alice: str) -> None:
    sid = start(node, alice)
    say(node, alice, sid, "first message")
    say(node, alice, sid, "second message")
    conv = node.request("GET", f"/api/v1/conversation/{sid}", token=alice).json()
    at2 = node.request("GET", f"/api/v1/conversation/{sid}/at?seq=2", token=alice).json()
    assert [m["seq"] for m in at2["messages"]] == [1, 2]
    assert at2["character_state"]["character_vector"] == conv["messages"][1]["character_snapshot"]
    ts = conv["messages"][2]["created_at"]
    at_ts = node.request("GET", f"/api/v1/conversation/{sid}/at?timestamp={ts}", token=alice).json()
    assert [m["seq"] for m in at_ts["messages"]] == [1, 2, 3]
    assert node.request("GET", f"/api/v1/conversation/{sid}/at", token=alice).status == 400
    assert node.request("GET", f"/api/v1/conversation/{sid}/at?timestamp=yesterday", token=alice).status == 400


def test_export_markdown_and_json(node: NodeProcess, alice: str) -> None:
    sid = start(node, alice, "exported")
    say(node, alice, sid, "export me")
    md = node.request("GET", f"/api/v1/conversation/{sid}/export?format=markdown", token=alice)
    assert md.status == 200 and b"# exported" in md.body and b"export me" in md.body
    js = node.request("GET", f"/api/v1/conversation/{sid}/export", token=alice).json()
    assert js["session_id"] == sid and len(js["messages"]) == 2


def test_end_conversation_keeps_everything(node: NodeProcess, alice: str) -> None:
    sid = start(node, alice)
    say(node, alice, sid, "before the end")
    r = node.request("DELETE", f"/api/v1/conversation/{sid}", token=alice)
    assert r.status == 200 and r.json()["kept"]["messages"] == 2 and r.json()["status"] == "ended"
    assert node.request("DELETE", f"/api/v1/conversation/{sid}", token=alice).json()["already_ended"] is True
    late = say(node, alice, sid, "after the end")
    assert late.status == 409 and late.json()["error"]["code"] == "conversation_ended"
    assert len(node.request("GET", f"/api/v1/conversation/{sid}", token=alice).json()["messages"]) == 2


def test_openapi_and_docs(node: NodeProcess) -> None:
    doc = node.request("GET", "/openapi.json").json()
    assert "/api/v1/conversation/start" in doc["paths"]
    assert "MessageRequest" in doc["components"]["schemas"]
    # every read that honours ?consistency= says so
    for path in ("/api/v1/conversations", "/api/v1/conversation/{session_id}", "/api/v1/conversation/{session_id}/at",
                 "/api/v1/conversation/{session_id}/export", "/api/v1/search",
                 "/api/v1/metrics/conversation/{session_id}"):
        names = {p["name"] for p in doc["paths"][path]["get"].get("parameters", [])}
        assert "consistency" in names, path
    page = node.request("GET", "/docs")
    assert page.status == 200 and b"/api/v1/search" in page.body
