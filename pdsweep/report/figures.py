"""A report's figures, as PNG and SVG: Δ% vs each numeric swept axis with the other axes at their
most common value (so one truncation sweep gives the paper's Figure 2, Δ vs p, and Figure 3, Δ vs k),
with the logits bytes per token of the sweep's own store on a second axis for top_p / top_k; Δ% vs
student size, a line per teacher (Figure 4) or per configuration (vanilla PD and PD*, Figure 1); the
primary held-out metric vs tokens seen (Figure 5); the primary metric vs compute, teacher included;
training loss curves. Each curve is a configuration's mean over seeds, with its interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pdsweep import files
from pdsweep.run import tracking
from pdsweep.spec import plan

if TYPE_CHECKING:
    from pdsweep.report.table import Row, SweepData, Table


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
    from pdsweep.logits import store as logits_store

    stores = plan.stores(data.name, data.planned)
    out: dict[str, float] = {}
    for r in data.planned:
        if r.label in labels and r.label not in out and r.run_id in stores:
            store = stores[r.run_id].path
            if not logits_store.is_store(store):
                continue
            reader = logits_store.StoreReader(store)
            p, k = r.spec.logits.top_p, r.spec.logits.top_k
            out[r.label] = logits_store.stats(reader, [p], [k])[0]["bytes_per_token"]
    return out


def draw(data: SweepData, t: Table, out: Path) -> list[tuple[str, Path]]:
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
    for figure in (_delta_vs_size, _vs_compute):
        if (drawn := figure(data, t, out)) is not None:
            made.append(drawn)
    made += _histories(data, t, out)
    return made


def _noise_band(t: Table) -> float:
    """Half the widest baseline seed range, in %: the band drawn around Δ = 0."""
    return max((spread / 2 for spread, *_ in t.baseline_spreads()), default=0.0)


def _errs(rows: Sequence[Row]) -> Any:
    lo = [r.delta - r.delta_lo if math.isfinite(r.delta_lo) else 0.0 for r in rows]
    hi = [r.delta_hi - r.delta if math.isfinite(r.delta_hi) else 0.0 for r in rows]
    return np.array([lo, hi])


def _delta_vs_size(data: SweepData, t: Table, out: Path) -> tuple[str, Path] | None:
    """Δ vs student parameters when the sweep varies the student: one line per everything else the
    students differ in — per teacher (Figure 4), per configuration (vanilla PD vs PD*, Figure 1)."""
    import matplotlib.pyplot as plt

    students = data.tidy[data.tidy["role"] == "student"].drop_duplicates("label")
    if not any(c.startswith("student") for c in students.columns) or students["params"].nunique() < 2:
        return None
    rows = {r.label: r for r in t.rows}
    per_teacher, lines = size_lines(students)
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for i, (name, grp) in enumerate(lines):
        grp = grp[grp["label"].map(lambda lab: math.isfinite(rows[lab].delta))]
        if grp.empty:
            continue
        rs = [rows[lab] for lab in grp["label"]]
        ax.errorbar(
            grp["params"], [r.delta for r in rs], yerr=_errs(rs), marker="o", capsize=3, color=f"C{i}", label=name
        )
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("student parameters")
    ax.set_ylabel(f"Δ% {t.primary_title} vs LM-only")
    ax.legend(title="teacher" if per_teacher else None, fontsize=8)
    ax.set_title(f"{data.name}: Δ vs student size")
    what = ", per teacher" if per_teacher else ", a line per configuration" if len(lines) > 1 else ""
    return f"Δ% of {t.primary_title} vs student size{what}", _save(fig, out, "delta_vs_size")


def size_lines(students: Any) -> tuple[bool, list[tuple[str, Any]]]:
    """The lines of Δ vs student size: students (one row per label) grouped by every design column
    they differ in besides the student's own, each line sorted by size; True when that is the teacher
    alone (Figure 4's legend)."""
    design = [c for c in students.columns if c == "teacher" or ("." in c and not c.startswith("student."))]
    keys = [c for c in design if students[c].astype(str).nunique() > 1]
    groups = students.groupby(keys, dropna=False, sort=True) if keys else [((), students)]
    lines = [(_series_name(grp, key), grp.sort_values("params")) for key, grp in groups]
    return keys == ["teacher"], lines


def _series_name(grp: Any, key: Any) -> str:
    """What a line's runs share: their labels without the student's preset ("vanilla PD + tiny-xs" and
    "vanilla PD + tiny-s" → "vanilla PD"), else the values that tell the lines apart."""
    presets = [str(p) for p in grp["student.preset"]] if "student.preset" in grp else []
    names = set()
    for label, preset in zip(grp["label"], presets or [""] * len(grp), strict=True):
        parts = [p for p in str(label).split(" + ") if p != preset]
        names.add(" + ".join(parts))
    if len(names) == 1 and (name := names.pop()):
        return name
    return ", ".join(str(k) for k in (key if isinstance(key, tuple) else (key,))) or "PD"


def _vs_compute(data: SweepData, t: Table, out: Path) -> tuple[str, Path] | None:
    """The primary metric of every row vs its compute: LM-only rows as a line through their token
    budgets, each PD row at its total compute (student + its share of the teacher pass) with a line
    back to its student-only compute, and a hollow marker where the teacher's training adds in."""
    import matplotlib.pyplot as plt

    rows = [r for r in t.rows if math.isfinite(r.total_flops) and math.isfinite(r.cells[t.primary].mean)]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    curve_of = dict(zip(data.tidy["label"], data.tidy["curve"], strict=True)) if "curve" in data.tidy else {}
    groups: dict[str, list[Row]] = {}
    for r in rows:
        if r.role == "baseline":
            groups.setdefault(curve_of.get(r.label, ""), []).append(r)
    for j, group in enumerate(groups.values()):
        base = sorted(group, key=lambda r: r.flops)
        ax.errorbar(
            [r.flops for r in base],
            [r.cells[t.primary].mean for r in base],
            yerr=[_half(r, t.primary) for r in base],
            fmt="s--",
            color=str(0.45 * j / max(1, len(groups) - 1)),
            capsize=3,
            label=base[0].label if len(groups) > 1 else "LM-only",
        )
    pd_colours = [f"C{c}" for c in range(10) if c != 7]  # C7 is grey: LM-only's
    for i, r in enumerate(r for r in rows if r.role != "baseline"):
        y, colour = r.cells[t.primary].mean, pd_colours[i % len(pd_colours)]
        ax.plot([r.flops, r.total_flops], [y, y], ":", color=colour, lw=1)
        ax.errorbar([r.total_flops], [y], yerr=[_half(r, t.primary)], fmt="o", color=colour, capsize=3, label=r.label)
        if math.isfinite(r.teacher_flops):
            ax.plot([r.total_flops + r.teacher_flops], [y], "o", mfc="none", color=colour)
    ax.set_xscale("log")
    ax.set_xlabel(
        "compute (FLOPs): student + its share of the teacher pass"
        + ("; hollow: + teacher training" if any(math.isfinite(r.teacher_flops) for r in rows) else "")
    )
    ax.set_ylabel(t.primary_title)
    if len(rows) > 6:  # beside the axes: inside, it would hide the points
        ax.legend(fontsize=7, ncol=1 + len(rows) // 16, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=7)
    ax.set_title(f"{data.name}: {t.primary_title} vs compute (mean ± CI over seeds)")
    return f"{t.primary_title} vs compute", _save(fig, out, "metric_vs_compute")


def _half(r: Row, key: str) -> float:
    h = r.cells[key].half
    return h if math.isfinite(h) else 0.0


def _histories(data: SweepData, t: Table, out: Path) -> list[tuple[str, Path]]:
    """The primary held-out metric vs tokens seen (Figure 5) and training loss curves, each the mean
    over a configuration's seeds."""
    import matplotlib.pyplot as plt

    eval_key = "heldout/loss" if t.primary_is_average or "/" not in t.primary else t.primary
    m = t.metric(eval_key)
    runs = data.tidy.drop_duplicates("run_id")
    curves: dict[str, dict[str, list[dict[int, float]]]] = {"eval": {}, "train": {}}
    tokens_per_step: dict[str, int] = {}
    by_id = {r.run_id: r for r in data.planned}
    for rec in runs.itertuples(index=False):
        tr = data.tracked[rec.run_id]
        spec = by_id[rec.run_id].spec
        tokens_per_step[rec.label] = spec.train.global_batch * spec.data.seq_len
        for kind, key in (("eval", f"curve/{eval_key}"), ("train", "loss")):  # one evaluation set per curve
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
            style = "--" if t.role(label) == "baseline" else "-"
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
