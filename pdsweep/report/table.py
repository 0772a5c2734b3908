"""The report's table model: metrics (what a key means, which way is better, how it is shown), cells
(mean ± CI over seeds), Δ% effects against a row's baseline, rows and the table itself, and the
sweep data it is built from. Everything that builds or renders a report imports this; it imports
none of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pdsweep.spec.suites import BENCHMARKS

if TYPE_CHECKING:
    import pandas as pd

    from pdsweep.run import tracking
    from pdsweep.spec import expand

AVERAGE = "average"

# ----------------------------------------------------------------------------------------------
# Metrics: what a key means, which way is better, how it is shown
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    key: str
    """The evaluation metric (`heldout/loss`, `piqa/acc_norm`), without MLflow's `eval/` prefix."""
    title: str
    higher_is_better: bool
    scale: float = 1.0
    """Shown as value × scale (accuracies as percentages, like the paper)."""
    digits: int = 3
    score: bool = False
    """A benchmark score: one of the columns the paper's Average is taken over."""


_FIXED = {
    "heldout/loss": Metric("heldout/loss", "held-out loss", False),
    "heldout/ppl": Metric("heldout/ppl", "held-out ppl", False, digits=2),
    "heldout/bits_per_byte": Metric("heldout/bits_per_byte", "bits/byte", False),
    "teacher_agreement/top1": Metric("teacher_agreement/top1", "top-1 agreement (%)", True, 100.0, 2),
    "teacher_agreement/kl": Metric("teacher_agreement/kl", "KL to teacher", False),
}
_LOWER = ("loss", "ppl", "perplexity", "kl", "bits_per_byte")


def metric(key: str) -> Metric:
    """What pdsweep knows about an evaluation metric key."""
    if key in _FIXED:
        return _FIXED[key]
    task, _, name = key.partition("/")
    if task in BENCHMARKS and name in ("acc", "acc_norm", "exact_match"):
        b = BENCHMARKS[task]
        return Metric(key, b.title + ("" if b.primary == name else f" {name}"), True, 100.0, 1, score=True)
    lower = any(part in _LOWER for part in key.split("/"))
    return Metric(key, key, not lower)


def default_metrics(keys: Sequence[str]) -> list[str]:
    """The columns of a report when the sweep does not choose: held-out loss and bits/byte, teacher
    agreement, and each benchmark's leading score, in that order."""
    present = set(keys)
    out: list[str] = [
        k
        for k in ("heldout/loss", "heldout/bits_per_byte", "teacher_agreement/top1", "teacher_agreement/kl")
        if k in present
    ]
    out += [f"{b.name}/{b.primary}" for b in BENCHMARKS.values() if f"{b.name}/{b.primary}" in present]
    return out


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------


@dataclass
class Cell:
    mean: float
    half: float
    """Half-width of the t-interval over seeds (nan with one seed)."""
    n: int
    values: list[float] = field(default_factory=list)


@dataclass
class Effect:
    """A row's primary metric minus its baseline's, with a t-interval (paired by seed when both ran
    the same seeds, Welch's otherwise)."""

    diff: float
    half: float
    n: int
    paired: bool

    @property
    def halfwidths(self) -> float:
        """How many CI half-widths the difference is from zero."""
        return abs(self.diff) / self.half if self.half > 0 else math.inf if self.diff else 0.0


@dataclass
class Matched:
    """The compute-matched Δ% of a PD row: against LM-only at the row's total compute (the
    student's training plus its share of the teacher pass), read from the LM-only curve
    (report/compute.py), with a t-interval over seeds."""

    delta: float
    lo: float
    hi: float
    effect: Effect

    @property
    def resolved(self) -> bool | None:
        """Is the effect at least RESOLVED half-widths from zero? None without an interval."""
        return _resolved(self.effect)


RESOLVED = 2.0
"""A row's effect is resolved when it lies at least this many CI half-widths from zero."""


def _resolved(effect: Effect | None) -> bool | None:
    if effect is None or not math.isfinite(effect.half):
        return None
    return effect.halfwidths >= RESOLVED


