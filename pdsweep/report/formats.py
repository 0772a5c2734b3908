"""A report's table in the formats researchers paste it into: Markdown, CSV (and the DataFrame behind
it), LaTeX (booktabs), the terminal (rich) and a self-contained HTML page with the figures inlined.
Every format shows the same numbers: mean ± CI half-width per cell, Δ% with its interval, best in
bold, and the footnotes that say how the intervals were made and where the noise floor lies."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from pdsweep.report.table import Cell, Row, Table


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
    for r in t.rows:
        if r.effect is not None and math.isfinite(r.effect.half):
            e = r.effect
            out.append(
                f"{r.label}: {t.primary_title} {e.diff:+.4g} ± {e.half:.2g} vs {r.baseline} "
                f"({'paired' if e.paired else 'Welch'} t, {e.n} seeds) — {e.halfwidths:.1f} CI half-widths from zero."
            )
    return out


def to_markdown(t: Table, header: str = "") -> str:
    cols = t.columns()
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
    cols = t.columns()
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

    cols = t.columns()
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

    cols = t.columns()
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
