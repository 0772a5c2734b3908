"""Learning-rate and α schedules: pure scalar functions of (step, total, schedule).

`step` counts optimiser steps from 0 to `total − 1`. The schedule objects are the spec's
`optim.lr_schedule` and `loss.alpha` models; they are read by their `kind` and fields only, so this
module needs neither torch nor numpy (nor an import of spec.py, its sibling).

Conventions (documented in docs/spec.md):
- LR warmup is linear and never returns 0 (step 0 gets lr/warmup_steps), so no step is wasted.
- The last step of a cosine or WSD schedule gets exactly `min_lr_ratio`.
- α schedules use training progress t = step / (total − 1): step 0 is t = 0 and the last step t = 1,
  so Linear Inc/Dec and the WSD shapes hit their endpoints exactly.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pdsweep.spec import AlphaSpec, LRScheduleSpec

_EXP_RATE = 5.0
"""The `exp` decay shape is exp(−5x) rescaled to fall from 1 to 0 over the decay phase."""


def decay_shape(x: float, shape: str) -> float:
    """A decay curve g on x ∈ [0, 1] with g(0) = 1, g(1) = 0, non-increasing."""
    x = min(max(x, 0.0), 1.0)
    match shape:
        case "linear":
            return 1.0 - x
        case "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * x))
        case "sqrt":
            return 1.0 - math.sqrt(x)
        case "exp":
            floor = math.exp(-_EXP_RATE)
            return (math.exp(-_EXP_RATE * x) - floor) / (1.0 - floor)
    raise ValueError(f"unknown decay shape {shape!r}")


def _check(step: int, total: int) -> None:
    if total < 1 or not 0 <= step < total:
        raise ValueError(f"need 0 ≤ step < total, got step={step}, total={total}")


def lr_at(step: int, total: int, schedule: LRScheduleSpec) -> float:
    """Learning rate at `step` as a fraction of the peak (multiply by `optim.lr`)."""
    _check(step, total)
    warmup = round(schedule.warmup * total)
    if step < warmup:
        return (step + 1) / warmup
    floor = schedule.min_lr_ratio
    match schedule.kind:
        case "cosine":
            span = total - 1 - warmup
            x = (step - warmup) / span if span > 0 else 1.0
            return floor + (1.0 - floor) * decay_shape(x, "cosine")
        case "wsd":
            decay = round(schedule.decay * total)
            start = total - decay
            if decay == 0 or step < start:
                return 1.0
            x = (step - start + 1) / decay
            return floor + (1.0 - floor) * decay_shape(x, schedule.decay_shape)
    raise ValueError(f"unknown LR schedule {schedule.kind!r}")


def alpha_phases(alpha: Any, lr_schedule: Any | None) -> tuple[float, float]:
    """Warmup and decay fractions of a WSD-α/β schedule: its own, else the LR schedule's
    (warmup of either LR kind; decay of a WSD LR), else (0, 0.1)."""
    warmup = alpha.warmup
    if warmup is None:
        warmup = lr_schedule.warmup if lr_schedule is not None else 0.0
    decay = alpha.decay
    if decay is None:
        decay = lr_schedule.decay if lr_schedule is not None and lr_schedule.kind == "wsd" else 0.1
    if warmup + decay > 1:  # a schedule's own fractions are checked by the spec; combined ones here
        decay = 1.0 - warmup
    return warmup, decay


def _wsd(t: float, low: float, high: float, warmup: float, decay: float, shape: str) -> float:
    if warmup > 0 and t < warmup:
        return low + (high - low) * (t / warmup)
    if decay > 0 and t > 1.0 - decay:
        return low + (high - low) * decay_shape((t - (1.0 - decay)) / decay, shape)
    return high


def alpha_at(step: int, total: int, schedule: AlphaSpec, lr_schedule: LRScheduleSpec | None = None) -> float:
    """α (the KD weight of L = (1 − α)·L_lm + α·L_kd) at `step`, always in [0, 1]."""
    _check(step, total)
    t = step / (total - 1) if total > 1 else 1.0
    match schedule.kind:
        case "constant":
            a = schedule.value
        case "linear_inc" | "linear_dec":
            a = schedule.start + (schedule.end - schedule.start) * t
        case "period":
            a = schedule.min + (schedule.max - schedule.min) * 0.5 * (
                1.0 + math.cos(2.0 * math.pi * t / schedule.period)
            )
        case "wsd_alpha":
            w, d = alpha_phases(schedule, lr_schedule)
            a = _wsd(t, schedule.min, schedule.max, w, d, schedule.decay_shape)
        case "wsd_beta":
            w, d = alpha_phases(schedule, lr_schedule)
            a = 1.0 - _wsd(t, schedule.min, schedule.max, w, d, schedule.decay_shape)
        case _:
            raise ValueError(f"unknown α schedule {schedule.kind!r}")
    return min(max(a, 0.0), 1.0)
