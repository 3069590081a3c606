"""GET /api/v1/admin/instances on a real node (offline backend, default policy "first", so no
validation: the offline backend is not a language model):
roles, fields, one instance per conversation across turns, terminated when the conversation ends."""

from __future__ import annotations

from typing import Any

import pytest
from nodeproc import NodeProcess


@pytest.fixture(scope="module")
def admin(node: NodeProcess) -> str:
    return node.token("root", "admin")


def instances(node: NodeProcess, token: str, query: str = "") -> list[dict[str, Any]]:
    r = node.request("GET", f"/api/v1/admin/instances{query}", token=token)
    assert r.status == 200, r
    return r.json()["instances"]


def test_roles(node: NodeProcess) -> None:
    assert node.request("GET", "/api/v1/admin/instances").status == 401
    r = node.request("GET", "/api/v1/admin/instances", token=node.token("dora"))
    assert r.status == 403 and r.json()["error"]["code"] == "forbidden"
    bad = node.request("GET", "/api/v1/admin/instances?status=zombie", token=node.token("root", "admin"))
    assert bad.status == 400 and bad.json()["error"]["field"] == "status"


def test_instance_lifecycle_in_the_listing(node: NodeProcess, admin: str) -> None:
    user = node.token("erin")
    sid = node.request("POST", "/api/v1/conversation/start", token=user, json_body={}).json()["session_id"]
    assert not [i for i in instances(node, admin) if i["session_id"] == sid], "no instance before the first turn"
    for text in ("first turn", "second turn"):
        r = node.request("POST", f"/api/v1/conversation/{sid}/message", token=user, json_body={"content": text})
        assert r.status == 200, r
    [inst] = [i for i in instances(node, admin) if i["session_id"] == sid]
    assert inst["status"] == "active" and inst["node_id"] == "test-node" and inst["live_here"] is True
    assert inst["spawned_at"] <= inst["last_heartbeat"]
    assert len(inst["character_vector"]) == 16
    v = inst["validation"]  # the offline backend is not a language model: nothing to validate
    assert v == {"policy": "first", "ran": False, "reason": "the offline backend is not a language model",
                 "passed": None, "score": None}
    assert "validation_reports" not in inst
    assert inst["instance_id"] in {i["instance_id"] for i in instances(node, admin, "?status=active")}

    assert node.request("DELETE", f"/api/v1/conversation/{sid}", token=user).status == 200
    [ended] = [i for i in instances(node, admin) if i["session_id"] == sid]
    assert ended["status"] == "terminated" and ended["termination_reason"] == "conversation ended"
    assert ended["live_here"] is False
    assert ended["instance_id"] not in {i["instance_id"] for i in instances(node, admin, "?status=active")}


def test_graceful_stop_terminates_live_instances(node: NodeProcess, admin: str) -> None:
    """Last in this module: it restarts the module's node."""
    user = node.token("hal")
    sid = node.request("POST", "/api/v1/conversation/start", token=user, json_body={}).json()["session_id"]
    r = node.request("POST", f"/api/v1/conversation/{sid}/message", token=user, json_body={"content": "hi"})
    assert r.status == 200, r
    node.stop()
    node.start()
    [inst] = [i for i in instances(node, admin) if i["session_id"] == sid]
    assert inst["status"] == "terminated" and inst["termination_reason"] == "node stopping"
