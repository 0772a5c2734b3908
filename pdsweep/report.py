"""Reports: a sweep's runs, read back from MLflow, as the paper's tables and figures — with
confidence intervals, because single-seed differences mislead.

Data flow: the sweep file (expand.py gives every run's label, role, seed, axes and LM-only
baseline) joined with its MLflow runs (final metrics, metric histories) → a tidy DataFrame, a row
per run × metric (`frame`) → `build_table`: rows = configurations labelled as the paper does,
columns = eval metrics, their Average (benchmark scores only, as the paper's) and Δ% against each
row's baseline. Seeds are aggregated as mean ± a t-interval; Δ% gets a bootstrap interval over
seeds, paired by seed when a row and its baseline ran the same seeds (same initialisation and batch
order, so the pairing removes most seed noise). The noise floor is the spread among the baseline's
seeds. Renderers: terminal (rich), Markdown, CSV, LaTeX, and a self-contained HTML page with the
plots (`plots.py`-style functions below: Δ vs the swept value with logits bytes/token on a second
axis for truncation sweeps, Δ vs student size per teacher, a metric vs tokens seen, training curves).
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pdsweep import __version__, expand, files, scheduler, settings, tracking
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

    def best_delta(self) -> str | None:
        have = [(r.delta, r.label) for r in self.rows if math.isfinite(r.delta)]
        if not have:
            return None
        return (max if self.primary_higher else min)(have)[1]


def metric_by_key(metrics: Sequence[Metric], key: str) -> Metric:
    return next((m for m in metrics if m.key == key), None) or metric(key)


def t_half(values: Sequence[float], confidence: float) -> float:
    """Half-width of the two-sided t-interval of the mean (nan for fewer than two values)."""
    from scipy import stats

    n = len(values)
    if n < 2:
        return math.nan
    sd = float(np.std(values, ddof=1))
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)


def _welch_half(a: Sequence[float], b: Sequence[float], confidence: float) -> float:
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return math.nan
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return 0.0
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(stats.t.ppf(0.5 + confidence / 2, dof)) * se


def bootstrap_delta(
    row: dict[int, float], base: dict[int, float], confidence: float, n_boot: int, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of Δ% = mean(row)/mean(base) − 1 over seeds resampled with replacement
    (jointly when both ran the same seeds). (nan, nan) when either has one seed."""
    if len(row) < 2 or len(base) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    if set(row) == set(base):
        seeds = sorted(row)
        a = np.array([row[s] for s in seeds])
        b = np.array([base[s] for s in seeds])
        idx = rng.integers(0, len(seeds), (n_boot, len(seeds)))
        ma, mb = a[idx].mean(1), b[idx].mean(1)
    else:
        a, b = np.array(list(row.values())), np.array(list(base.values()))
        ma = a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1)
        mb = b[rng.integers(0, len(b), (n_boot, len(b)))].mean(1)
    d = (ma / mb - 1.0) * 100.0
    lo, hi = np.percentile(d, [50 * (1 - confidence), 100 - 50 * (1 - confidence)])
    return float(lo), float(hi)


def t_delta(row: dict[int, float], base: dict[int, float], confidence: float) -> tuple[float, float]:
    """A t-interval of Δ% = mean(row)/mean(base) − 1: on the per-seed ratios when both ran the same
    seeds, else by the delta method with the smaller side's degrees of freedom (conservative)."""
    from scipy import stats

    point = (np.mean(list(row.values())) / np.mean(list(base.values())) - 1.0) * 100.0
    if set(row) == set(base) and len(row) >= 2:
        half = t_half([(row[s] / base[s] - 1.0) * 100.0 for s in sorted(row)], confidence)
        return float(point - half), float(point + half)
    if len(row) < 2 or len(base) < 2:
        return math.nan, math.nan
    a, b = np.array(list(row.values())), np.array(list(base.values()))
    ratio = a.mean() / b.mean()
    se = ratio * math.sqrt(a.var(ddof=1) / len(a) / a.mean() ** 2 + b.var(ddof=1) / len(b) / b.mean() ** 2) * 100.0
    half = float(stats.t.ppf(0.5 + confidence / 2, min(len(a), len(b)) - 1)) * se
    return float(point - half), float(point + half)


