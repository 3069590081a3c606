"""The character benchmark runs and reports figures beside their targets."""

from __future__ import annotations

from ccn_node.continuity.bench_character import run_continuity_bench, sample_answer


def test_bench_reports_figures() -> None:
    assert len(sample_answer(2048)) == 2048
    r = run_continuity_bench(probe_runs=50, consensus_runs=3, instances=1000)
    assert r["probe_2kb"]["target_us"] == 1000.0
    assert r["probe_2kb"]["p50_us"] > 0
    assert r["consensus_round"]["target_ms"] == 50.0
    assert r["consensus_round"]["instances"] == 1000
    assert r["consensus_round"]["outliers"] >= 1
