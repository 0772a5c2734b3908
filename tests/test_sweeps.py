"""Every shipped sweep file validates and expands (STYLE: every shipped config is tested)."""

from __future__ import annotations

import pytest

from pdsweep.spec import expand, plan
from tests.conftest import SWEEPS

FILES = sorted(SWEEPS.rglob("*.yaml"))


def test_there_is_a_tiny_and_a_paper_file_for_every_table() -> None:
    tiny = {p.name for p in (SWEEPS / "tiny").glob("*.yaml")}
    paper = {p.name for p in (SWEEPS / "paper").glob("*.yaml")}
    expected = {
        "temperature.yaml",
        "adaptive_temperature.yaml",
        "alpha.yaml",
        "loss_schedules.yaml",
        "online_logits.yaml",
        "truncation.yaml",
        "sizes.yaml",
        "tokens.yaml",
        "pd_star.yaml",
    }
    assert tiny - {"smollm2_teacher.yaml"} == paper == expected  # plus the real-teacher demo, CPU only
    assert (SWEEPS / "quickstart.yaml").exists() and (SWEEPS / "tiny" / "smollm2_teacher.yaml").exists()


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(SWEEPS)) for p in FILES])
def test_sweep_validates_and_expands(path) -> None:
    sweep = expand.load_sweep(path)
    runs = expand.expand(sweep, str(path))
    students = [r for r in runs if r.role == "student"]
    assert students, "a sweep with no student runs compares nothing"
    assert all(r.baseline for r in students), "every student has an LM-only baseline"
    assert len({r.label for r in students}) == len({r.config_id for r in students}), "labels identify configurations"
    rows, _ = plan.plan_rows(runs)
    assert len(rows) == len(runs)


@pytest.mark.parametrize("path", sorted((SWEEPS / "paper").glob("*.yaml")), ids=lambda p: p.name)
def test_paper_scale_matches_the_paper_setup(path) -> None:
    runs = [r for r in expand.expand(expand.load_sweep(path)) if r.role != "teacher"]
    for r in runs:
        s = r.spec
        assert (
            s.data.seq_len,
            s.train.global_batch,
            s.train.precision,
            s.train.backend,
            s.train.zero_stage,
        ) == (4096, 2048, "bf16", "deepspeed", 3)
        assert s.data.tokens >= 100_000_000_000
        assert s.student.preset in ("330m", "670m", "1.9b", "3.8b", "6.8b")


def test_table_5_rows_are_all_there() -> None:
    runs = expand.expand(expand.load_sweep(SWEEPS / "tiny" / "loss_schedules.yaml"))
    labels = {r.label for r in runs if r.role == "student"}
    assert labels == {
        "0-α + WSD-LR",
        "NLL",
        "KLD",
        "MSE",
        "Linear Inc",
        "Linear Dec",
        "Period",
        "1-α + WSD-LR",
        "WSD-α + Cos-LR",
        "WSD-β + WSD-LR",
        "WSD-α + WSD-LR",
    }
