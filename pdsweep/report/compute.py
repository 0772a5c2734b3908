"""Compute in reports: what each row cost, and PD against LM-only at the same compute.

Every run records its cost (trainer.compute, as MLflow `compute/…` metrics): its training FLOPs
(forward and backward, attention included), and for a PD student its share of the teacher pass —
the teacher's forward FLOPs over the positions it read. A row's *total* compute is the two together
(the cost of distilling one student, whatever else the pass serves); *+ teacher training* adds the
training FLOPs of a teacher the sweep trained itself, shown apart, because a teacher is often
trained once for many students (or not at all: a released model).

The *compute-matched Δ* compares a PD row with LM-only at the row's total compute. The LM-only curve
of a seed is the final metric of every baseline that differs from the row's own only in its token
budget (`baseline_tokens:` in the sweep, or a `data.tokens` axis), each at its training FLOPs, read
at the row's compute by linear interpolation in log FLOPs. Each point is a complete run — its LR
schedule ends at its budget. Reading a longer run's metric midway would compare a PD student that
finished its decay with an LM-only one that had not, and flatter PD.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Point = tuple[float, float]
"""(training FLOPs, metric) of one LM-only run."""


def read(curve: Sequence[Point], flops: float) -> float | None:
    """The metric of `curve` at `flops`, linear in log FLOPs between the two points around it; None
    when `flops` lies outside the curve (no extrapolation)."""
    points = sorted(curve)
    if not points or flops <= 0:
        return None
    for (c0, m0), (c1, m1) in zip(points, points[1:], strict=False):
        if c0 <= flops <= c1:
            if c1 == c0:
                return m0
            w = (math.log(flops) - math.log(c0)) / (math.log(c1) - math.log(c0))
            return m0 + w * (m1 - m0)
    c, m = points[0]
    return m if math.isclose(flops, c, rel_tol=1e-9) else None


def matched(
    values: dict[int, float], costs: dict[int, float], curves: dict[int, list[Point]]
) -> tuple[dict[int, float], float]:
    """LM-only at each seed's total compute: ({seed: interpolated metric} for the seeds its curve
    reaches, the most compute any seed asked for). Seeds without a curve are left out."""
    out: dict[int, float] = {}
    for seed, value in values.items():
        if seed not in costs or seed not in curves:
            continue
        m = read(curves[seed], costs[seed])
        if m is not None and math.isfinite(value):
            out[seed] = m
    return out, max((costs[s] for s in values if s in costs), default=math.nan)
