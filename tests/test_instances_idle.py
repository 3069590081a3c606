"""Idle instances are terminated by the sweep and re-spawned on the next turn (policy "first":
not re-validated, the earlier score carried over); a restarted node retires what it held.
The model is the fake Messages API answering the validation questions faithfully."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fake_messages_api import Behaviour, FakeMessagesAPI, anthropic_node
from nodeproc import NodeProcess
from test_instances_validation import GOOD, replying


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeMessagesAPI]:
    with FakeMessagesAPI(Behaviour(reply=replying(GOOD))) as api:
        yield api


@pytest.fixture(scope="module")
def inode(tmp_path_factory: pytest.TempPathFactory, fake: FakeMessagesAPI) -> Iterator[NodeProcess]:
    with anthropic_node(tmp_path_factory.mktemp("inode"), fake,
                        'validation = "first"\ninstance_idle_timeout_s = 0.5') as proc:
        yield proc


def of_session(node: NodeProcess, sid: str) -> list[dict[str, Any]]:
    r = node.request("GET", "/api/v1/admin/instances", token=node.token("root", "admin"))
    assert r.status == 200, r
    return sorted((i for i in r.json()["instances"] if i["session_id"] == sid), key=lambda i: i["spawned_at"])


def wait_for(check: Any, timeout: float = 6.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def turn(node: NodeProcess, token: str, sid: str, text: str) -> None:
    r = node.request("POST", f"/api/v1/conversation/{sid}/message", token=token, json_body={"content": text})
    assert r.status == 200, r


def test_idle_instance_is_terminated_and_respawned(inode: NodeProcess) -> None:
    user = inode.token("fay")
    sid = inode.request("POST", "/api/v1/conversation/start", token=user, json_body={}).json()["session_id"]
    turn(inode, user, sid, "hello")
    [first] = of_session(inode, sid)
    assert first["status"] == "active" and first["validation"]["ran"] is True
    wait_for(lambda: of_session(inode, sid)[0]["status"] == "terminated")
    assert of_session(inode, sid)[0]["termination_reason"] == "idle"
    turn(inode, user, sid, "back again")
    old, new = of_session(inode, sid)
    assert old["instance_id"] == first["instance_id"] and new["status"] == "active"
    assert new["validation"]["ran"] is False
    assert new["validation"]["reason"] == "validated earlier in this conversation"
    assert new["validation"]["score"] == first["validation"]["score"]


def test_restart_retires_the_instances_a_node_held(inode: NodeProcess) -> None:
    user = inode.token("gus")
    sid = inode.request("POST", "/api/v1/conversation/start", token=user, json_body={}).json()["session_id"]
    turn(inode, user, sid, "before the crash")
    assert of_session(inode, sid)[0]["status"] == "active"
    inode.kill()
    inode.start()
    [inst] = wait_for(lambda: [i for i in of_session(inode, sid) if i["status"] == "terminated"])
    assert inst["termination_reason"] == "node restarted"
    turn(inode, user, sid, "after the crash")
    assert of_session(inode, sid)[-1]["status"] == "active"
