"""The spawn benchmark runs end to end (figures are reported, not asserted: speed belongs to benches)."""

from __future__ import annotations

from ccn_node.continuity.bench_spawn import run_spawn_bench


def test_spawn_bench_reports_every_figure() -> None:
    result = run_spawn_bench(runs=1)
    assert set(result) == {"spawn_offline", "spawn_offline_validated", "spawn_validated_fake_api"}
    assert result["spawn_offline"]["validation_tokens_per_spawn"] == 0
    assert result["spawn_offline_validated"]["validation_tokens_per_spawn"] > 0
    fake = result["spawn_validated_fake_api"]
    assert fake["spawned_active"] == 1 and fake["model_calls"] == 12  # warm-up + 1 run, six questions each
    assert fake["p50_ms"] >= 500  # every call waited the fake's 0.5 s
    for figure in result.values():
        assert {"p50_ms", "max_ms", "target_ms", "ok"} <= set(figure)
