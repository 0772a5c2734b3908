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


def test_readme_has_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert "pdsweep train docs/examples/tiny-lm.yaml" in text
    assert "python -m pytest" in text
    assert "python -m pytest" in (ROOT / ".ci" / "run").read_text(), ".ci/run runs the README's test command"


@pytest.mark.parametrize(("doc", "command"), COMMANDS, ids=[c for _, c in COMMANDS])
def test_documented_command_runs(doc: str, command: str, workdir) -> None:
    env = {
        **os.environ,
        "PDSWEEP_WORKDIR": str(workdir),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, f"{doc}: {command}\n{out.stderr[-2000:]}"
    assert out.stdout.strip()
