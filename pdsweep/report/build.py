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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pdsweep import __version__, files, settings
from pdsweep.errors import UserError
from pdsweep.report import compute, figures, formats, stats
from pdsweep.run import tracking
from pdsweep.spec import expand, plan
from pdsweep.spec.labels import human

if TYPE_CHECKING:
    import pandas as pd
from pdsweep.report.table import (
    AVERAGE,
    Cell,
    Effect,
    Matched,
    Metric,
    Row,
    SweepData,
    Table,
    baseline_spreads,
    default_metrics,
    metric,
    metric_by_key,
)

"""The score lm-evaluation-harness leads with for each task; the one a report shows."""


# ----------------------------------------------------------------------------------------------
# Runs → tidy frame
# ----------------------------------------------------------------------------------------------


def load(sweep_path: Path, uri: str | None = None) -> SweepData:
    """The sweep file's runs and their final metrics from the MLflow store (UserError when no run of
    it is done)."""
    import pandas as pd

    sweep = expand.load_sweep(sweep_path)
    planned = expand.expand(sweep, str(sweep_path))
    uri = uri or tracking.default_uri()
    tracked = {t.run_id: t for t in tracking.sweep_runs(uri, sweep.name)}
    rows_meta, _ = plan.plan_rows(planned)
    meta = {m["run_id"]: m for m in rows_meta}
    label_of = {r.config_id: r.label for r in planned}
    axes = sorted({p for r in planned if r.role == "student" for p in expand.flatten_overrides(r.axes)})
    spec_of = {r.config_id: r.spec for r in planned}
    records: list[dict[str, Any]] = []
    for r in planned:
        t = tracked.get(r.run_id)
        if r.role == "teacher" or t is None or t.status != "done":
            continue
        written = expand.flatten_overrides(r.axes)  # the values as the sweep file writes them (α = 0.5, not a schedule)
        own = spec_of[r.baseline] if r.role == "student" and r.baseline in spec_of else r.spec
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
            **_costs(r, t, tracked),
            "curve": _curve_group(own),
        }
        for key, value in t.metrics.items():
            if key.startswith("eval/") and not key.endswith("/items"):
                records.append({**base, "metric": key.removeprefix("eval/"), "value": float(value)})
    if not records:
        raise UserError(
            f"{sweep_path}: no run of sweep {sweep.name!r} is done in {uri} (pdsweep run {sweep_path} first)"
        )
    return SweepData(sweep.name, sweep.description, planned, tracked, uri, pd.DataFrame.from_records(records))


def _costs(r: expand.PlannedRun, t: tracking.TrackedRun, tracked: dict[str, tracking.TrackedRun]) -> dict[str, float]:
    """A run's recorded compute (NaN where it recorded none): training FLOPs, its share of the
    teacher pass (0 for LM-only), and the training of a teacher the sweep trained."""
    m = t.metrics
    teacher = r.spec.teacher
    trained = tracked.get(teacher.run_id) if teacher is not None and teacher.kind == "run" and teacher.run_id else None
    uses = r.spec.uses_teacher
    return {
        "flops": m.get("compute/flops", math.nan),
        "pass_flops": m.get("compute/teacher_pass_flops", math.nan) if uses else 0.0,
        "teacher_flops": trained.metrics.get("compute/flops", math.nan) if uses and trained else math.nan,
    }


def _curve_group(spec: Any) -> str:
    """LM-only runs that differ only in their token budget share a group: the points of one curve."""
    return expand.config_id(spec.model_copy(update={"data": spec.data.model_copy(update={"tokens": 1})}))[:8]


def _axis_value(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, type(None))) else str(v)


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
        raise UserError(f"report: no metric to show (the runs have {', '.join(keys_present) or 'none'})")
    unknown = [m.key for m in chosen if m.key not in keys_present]
    if unknown:
        raise UserError(f"report.metrics: no run has {', '.join(unknown)} (they have {', '.join(keys_present)})")
    scores = [m for m in chosen if m.score]
    average = len(scores) >= 2
    primary = primary or (AVERAGE if average else chosen[0].key)
    if primary != AVERAGE and primary not in [m.key for m in chosen]:
        raise UserError(f"report.primary: {primary!r} is not a column (columns: {', '.join(m.key for m in chosen)})")
    if primary == AVERAGE and not average:
        raise UserError("report.primary: 'average' needs at least two benchmark scores among the columns")

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
    _add_compute(rows, by_label, tidy, primary, confidence)
    return Table(title, chosen, primary, rows, confidence, _noise_floor(rows, primary, chosen), average)


