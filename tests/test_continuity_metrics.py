"""Seed metrics on hand-computed cases, and NaN/inf rejection at the boundary."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ccn_node.continuity.metrics import (
    CCC_SCALE,
    TurnMetrics,
    aggregate,
    ccc,
    context_integration,
    drift,
    emergence,
    trust,
    turn_metrics,
    validate_vector,
)


def test_drift_formula() -> None:
    a = np.array([0.0, 0.0, 0.0, 0.0])
    b = np.array([1.0, 0.0, 0.0, 0.0])
    assert drift(a, b) == pytest.approx(math.sqrt(1 / 4))  # 0.5
    assert drift(a, a) == 0.0
    assert drift(np.zeros(16), np.ones(16)) == 1.0
    c = np.array([0.1, 0.2, 0.3, 0.4])
    d = np.array([0.2, 0.2, 0.1, 0.4])
    assert drift(c, d) == pytest.approx(math.sqrt((0.01 + 0 + 0.04 + 0) / 4))
    with pytest.raises(ValueError):
        drift(np.zeros(3), np.zeros(4))


def test_ccc() -> None:
    assert ccc(0.0) == 1.0
    assert ccc(CCC_SCALE) == 0.0
    assert ccc(1.0) == 0.0
    assert ccc(0.10) == pytest.approx(0.6)
    for bad in (float("nan"), -0.1, float("inf")):
        with pytest.raises(ValueError):
            ccc(bad)


def test_context_integration_hand_case() -> None:
    answer = "alpha beta gamma delta"  # content words: alpha beta gamma delta
    sections = {"plate": "alpha beta", "recent": "gamma", "relevant": ""}
    # u_plate = 2/4, u_recent = 1/4; empty section skipped -> (0.5 + 0.25) / 2
    assert context_integration(answer, sections) == pytest.approx(0.375)
    w = {"plate": 3.0, "recent": 1.0}
    assert context_integration(answer, sections, w) == pytest.approx((1.5 + 0.25) / 4)
    assert context_integration("", sections) == 0.0
    assert context_integration(answer, {}) == 0.0
    assert context_integration(answer, {"a": answer, "b": answer}) == 1.0


def test_emergence_hand_case() -> None:
    sections = {"plate": "alpha beta", "recent": "gamma"}
    assert emergence("alpha beta gamma delta", sections) == pytest.approx(0.25)
    assert emergence("alpha beta gamma delta", sections, user_text="delta") == 0.0
    assert emergence("zeta theta", {}) == 1.0
    assert emergence("", sections) == 0.0


def test_trust() -> None:
    assert trust(1.0, []) == 1.0
    assert trust(None, []) == pytest.approx(math.sqrt(0.5))
    assert trust(1.0, [0.5, 1.0]) == pytest.approx(math.sqrt(0.75))
    assert trust(0.0, [1.0]) == 0.0
    assert trust(1.0, [0.0] * 5 + [1.0] * 20, window=20) == 1.0
    with pytest.raises(ValueError):
        trust(float("nan"), [])
    with pytest.raises(ValueError):
        trust(1.0, [float("inf")])


def test_validate_vector() -> None:
    v = validate_vector([0.1] * 16, 16)
    assert v.dtype == np.float64 and v.shape == (16,)
    src = np.full(16, 0.5)
    assert validate_vector(src, 16) is not src
    with pytest.raises(ValueError, match=r"character\[3\] is nan"):
        validate_vector([0.1, 0.1, 0.1, float("nan")], 4, name="character")
    with pytest.raises(ValueError, match=r"inf"):
        validate_vector([float("inf")], 1)
    with pytest.raises(ValueError, match=r"out of range"):
        validate_vector([1.5], 1)
    assert validate_vector([1.5], 1, unit_range=False)[0] == 1.5
    with pytest.raises(ValueError, match=r"expected a flat vector of 16"):
        validate_vector([0.1] * 15, 16)
    with pytest.raises(ValueError, match=r"shape"):
        validate_vector([[0.1] * 16], 16)
    with pytest.raises(ValueError):
        validate_vector(["a"] * 16, 16)
    with pytest.raises(ValueError):
        validate_vector(None, 16)


def test_turn_metrics_and_aggregate() -> None:
    base = np.full(16, 0.5)
    ch = base.copy()
    ch[0] = 0.9  # drift = sqrt(0.16/16) = 0.1
    m = turn_metrics(ch, base, None, "alpha beta", {"plate": "alpha"},
                     validation_score=1.0)
    assert m.drift_baseline == pytest.approx(0.1)
    assert m.drift_consensus is None
    assert m.ccc == pytest.approx(0.6)
    assert m.trust == pytest.approx(math.sqrt(0.6))
    assert m.phi == pytest.approx(0.5) and m.emergence == pytest.approx(0.5)
    m2 = turn_metrics(base, base, ch, "alpha", {"plate": "alpha"},
                      validation_score=1.0, ccc_history=[m.ccc])
    assert m2.drift_consensus == pytest.approx(0.1)
    assert m2.ccc == 1.0 and m2.trust == pytest.approx(math.sqrt(0.8))
    with pytest.raises(ValueError, match=r"character\[0\]"):
        turn_metrics(np.full(16, np.nan), base, None, "", {})

    agg = aggregate([m, m2])
    assert agg.turns == 2
    assert agg.ccc.mean == pytest.approx(0.8) and agg.ccc.last == 1.0 and agg.ccc.min == 0.6
    assert agg.drift_consensus.n == 1 and agg.drift_consensus.last == pytest.approx(0.1)
    empty = aggregate([])
    assert empty.turns == 0 and empty.phi is None
    assert isinstance(m, TurnMetrics)
