"""/metrics over real HTTP, parsed with prometheus_client's own text parser: content type, the
specification's metric names, route templates instead of raw paths, capped label cardinality."""

from __future__ import annotations

import secrets

import pytest
from nodeproc import NodeProcess
from prometheus_client.parser import text_string_to_metric_families

from ccn_node.monitoring import Monitoring

SPEC_NAMES = {
    "consciousness_phi_score", "consciousness_ccc_score", "consciousness_trust_score",
    "consciousness_emergence_score", "ccn_active_instances", "ccn_total_conversations",
    "ccn_instance_spawn_seconds", "ccn_character_drift", "ccn_http_requests_total",
    "ccn_http_request_duration_seconds", "ccn_websocket_connections_active", "ccn_consensus_rounds_total",
    "ccn_consensus_latency_seconds", "ccn_outlier_instances_total", "ccn_api_tokens_total",
    "ccn_api_cost_dollars_total",
    # beyond the specification: raft, ledger, witness, backup
    "ccn_raft_role", "ccn_raft_term", "ccn_raft_commit_index", "ccn_ledger_size", "ccn_witness_status",
    "ccn_backup_age_seconds",
}


def scrape(node: NodeProcess) -> dict[str, list]:
    r = node.request("GET", "/metrics")
    assert r.status == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(r.body.decode()):
        samples.setdefault(family.name, [])
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


@pytest.fixture(scope="module")
def alice(node: NodeProcess) -> str:
    return node.token("alice")


@pytest.fixture(scope="module")
def turned(node: NodeProcess, alice: str) -> str:
    sid = node.start_conversation(alice)
    for text in ("Hello there, how are bees doing?", "Tell me more about hives."):
        r = node.send(sid, alice, text)
        assert r.status == 200, r
    return sid


def test_all_metric_names_present_and_parse(node: NodeProcess, turned: str) -> None:
    listing = node.request("GET", "/api/v1/admin/backups", token=node.token("metrics-admin", "admin")).json()
    samples = scrape(node)
    missing = {name for name in SPEC_NAMES if name not in samples and name.removesuffix("_total") not in samples}
    assert not missing, missing
    ccc = [s for s in samples["consciousness_ccc_score"] if s.labels.get("session_id") == turned]
    assert len(ccc) == 1 and 0.0 <= ccc[0].value <= 1.0
    assert samples["ccn_total_conversations"][0].value >= 1
    assert samples["ccn_active_instances"][0].value >= 1
    tokens = {s.labels["type"]: s.value for s in samples["ccn_api_tokens_total"]}
    assert tokens["input"] > 0 and tokens["output"] > 0
    roles = {s.labels["key"]: s.value for s in samples["ccn_raft_role"]}
    assert sum(roles.values()) == 1 and roles["leader"] == 1
    assert samples["ccn_ledger_size"][0].value > 0
    # the gauge agrees with the node's own backup listing (read just before; a backup may land in between)
    backup_age = samples["ccn_backup_age_seconds"][0].value
    if listing["backups"]:
        assert 0 <= backup_age <= listing["age_seconds"] + 5
    else:
        assert listing["age_seconds"] == -1 and (backup_age == -1 or 0 <= backup_age < 5)


def test_endpoints_are_route_templates_never_raw_paths(node: NodeProcess, alice: str) -> None:
    ids = [f"conv_{secrets.token_hex(8)}" for _ in range(60)]
    for sid in ids:
        assert node.request("GET", f"/api/v1/conversation/{sid}", token=alice).status == 404
        assert node.request("GET", f"/no/such/{sid}").status == 404
    samples = scrape(node)
    endpoints = {s.labels["endpoint"] for s in samples["ccn_http_requests_total"]}
    endpoints |= {s.labels["endpoint"] for s in samples["ccn_http_request_duration_seconds_count"]}
    assert "/api/v1/conversation/{session_id}" in endpoints
    assert "unmatched" in endpoints
    assert not any(sid in e for e in endpoints for sid in ids)
    assert len(endpoints) < 40, endpoints  # bounded by the route table, not by traffic
    statuses = {s.labels["status"] for s in samples["ccn_http_requests_total"]}
    assert "404" in statuses


def test_per_conversation_labels_are_capped() -> None:
    """The real Monitoring with a small cap: the oldest conversations' series are dropped."""
    mon = Monitoring(max_conversations=5)
    sessions = [f"conv_{i}" for i in range(40)]
    for sid in sessions:
        mon.observe_turn(sid, {"input_tokens": 3, "output_tokens": 2}, 0.0,
                         {"phi": 0.1, "ccc": 0.5, "trust": 0.2, "emergence": 0.3, "drift_baseline": 0.05}, 0.01)
    families = {f.name: f for f in text_string_to_metric_families(mon.render().decode())}
    for name in ("consciousness_phi_score", "consciousness_ccc_score", "consciousness_trust_score",
                 "consciousness_emergence_score", "ccn_character_drift"):
        labels = {s.labels["session_id"] for s in families[name].samples}
        assert labels == set(sessions[-5:]), name
    assert Monitoring().max_conversations == 1000  # the scrape bench's target size


def test_websocket_gauge_and_scrape_is_cheap(node: NodeProcess) -> None:
    import time

    samples = scrape(node)
    assert samples["ccn_websocket_connections_active"][0].value == 0
    started = time.perf_counter()
    for _ in range(20):
        node.request("GET", "/metrics")
    assert (time.perf_counter() - started) / 20 < 0.5  # generous: shared CI machine; the bench measures


def test_shipped_grafana_and_alert_rules_use_real_metric_names(node: NodeProcess, turned: str) -> None:
    """Every metric a Grafana panel or an alert rule queries is one the node exports."""
    import json
    import re
    from pathlib import Path

    packaging = Path(__file__).resolve().parent.parent / "packaging"
    boards = sorted((packaging / "grafana").glob("*.json"))
    assert {b.stem for b in boards} == {"consciousness-overview", "system-performance", "operational",
                                        "character-consistency"}
    exprs = [t["expr"] for b in boards for p in json.loads(b.read_text())["panels"] for t in p["targets"]]
    exprs.append((packaging / "ccn-node-alerts.yml").read_text())
    exported = set(scrape(node))
    used = {m for e in exprs for m in re.findall(r"\b(?:ccn|consciousness)_[a-z_]+", e)}
    assert used and used <= exported, used - exported


def test_scrape_bench_reports_figures() -> None:
    from ccn_node.benchmarks.ops import run_scrape_bench

    result = run_scrape_bench(conversations=15, scrapes=5)
    assert result["ccc_series_in_scrape"] == 15
    assert result["scrape_ms"]["p50"] > 0 and result["scrape_ms"]["target"] == 10.0


def test_a_gauge_group_reads_its_snapshot_once_a_scrape() -> None:
    """Several gauges from one status (the Raft status, the federation peers) take it once per
    scrape; a snapshot that fails drops its gauges from that scrape, not the scrape."""
    m = Monitoring()
    calls = []

    def status() -> dict[str, float]:
        calls.append(1)
        return {"term": 7.0, "commit": 42.0}

    m.add_state_group(status, {"ccn_test_term": ("term", lambda st: {"": st["term"]}),
                               "ccn_test_commit": ("commit", lambda st: {"": st["commit"]})})
    m.add_state_group(lambda: 1 / 0, {"ccn_test_broken": ("never", lambda st: {"": st})})
    for scrapes in (1, 2):
        families = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
        assert families["ccn_test_term"].samples[0].value == 7.0
        assert families["ccn_test_commit"].samples[0].value == 42.0
        assert "ccn_test_broken" not in families
        assert len(calls) == scrapes