def build_table(
    tidy: pd.DataFrame,
    metrics: Sequence[Metric | str] | None = None,
    primary: str | None = None,
    confidence: float = 0.95,
    n_boot: int = 10_000,
    title: str = "",
    delta_interval: str = "auto",
    min_bootstrap_seeds: int = 8,
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
            cells[key] = Cell(float(np.mean(v)) if v else math.nan, t_half(v, confidence), len(v), v)
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
        boot = delta_interval == "bootstrap" or (
            delta_interval == "auto" and min(len(a), len(b)) >= min_bootstrap_seeds
        )
        row.delta_method = "bootstrap" if boot else "t"
        row.delta_lo, row.delta_hi = bootstrap_delta(a, b, confidence, n_boot) if boot else t_delta(a, b, confidence)
        row.effect = _effect(a, b, confidence)
    return Table(title, chosen, primary, rows, confidence, _noise_floor(rows, primary, chosen), average)


def _effect(a: dict[int, float], b: dict[int, float], confidence: float) -> Effect:
    if set(a) == set(b) and len(a) >= 2:
        d = [a[s] - b[s] for s in sorted(a)]
        return Effect(float(np.mean(d)), t_half(d, confidence), len(d), True)
    diff = float(np.mean(list(a.values())) - np.mean(list(b.values())))
    return Effect(diff, _welch_half(list(a.values()), list(b.values()), confidence), min(len(a), len(b)), False)


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
# Formats
# ----------------------------------------------------------------------------------------------


def _num(value: float, digits: int) -> str:
    return "–" if not math.isfinite(value) else f"{value:.{digits}f}"


def _cell_text(c: Cell | None, digits: int) -> str:
    if c is None or not math.isfinite(c.mean):
        return "–"
    return _num(c.mean, digits) + (f" ± {_num(c.half, digits)}" if math.isfinite(c.half) else "")


def _delta_text(r: Row, arrows: tuple[str, str] = ("↑", "↓"), ci: bool = True) -> str:
    if not math.isfinite(r.delta):
        return "–"
    text = f"{arrows[0] if r.delta >= 0 else arrows[1]} {abs(r.delta):.1f}%"
    if ci and math.isfinite(r.delta_lo):
        text += f" [{r.delta_lo:+.1f}, {r.delta_hi:+.1f}]"
    return text


def _columns(t: Table) -> list[tuple[str, str, int]]:
    """(key, header, digits) of the value columns."""
    cols = [(m.key, m.title, m.digits) for m in t.metrics]
    if t.average:
        cols.append((AVERAGE, "Average", 1))
    return cols


def _delta_header(t: Table) -> str:
    better = "higher" if t.primary_higher else "lower"
    return f"Δ% {t.primary_title}" + ("" if t.primary == AVERAGE else f" ({better} is better)")


def footnotes(t: Table) -> list[str]:
    pct = f"{t.confidence * 100:g}%"
    seeds = sorted({len(r.seeds) for r in t.rows})
    methods = {r.delta_method for r in t.rows if r.delta_method}
    how = {
        "bootstrap": f"a {pct} bootstrap interval over seeds",
        "t": f"a {pct} t-interval (too few seeds for a bootstrap interval to be trusted)",
    }
    interval = " or ".join(how[m] for m in sorted(methods)) or "no interval (one seed)"
    delta = (
        f"Δ% relative to each row's LM-only baseline, with {interval}, paired by seed where both ran the same seeds."
        if any(math.isfinite(r.delta) for r in t.rows)
        else "No Δ%: every row is an LM-only baseline."
    )
    out = [
        f"Seeds per row: {', '.join(map(str, seeds))}. Cells: mean ± {pct} t-interval half-width over seeds; "
        f"{delta} Best in bold.",
        t.noise_floor,
    ]
    for r in t.rows:
        if r.effect is not None and math.isfinite(r.effect.half):
            e = r.effect
            out.append(
                f"{r.label}: {t.primary_title} {e.diff:+.4g} ± {e.half:.2g} vs {r.baseline} "
                f"({'paired' if e.paired else 'Welch'} t, {e.n} seeds) — {e.halfwidths:.1f} CI half-widths from zero."
            )
    return out


def to_markdown(t: Table, header: str = "") -> str:
    cols = _columns(t)
    lines = [header] if header else []
    if t.title:
        lines.append(f"**{t.title}**\n")
    lines.append("| | " + " | ".join(h for _, h, _ in cols) + f" | {_delta_header(t)} |")
    lines.append("|---|" + "---:|" * (len(cols) + 1))
    best = {k: t.best(k) for k, _, _ in cols}
    best_delta = t.best_delta()
    for r in t.rows:
        cells = []
        for key, _, digits in cols:
            text = _cell_text(r.cells.get(key), digits)
            cells.append(f"**{text}**" if best[key] == r.label else text)
        delta = _delta_text(r)
        cells.append(f"**{delta}**" if best_delta == r.label else delta)
        lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {n}" for n in footnotes(t)]
    return "\n".join(lines) + "\n"


def to_frame(t: Table) -> pd.DataFrame:
    """One row per configuration: n_seeds, `<metric>` (mean), `<metric>_ci` (half-width), delta_pct
    and its interval, and the primary effect — the numbers behind every format."""
    import pandas as pd

    recs = []
    for r in t.rows:
        rec: dict[str, Any] = {"label": r.label, "role": r.role, "baseline": r.baseline, "n_seeds": len(r.seeds)}
        for key, _, _ in _columns(t):
            c = r.cells.get(key)
            rec[key] = c.mean if c else math.nan
            rec[f"{key}_ci"] = c.half if c else math.nan
        rec |= {"delta_pct": r.delta, "delta_pct_lo": r.delta_lo, "delta_pct_hi": r.delta_hi}
        e = r.effect
        rec |= {
            "effect": e.diff if e else math.nan,
            "effect_ci": e.half if e else math.nan,
            "effect_halfwidths": e.halfwidths if e else math.nan,
        }
        recs.append(rec)
    return pd.DataFrame.from_records(recs)


def to_csv(t: Table) -> str:
    return to_frame(t).to_csv(index=False, float_format="%.6g")


_LATEX_ESCAPES = {
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
    "\\": r"\textbackslash{}",
}
_LATEX_SYMBOLS = {
    "α": r"$\alpha$",
    "τ": r"$\tau$",
    "β": r"$\beta$",
    "·": r"$\cdot$",
    "±": r"$\pm$",
    "–": "--",
    "Δ": r"$\Delta$",
}


def _tex(text: str) -> str:
    return "".join(_LATEX_SYMBOLS.get(ch, _LATEX_ESCAPES.get(ch, ch)) for ch in text)


def to_latex(t: Table) -> str:
    """A booktabs table (\\usepackage{booktabs})."""
    cols = _columns(t)
    best = {k: t.best(k) for k, _, _ in cols}
    best_delta = t.best_delta()
    out = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{l" + "r" * (len(cols) + 1) + "}",
        r"\toprule",
    ]
    out.append(" & ".join([""] + [_tex(h) for _, h, _ in cols] + [_tex(_delta_header(t))]) + r" \\")
    out.append(r"\midrule")
    for r in t.rows:
        cells = [_tex(r.label)]
        for key, _, digits in cols:
            text = _tex(_cell_text(r.cells.get(key), digits))
            cells.append(rf"\textbf{{{text}}}" if best[key] == r.label else text)
        d = _tex(_delta_text(r, (r"$\uparrow$", r"$\downarrow$"), ci=False)) if math.isfinite(r.delta) else "--"
        cells.append(rf"\textbf{{{d}}}" if best_delta == r.label else d)
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    caption = (t.title + ". " if t.title else "") + " ".join(footnotes(t)[:2])
    out += [rf"\caption{{{_tex(caption)}}}", r"\end{table}"]
    return "\n".join(out) + "\n"


