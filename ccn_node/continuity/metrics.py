"""The seed metrics (drift, CCC, Φ̂, trust, emergence): formulas over observable data.

Why so plain: the specification names these metrics, and the node keeps the names, but
each is defined here by a formula over what the node can observe (character vectors,
the assembled context, the answer's words, validation results) with a stated range.
"Context integration Φ̂" in particular is a lexical proxy; it is *not* the Φ of
Integrated Information Theory and makes no claim about consciousness.

Everything entering from outside (vectors from peers, the API, the store) goes through
`validate_vector`, so NaN/inf never reach a formula or the database.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import msgspec
import numpy as np

from ccn_node.continuity.probe import content_words

__all__ = [
    "CCC_SCALE",
    "ConversationMetrics",
    "MetricStat",
    "TurnMetrics",
    "aggregate",
    "ccc",
    "context_integration",
    "drift",
    "emergence",
    "trust",
    "turn_metrics",
    "validate_vector",
]

#: Drift at which CCC reaches 0. 0.25 RMS ≈ every dimension off by a quarter of its range:
#: a different character. The outlier threshold 0.10 then sits at CCC = 0.6.
CCC_SCALE = 0.25
#: Trust's prior for an instance that has not been validated (unknown, not bad).
UNVALIDATED_PRIOR = 0.5


def validate_vector(v: object, n: int, *, name: str = "vector",
                    unit_range: bool = True) -> np.ndarray:
    """Return `v` as a 1-D float64 array of length `n`, or raise `ValueError`.

    Rejects wrong shape, non-numbers, NaN, ±inf and (with `unit_range`) values outside
    [0, 1]. Why at the boundary: one bad peer vector would otherwise poison every median
    and drift computed after it, and SQLite would happily store NaN.
    """
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {n} numbers, got {type(v).__name__}") from None
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name}: expected a flat vector of {n} numbers, got shape "
                         f"{a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}[{i}] is {a[i]}; NaN and infinity are not allowed")
    if unit_range:
        out = (a < 0.0) | (a > 1.0)
        if out.any():
            i = int(np.argmax(out))
            raise ValueError(f"{name}[{i}] = {a[i]} is out of range [0, 1]")
    return a.copy() if a is v else a


def drift(a: np.ndarray, b: np.ndarray) -> float:
    """The specification's drift: sqrt(Σ_d (a_d − b_d)² / n). In [0, 1] for vectors in [0, 1]^n."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"drift: vectors must be 1-D and the same length, got {a.shape} "
                         f"and {b.shape}")
    d = a - b
    return float(math.sqrt(float(d @ d) / d.size))


def ccc(drift_value: float, scale: float = CCC_SCALE) -> float:
    """Character consistency coefficient: 1 − min(1, drift / scale). In [0, 1]; 1 = no drift."""
    if not (math.isfinite(drift_value) and drift_value >= 0.0):
        raise ValueError(f"ccc: drift must be a finite number ≥ 0, got {drift_value!r}")
    if not (math.isfinite(scale) and scale > 0.0):
        raise ValueError(f"ccc: scale must be a finite number > 0, got {scale!r}")
    return 1.0 - min(1.0, drift_value / scale)


@functools.lru_cache(maxsize=64)
def _word_set(text: str) -> frozenset[str]:
    """Content words of a context section; cached because the plate block repeats every turn."""
    return frozenset(content_words(text))


def context_integration(answer: str, sections: Mapping[str, str],
                        weights: Mapping[str, float] | None = None) -> float:
    """Context integration Φ̂ (a lexical proxy, not IIT's Φ). In [0, 1].

    Let A be the set of the answer's content words and C_s that of context section s
    (plate, state, relevant, recent, …). Coverage u_s = |A ∩ C_s| / |A|. Then
    Φ̂ = Σ_s w_s·u_s / Σ_s w_s over the non-empty sections (weights default to 1).
    Averaging over sections is what makes it *integration*: an answer drawing on one
    section only scores at most 1/k of an answer that draws equally on all k.
    0 if the answer has no content words or the context is empty.
    """
    a = set(content_words(answer))
    if not a:
        return 0.0
    num = den = 0.0
    for key, text in sections.items():
        c = _word_set(text)
        if not c:
            continue
        w = 1.0 if weights is None else float(weights.get(key, 1.0))
        if not (math.isfinite(w) and w >= 0.0):
            raise ValueError(f"context_integration: weight for {key!r} must be finite ≥ 0")
        num += w * len(a & c) / len(a)
        den += w
    return num / den if den > 0.0 else 0.0


