"""The table builder against the paper: its own per-benchmark scores (Tables 1, 5, 8, 9, 10, 11 of
tests/data/paper_tables.txt, the paper's tables as extracted from its PDF, mis-decoded arrows and
all) go in, and the averages and Δ% it printed come out, within 0.15 points (the paper computed them
from unrounded scores; we only have the rounded ones)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from pdsweep.report import build
from pdsweep.report.table import AVERAGE, Metric, Table

DUMP = Path(__file__).resolve().parent / "data" / "paper_tables.txt"
BENCHMARKS = ["HellaSwag", "WinoGrande", "PIQA", "MMLU", "KBQA", "C3", "C-Eval", "GSM8k"]
METRICS = [Metric(b, b, True, 1.0, 1, score=True) for b in BENCHMARKS]
TOL = 0.15
UNREACHABLE = (10, "0.1")
"""The paper's Δ% for α = 0.1 (Table 4) is off by 0.23 from what its rounded Table 10 scores give."""


class _Tables(HTMLParser):
    """Every <table> of the dump as a list of rows of cell texts, keyed by the caption's table number."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[int, list[list[str]]] = {}
        self._caption: int | None = None
        self._rows: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._rows = []
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag == "td" and self._rows is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._rows is not None:
            self._rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table" and self._rows is not None:
            # Table 2 (Δ% per τ) sits under a repeated "Table 1" caption in the dump: know it by its header.
            key = 2 if self._rows and self._rows[0][:1] == ["T"] else self._caption
            if key is not None and key not in self.tables:
                self.tables[key] = self._rows
            self._rows = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        for m in re.finditer(r'table-caption caption=".*?Table (\d+):', data):
            self._caption = int(m.group(1))


@pytest.fixture(scope="module")
def tables() -> dict[int, list[list[str]]]:
    parser = _Tables()
    parser.feed(DUMP.read_text(encoding="utf-8"))
    return parser.tables


def _signed(text: str) -> float:
    """'â†‘ 2.6%' (↑ 2.6% through a mis-decoded dump) → 2.6; '↓ 7.6%' → -7.6; '-0.1' → -0.1."""
    value = float(re.search(r"-?\d+(\.\d+)?", text).group())  # type: ignore[union-attr]
    return -value if ("â†“" in text or "↓" in text) else value


def _scores(rows: list[list[str]]) -> dict[str, list[float]]:
    """Label → the eight benchmark scores, for the rows that have them."""
    header = rows[0]
    assert header[1 : 1 + len(BENCHMARKS)] == BENCHMARKS, header
    return {r[0]: [float(x) for x in r[1:9]] for r in rows[1:] if len(r) >= 9 and r[0]}


def _tidy(rows: dict[str, list[float]], baseline: str, base_scores: list[float] | None = None) -> pd.DataFrame:
    recs = []
    all_rows = {baseline: base_scores, **rows} if base_scores is not None else rows
    for label, scores in all_rows.items():
        role = "baseline" if label == baseline else "student"
        for bench, value in zip(BENCHMARKS, scores, strict=True):  # type: ignore[arg-type]
            recs.append(
                {"label": label, "role": role, "seed": 0, "baseline": baseline, "metric": bench, "value": value}
            )
    return pd.DataFrame.from_records(recs)


def _printed_averages(rows: list[list[str]]) -> dict[str, float]:
    return {r[0]: float(r[9]) for r in rows[1:] if len(r) >= 10 and r[0]}


def _check_averages(table: Table, printed: dict[str, float]) -> None:
    ours = {r.label: r.cells[AVERAGE].mean for r in table.rows}
    for label, avg in printed.items():
        assert abs(ours[label] - avg) <= TOL, (label, ours[label], avg)


def _baseline(tables: dict[int, list[list[str]]]) -> list[float]:
    return _scores(tables[1])["LLM-LM"]


def test_the_dump_has_the_tables_the_test_reads(tables) -> None:
    for n in (1, 2, 4, 5, 8, 9, 10, 11):
        assert n in tables, sorted(tables)
    assert len(_scores(tables[8])) == 13 and len(_scores(tables[10])) == 9 and len(_scores(tables[9])) == 8


def test_table_1_and_5_averages_and_deltas(tables) -> None:
    base = _baseline(tables)
    t1 = build.build_table(_tidy({"LLM-KD": _scores(tables[1])["LLM-KD"]}, "LLM-LM", base), METRICS)
    assert t1.primary == AVERAGE
    kd = next(r for r in t1.rows if r.label == "LLM-KD")
    assert abs(kd.delta - _signed(tables[1][3][9])) <= TOL  # ↑ 1.6%
    _check_averages(t1, _printed_averages(tables[1]))

    rows5 = tables[5]
    t5 = build.build_table(_tidy(_scores(rows5), "LLM-LM", base), METRICS)
    _check_averages(t5, _printed_averages(rows5))
    printed_delta = {r[0]: _signed(r[10]) for r in rows5[1:]}
    ours = {r.label: r.delta for r in t5.rows}
    assert len(printed_delta) == 11
    for label, delta in printed_delta.items():
        assert abs(ours[label] - delta) <= TOL, (label, ours[label], delta)
    # The paper's best row is the best Δ here too, and MSE the only loss that hurts.
    assert t5.best_delta() == "WSD-ï¿½+ WSD-LR" and ours["LLM-MSE"] < 0


def test_table_8_truncation_averages(tables) -> None:
    t8 = build.build_table(_tidy(_scores(tables[8]), "LLM-LM", _baseline(tables)), METRICS)
    _check_averages(t8, _printed_averages(tables[8]))
    assert t8.best(AVERAGE) == "top-0.95-50"  # the paper's choice for PD*


@pytest.mark.parametrize(("table", "deltas", "key"), [(9, 2, "T = {}"), (10, 4, "a = {}")])
def test_tables_9_and_10_give_the_deltas_of_tables_2_and_4(tables, table: int, deltas: int, key: str) -> None:
    """τ (Table 9 → Table 2) and α (Table 10 → Table 4): per-benchmark scores in, printed Δ% out."""
    t = build.build_table(_tidy(_scores(tables[table]), "LLM-LM", _baseline(tables)), METRICS)
    _check_averages(t, _printed_averages(tables[table]))
    ours = {r.label: r.delta for r in t.rows}
    values, printed = tables[deltas][0][1:], tables[deltas][1][1:]
    assert len(values) == len(printed) == 8
    avg = {r.label: r.cells[AVERAGE].mean for r in t.rows}
    for v, d in zip(values, printed, strict=True):
        label = key.format(v)
        if (table, v) == UNREACHABLE:
            # The one printed Δ that the rounded scores cannot give within 0.15: α = 0.1 averages
            # 37.675 against LM-only's 37.725 (Δ −0.13%), printed ↑ 0.1%. It is still a possible
            # reading of unrounded scores (each ±0.05), which is all a rounded table can tell.
            lo = ((avg[label] - 0.05) / (avg["LLM-LM"] + 0.05) - 1) * 100
            hi = ((avg[label] + 0.05) / (avg["LLM-LM"] - 0.05) - 1) * 100
            assert lo <= _signed(d) <= hi and abs(ours[label] - _signed(d)) > TOL
            continue
        assert abs(ours[label] - _signed(d)) <= TOL, (v, ours[label], d)


def test_table_11_sizes_each_against_its_own_baseline(tables) -> None:
    """Three blocks (LM-only, GLM-4-9B teacher, GLM-4-32B teacher) × five sizes: every student row is
    measured against the LM-only row of its size, as the paper's Figure 4."""
    recs, printed, block = [], {}, ""
    for r in tables[11][1:]:
        if len(r) == 1:
            block = "LM" if "LM Loss" in r[0] else r[0].split(":")[1].strip()
            continue
        label = f"{r[0]} · {block}"
        printed[label] = float(r[9])
        for bench, value in zip(BENCHMARKS, r[1:9], strict=True):
            recs.append(
                {
                    "label": label,
                    "role": "baseline" if block == "LM" else "student",
                    "seed": 0,
                    "baseline": f"{r[0]} · LM",
                    "metric": bench,
                    "value": float(value),
                }
            )
    t = build.build_table(pd.DataFrame.from_records(recs), METRICS)
    assert len(t.rows) == 15
    _check_averages(t, printed)
    ours = {r.label: r.delta for r in t.rows}
    # The paper's reading of Figure 4: the 330M student is hurt by either teacher, larger ones gain.
    assert ours["330M · GLM-4-9B"] < 0 and ours["330M · GLM-4-32B"] < 0
    assert all(ours[f"{s} · GLM-4-9B"] > 0 for s in ("670M", "1.9B", "3.8B", "6.8B"))
    # Against its own size's baseline: 1.9B with the 9B teacher is Table 1's LLM-KD, ↑ 1.6%.
    assert abs(ours["1.9B · GLM-4-9B"] - 1.6) <= TOL
