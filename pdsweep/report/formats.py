"""A report's table in the formats researchers paste it into: Markdown, CSV (and the DataFrame behind
it), LaTeX (booktabs), the terminal (rich) and a self-contained HTML page with the figures inlined.
Every format shows the same numbers: mean ± CI half-width per cell, Δ% with its interval, best in
bold, and the footnotes that say how the intervals were made and where the noise floor lies."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pdsweep.report.table import RESOLVED, Cell, Matched, Row, Table

if TYPE_CHECKING:
    import pandas as pd


def _num(value: float, digits: int) -> str:
    return "–" if not math.isfinite(value) else f"{value:.{digits}f}"


def _cell_text(c: Cell | None, digits: int) -> str:
    if c is None or not math.isfinite(c.mean):
        return "–"
    return _num(c.mean, digits) + (f" ± {_num(c.half, digits)}" if math.isfinite(c.half) else "")


NOT_RESOLVED = "not resolved"


def _delta_text(r: Row, arrows: tuple[str, str] = ("↑", "↓"), ci: bool = True) -> str:
    return _pct(r.delta, r.delta_lo, r.delta_hi, r.resolved, arrows, ci)


def _matched_cell(m: Matched | None, note: str, arrows: tuple[str, str] = ("↑", "↓"), ci: bool = True) -> str:
    """A compute-matched Δ% cell: the Δ with its interval, or why there is none."""
    if m is None:
        return note or "–"
    return _pct(m.delta, m.lo, m.hi, m.resolved, arrows, ci)


def _pct(delta: float, lo: float, hi: float, resolved: bool | None, arrows: tuple[str, str], ci: bool) -> str:
    if not math.isfinite(delta):
        return "–"
    text = f"{arrows[0] if delta >= 0 else arrows[1]} {abs(delta):.1f}%"
    if ci and math.isfinite(lo):
        text += f" [{lo:+.1f}, {hi:+.1f}]"
    return text + (f" ({NOT_RESOLVED})" if resolved is False else "")


def _flops(x: float) -> str:
    if not math.isfinite(x):
        return "–"
    mantissa, exponent = f"{x:.2g}".partition("e")[::2] if x else ("0", "")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def _extra(t: Table, compact: bool = False) -> list[tuple[str, Callable[..., str]]]:
    """The columns after Δ%: the compute-matched Δ% and the compute of each row, when recorded
    (`compact`, for a terminal: the compute-matched Δ% and the total compute only)."""
    rows = t.rows
    cols: list[tuple[str, Callable[..., str]]] = []
    if any(r.matched is not None or r.matched_note for r in rows):
        cols.append(("Δ% at equal compute", lambda r, *a, **k: _matched_cell(r.matched, r.matched_note, *a, **k)))
    if any(math.isfinite(r.flops) for r in rows):
        if not compact:
            cols.append(("student FLOPs", lambda r, *a, **k: _flops(r.flops)))
        cols.append(("+ teacher pass" if not compact else "FLOPs", lambda r, *a, **k: _flops(r.total_flops)))
    if compact:
        return cols
    if any(math.isfinite(r.teacher_flops) for r in rows):
        cols.append(("+ teacher training", lambda r, *a, **k: _flops(r.total_flops + r.teacher_flops)))
    if any(r.matched_teacher is not None or r.matched_teacher_note for r in rows):
        cols.append(
            (
                "Δ% at equal compute + teacher training",
                lambda r, *a, **k: _matched_cell(r.matched_teacher, r.matched_teacher_note, *a, **k),
            )
        )
    return cols


def _delta_header(t: Table) -> str:
    better = "higher" if t.primary_higher else "lower"
    return f"Δ% {t.primary_title}" + ("" if t.primary_is_average else f" ({better} is better)")


def footnotes(t: Table) -> list[str]:
    pct = f"{t.confidence * 100:g}%"
    seeds = sorted({len(r.seeds) for r in t.rows})
    methods = {r.delta_method for r in t.rows if r.delta_method}
    how = {
        "bootstrap": f"a {pct} BCa bootstrap interval over seeds",
        "t": f"a {pct} t-interval",
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
    matched = [m for r in t.rows for m in (r.matched, r.matched_teacher) if m is not None]
    if any(r.resolved is False for r in t.rows) or any(m.resolved is False for m in matched):
        out.append(
            f"A Δ under {RESOLVED:g} CI half-widths from zero is marked {NOT_RESOLVED}: "
            "the seeds cannot tell it from no effect."
        )
    if any(math.isfinite(r.flops) for r in t.rows):
        out.append(
            "Compute: FLOPs of the student's training (forward and backward, attention included), mean over seeds; "
            "+ teacher pass adds its share of the teacher pass (the teacher's forward FLOPs over the positions it "
            "read; 0 for logits recorded while the teacher trained)"
            + (
                "; + teacher training also the training of the teacher the sweep trained (once for all its students)."
                if any(math.isfinite(r.teacher_flops) for r in t.rows)
                else "."
            )
        )
    if any(r.matched is not None or r.matched_note for r in t.rows):
        out.append(
            f"Δ% at equal compute: {t.primary_title} against LM-only at the row's compute with the teacher pass, "
            "interpolated in log FLOPs between LM-only runs of several token budgets (each a complete run; "
            "the sweep's baseline_tokens), paired by seed"
            + (
                "; + teacher training: with the teacher's training counted too."
                if any(r.matched_teacher is not None or r.matched_teacher_note for r in t.rows)
                else "."
            )
        )
    for r in t.rows:
        if r.effect is not None and math.isfinite(r.effect.half):
            e = r.effect
            out.append(
                f"{r.label}: {t.primary_title} {e.diff:+.4g} ± {e.half:.2g} vs {r.baseline} "
                f"({'paired' if e.paired else 'Welch'} t, {e.n} seeds) — {e.halfwidths:.1f} CI half-widths from zero"
                + (
                    f"; at equal compute {r.matched.effect.diff:+.4g} ± {r.matched.effect.half:.2g} "
                    f"({r.matched.effect.halfwidths:.1f} half-widths)."
                    if r.matched is not None and math.isfinite(r.matched.effect.half)
                    else "."
                )
            )
    return out


def to_markdown(t: Table, header: str = "") -> str:
    cols = t.columns()
    lines = [header] if header else []
    if t.title:
        lines.append(f"**{t.title}**\n")
    extra = _extra(t)
    lines.append("| | " + " | ".join([h for _, h, _ in cols] + [_delta_header(t)] + [h for h, _ in extra]) + " |")
    lines.append("|---|" + "---:|" * (len(cols) + 1 + len(extra)))
    best = {k: t.best(k) for k, _, _ in cols}
    best_delta = t.best_delta()
    for r in t.rows:
        cells = []
        for key, _, digits in cols:
            text = _cell_text(r.cells.get(key), digits)
            cells.append(f"**{text}**" if best[key] == r.label else text)
        delta = _delta_text(r)
        cells.append(f"**{delta}**" if best_delta == r.label else delta)
        cells += [fn(r) for _, fn in extra]
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
        for key, _, _ in t.columns():
            c = r.cells.get(key)
            rec[key] = c.mean if c else math.nan
            rec[f"{key}_ci"] = c.half if c else math.nan
        rec |= {"delta_pct": r.delta, "delta_pct_lo": r.delta_lo, "delta_pct_hi": r.delta_hi}
        e = r.effect
        rec |= {
            "effect": e.diff if e else math.nan,
            "effect_ci": e.half if e else math.nan,
            "effect_halfwidths": e.halfwidths if e else math.nan,
            "resolved": r.resolved,
            "flops": r.flops,
            "pass_flops": r.pass_flops,
            "total_flops": r.total_flops,
            "teacher_flops": r.teacher_flops,
        }
        rec |= _matched_columns("matched", r.matched, r.matched_note)
        rec |= _matched_columns("matched_teacher", r.matched_teacher, r.matched_teacher_note)
        recs.append(rec)
    return pd.DataFrame.from_records(recs)


def _matched_columns(prefix: str, m: Matched | None, note: str) -> dict[str, Any]:
    e = m.effect if m else None
    return {
        f"{prefix}_delta_pct": m.delta if m else math.nan,
        f"{prefix}_delta_pct_lo": m.lo if m else math.nan,
        f"{prefix}_delta_pct_hi": m.hi if m else math.nan,
        f"{prefix}_effect": e.diff if e else math.nan,
        f"{prefix}_effect_ci": e.half if e else math.nan,
        f"{prefix}_effect_halfwidths": e.halfwidths if e else math.nan,
        f"{prefix}_resolved": m.resolved if m else None,
        f"{prefix}_note": note,
    }


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
    "≥": r"$\geq$",
    "×": r"$\times$",
}


def _tex(text: str) -> str:
    return "".join(_LATEX_SYMBOLS.get(ch, _LATEX_ESCAPES.get(ch, ch)) for ch in text)


def to_latex(t: Table) -> str:
    """A booktabs table (\\usepackage{booktabs})."""
    cols = t.columns()
    extra = _extra(t)
    best = {k: t.best(k) for k, _, _ in cols}
    best_delta = t.best_delta()
    out = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{l" + "r" * (len(cols) + 1 + len(extra)) + "}",
        r"\toprule",
    ]
    out.append(
        " & ".join([""] + [_tex(h) for _, h, _ in cols] + [_tex(_delta_header(t))] + [_tex(h) for h, _ in extra])
        + r" \\"
    )
    out.append(r"\midrule")
    for r in t.rows:
        cells = [_tex(r.label)]
        for key, _, digits in cols:
            text = _tex(_cell_text(r.cells.get(key), digits))
            cells.append(rf"\textbf{{{text}}}" if best[key] == r.label else text)
        d = _tex(_delta_text(r, (r"$\uparrow$", r"$\downarrow$"), ci=False)) if math.isfinite(r.delta) else "--"
        cells.append(rf"\textbf{{{d}}}" if best_delta == r.label else d)
        cells += [_tex(fn(r, (r"$\uparrow$", r"$\downarrow$"), ci=False)) for _, fn in extra]
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    caption = (t.title + ". " if t.title else "") + " ".join(footnotes(t)[:2])
    out += [rf"\caption{{{_tex(caption)}}}", r"\end{table}"]
    return "\n".join(out) + "\n"


def to_rich(t: Table) -> Any:
    from rich.table import Table as RichTable

    cols = t.columns()
    best = {k: t.best(k) for k, _, _ in cols}
    best_delta = t.best_delta()
    table = RichTable(title=t.title or None, title_justify="left")
    table.add_column("")
    for _, h, _ in cols:
        table.add_column(h, justify="right")
    table.add_column(_delta_header(t), justify="right", no_wrap=True)
    extra = _extra(t, compact=True)  # the other cost columns are in report.md/.csv/.html
    for h, _ in extra:
        table.add_column(h, justify="right")
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
        cells += [fn(r) for _, fn in extra]
        table.add_row(r.label, *cells, style="dim" if r.role == "baseline" else None)
    return table


def to_html(t: Table, header: dict[str, str], figures: Sequence[tuple[str, Path]]) -> str:
    """A self-contained page: the table, its notes and the figures (PNG, inlined)."""
    import base64

    cols = t.columns()
    best = {k: t.best(k) for k, _, _ in cols}
    best_delta = t.best_delta()
    esc = html.escape
    extra = _extra(t)
    head = "".join(f"<th>{esc(h)}</th>" for _, h, _ in cols) + f"<th>{esc(_delta_header(t))}</th>"
    head += "".join(f"<th>{esc(h)}</th>" for h, _ in extra)
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
        tds += [f"<td>{esc(fn(r))}</td>" for _, fn in extra]
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