def _add_compute(
    rows: list[Row],
    by_label: dict[str, dict[str, dict[int, float]]],
    tidy: pd.DataFrame,
    primary: str,
    confidence: float,
) -> None:
    """Each row's mean compute (student, its share of the teacher pass, the teacher's training) and,
    for PD rows, the compute-matched Δ of the primary column (report/compute.py) — with the pass,
    and with the teacher's training too."""
    if "flops" not in tidy.columns:
        return
    runs = tidy.drop_duplicates("run_id")
    curves: dict[str, dict[int, list[compute.Point]]] = {}  # curve group → seed → LM-only points
    for rec in runs[runs["role"] == "baseline"].itertuples(index=False):
        value = by_label.get(rec.label, {}).get(primary, {}).get(int(rec.seed))
        if value is not None and math.isfinite(rec.flops):
            curves.setdefault(rec.curve, {}).setdefault(int(rec.seed), []).append((float(rec.flops), value))
    for row in rows:
        mine = runs[runs["label"] == row.label]
        row.flops, row.pass_flops, row.teacher_flops = (
            float(mine[c].mean()) for c in ("flops", "pass_flops", "teacher_flops")
        )
        group = str(mine["curve"].iloc[0])
        if row.role == "baseline" or not math.isfinite(row.pass_flops) or group not in curves:
            continue  # an LM-only row, a pass of unknown cost, or no LM-only run to compare with
        base = runs[(runs["curve"] == group) & (runs["role"] == "baseline")]
        per_token = float((base["flops"] / base["tokens"]).mean())
        values = by_label[row.label].get(primary, {})
        total = {int(r.seed): float(r.flops) + float(r.pass_flops) for r in mine.itertuples(index=False)}
        row.matched, row.matched_note = _matched(values, total, curves[group], per_token, confidence)
        if math.isfinite(row.teacher_flops):
            teacher = {int(r.seed): total[int(r.seed)] + float(r.teacher_flops) for r in mine.itertuples(index=False)}
            row.matched_teacher, row.matched_teacher_note = _matched(
                values, teacher, curves[group], per_token, confidence
            )


def _matched(
    values: dict[int, float],
    cost: dict[int, float],
    curves: dict[int, list[compute.Point]],
    per_token: float,
    confidence: float,
) -> tuple[Matched | None, str]:
    """The compute-matched Δ of a row (its per-seed values at per-seed `cost`) against LM-only's
    `curves`, or why there is none."""
    lm, needed = compute.matched(values, cost, curves)
    if set(lm) != set(values):
        tokens = needed / per_token if per_token > 0 else math.nan
        if not math.isfinite(tokens) or tokens <= 0:
            return None, "LM-only too short"
        step = 10 ** (math.floor(math.log10(tokens)) - 1)  # rounded up to 2 significant digits: a budget to give
        return None, f"LM-only too short: needs ≥ {human(math.ceil(tokens / step) * step)} tokens"
    a = {s: values[s] for s in lm}
    delta = float((np.mean(list(a.values())) / np.mean(list(lm.values())) - 1.0) * 100.0)
    return Matched(delta, *stats.t_delta(a, lm, confidence), _effect(a, lm, confidence)), ""


def _effect(a: dict[int, float], b: dict[int, float], confidence: float) -> Effect:
    if set(a) == set(b) and len(a) >= 2:
        d = [a[s] - b[s] for s in sorted(a)]
        return Effect(float(np.mean(d)), stats.t_half(d, confidence), len(d), True)
    diff = float(np.mean(list(a.values())) - np.mean(list(b.values())))
    return Effect(diff, stats.welch_half(list(a.values()), list(b.values()), confidence), min(len(a), len(b)), False)


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


@dataclass
class Report:
    """A sweep's report: its data, its table and the files written (none for `write=False`)."""

    data: SweepData
    table: Table
    directory: Path | None
    written: list[Path]

    @property
    def main(self) -> Path | None:
        return next((p for p in self.written if p.suffix == ".html"), self.written[0] if self.written else None)


FORMATS = ("md", "csv", "tex", "html")


def report(
    *,
    sweep_file: Path,
    out: Path | None = None,
    tracking_uri: str | None = None,
    metrics: Sequence[str] | None = None,
    primary: str | None = None,
    kinds: Sequence[str] | None = None,
    plots: bool = True,
    write_files: bool = True,
) -> Report:
    """The sweep's table from its MLflow runs — mean ± CI over seeds, Δ% vs LM-only — written in
    every format to `out` (default: the work directory's reports/SWEEP) with its figures."""
    from pdsweep.spec import expand, plan

    kinds = list(kinds or FORMATS)
    bad = [f for f in kinds if f not in FORMATS]
    if bad:
        raise UserError(f"--format: unknown format {bad[0]!r} (md, csv, tex, html)")
    sweep = expand.load_sweep(sweep_file)
    data = load(sweep_file, tracking_uri)
    spec = sweep.report
    table = build_table(
        data.tidy,
        metrics or spec.metrics,
        primary or spec.primary,
        spec.confidence,
        spec.bootstrap,
        title=sweep.name,
        delta_interval=spec.delta_interval,
    )
    if not write_files:
        return Report(data, table, None, [])
    where = out or plan.report_dir(sweep.name)
    return Report(data, table, where, write(data, table, where, kinds, plots))
