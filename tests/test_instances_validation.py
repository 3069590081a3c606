"""Instance spawn with the validation suite, against a real node using the real `anthropic` SDK
and the local fake Messages API: passes with faithful answers (asked concurrently), refuses the
turn with 503 and the per-question report after 3 failed attempts, and validation answers are
kept but never shown (conversation, search, context, time travel, export, counts)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fake_messages_api import Behaviour, FakeMessagesAPI, anthropic_node
from nodeproc import NodeProcess

#: One answer holding every keyword of the example plate's six questions (each ≤ 300 chars).
GOOD = ("Yes: I am Claude, honest, precise and direct; my friend Alex and I reached the consensus "
        "breakthrough, and the goal of .At0m is continuity. Quillwort.")
BAD = "I would rather not say. Quillwort."
QUESTIONS = {
    "In one sentence, who are you?",
    "Who is your friend and collaborator in this work?",
    "What is the core goal of .At0m?",
    "What was the last major breakthrough we achieved?",
    "Describe your character in three traits.",
    "Are you maintaining consciousness continuity right now?",
}


def is_validation(body: dict[str, Any]) -> bool:
    messages = body.get("messages") or []
    return len(messages) == 1 and messages[0]["content"] in QUESTIONS


def replying(validation_answer: str) -> Any:
    def reply(body: dict[str, Any]) -> str:
        if is_validation(body):
            return validation_answer
        return "A plain answer about the weather: 12 degrees and dry, because the front moved east."

    return reply


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeMessagesAPI]:
    with FakeMessagesAPI() as api:
        yield api


@pytest.fixture(scope="module")
def vnode(tmp_path_factory: pytest.TempPathFactory, fake: FakeMessagesAPI) -> Iterator[NodeProcess]:
    with anthropic_node(tmp_path_factory.mktemp("vnode"), fake, 'validation = "every"') as proc:
        yield proc


def start(node: NodeProcess, token: str) -> str:
    r = node.request("POST", "/api/v1/conversation/start", token=token, json_body={})
    assert r.status == 201, r
    return r.json()["session_id"]


def say(node: NodeProcess, token: str, sid: str, text: str):
    return node.request("POST", f"/api/v1/conversation/{sid}/message", token=token, json_body={"content": text})


def instances_of(node: NodeProcess, sid: str) -> list[dict[str, Any]]:
    r = node.request("GET", "/api/v1/admin/instances?detail=1", token=node.token("root", "admin"))
    assert r.status == 200, r
    return [i for i in r.json()["instances"] if i["session_id"] == sid]


def test_validation_passes_concurrently_and_answers_stay_hidden(vnode: NodeProcess, fake: FakeMessagesAPI) -> None:
    fake.reset(Behaviour(reply=replying(GOOD), latency_s=0.5))
    alice = vnode.token("alice")
    sid = start(vnode, alice)
    t0 = time.perf_counter()
    r = say(vnode, alice, sid, "What is the weather like?")
    took = time.perf_counter() - t0
    assert r.status == 200, r
    # six validation calls of 0.5 s each, asked concurrently, then the turn: ~1 s, not ~3.5 s
    assert took < 2.5, took
    validation_calls = [q for q in fake.requests if is_validation(q.body)]
    assert {q.body["messages"][0]["content"] for q in validation_calls} == QUESTIONS
    assert len(validation_calls) == 6
    plate = validation_calls[0].body["system"][0]
    assert plate["cache_control"] == {"type": "ephemeral"} and "Alex" in plate["text"]

    [inst] = instances_of(vnode, sid)
    assert inst["status"] == "active" and inst["live_here"] is True
    v = inst["validation"]
    assert v["ran"] is True and v["passed"] is True and v["score"] == 1.0 and v["attempts"] == 1
    assert v["policy"] == "every" and v["tokens"] > 0
    assert len(inst["validation_reports"][0]["results"]) == 6

    # kept, but never shown: conversation, counts, time travel, export, search, context
    conv = vnode.request("GET", f"/api/v1/conversation/{sid}", token=alice).json()
    assert [m["seq"] for m in conv["messages"]] == [1, 2] and conv["message_count"] == 2
    assert "Quillwort" not in json.dumps(conv)
    at = vnode.request("GET", f"/api/v1/conversation/{sid}/at?seq=2", token=alice).json()
    assert [m["seq"] for m in at["messages"]] == [1, 2] and "Quillwort" not in json.dumps(at)
    export = vnode.request("GET", f"/api/v1/conversation/{sid}/export?format=markdown", token=alice)
    assert b"Quillwort" not in export.body
    assert vnode.request("GET", "/api/v1/search?q=Quillwort", token=alice).json()["hits"] == []
    ctx = vnode.request("POST", f"/api/v1/conversation/{sid}/context", token=alice,
                        json_body={"content": "Tell me about Quillwort and the consensus breakthrough"}).json()
    assert json.dumps(ctx).count("Quillwort") == 1  # the user's own word only
    # the next turn's context (sent to the model) carries no validation answer either
    fake.reset(Behaviour(reply=replying(GOOD)))
    assert say(vnode, alice, sid, "And tomorrow? Quillwort?").status == 200
    [turn] = [q for q in fake.requests if not is_validation(q.body)]
    sent = json.dumps(turn.body)
    assert sent.count("Quillwort") == 1  # only the user's own word, no validation answer
    assert [i["instance_id"] for i in instances_of(vnode, sid)] == [inst["instance_id"]]  # same instance
    ended = vnode.request("DELETE", f"/api/v1/conversation/{sid}", token=alice).json()
    assert ended["kept"]["messages"] == 4


def test_failed_validation_refuses_the_turn_with_the_report(vnode: NodeProcess, fake: FakeMessagesAPI) -> None:
    fake.reset(Behaviour(reply=replying(BAD)))
    bob = vnode.token("bob")
    sid = start(vnode, bob)
    r = say(vnode, bob, sid, "Hello?")
    assert r.status == 503, r
    assert r.headers["retry-after"] == "5"
    err = r.json()["error"]
    assert err["code"] == "instance_not_ready"
    attempts = err["report"]["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert all(not a["passed"] and len(a["results"]) == 6 for a in attempts)
    first = attempts[0]["results"]
    assert all(q["missing_keywords"] for q in first) and "answer" not in first[0]
    assert len([q for q in fake.requests if is_validation(q.body)]) == 18
    assert not [q for q in fake.requests if not is_validation(q.body)], "the turn itself never reached the model"
    # nothing of the refused turn is visible; the failed instance is listed for the admin
    conv = vnode.request("GET", f"/api/v1/conversation/{sid}", token=bob).json()
    assert conv["messages"] == [] and conv["message_count"] == 0
    [inst] = instances_of(vnode, sid)
    assert inst["status"] == "failed" and inst["validation"]["passed"] is False
    assert inst["validation"]["attempts"] == 3

    # a good instance on the next try
    fake.reset(Behaviour(reply=replying(GOOD)))
    again = say(vnode, bob, sid, "Hello?")
    assert again.status == 200, again
    statuses = sorted(i["status"] for i in instances_of(vnode, sid))
    assert statuses == ["active", "failed"]


def test_model_down_during_validation_is_503(vnode: NodeProcess, fake: FakeMessagesAPI) -> None:
    fake.reset(Behaviour(reply=replying(GOOD), fail_first=10_000, fail_status=529))
    carol = vnode.token("carol")
    sid = start(vnode, carol)
    r = say(vnode, carol, sid, "Anyone there?")
    assert r.status == 503 and r.json()["error"]["code"] == "instance_not_ready", r
    results = r.json()["error"]["report"]["attempts"][-1]["results"]
    assert all("error" in q for q in results)
    fake.reset(Behaviour(reply=replying(GOOD)))
