"""A sweep file: many runs described at once.

A `Sweep` has a `base` RunSpec (spec.py), an automatic LM-only `baseline`, axes (`grid` cartesian,
`zip` parallel, `runs` explicit), `seeds`, named `teachers` trained by the sweep, and an optional
Optuna `search` space. Like every spec model it forbids unknown keys, is frozen, and documents each
field (`pdsweep explain zip`). expand.py turns a Sweep into RunSpecs.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pdsweep.spec import SpecModel
from pdsweep.spec.cluster import ClusterSpec

Overrides = dict[str, Any]
"""A mapping of dotted RunSpec paths (or nested sections) to values."""


class ExplicitRun(SpecModel):
    """One entry of `runs:` — overrides of `base`, with an optional label."""

    label: str | None = None
    """Row label in reports; derived from the overrides when not given (`top-0.95-50`, `α = 0.9`)."""
    set: Overrides = Field(default_factory=dict)
    """Dotted paths (or nested sections) to set on top of `base`."""

    @model_validator(mode="before")
    @classmethod
    def _flat_form(cls, data: Any) -> Any:
        # `- {label: X, loss.alpha: 0.9}` is shorthand for `- {label: X, set: {loss.alpha: 0.9}}`.
        if isinstance(data, dict) and "set" not in data:
            rest = {k: v for k, v in data.items() if k != "label"}
            return {"label": data.get("label"), "set": rest}
        return data


class SearchParam(SpecModel):
    """One searched dimension of `pdsweep tune`."""

    type: Literal["float", "int", "categorical"]
    """Distribution family."""
    low: float | None = None
    """Lower bound (float, int)."""
    high: float | None = None
    """Upper bound (float, int)."""
    log: bool = False
    """Sample on a log scale (float, int)."""
    step: float | None = None
    """Grid step (float, int)."""
    choices: list[Any] | None = None
    """Values (categorical)."""
    when: dict[str, Any] = Field(default_factory=dict)
    """Draw this parameter only when parameters listed before it have these values — for a field that
    exists only in one kind of a tagged union: `loss.alpha.max: {type: float, ..., when: {loss.alpha.kind: wsd_alpha}}`."""

    @model_validator(mode="after")
    def _consistent(self) -> SearchParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty choices list")
            if self.low is not None or self.high is not None or self.step is not None or self.log:
                raise ValueError("categorical takes choices only (no low, high, step or log)")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"{self.type} needs low and high")
            if self.low >= self.high:
                raise ValueError(f"low ({self.low}) must be < high ({self.high})")
            if self.log and self.low <= 0:
                raise ValueError("log scale needs low > 0")
            if self.step is not None:
                if self.step <= 0:
                    raise ValueError(f"step must be > 0, got {self.step:g}")
                if self.log:
                    raise ValueError("step and log cannot both be set (Optuna samples on a grid or on a log scale)")
                if self.step > self.high - self.low:
                    raise ValueError(f"step {self.step:g} is larger than high − low ({self.high - self.low:g})")
            if self.type == "int" and not all(float(x).is_integer() for x in (self.low, self.high, self.step or 1)):
                raise ValueError("int needs integer low, high and step")
        return self


class SearchSpec(SpecModel):
    """The Optuna study of `pdsweep tune` over dotted RunSpec paths."""

    params: dict[str, SearchParam] = Field(min_length=1)
    """Dotted RunSpec path → distribution (at least one)."""
    objective: str = "eval/heldout/loss"
    """Metric to optimise (an MLflow metric name of the run)."""
    direction: Literal["minimize", "maximize"] = "minimize"
    """Whether smaller or larger objective values are better."""
    sampler: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    """Optuna sampler."""
    pruner: Literal["none", "median", "hyperband"] = "median"
    """Optuna pruner fed by the trainer's intermediate evaluations."""
    trials: int = Field(default=12, ge=1)
    """Number of trials in the study."""
    max_failures: int = Field(default=3, ge=0)
    """Failed trials tolerated before the study stops."""


