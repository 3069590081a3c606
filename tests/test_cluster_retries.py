"""A turn whose write may or may not have happened (503 with the request id) is retried with
the same Idempotency-Key and stored once: real `ccn-node serve` processes on 127.0.0.1."""

from __future__ import annotations

import signal
import time

import pytest
from test_cluster_faults import _RETRYABLE, Cluster, module_cluster, with_signal

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


cluster = module_cluster("retries")


def say(cl: Cluster, i: int, sid: str, key: str, text: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    resp = cl.members[i].request("POST", f"/api/v1/conversation/{sid}/message", token=cl.user, timeout=30,
                                 json_body={"content": text}, headers={"Idempotency-Key": key})
    return resp.status, resp.json()


def test_turn_with_unknown_outcome_is_retried_and_stored_once(cluster: Cluster) -> None:
    cl = cluster
    leader = cl.leader()
    a, b = [i for i in range(3) if i != leader]
    resp = cl.members[a].request("POST", "/api/v1/conversation/start", token=cl.user, timeout=10)
    assert resp.status == 201, resp
    sid = resp.json()["session_id"]
    text = "remember that the kite is blue"

    # node a alone: the leader and the other follower are frozen, so the turn's first write
    # is sent to the leader and cannot be confirmed in time
    for i in (leader, b):
        with_signal(cl.members[i], signal.SIGSTOP)
    try:
        status, body = say(cl, a, sid, "key-1", text)
    finally:
        for i in (leader, b):
            with_signal(cl.members[i], signal.SIGCONT)
    assert status == 503 and body["error"]["code"] in _RETRYABLE, body
    assert body["error"].get("request_id"), body  # what to retry with (the key gives the same)

    # the client retries with the same key until the cluster answers: one turn, stored once
    deadline = time.monotonic() + 30
    while True:
        status, body = say(cl, a, sid, "key-1", text)
        if status == 200:
            break
        assert status == 503 and body["error"]["code"] in _RETRYABLE, body
        assert time.monotonic() < deadline, body
        time.sleep(0.3)
    again_status, again = say(cl, b, sid, "key-1", text)  # and through another node: the same turn
    assert again_status == 200 and again["message_id"] == body["message_id"], again

    conv = cl.members[b].request("GET", f"/api/v1/conversation/{sid}?consistency=linearizable",
                                 token=cl.user, timeout=10).json()
    said = [m for m in conv["messages"] if m["role"] == "user"]
    assert [m["content"] for m in said] == [text], conv["messages"]
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    cl.converge()
