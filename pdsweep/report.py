"""Reports: a sweep's runs, read back from MLflow, as the paper's tables and figures — with
confidence intervals, because single-seed differences mislead.

Data flow: the sweep file (expand.py gives every run's label, role, seed, axes and LM-only
baseline) joined with its MLflow runs (final metrics, metric histories) → a tidy DataFrame, a row
per run × metric (`load`) → `build_table`: rows = configurations labelled as the paper does,
columns = eval metrics, their Average (benchmark scores only, as the paper's) and Δ% against each
row's baseline. Seeds are aggregated as mean ± a t-interval; Δ% gets an interval over seeds
(stats.py: a t-interval on per-seed ratios, which holds its level at a few seeds; a BCa bootstrap on request),
paired by seed when a row and its baseline ran the same seeds (same initialisation and batch
order, so the pairing removes most seed noise). The noise floor is the spread among the baseline's
seeds. `write` puts the table in every format (formats.py) and the figures (figures.py) on disk.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pdsweep import __version__, expand, figures, files, formats, settings, stats, tracking
from pdsweep.specfile import SpecError

if TYPE_CHECKING:
    import pandas as pd

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


_TASK_TITLES = {
    "hellaswag": "HellaSwag",
    "winogrande": "WinoGrande",
    "piqa": "PIQA",
    "arc_easy": "ARC-e",
    "arc_challenge": "ARC-c",
    "mmlu": "MMLU",
    "lambada": "LAMBADA",
    "gsm8k": "GSM8k",
}
PRIMARY_SCORE = {
    "hellaswag": "acc_norm",
    "winogrande": "acc",
    "piqa": "acc_norm",
    "arc_easy": "acc_norm",
    "arc_challenge": "acc_norm",
    "mmlu": "acc",
    "lambada": "acc",
    "gsm8k": "exact_match",
}
"""The score lm-evaluation-harness leads with for each task; the one a report shows."""

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
    if task in _TASK_TITLES and name in ("acc", "acc_norm", "exact_match"):
        suffix = "" if PRIMARY_SCORE[task] == name else f" {name}"
        return Metric(key, _TASK_TITLES[task] + suffix, True, 100.0, 1, score=True)
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
    out += [f"{t}/{m}" for t, m in PRIMARY_SCORE.items() if f"{t}/{m}" in present]
    return out


# ----------------------------------------------------------------------------------------------
# Runs → tidy frame
# ----------------------------------------------------------------------------------------------


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


def load(sweep_path: Path, uri: str | None = None) -> SweepData:
    """The sweep file's runs and their final metrics from the MLflow store (SpecError when no run of
    it is done)."""
    import pandas as pd

    sweep = expand.load_sweep(sweep_path)
    planned = expand.expand(sweep, str(sweep_path))
    uri = uri or tracking.default_uri()
    tracked = {t.run_id: t for t in tracking.sweep_runs(uri, sweep.name)}
    rows_meta, _ = expand.plan_rows(planned)
    meta = {m["run_id"]: m for m in rows_meta}
    label_of = {r.config_id: r.label for r in planned}
    axes = sorted({p for r in planned if r.role == "student" for p in expand.flatten_overrides(r.axes)})
    records: list[dict[str, Any]] = []
    for r in planned:
        t = tracked.get(r.run_id)
        if r.role == "teacher" or t is None or t.status != "done":
            continue
        written = expand.flatten_overrides(r.axes)  # the values as the sweep file writes them (α = 0.5, not a schedule)
        base = {
            "run_id": r.run_id,
            "config_id": r.config_id,
            "label": r.label,
            "role": r.role,
            "seed": r.seed,
            "baseline": label_of.get(r.baseline or "", r.label) if r.role == "student" else r.label,
            "teacher": meta[r.run_id]["teacher"],
            "params": meta[r.run_id]["params"],
            "tokens": r.spec.data.tokens,
            **{a: _axis_value(written.get(a, meta[r.run_id]["axes"].get(a))) for a in axes},
        }
        for key, value in t.metrics.items():
            if key.startswith("eval/") and not key.endswith("/items"):
                records.append({**base, "metric": key.removeprefix("eval/"), "value": float(value)})
    if not records:
        raise SpecError(
            f"{sweep_path}: no run of sweep {sweep.name!r} is done in {uri} (pdsweep run {sweep_path} first)"
        )
    return SweepData(sweep.name, sweep.description, planned, tracked, uri, pd.DataFrame.from_records(records))


def _axis_value(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, type(None))) else str(v)


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


def build_table(
    tidy: pd.DataFrame,
    metrics: Sequence[Metric | str] | None = None,
    primary: str | None = None,
    confidence: float = 0.95,
    n_boot: int = 10_000,
    title: str = "",
    delta_interval: str = "auto",
) -> Table:
    """The paper's table from a tidy frame (columns label, role, seed, baseline, metric, value; a row
    per run × metric). Rows keep the frame's order, baselines first. The Average is the mean of the
    score columns, per seed, when there are at least two; the primary column (for Δ%) is the Average
    then, else the first metric, unless `primary` names one."""
    keys_present = list(dict.fromkeys(tidy["metric"]))
    chosen = [m if isinstance(m, Metric) else metric(m) for m in (metrics or default_metrics(keys_present))]
    if not chosen:
        raise SpecError(f"report: no metric to show (the runs have {', '.join(keys_present) or 'none'})")
    unknown = [m.key for m in chosen if m.key not in keys_present]
    if unknown:
        raise SpecError(f"report.metrics: no run has {', '.join(unknown)} (they have {', '.join(keys_present)})")
    scores = [m for m in chosen if m.score]
    average = len(scores) >= 2
    primary = primary or (AVERAGE if average else chosen[0].key)
    if primary != AVERAGE and primary not in [m.key for m in chosen]:
        raise SpecError(f"report.primary: {primary!r} is not a column (columns: {', '.join(m.key for m in chosen)})")
    if primary == AVERAGE and not average:
        raise SpecError("report.primary: 'average' needs at least two benchmark scores among the columns")

    # per label: {metric: {seed: shown value}}
    by_label: dict[str, dict[str, dict[int, float]]] = {}
    info: dict[str, tuple[str, str]] = {}
    for rec in tidy.itertuples(index=False):
        info.setdefault(rec.label, (rec.role, rec.baseline))
        by_label.setdefault(rec.label, {})
        m = metric_by_key(chosen, rec.metric)
        by_label[rec.label].setdefault(rec.metric, {})[int(rec.seed)] = float(rec.value) * m.scale
    order = [lab for lab in by_label if info[lab][0] == "baseline"] + [
        lab for lab in by_label if info[lab][0] != "baseline"
    ]
    rows: list[Row] = []
    for lab in order:
        vals = by_label[lab]
        if average:
            seeds = set.intersection(*(set(vals.get(m.key, {})) for m in scores))
            vals[AVERAGE] = {s: float(np.mean([vals[m.key][s] for m in scores])) for s in sorted(seeds)}
        cells = {}
        for key in [m.key for m in chosen] + ([AVERAGE] if average else []):
            v = list(vals.get(key, {}).values())
            cells[key] = Cell(float(np.mean(v)) if v else math.nan, stats.t_half(v, confidence), len(v), v)
        seeds_run = sorted({s for per in vals.values() for s in per})
        rows.append(Row(lab, info[lab][0], info[lab][1], seeds_run, cells))
    for row in rows:
        base = by_label.get(row.baseline)
        if row.role == "baseline" or base is None:
            continue
        a, b = by_label[row.label].get(primary, {}), base.get(primary, {})
        if not a or not b:
            continue
        row.delta = float((np.mean(list(a.values())) / np.mean(list(b.values())) - 1.0) * 100.0)
        boot = delta_interval == "bootstrap"
        row.delta_method = "bootstrap" if boot else "t"
        row.delta_lo, row.delta_hi = (
            stats.bootstrap_delta(a, b, confidence, n_boot) if boot else stats.t_delta(a, b, confidence)
        )
        row.effect = _effect(a, b, confidence)
    return Table(title, chosen, primary, rows, confidence, _noise_floor(rows, primary, chosen), average)


def _effect(a: dict[int, float], b: dict[int, float], confidence: float) -> Effect:
    if set(a) == set(b) and len(a) >= 2:
        d = [a[s] - b[s] for s in sorted(a)]
        return Effect(float(np.mean(d)), stats.t_half(d, confidence), len(d), True)
    diff = float(np.mean(list(a.values())) - np.mean(list(b.values())))
    return Effect(diff, stats.welch_half(list(a.values()), list(b.values()), confidence), min(len(a), len(b)), False)


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


def _noise_floor(rows: list[Row], primary: str, metrics: Sequence[Metric]) -> str:
    what = "Average" if primary == AVERAGE else metric_by_key(metrics, primary).title
    spreads = baseline_spreads(rows, primary)
    if not spreads:
        return (
            f"Noise floor unknown: no baseline ran two or more seeds, so a Δ of {what} cannot be told from seed noise."
        )
    spread, sd, label, n = max(spreads)
    return (
        f"Noise floor: the {n} seeds of {label} span {spread:.2f}% of its {what} (sd {sd:.3g}); "
        f"a Δ inside that range is seed noise."
    )


# ----------------------------------------------------------------------------------------------
# The report on disk
# ----------------------------------------------------------------------------------------------


def header(data: SweepData, t: Table) -> dict[str, str]:
    done = {r.run_id for r in data.planned if r.role != "teacher"} - {r.run_id for r in data.missing}
    n = sum(1 for r in data.planned if r.role != "teacher")
    missing = data.missing
    return {
        "sweep": data.name,
        "description": " ".join(data.description.split()),
        "runs": f"{len(done)} of {n} runs done"
        + (f"; not done: {', '.join(sorted({r.label for r in missing}))}" if missing else ""),
        "tracking": settings.shown_uri(data.uri),
        "machine": settings.machine(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "pdsweep": __version__,
        "data sha256": files.sha256_bytes(data.tidy.to_csv(index=False).encode())[:16],
    }


def write(
    data: SweepData, t: Table, out: Path, kinds: Sequence[str] = ("md", "csv", "tex", "html"), plots: bool = True
) -> list[Path]:
    """The report in `out`: report.md/.csv/.tex/.html (`kinds`), runs.csv (the tidy data), the figures
    (PNG + SVG). Each file is written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    head = header(data, t)
    written: list[Path] = []
    figs = figures.draw(data, t, out) if plots and ("html" in kinds or "md" in kinds) else []  # both show them
    written += [p for _, p in figs] + [p.with_suffix(".svg") for _, p in figs]
    meta_md = "\n".join(f"- {k}: {v}" for k, v in head.items() if v)
    text = {
        "md": lambda: (
            formats.to_markdown(t, f"# {data.name}\n\n{meta_md}\n") + "".join(f"\n![{c}]({p.name})\n" for c, p in figs)
        ),
        "csv": lambda: formats.to_csv(t),
        "tex": lambda: formats.to_latex(t),
        "html": lambda: formats.to_html(t, head, figs),
    }
    for kind in kinds:
        if kind in text:
            path = out / f"report.{kind}"
            files.write_text(path, text[kind]())
            written.append(path)
    runs_csv = out / "runs.csv"
    files.write_text(runs_csv, data.tidy.to_csv(index=False, float_format="%.6g"))
    written.append(runs_csv)
    return written