def to_rich(t: Table) -> Any:
    from rich.table import Table as RichTable

    cols = _columns(t)
    best = {k: t.best(k) for k, _, _ in cols}
    best_delta = t.best_delta()
    table = RichTable(title=t.title or None, title_justify="left")
    table.add_column("")
    for _, h, _ in cols:
        table.add_column(h, justify="right")
    table.add_column(_delta_header(t), justify="right")
    for r in t.rows:
        cells = []
        for key, _, digits in cols:
            text = _cell_text(r.cells.get(key), digits)
            cells.append(f"[bold]{text}[/bold]" if best[key] == r.label else text)
        delta = _delta_text(r)
        good = math.isfinite(r.delta) and ((r.delta > 0) == t.primary_higher)
        colour = "green" if good else "red" if math.isfinite(r.delta) else ""
        if colour:
            delta = f"[{colour}]{delta}[/{colour}]"
        cells.append(f"[bold]{delta}[/bold]" if best_delta == r.label else delta)
        table.add_row(r.label, *cells, style="dim" if r.role == "baseline" else None)
    return table


def to_html(t: Table, header: dict[str, str], figures: Sequence[tuple[str, Path]]) -> str:
    """A self-contained page: the table, its notes and the figures (PNG, inlined)."""
    import base64

    cols = _columns(t)
    best = {k: t.best(k) for k, _, _ in cols}
    best_delta = t.best_delta()
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for _, h, _ in cols) + f"<th>{esc(_delta_header(t))}</th>"
    body = []
    for r in t.rows:
        tds = []
        for key, _, digits in cols:
            text = esc(_cell_text(r.cells.get(key), digits))
            tds.append(f"<td><b>{text}</b></td>" if best[key] == r.label else f"<td>{text}</td>")
        good = math.isfinite(r.delta) and ((r.delta > 0) == t.primary_higher)
        cls = "good" if good else "bad" if math.isfinite(r.delta) else ""
        d = esc(_delta_text(r))
        d = f"<b>{d}</b>" if best_delta == r.label else d
        tds.append(f'<td class="{cls}">{d}</td>')
        body.append(f'<tr class="{esc(r.role)}"><th scope="row">{esc(r.label)}</th>{"".join(tds)}</tr>')
    meta = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in header.items())
    notes = "".join(f"<li>{esc(n)}</li>" for n in footnotes(t))
    figs = []
    for caption, png in figures:
        data = base64.b64encode(png.read_bytes()).decode()
        figs.append(
            f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(caption)} ({esc(png.stem)}.png, {esc(png.stem)}.svg)</figcaption></figure>"
        )
    title = esc(header.get("sweep", "pdsweep report"))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} — pdsweep report</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-variant-numeric: tabular-nums; }}
