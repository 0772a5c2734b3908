"""Machine-local places: the work directory and the download cache.

- Work directory (`PDSWEEP_WORKDIR`, default `./pdsweep-work`): tokenizers, token shards, logits
  stores, run directories and the default MLflow database — everything a sweep produces.
- Cache (`PDSWEEP_CACHE`, default `$XDG_CACHE_HOME/pdsweep` or `~/.cache/pdsweep`): things pdsweep
  downloads from package registries (the default corpus, a pretrained teacher, benchmark data),
  shared by every work directory on the machine.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def workdir() -> Path:
    return Path(os.environ.get("PDSWEEP_WORKDIR") or "pdsweep-work").resolve()


def cache_dir() -> Path:
    if os.environ.get("PDSWEEP_CACHE"):
        return Path(os.environ["PDSWEEP_CACHE"]).resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pdsweep"


def machine() -> str:
    """The machine in one line, for reports and benchmark results: CPU model, usable cores, OS, Python."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"
