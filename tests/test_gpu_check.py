"""The GPU check (benchmarks/gpu_check.py) in its CPU mode: the very code a GPU machine will run,
at tiny sizes, so that the check is known to work before a GPU is ever lent."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_the_gpu_check_runs_every_section_in_its_cpu_mode(tmp_path, workdir) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path), "--cpu-smoke"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["mode"] == "cpu-smoke" and result["device"] == "cpu"
    sections = {k: v for k, v in result.items() if isinstance(v, dict) and "ok" in v}
    assert set(sections) == {"tests", "train", "kd_loss", "teacher_pass", "sweep"}
    assert all(v["ok"] for v in sections.values()), {k: v.get("error") for k, v in sections.items()}
    train = result["train"]
    assert train["lm"]["tokens_per_s"] > 0 and train["pd"]["tokens_per_s"] > 0 and train["pd_vs_lm_step_ratio"] > 0
    assert result["kd_loss"]["pd_vs_lm_time_ratio"] > 0
    assert result["teacher_pass"]["tiny-s"]["positions_per_s"] > 0
    assert isinstance(result["teacher_pass"]["encode_keeps_up"], bool)
    assert result["sweep"]["runs"] == 4 and result["sweep"]["checkpoints"] > 0  # a teacher, a baseline, 2 students
    none = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert none.returncode == 2 and "no CUDA device here" in none.stderr  # without --cpu-smoke, on a CPU machine