class ReportSpec(SpecModel):
    """How `pdsweep report` builds the sweep's table."""

    metrics: list[str] | None = None
    """Columns: evaluation metric keys without `eval/` (`heldout/loss`, `piqa/acc_norm`). Default:
    held-out loss and bits/byte, teacher agreement, and each benchmark's leading score."""
    primary: str | None = None
    """The column Δ% is taken on. Default: `average` (the mean of the benchmark scores, as the
    paper's) when there are two or more benchmark scores, else the first column."""
    confidence: float = Field(default=0.95, gt=0, lt=1)
    """Confidence level of every interval [D]: the cells' t-intervals over seeds and Δ%'s interval."""
    delta_interval: Literal["auto", "bootstrap", "t"] = "auto"
    """How the Δ% interval is made [D]: `t` (a t-interval on per-seed ratios, or the delta method for
    unpaired seeds), `bootstrap` (BCa, seeds resampled), `auto` = t. At the seed counts sweeps run
    (2–12) the t-interval holds its level (simulated coverage 0.94–0.95 at a nominal 0.95, tested)
    while bootstraps do not (percentile 0.89–0.91 and BCa ~0.90 at 8 seeds)."""
    bootstrap: int = Field(default=10_000, ge=100)
    """Bootstrap resamples for a `bootstrap` Δ% interval [D] (seeds resampled jointly with the
    baseline's when both ran the same seeds)."""


class Sweep(SpecModel):
    """A sweep file: base run, automatic LM-only baseline, axes, seeds, teacher runs, search space."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    """Sweep name (MLflow experiment, run directory); letters, digits, `_ . -`; at most 100 characters."""
    description: str = ""
    """What the sweep reproduces or asks."""
    base: dict[str, Any] = Field(default_factory=dict)
    """The RunSpec every run starts from (any field may be omitted: defaults apply)."""
    baseline: Overrides | None = Field(default_factory=dict)
    """Overrides of `base` for the LM-only reference (α = 0 is always applied); null = no baseline."""
    baseline_tokens: list[int] = Field(default_factory=list)
    """More token budgets for every LM-only baseline (each seed, each a complete run whose LR
    schedule ends at its budget): the curve a report reads the compute-matched Δ from — PD against
    LM-only at the same total compute (the student's plus its share of the teacher pass). PD costs
    more per token than LM-only, so the curve must reach past the baseline's own budget: about
    1 + (teacher forward FLOPs / student training FLOPs per token) times it (`pdsweep plan` shows both)."""
    teachers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Named teacher runs trained by the sweep (LM-only RunSpecs), used as `teacher: run:NAME`."""
    grid: Overrides = Field(default_factory=dict)
    """Cartesian axes: dotted path → list of values."""
    zip: Overrides = Field(default_factory=dict)
    """Parallel axes: dotted path → list of values, all lists the same length."""
    runs: list[ExplicitRun] = Field(default_factory=list)
    """Explicit runs: each a set of overrides of `base` (combined with grid/zip when given)."""
    seeds: list[int] = Field(default_factory=lambda: [0])
    """Replicates: every configuration is run once per seed (sets train.seed). An integer n means 0..n−1."""
    search: SearchSpec | None = None
    """Optuna search space for `pdsweep tune`."""
    report: ReportSpec = Field(default_factory=ReportSpec)
    """The table `pdsweep report` prints: its columns, the Δ column, the confidence level."""
    cluster: ClusterSpec | None = None
    """The Slurm resources of the sweep's jobs (`pdsweep run --executor slurm`); `--cluster FILE` replaces it."""

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            if v < 1:
                raise ValueError(f"must be ≥ 1, got {v}")
            return list(range(v))
        return v

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("must not be empty")
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        if min(v) < 0:
            raise ValueError(f"seeds must be ≥ 0, got {v}")
        return v

    @field_validator("grid")
    @classmethod
    def _grid_lists(cls, v: Overrides) -> Overrides:
        for path, values in v.items():
            if not isinstance(values, list):
                raise ValueError(f"{path}: must be a list of values, got {values!r}")
            if not values:
                raise ValueError(f"{path}: must not be empty")
        return v

    @field_validator("zip")
    @classmethod
    def _zip_lists(cls, v: Overrides) -> Overrides:
        lengths = {}
        for path, values in v.items():
            if not isinstance(values, list):
                raise ValueError(f"{path}: must be a list of values, got {values!r}")
            if not values:
                raise ValueError(f"{path}: must not be empty")
            lengths[path] = len(values)
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{p} has {n}" for p, n in lengths.items())
            raise ValueError(f"lists must have equal length: {detail}")
        return v

    @field_validator("baseline_tokens")
    @classmethod
    def _budgets(cls, v: list[int]) -> list[int]:
        if any(t < 1 for t in v):
            raise ValueError(f"token budgets must be ≥ 1, got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"token budgets must be distinct, got {v}")
        return sorted(v)

    @field_validator("teachers")
    @classmethod
    def _teacher_names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
                raise ValueError(f"teacher name {name!r} must use letters, digits, _ . -")
        return v
