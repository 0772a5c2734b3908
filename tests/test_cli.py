"""The command line as users run it: real subprocesses, real files."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SWEEPS, pdsweep


def test_help_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys\n"
        "from pdsweep.cli.app import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'mlflow', 'deepspeed', 'optuna', 'pandas', 'numpy', 'pydantic', 'matplotlib') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "Usage" in out.stdout
    assert "HEAVY=\n" in out.stdout, out.stdout[-200:]


def test_version() -> None:
    from pdsweep import __version__

    out = pdsweep("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"pdsweep {__version__}"


def test_plan_truncation_lists_the_papers_13_settings_at_two_alphas_plus_baselines_times_seeds() -> None:
    out = pdsweep("plan", SWEEPS / "tiny" / "truncation.yaml", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    students = [r for r in plan["runs"] if r["role"] == "student"]
    baselines = [r for r in plan["runs"] if r["role"] == "baseline"]
    seeds = {r["seed"] for r in students}
    settings = {f"top-{p}-100" for p in ("0.5", "0.6", "0.7", "0.8", "0.85", "0.9")} | {
        f"top-0.95-{k}" for k in (1, 3, 5, 10, 20, 50, 100)
    }
    assert {r["label"] for r in students} == {f"{s} + α = {a}" for s in settings for a in ("0.6", "1.0")}
    assert len(students) == 26 * len(seeds) and len(seeds) == 3
    # LM-only at the students' 300k tokens and at the baseline_tokens budgets, each seed.
    assert sorted(r["tokens"] for r in baselines) == [300_000] * 3 + [600_000] * 3 + [1_200_000] * 3
    # One teacher pass, at the largest p and k of the sweep, serves all 26 settings.
    (tp,) = plan["teacher_passes"]
    assert (tp["top_p"], tp["top_k"], tp["runs"]) == (0.95, 100, 78)
    assert all(r["teacher_pass"] == tp["pass_id"] for r in students)
    assert all(r["steps"] == 300_000 // (4 * 128) for r in students)  # the quickstart's scale


def test_plan_table_shows_runs_and_derived_numbers() -> None:
    out = pdsweep("plan", SWEEPS / "tiny" / "truncation.yaml")
    assert out.returncode == 0, out.stderr
    for text in (
        "run_id",
        "top-0.95-50",
        "LM-only",
        "361k",
        "teacher passes",
        "88 runs: 1 teacher, 9 baseline, 78 student",
        # a tiny-s teacher's forward (2.9 MFLOPs/token) over a tiny-xs student's training (2.4): 2.2x
        "a student costs up to 2.2x an LM-only run of its tokens with its share of the pass",
        "needs LM-only up to 667k tokens (baseline_tokens: it has 600k, 1.2M)",
    ):
        assert text in out.stdout


def test_validate_every_shipped_sweep() -> None:
    files = sorted(SWEEPS.rglob("*.yaml"))
    out = pdsweep("validate", *files)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("ok  ") == len(files)


def test_explain_prints_doc_type_default_and_constraints() -> None:
    out = pdsweep("explain", "logits.top_p")
    assert out.returncode == 0
    assert "float" in out.stdout and "0.95" in out.stdout and "> 0, ≤ 1" in out.stdout and "Nucleus" in out.stdout
    out = pdsweep("explain", "loss.alpha")
    assert "wsd_alpha" in out.stdout and "WSD-α" in out.stdout
    out = pdsweep("explain", "zip")
    assert out.returncode == 0 and "Parallel axes" in out.stdout


def test_explain_unknown_path() -> None:
    out = pdsweep("explain", "logits.top_pp")
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        == "error: logits.top_pp: unknown RunSpec path (did you mean logits.top_p, logits.top_k, logits.mode?)"
    )


GOOD_BASE = "base: {student: tiny-xs, teacher: hf:/t, loss: {alpha: 1.0}}\n"

BAD_INPUTS = {
    "malformed_yaml": (
        "name: x\nbase: {student: [tiny-xs\n",
        re.compile(r"sweep.yaml:\d+:\d+: invalid YAML"),
    ),
    "duplicate_key": ("name: x\nname: y\n", "duplicate key 'name'"),
    "not_a_mapping": ("- just\n- a list\n", "a sweep file must be a mapping"),
    "unknown_key": (
        "name: x\n" + GOOD_BASE + "seedz: 3\n",
        "sweep.yaml: seedz: unknown key (did you mean seeds?)",
    ),
    "unknown_nested_key": (
        "name: x\nbase: {logits: {top_pp: 0.9}, loss: {alpha: 0}}\n",
        "base: logits.top_pp: unknown RunSpec path (did you mean logits.top_p",
    ),
    "wrong_type": (
        "name: x\nbase: {train: {global_batch: abc}, loss: {alpha: 0}}\n",
        "train.global_batch: input should be a valid integer",
    ),
    "seed_twice": (
        "name: x\nbase: {train: {seed: 3}, loss: {alpha: 0}}\nseeds: 2\n",
        "base: train.seed: the sweep's seeds: sets it",
    ),
    "out_of_range": (
        "name: x\nbase: {logits: {top_p: 1.5}, loss: {alpha: 0}}\n",
        "logits.top_p: must be ≤ 1, got 1.5",
    ),
    "out_of_range_in_axis": (
        "name: x\n" + GOOD_BASE + "grid: {logits.top_p: [0.5, 1.5]}\n",
        "logits.top_p: must be ≤ 1, got 1.5",
    ),
    "unknown_axis_path": (
        "name: x\n" + GOOD_BASE + "grid: {logit.top_p: [0.5]}\n",
        "logit.top_p: unknown RunSpec path (did you mean logits.top_p",
    ),
    "empty_grid": (
        "name: x\n" + GOOD_BASE + "grid: {logits.top_p: []}\n",
        "grid: logits.top_p: must not be empty",
    ),
    "zip_unequal": (
        "name: x\n" + GOOD_BASE + "zip: {logits.top_p: [0.5, 0.9], logits.top_k: [10]}\n",
        "zip: lists must have equal length",
    ),
    "missing_name": (GOOD_BASE, "sweep.yaml: name: required, but missing"),
}


@pytest.mark.parametrize("command", ["validate", "plan"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_per_problem_exit_2(case: str, command: str, write_yaml) -> None:
    text, expected = BAD_INPUTS[case]
    path = write_yaml(text)
    out = pdsweep(command, path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines and all(line.startswith(f"error: {path}") for line in lines), lines
    matches = (
        (lambda line: expected.search(line)) if isinstance(expected, re.Pattern) else (lambda line: expected in line)
    )
    assert any(matches(line) for line in lines), lines
    assert out.stdout == ""


def test_missing_file() -> None:
    for command in ("validate", "plan"):
        out = pdsweep(command, "no/such/sweep.yaml")
        assert out.returncode == 2
        assert out.stderr.strip() == "error: no/such/sweep.yaml: file does not exist"


def test_validate_reports_every_file_and_fails_if_any_is_bad(write_yaml) -> None:
    bad = write_yaml("name: x\nbase: {logits: {top_p: 2}, loss: {alpha: 0}}\n", "bad.yaml")
    out = pdsweep("validate", SWEEPS / "quickstart.yaml", bad)
    assert out.returncode == 2
    assert "ok  " in out.stdout and "quickstart.yaml" in out.stdout
    assert "bad.yaml: base: logits.top_p: must be ≤ 1, got 2" in out.stderr


def test_validate_a_single_run_file(write_yaml) -> None:
    good = write_yaml("student: tiny-xs\nloss.alpha: 0\ndata.seq_len: 64\n", "run.yaml")
    out = pdsweep("validate", good)
    assert out.returncode == 0 and "one run" in out.stdout
    bad = write_yaml("student: tiny-xs\nloss.alpha: 0\ndata.seq_len: 4\n", "bad_run.yaml")
    out = pdsweep("validate", bad)
    assert out.returncode == 2 and "data.seq_len: must be ≥ 8, got 4" in out.stderr
