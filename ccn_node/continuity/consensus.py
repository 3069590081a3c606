"""One consensus round over the live instances' character vectors, as a pure function.

Why the median: it is the per-dimension estimate that a minority of drifted (or faulty)
instances cannot move far — up to half the instances can be arbitrarily wrong and the
consensus stays within the range of the honest ones. The leader computes the round once
and commits the result through the command log, so followers never recompute it and the
output only needs to be deterministic for a given input (ids are sorted, so dict order
does not matter).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgspec
import numpy as np

from ccn_node.continuity.probe import DIMENSIONS

__all__ = ["DEFAULT_OUTLIER_THRESHOLD", "ConsensusRound", "Spread", "consensus_round"]

DEFAULT_OUTLIER_THRESHOLD = 0.10


class Spread(msgspec.Struct, frozen=True):
    """How far the instances are from the consensus: drift statistics and, per dimension,
    the median absolute deviation (MAD) from the consensus value."""

    mean_drift: float
    p95_drift: float
    max_drift: float
    dim_mad: tuple[float, ...]


class ConsensusRound(msgspec.Struct, frozen=True):
    """A round's result. `vector` is None and `noop` True when there were no instances."""

    vector: tuple[float, ...] | None
    instance_count: int
    outliers: tuple[str, ...]
    drifts: dict[str, float]
    spread: Spread | None
    threshold: float
    noop: bool


def consensus_round(
    vectors: Mapping[str, object],
    threshold: float = DEFAULT_OUTLIER_THRESHOLD,
    n: int = len(DIMENSIONS),
) -> ConsensusRound:
    """Median per dimension; drift of each instance from it (sqrt(Σ(a_d − m_d)²/n));
    outliers = instances with drift > `threshold`, sorted by id.

    Raises `ValueError` naming the instance for a vector of the wrong length, NaN/inf or
    values outside [0, 1]; an empty mapping is a no-op round, not an error.
    """
    if not (math.isfinite(threshold) and 0.0 < threshold <= 1.0):
        raise ValueError(f"consensus threshold must be in (0, 1], got {threshold!r}")
    if not vectors:
        return ConsensusRound(vector=None, instance_count=0, outliers=(), drifts={},
                              spread=None, threshold=threshold, noop=True)
    ids = sorted(vectors)
    rows = []
    for i in ids:
        try:
            r = np.asarray(vectors[i], dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"instance {i!r}: character vector is not numeric") from None
        if r.shape != (n,):
            raise ValueError(f"instance {i!r}: character vector has shape {r.shape}, "
                             f"expected ({n},)")
        rows.append(r)
    m = np.stack(rows)
    bad = ~np.isfinite(m) | (m < 0.0) | (m > 1.0)
    if bad.any():
        r, c = map(int, np.argwhere(bad)[0])
        raise ValueError(f"instance {ids[r]!r}: character vector[{c}] = {m[r, c]} is NaN, "
                         f"infinite or outside [0, 1]")
    med = np.median(m, axis=0)
    dev = m - med
    d = np.sqrt(np.einsum("ij,ij->i", dev, dev) / n)
    out = [ids[k] for k in np.flatnonzero(d > threshold)]
    spread = Spread(
        mean_drift=float(d.mean()),
        p95_drift=float(np.percentile(d, 95)),
        max_drift=float(d.max()),
        dim_mad=tuple(float(x) for x in np.median(np.abs(dev), axis=0)),
    )
    return ConsensusRound(
        vector=tuple(float(x) for x in med),
        instance_count=len(ids),
        outliers=tuple(out),
        drifts=dict(zip(ids, d.tolist(), strict=True)),
        spread=spread,
        threshold=threshold,
        noop=False,
    )
