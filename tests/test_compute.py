"""The compute-matched Δ against hand-made LM-only curves: interpolation in log FLOPs, no
extrapolation, pairing by seed, and the note when LM-only did not run long enough."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pdsweep.report import build, compute, formats


def test_read_interpolates_in_log_flops_and_never_extrapolates() -> None:
    curve = [(4e10, 4.0), (1e10, 5.0), (1.6e11, 3.5)]  # any order
    assert compute.read(curve, 2e10) == pytest.approx(4.5)  # halfway in log between 1e10 and 4e10
    assert compute.read(curve, 8e10) == pytest.approx(3.75)
    assert compute.read(curve, 1e10) == pytest.approx(5.0) and compute.read(curve, 1.6e11) == pytest.approx(3.5)
    assert compute.read(curve, 2e11) is None and compute.read(curve, 5e9) is None
    assert compute.read([(1e10, 5.0)], 1e10) == 5.0 and compute.read([], 1.0) is None


def _tidy(
    pd_loss: dict[int, float], pass_flops: float, budgets: dict[str, tuple[float, dict[int, float]]]
) -> pd.DataFrame:
    """LM-only rows at token budgets (label → (tokens, {seed: loss})) at 10 FLOPs per token, and a
    PD row of 1,000 tokens whose teacher pass adds `pass_flops`."""
    recs = []
    for label, (tokens, losses) in budgets.items():
        for seed, v in losses.items():
            recs.append(
                {"run_id": f"{label}{seed}", "label": label, "role": "baseline", "seed": seed, "baseline": label,
                 "tokens": tokens, "flops": 10.0 * tokens, "pass_flops": 0.0, "teacher_flops": math.nan,
                 "curve": "c", "metric": "heldout/loss", "value": v}
            )  # fmt: skip
    for seed, v in pd_loss.items():
        recs.append(
            {"run_id": f"pd{seed}", "label": "PD", "role": "student", "seed": seed, "baseline": "LM-only",
             "tokens": 1000, "flops": 1e4, "pass_flops": pass_flops, "teacher_flops": 5e5, "curve": "c",
             "metric": "heldout/loss", "value": v}
        )  # fmt: skip
    return pd.DataFrame.from_records(recs)


def test_the_compute_matched_delta_reads_lm_only_at_the_rows_total_compute() -> None:
    budgets = {
        "LM-only": (1000, {0: 5.0, 1: 5.2, 2: 4.9}),
        "LM-only (2k tokens)": (2000, {0: 4.6, 1: 4.7, 2: 4.5}),
        "LM-only (4k tokens)": (4000, {0: 4.2, 1: 4.4, 2: 4.1}),
    }
    pd_loss = {0: 4.5, 1: 4.6, 2: 4.45}
    t = build.build_table(_tidy(pd_loss, 2e4, budgets))  # total 3e4 = LM-only at 3,000 tokens
    row = next(r for r in t.rows if r.label == "PD")
    assert row.flops == 1e4 and row.total_flops == 3e4 and row.teacher_flops == 5e5
    w = math.log(3 / 2) / math.log(2)  # 3k between 2k and 4k, in log
    lm = {s: budgets["LM-only (2k tokens)"][1][s] * (1 - w) + budgets["LM-only (4k tokens)"][1][s] * w for s in pd_loss}
    assert row.matched is not None
    assert row.matched.delta == pytest.approx((np.mean(list(pd_loss.values())) / np.mean(list(lm.values())) - 1) * 100)
    diffs = [pd_loss[s] - lm[s] for s in sorted(pd_loss)]
    assert row.matched.effect.paired and row.matched.effect.diff == pytest.approx(np.mean(diffs))
    assert row.matched.lo < row.matched.delta < row.matched.hi
    # At equal student tokens PD is better by ~9%; at equal compute it is worse: the cells say both.
    assert row.delta < 0 < row.matched.delta
    md = formats.to_markdown(t)
    assert "↑ " in md.split("| PD |")[1].split("\n")[0] and "3e4" in md and "5.3e5" in md
    # With the teacher's training (5e5) too, LM-only would need 53,000 tokens: the budgets stop at 4,000.
    assert row.matched_teacher is None and "LM-only too short: needs ≥ 53k tokens" in row.matched_teacher_note
    assert "Δ% at equal compute + teacher training" in md and row.matched_teacher_note in md


def test_a_baseline_too_short_is_said_with_the_budget_it_needs() -> None:
    budgets = {"LM-only": (1000, {0: 5.0, 1: 5.2}), "LM-only (2k tokens)": (2000, {0: 4.6, 1: 4.7})}
    t = build.build_table(_tidy({0: 4.5, 1: 4.6}, 2e4, budgets))  # needs 3,000 tokens of LM-only
    row = next(r for r in t.rows if r.label == "PD")
    assert row.matched is None and "LM-only too short: needs ≥ 3k tokens" in row.matched_note
    assert row.matched_note in formats.to_markdown(t) and row.matched_note in formats.to_csv(t)
    tex = formats.to_latex(t)
    assert r"needs $\geq$ 3k tokens" in tex and "≥" not in tex  # pdflatex without unicode packages


def test_rows_under_two_half_widths_are_marked_not_resolved_in_every_format() -> None:
    budgets = {"LM-only": (1000, {0: 5.0, 1: 5.2, 2: 4.8})}
    t = build.build_table(_tidy({0: 4.9, 1: 5.25, 2: 4.85}, 0.0, budgets))  # a tiny, noisy effect
    row = next(r for r in t.rows if r.label == "PD")
    assert row.effect is not None and row.effect.halfwidths < 2 and row.resolved is False
    assert "(not resolved)" in formats.to_markdown(t).split("| PD |")[1].split("\n")[0]
    assert "not resolved" in formats.to_latex(t) and "not resolved" in formats.to_html(t, {}, [])
    assert formats.to_frame(t).set_index("label").loc["PD", "resolved"] == False  # noqa: E712
    clear = build.build_table(_tidy({0: 4.0, 1: 4.25, 2: 3.78}, 0.0, budgets))
    assert next(r for r in clear.rows if r.label == "PD").resolved is True
    assert "not resolved" not in formats.to_markdown(clear)


def test_logits_recorded_while_the_teacher_trained_cost_nothing_so_both_deltas_agree() -> None:
    budgets = {"LM-only": (1000, {0: 5.0, 1: 5.2, 2: 4.9}), "LM-only (2k tokens)": (2000, {0: 4.6, 1: 4.7, 2: 4.5})}
    t = build.build_table(_tidy({0: 4.8, 1: 5.0, 2: 4.75}, 0.0, budgets))  # an online student: no pass
    row = next(r for r in t.rows if r.label == "PD")
    assert row.total_flops == row.flops and row.matched is not None
    assert row.matched.delta == pytest.approx(row.delta) and row.matched.effect.diff == pytest.approx(row.effect.diff)
