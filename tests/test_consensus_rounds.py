"""Consensus rounds on real nodes: forced and periodic rounds, empty rounds are no-ops, roles,
and an outlier (an instance answering in a very different style) is flagged, terminated and
re-spawned with validation on its next turn."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fake_messages_api import Behaviour, FakeMessagesAPI, anthropic_node
from nodeproc import NodeProcess
from test_instances_validation import GOOD, is_validation

PLAIN = ("The measured p95 latency is 14.2 ms because the FTS5 index is used; we verified it twice with "
         "the benchmark, therefore the cache stays.")
WILD = "OMG!!! lol 😂😂 wow!!! totally awesome stuff haha!!! yay!!! 🎉 kinda cool, right?? so fun!!!"


def styled(body: dict[str, Any]) -> str:
    if is_validation(body):
        return GOOD
    last = body["messages"][-1]["content"]
    text = last if isinstance(last, str) else " ".join(b.get("text", "") for b in last)
    return WILD if "WILD" in text else PLAIN


@pytest.fixture(scope="module")
def cnode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """Offline backend, a round every 0.5 s, threshold 1.0 so periodic rounds never flag anyone."""
    extra = """
[continuity]
consensus_interval_s = 0.5
outlier_threshold = 1.0
[limits]
requests_per_minute = 100000
burst = 10000
"""
    proc = NodeProcess(tmp_path_factory.mktemp("cnode"), config_extra=extra).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeMessagesAPI]:
    with FakeMessagesAPI(Behaviour(reply=styled)) as api:
        yield api


@pytest.fixture(scope="module")
def onode(tmp_path_factory: pytest.TempPathFactory, fake: FakeMessagesAPI) -> Iterator[NodeProcess]:
    """The fake model, no periodic rounds in the way (only forced ones), validation on first spawn."""
    with anthropic_node(tmp_path_factory.mktemp("onode"), fake,
                        'validation = "first"\nconsensus_interval_s = 3600') as proc:
        yield proc


def force(node: NodeProcess) -> dict[str, Any]:
    r = node.request("POST", "/api/v1/admin/consensus/force", token=node.token("root", "admin"))
    assert r.status == 200, r
    return r.json()


def conversation(node: NodeProcess, token: str, text: str) -> str:
    sid = node.request("POST", "/api/v1/conversation/start", token=token, json_body={}).json()["session_id"]
    r = node.request("POST", f"/api/v1/conversation/{sid}/message", token=token, json_body={"content": text})
    assert r.status == 200, r
    return sid


def instances(node: NodeProcess) -> list[dict[str, Any]]:
    return node.request("GET", "/api/v1/admin/instances", token=node.token("root", "admin")).json()["instances"]


def realtime(node: NodeProcess, token: str) -> dict[str, Any]:
    r = node.request("GET", "/api/v1/metrics/realtime", token=token)
    assert r.status == 200, r
    return r.json()


def test_force_needs_admin(cnode: NodeProcess) -> None:
    assert cnode.request("POST", "/api/v1/admin/consensus/force").status == 401
    r = cnode.request("POST", "/api/v1/admin/consensus/force", token=cnode.token("ivy"))
    assert r.status == 403 and r.json()["error"]["code"] == "forbidden"


def test_empty_round_is_a_noop(cnode: NodeProcess) -> None:
    result = force(cnode)
    assert result["noop"] is True and result["committed"] is False and result["instance_count"] == 0
    assert result["consensus_vector"] is None and result["outliers"] == [] and result["round_id"] is None
    time.sleep(1.2)  # two periodic rounds with nothing to agree on commit nothing either
    assert realtime(cnode, cnode.token("ivy"))["consensus"] is None


def test_periodic_and_forced_rounds(cnode: NodeProcess) -> None:
    user = cnode.token("jon")
    for text in ("one thing", "another thing", "a third thing"):
        conversation(cnode, user, text)
    deadline = time.monotonic() + 5
    while realtime(cnode, user)["consensus"] is None:
        assert time.monotonic() < deadline, "no periodic round was committed"
        time.sleep(0.1)
    result = force(cnode)
    assert result["committed"] is True and result["noop"] is False
    assert result["instance_count"] == 3 and len(result["drifts"]) == 3
    assert len(result["consensus_vector"]) == 16 and set(result["consensus"]) >= {"honest", "precise"}
    assert all(0.0 <= x <= 1.0 for x in result["consensus_vector"])
    assert result["outliers"] == [] and result["threshold"] == 1.0
    now = realtime(cnode, user)["consensus"]
    assert now["instance_count"] == 3 and len(now["vector"]) == 16
    scrape = cnode.request("GET", "/metrics").body.decode()
    rounds = [line for line in scrape.splitlines() if line.startswith("ccn_consensus_rounds_total")]
    assert rounds and float(rounds[0].split()[-1]) >= 2


def test_outlier_is_flagged_reinitialised_and_revalidated(onode: NodeProcess, fake: FakeMessagesAPI) -> None:
    user = onode.token("kim")
    plain = [conversation(onode, user, f"plain question {k}") for k in range(3)]
    wild = conversation(onode, user, "WILD question")
    by_session = {i["session_id"]: i for i in instances(onode) if i["status"] == "active"}
    wild_id = by_session[wild]["instance_id"]

    result = force(onode)
    assert result["instance_count"] == 4 and result["committed"] is True
    assert result["outliers"] == [wild_id] and result["reinitialised"] == [wild_id]
    assert result["drifts"][wild_id] > 0.10
    assert all(result["drifts"][by_session[s]["instance_id"]] <= 0.10 for s in plain)

    after = {i["instance_id"]: i for i in instances(onode)}
    assert after[wild_id]["status"] == "terminated"
    assert after[wild_id]["termination_reason"].startswith("outlier: drift")
    assert all(after[by_session[s]["instance_id"]]["status"] == "active" for s in plain)

    fake.reset(Behaviour(reply=styled))
    r = onode.request("POST", f"/api/v1/conversation/{wild}/message", token=user, json_body={"content": "calm now"})
    assert r.status == 200, r
    assert len([q for q in fake.requests if is_validation(q.body)]) == 6, "the re-spawned instance was validated"
    [new] = [i for i in instances(onode) if i["session_id"] == wild and i["status"] == "active"]
    assert new["instance_id"] != wild_id
    assert new["validation"]["ran"] is True and new["validation"]["reason"] == "re-initialised after being flagged"
    # a conversation that was not flagged keeps its instance and is not re-validated
    fake.reset(Behaviour(reply=styled))
    r = onode.request("POST", f"/api/v1/conversation/{plain[0]}/message", token=user, json_body={"content": "more"})
    assert r.status == 200 and not [q for q in fake.requests if is_validation(q.body)]
    scrape = onode.request("GET", "/metrics").body.decode()
    assert any(line.startswith("ccn_outlier_instances_total 1") for line in scrape.splitlines())
