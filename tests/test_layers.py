"""The module layering of DESIGN.md, enforced by import-linter's contract in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess

from tests.conftest import ROOT


def test_import_layers_are_kept() -> None:
    exe = shutil.which("lint-imports")
    assert exe, "import-linter is a dev dependency"
    out = subprocess.run([exe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "2 kept, 0 broken" in out.stdout