@dataclass
class Row:
    label: str
    role: str
    baseline: str
    seeds: list[int]
    cells: dict[str, Cell]
    delta: float = math.nan
    """Δ% of the primary column against the baseline."""
    delta_lo: float = math.nan
    delta_hi: float = math.nan
    delta_method: str = ""
    """How the Δ% interval was made: "bootstrap" or "t"."""
    effect: Effect | None = None
    flops: float = math.nan
    """Mean training FLOPs over the row's seeds (forward and backward, attention included)."""
    pass_flops: float = math.nan
    """Mean share of the teacher pass: the teacher's forward FLOPs over the positions read (0 for LM-only)."""
    teacher_flops: float = math.nan
    """Training FLOPs of the teacher when the sweep trained it (NaN otherwise)."""
    matched: Matched | None = None
    matched_note: str = ""
    """Why a PD row has no compute-matched Δ (the LM-only curve does not reach its compute)."""
    matched_teacher: Matched | None = None
    """The compute-matched Δ with the teacher's training counted too (a teacher the sweep trained)."""
    matched_teacher_note: str = ""

    @property
    def total_flops(self) -> float:
        return self.flops + self.pass_flops

    @property
    def resolved(self) -> bool | None:
        """Is the row's effect at least RESOLVED half-widths from zero? None without an effect."""
        return _resolved(self.effect)


@dataclass
class Table:
    title: str
    metrics: list[Metric]
    primary: str
    """A metric key, or AVERAGE."""
    rows: list[Row]
    confidence: float
    noise_floor: str
    average: bool

    @property
    def primary_title(self) -> str:
        return "Average" if self.primary == AVERAGE else metric_by_key(self.metrics, self.primary).title

    @property
    def primary_higher(self) -> bool:
        return True if self.primary == AVERAGE else metric_by_key(self.metrics, self.primary).higher_is_better

    def best(self, key: str) -> str | None:
        """The label of the row with the best mean in a column (None when no row has one)."""
        higher = True if key == AVERAGE else metric_by_key(self.metrics, key).higher_is_better
        have = [(r.cells[key].mean, r.label) for r in self.rows if key in r.cells and math.isfinite(r.cells[key].mean)]
        if len(have) < 2:
            return None
        return (max if higher else min)(have)[1]

    @property
    def primary_is_average(self) -> bool:
        return self.primary == AVERAGE

    def metric(self, key: str) -> Metric:
        return metric_by_key(self.metrics, key)

    def role(self, label: str) -> str:
        return next((r.role for r in self.rows if r.label == label), "")

    def columns(self) -> list[tuple[str, str, int]]:
        """(key, header, digits) of the value columns."""
        cols = [(m.key, m.title, m.digits) for m in self.metrics]
        if self.average:
            cols.append((AVERAGE, "Average", 1))
        return cols

    def baseline_spreads(self) -> list[tuple[float, float, str, int]]:
        return baseline_spreads(self.rows, self.primary)

    def best_delta(self) -> str | None:
        have = [(r.delta, r.label) for r in self.rows if math.isfinite(r.delta)]
        if not have:
            return None
        return (max if self.primary_higher else min)(have)[1]


def metric_by_key(metrics: Sequence[Metric], key: str) -> Metric:
    return next((m for m in metrics if m.key == key), None) or metric(key)


@dataclass
class SweepData:
    """A sweep's planned runs joined with what its MLflow store holds."""

    name: str
    description: str
    planned: list[expand.PlannedRun]
    tracked: dict[str, tracking.TrackedRun]
    uri: str
    tidy: pd.DataFrame
    """A row per done run × final eval metric: run_id, config_id, label, role, seed, baseline
    (its baseline's label), teacher, params, tokens, the varied axes (dotted paths), metric, value."""

    @property
    def missing(self) -> list[expand.PlannedRun]:
        """Planned student and baseline runs that are not done in the store."""
        return [
            r
            for r in self.planned
            if r.role != "teacher" and (r.run_id not in self.tracked or self.tracked[r.run_id].status != "done")
        ]


def baseline_spreads(rows: Sequence[Row], primary: str) -> list[tuple[float, float, str, int]]:
    """(range as % of the mean, sd, label, seeds) of the primary column for each baseline row with
    two or more seeds: the noise floor."""
    out = []
    for r in rows:
        c = r.cells.get(primary)
        if r.role == "baseline" and c is not None and c.n >= 2 and c.mean:
            out.append(
                ((max(c.values) - min(c.values)) / abs(c.mean) * 100.0, float(np.std(c.values, ddof=1)), r.label, c.n)
            )
    return out
