"""Every `pdsweep` command shown in README.md and docs/ runs and succeeds (STYLE: docs are tested)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shell_commands(path: Path) -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", path.read_text(), flags=re.S)
    lines = [line.split("  #", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("pdsweep ")]


COMMANDS = [(p.name, c) for p in DOCS for c in shell_commands(p)]
MAIN = "pdsweep run sweeps/quickstart.yaml --workers 2 --report"
"""The README's main job (benchmarks/bench_quickstart.py times exactly this)."""
QUICK = ("plan", "validate", "explain", "--help", "--version")
"""Commands that only read a spec: the fast lane runs them; the rest train, tune or evaluate (slow)."""
PARAMS = [pytest.param(doc, c, id=c, marks=[] if c.split()[1] in QUICK else [pytest.mark.slow]) for doc, c in COMMANDS]


def test_readme_has_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert MAIN in text
    assert f'COMMAND = "{MAIN}"' in (ROOT / "benchmarks" / "bench_quickstart.py").read_text()
    assert "python -m pytest" in text
    assert "python -m pytest" in (ROOT / ".ci" / "run").read_text(), ".ci/run runs the README's test command"


def prerequisites(command: str) -> list[str]:
    """What a documented command reads that another documented command makes (each idempotent: a
    sweep run again does nothing), so that every command passes alone and in any order."""
    words = command.split()
    if words[1] in ("status", "report"):
        return [f"pdsweep run {words[2]} --workers 2"]
    if words[1:3] == ["tune", "status"]:
        return [f"pdsweep tune {words[3]} --workers 2"]
    return []


@pytest.mark.parametrize(("doc", "command"), PARAMS)
def test_documented_command_runs(doc: str, command: str, workdir) -> None:
    env = {
        **os.environ,
        "PDSWEEP_WORKDIR": str(workdir),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for before in prerequisites(command):
        out = subprocess.run(["bash", "-c", before], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
        assert out.returncode == 0, f"{before}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    timeout = 1800 if command == MAIN else 300
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    assert out.returncode == 0, f"{doc}: {command}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    assert out.stdout.strip()
    if command == MAIN:  # the quickstart printed its Δ table and wrote the HTML report
        report = workdir / "reports" / "quickstart"
        assert "Δ% held-out loss" in out.stdout and "Noise floor" in out.stdout
        assert (report / "report.html").exists() and (report / "report.csv").exists()


def test_the_spec_reference_is_generated_from_the_current_docstrings() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pdsweep.cli", "explain", "--markdown"], capture_output=True, text=True, check=True
    )
    assert (ROOT / "docs" / "spec-reference.md").read_text() == out.stdout, (
        "docs/spec-reference.md is stale: pdsweep explain --markdown > docs/spec-reference.md"
    )
    assert "### `logits.top_p`" in out.stdout and "### `report.delta_interval`" in out.stdout