th, td {{ padding: .3em .7em; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }}
th[scope=row] {{ text-align: left; font-weight: normal; }}
thead th {{ border-bottom: 2px solid #444; }}
tr.baseline {{ background: #f4f4f4; }}
td.good {{ color: #17703a; }} td.bad {{ color: #b3261e; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: .1em 1em; color: #555; }}
dt {{ font-weight: 600; }} dd {{ margin: 0; }}
figure {{ display: inline-block; margin: 1em 1em 1em 0; }} img {{ max-width: 560px; }}
figcaption {{ color: #555; font-size: 13px; }}
</style></head>
<body>
<h1>{title}</h1>
<dl>{meta}</dl>
<table id="results"><thead><tr><th></th>{head}</tr></thead>
<tbody>{"".join(body)}</tbody></table>
<ul class="notes">{notes}</ul>
<h2>Figures</h2>
{"".join(figs) or "<p>No figures (no run history to plot).</p>"}
</body></html>
"""


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


def _save(fig: Any, out: Path, stem: str) -> Path:
    import io

    import matplotlib.pyplot as plt

    for ext in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=110, bbox_inches="tight", metadata={"Date": None} if ext == "svg" else None)
        files.write_bytes(out / f"{stem}.{ext}", buf.getvalue())
    plt.close(fig)
    return out / f"{stem}.png"


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def delta_axes(data: SweepData, t: Table) -> list[tuple[str, list[str]]]:
    """(axis, labels) for each numeric axis of the sweep along which ≥ 2 configurations differ with
    every other axis at its most common value (the paper's Figures 2–3: Δ vs p at k = 100, Δ vs k
    at p = 0.95, from one truncation sweep)."""
    import pandas as pd

    students = data.tidy[data.tidy["role"] == "student"].drop_duplicates("label")
    axes = [c for c in students.columns if "." in c and students[c].notna().any()]
    delta = {r.label for r in t.rows if math.isfinite(r.delta)}
    out = []
    for axis in axes:
        if not _numeric(list(students[axis].dropna())):
            continue
        sub = students
        for other in axes:
            if other != axis and sub[other].notna().any():
                mode = sub[other].mode(dropna=True)
                if len(mode):
                    sub = sub[sub[other] == mode.iloc[0]]
        labels = [lab for lab in sub.sort_values(axis)["label"] if lab in delta]
        if pd.Series(sub[axis]).nunique() >= 2 and len(labels) >= 2:
            out.append((axis, labels))
    return out


def _bytes_per_token(data: SweepData, labels: Sequence[str], axis_p: str, axis_k: str) -> dict[str, float]:
    """Logits bytes per token at each labelled row's (p, k), from the sweep's stored teacher pass."""
    from pdsweep import logits_store

    tasks = {t.key: t for t in scheduler.build(data.name, data.planned)}
    out: dict[str, float] = {}
    for r in data.planned:
        if r.label in labels and r.label not in out and r.run_id in tasks:
            store = tasks[r.run_id].logits
            if store is None or not (store / "manifest.json").exists():
                continue
            reader = logits_store.StoreReader(store)
            p, k = r.spec.logits.top_p, r.spec.logits.top_k
            out[r.label] = logits_store.stats(reader, [p], [k])[0]["bytes_per_token"]
    return out


def figures(data: SweepData, t: Table, out: Path) -> list[tuple[str, Path]]:
    """The figures a sweep supports, as PNG and SVG in `out`; (caption, PNG path) each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "pdsweep", "font.size": 10})
    made: list[tuple[str, Path]] = []
    rows = {r.label: r for r in t.rows}
    noise = _noise_band(t)
    students = data.tidy[data.tidy["role"] == "student"].drop_duplicates("label").set_index("label")
    for axis, labels in delta_axes(data, t):
        x = [float(students.loc[lab, axis]) for lab in labels]
        y = [rows[lab].delta for lab in labels]
        err = _errs([rows[lab] for lab in labels])
        fig, ax = plt.subplots(figsize=(5.6, 3.6))
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color="C0", label=f"Δ% {t.primary_title}")
        ax.axhline(0, color="k", lw=0.8)
        if noise:
            ax.axhspan(-noise, noise, color="0.85", zorder=0, label="baseline seed spread")
        ax.set_xlabel(axis)
        ax.set_ylabel(f"Δ% {t.primary_title} vs LM-only")
        if axis.endswith("top_k") or (min(x) > 0 and max(x) / min(x) >= 20):
            ax.set_xscale("log")
        if axis in ("logits.top_p", "logits.top_k"):
            other = "logits.top_k" if axis == "logits.top_p" else "logits.top_p"
            bpt = _bytes_per_token(data, labels, axis, other)
            if bpt:
                ax2 = ax.twinx()
                xs = [float(students.loc[lab, axis]) for lab in labels if lab in bpt]
                ax2.plot(xs, [bpt[lab] for lab in labels if lab in bpt], "s--", color="C1", label="logits bytes/token")
                ax2.set_ylabel("logits bytes per token", color="C1")
        ax.legend(loc="best", fontsize=8)
        ax.set_title(f"{data.name}: Δ vs {axis}")
        stem = "delta_vs_" + axis.replace(".", "_")
        made.append((f"Δ% of {t.primary_title} vs {axis}", _save(fig, out, stem)))
    size = _delta_vs_size(data, t, out)
    if size:
        made.append(size)
    made += _histories(data, t, out)
    return made


def _noise_band(t: Table) -> float:
    """Half the widest baseline seed range, in %: the band drawn around Δ = 0."""
    return max((spread / 2 for spread, *_ in baseline_spreads(t.rows, t.primary)), default=0.0)


def _errs(rows: Sequence[Row]) -> Any:
    lo = [r.delta - r.delta_lo if math.isfinite(r.delta_lo) else 0.0 for r in rows]
    hi = [r.delta_hi - r.delta if math.isfinite(r.delta_hi) else 0.0 for r in rows]
    return np.array([lo, hi])


def _delta_vs_size(data: SweepData, t: Table, out: Path) -> tuple[str, Path] | None:
    """Δ vs student parameters, one line per teacher (Figure 4), when the sweep varies the student."""
    import matplotlib.pyplot as plt

    students = data.tidy[data.tidy["role"] == "student"].drop_duplicates("label")
    if not any(c.startswith("student") for c in students.columns) or students["params"].nunique() < 2:
        return None
    rows = {r.label: r for r in t.rows}
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for i, (teacher, grp) in enumerate(students.groupby("teacher", dropna=False, sort=True)):
        grp = grp[grp["label"].map(lambda lab: math.isfinite(rows[lab].delta))].sort_values("params")
        if grp.empty:
            continue
        rs = [rows[lab] for lab in grp["label"]]
        ax.errorbar(
            grp["params"],
            [r.delta for r in rs],
            yerr=_errs(rs),
            marker="o",
            capsize=3,
            color=f"C{i}",
            label=str(teacher),
        )
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("student parameters")
    ax.set_ylabel(f"Δ% {t.primary_title} vs LM-only")
    ax.legend(title="teacher", fontsize=8)
    ax.set_title(f"{data.name}: Δ vs student size")
    return f"Δ% of {t.primary_title} vs student size, per teacher", _save(fig, out, "delta_vs_size")


def _histories(data: SweepData, t: Table, out: Path) -> list[tuple[str, Path]]:
    """The primary held-out metric vs tokens seen (Figure 5) and training loss curves, each the mean
    over a configuration's seeds."""
    import matplotlib.pyplot as plt

    eval_key = "heldout/loss" if t.primary == AVERAGE or "/" not in t.primary else t.primary
    m = metric_by_key(t.metrics, eval_key)
    runs = data.tidy.drop_duplicates("run_id")
    curves: dict[str, dict[str, list[dict[int, float]]]] = {"eval": {}, "train": {}}
    tokens_per_step: dict[str, int] = {}
    by_id = {r.run_id: r for r in data.planned}
    for rec in runs.itertuples(index=False):
        tr = data.tracked[rec.run_id]
        spec = by_id[rec.run_id].spec
        tokens_per_step[rec.label] = spec.train.global_batch * spec.data.seq_len
        for kind, key in (("eval", f"eval/{eval_key}"), ("train", "loss")):
            hist = dict(tracking.metric_history(data.uri, tr.mlflow_run_id, key))
            if hist:
                curves[kind].setdefault(rec.label, []).append(hist)
    made = []
    for kind, ylabel, stem in (
        ("eval", f"{m.title}", "metric_vs_tokens"),
        ("train", "training loss", "training_curves"),
    ):
        if not curves[kind]:
            continue
        fig, ax = plt.subplots(figsize=(5.6, 3.6))
        for i, (label, hists) in enumerate(curves[kind].items()):
            steps = sorted(set.intersection(*(set(h) for h in hists)))
            if not steps:
                continue
            mean = [np.mean([h[s] * m.scale if kind == "eval" else h[s] for h in hists]) for s in steps]
            x = [s * tokens_per_step[label] for s in steps] if kind == "eval" else steps
            style = "--" if rows_role(t, label) == "baseline" else "-"
            ax.plot(
                x,
                mean,
                style,
                color=f"C{i % 10}",
                label=label,
                marker="o" if kind == "eval" and len(x) < 30 else None,
                ms=3,
            )
        ax.set_xlabel("tokens seen" if kind == "eval" else "optimizer step")
        ax.set_ylabel(ylabel)
        if kind == "train":
            ax.set_yscale("log")
        ax.legend(fontsize=7, ncol=1 + len(curves[kind]) // 8)
        ax.set_title(f"{data.name}: {ylabel} vs {'tokens seen' if kind == 'eval' else 'step'} (mean over seeds)")
        caption = f"{m.title} vs tokens seen" if kind == "eval" else "training loss (mean over seeds)"
        made.append((caption, _save(fig, out, stem)))
    return made


def rows_role(t: Table, label: str) -> str:
    return next((r.role for r in t.rows if r.label == label), "")


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
        "tracking": data.uri,
        "machine": settings.machine(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "pdsweep": __version__,
        "data sha256": files.sha256_bytes(data.tidy.to_csv(index=False).encode())[:16],
    }


def write(
    data: SweepData, t: Table, out: Path, formats: Sequence[str] = ("md", "csv", "tex", "html"), plots: bool = True
) -> list[Path]:
    """The report in `out`: report.md/.csv/.tex/.html, runs.csv (the tidy data), the figures
    (PNG + SVG). Each file is written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    head = header(data, t)
    written: list[Path] = []
    figs = figures(data, t, out) if plots and ("html" in formats or "png" in formats) else []
    written += [p for _, p in figs] + [p.with_suffix(".svg") for _, p in figs]
    meta_md = "\n".join(f"- {k}: {v}" for k, v in head.items() if v)
    text = {
        "md": lambda: (
            to_markdown(t, f"# {data.name}\n\n{meta_md}\n") + "".join(f"\n![{c}]({p.name})\n" for c, p in figs)
        ),
        "csv": lambda: to_csv(t),
        "tex": lambda: to_latex(t),
        "html": lambda: to_html(t, head, figs),
    }
    for fmt in formats:
        if fmt in text:
            path = out / f"report.{fmt}"
            files.write_text(path, text[fmt]())
            written.append(path)
    runs_csv = out / "runs.csv"
    files.write_text(runs_csv, data.tidy.to_csv(index=False, float_format="%.6g"))
    written.append(runs_csv)
    return written