def emergence(answer: str, sections: Mapping[str, str], user_text: str = "") -> float:
    """Emergence as lexical novelty: |A \\ (∪_s C_s ∪ U)| / |A|. In [0, 1].

    The share of the answer's distinct content words found in no context section and not
    in the user's message. It measures *new vocabulary*, nothing more: an off-topic or
    nonsensical answer scores high too, so read it beside Φ̂ and CCC, never alone.
    0 if the answer has no content words.
    """
    a = set(content_words(answer))
    if not a:
        return 0.0
    seen: set[str] = set(content_words(user_text))
    for text in sections.values():
        seen.update(_word_set(text))
    return len(a - seen) / len(a)


def trust(validation_score: float | None, ccc_history: Sequence[float],
          window: int = 20) -> float:
    """Trust = sqrt(v · c̄). In [0, 1].

    v = the instance's latest validation score (share of questions passed), or 0.5 if it
    was never validated; c̄ = mean CCC over the last `window` turns (1.0 with no history
    yet). The geometric mean is 0 when either is 0: an instance that fails validation or
    has drifted completely is not trusted however good the other figure is.
    """
    v = UNVALIDATED_PRIOR if validation_score is None else float(validation_score)
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"trust: validation score must be in [0, 1], got {validation_score!r}")
    hist = np.asarray(list(ccc_history)[-window:] if window > 0 else [], dtype=np.float64)
    if hist.size and (not np.isfinite(hist).all() or (hist < 0).any() or (hist > 1).any()):
        raise ValueError("trust: CCC history must hold finite values in [0, 1]")
    c = float(hist.mean()) if hist.size else 1.0
    return math.sqrt(v * c)


class TurnMetrics(msgspec.Struct, frozen=True):
    """The seed metrics of one assistant turn (all in [0, 1]; drift_consensus None when
    there is no consensus vector yet)."""

    phi: float
    ccc: float
    drift_baseline: float
    drift_consensus: float | None
    trust: float
    emergence: float


def turn_metrics(
    character: np.ndarray,
    baseline: np.ndarray,
    consensus: np.ndarray | None,
    answer: str,
    sections: Mapping[str, str],
    *,
    user_text: str = "",
    validation_score: float | None = None,
    ccc_history: Sequence[float] = (),
    weights: Mapping[str, float] | None = None,
) -> TurnMetrics:
    """All seed metrics of one turn. CCC uses the drift from the plate's baseline (the
    declared character); trust folds this turn's CCC into `ccc_history`."""
    n = len(baseline)
    ch = validate_vector(character, n, name="character")
    bl = validate_vector(baseline, n, name="baseline")
    d_b = drift(ch, bl)
    d_c = None
    if consensus is not None:
        d_c = drift(ch, validate_vector(consensus, n, name="consensus"))
    c = ccc(d_b)
    return TurnMetrics(
        phi=context_integration(answer, sections, weights),
        ccc=c,
        drift_baseline=d_b,
        drift_consensus=d_c,
        trust=trust(validation_score, [*ccc_history, c]),
        emergence=emergence(answer, sections, user_text),
    )


class MetricStat(msgspec.Struct, frozen=True):
    """Mean, last and minimum of one metric over the turns that have it."""

    mean: float
    last: float
    min: float
    n: int


class ConversationMetrics(msgspec.Struct, frozen=True):
    """Per-conversation aggregate; a stat is None when no turn has that metric."""

    turns: int
    phi: MetricStat | None
    ccc: MetricStat | None
    drift_baseline: MetricStat | None
    drift_consensus: MetricStat | None
    trust: MetricStat | None
    emergence: MetricStat | None


def _stat(values: list[float]) -> MetricStat | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return MetricStat(mean=float(a.mean()), last=float(a[-1]), min=float(a.min()), n=a.size)


def aggregate(turns: Sequence[TurnMetrics]) -> ConversationMetrics:
    """Aggregate turn metrics in conversation order (mean / last / min of each)."""
    def col(field: str) -> list[float]:
        return [v for t in turns if (v := getattr(t, field)) is not None]

    return ConversationMetrics(
        turns=len(turns),
        phi=_stat(col("phi")),
        ccc=_stat(col("ccc")),
        drift_baseline=_stat(col("drift_baseline")),
        drift_consensus=_stat(col("drift_consensus")),
        trust=_stat(col("trust")),
        emergence=_stat(col("emergence")),
    )
