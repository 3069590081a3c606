"""Consensus rounds: median, outliers, empty input, bad vectors, 1,000 instances."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ccn_node.continuity.consensus import consensus_round


def test_empty_round_is_noop() -> None:
    r = consensus_round({})
    assert r.noop and r.vector is None and r.instance_count == 0
    assert r.outliers == () and r.drifts == {} and r.spread is None


def test_median_and_outliers() -> None:
    good = np.full(16, 0.5)
    vecs = {
        "b": good,
        "a": good + 0.02,
        "c": good - 0.02,
        "d": good + 0.04,
        "z": np.full(16, 0.9),  # median is 0.52, so drift 0.38
    }
    r = consensus_round(vecs)
    assert not r.noop and r.instance_count == 5
    assert r.vector == pytest.approx(tuple([0.52] * 16))
    assert r.outliers == ("z",)
    assert r.drifts["b"] == pytest.approx(0.02)
    assert r.drifts["z"] == pytest.approx(0.38)
    assert list(r.drifts) == ["a", "b", "c", "d", "z"]
    assert r.spread.max_drift == pytest.approx(0.38)
    assert len(r.spread.dim_mad) == 16
    # threshold is exclusive and configurable
    assert consensus_round(vecs, threshold=0.5).outliers == ()
    assert r.drifts["c"] == pytest.approx(0.04) and r.drifts["d"] == pytest.approx(0.02)
    assert consensus_round(vecs, threshold=0.03).outliers == ("c", "z")


def test_single_instance() -> None:
    r = consensus_round({"only": [0.3] * 16})
    assert r.instance_count == 1 and r.outliers == () and r.drifts["only"] == 0.0


@pytest.mark.parametrize(
    ("vec", "pattern"),
    [
        ([0.5] * 15, r"'bad'.*shape"),
        ([0.5] * 15 + [float("nan")], r"'bad'.*\[15\]"),
        ([float("inf")] + [0.5] * 15, r"'bad'.*\[0\]"),
        ([1.2] * 16, r"'bad'.*outside"),
        (["x"] * 16, r"'bad'.*not numeric"),
    ],
)
def test_bad_vectors_rejected(vec: list, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        consensus_round({"ok": [0.5] * 16, "bad": vec})


def test_bad_threshold() -> None:
    for t in (0.0, -1.0, float("nan"), 2.0):
        with pytest.raises(ValueError):
            consensus_round({"a": [0.5] * 16}, threshold=t)


def test_thousand_instances_and_determinism(capsys) -> None:
    rng = np.random.default_rng(1)
    m = np.clip(0.5 + rng.normal(0, 0.03, (1000, 16)), 0, 1)
    m[:10] = 1.0
    vecs = {f"i{k}": m[k] for k in range(1000)}
    t0 = time.perf_counter()
    r = consensus_round(vecs)
    ms = (time.perf_counter() - t0) * 1e3
    with capsys.disabled():
        print(f"\n[consensus] 1,000 instances: {ms:.2f} ms (target ≤ 50 ms)")
    assert r.instance_count == 1000
    assert set(r.outliers) == {f"i{k}" for k in range(10)}
    shuffled = dict(reversed(list(vecs.items())))
    assert consensus_round(shuffled) == r
