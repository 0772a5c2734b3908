"""Machine-local places: the work directory and the download cache.

- Work directory (`PDSWEEP_WORKDIR`, default `./pdsweep-work`): tokenizers, token shards, logits
  stores, run directories and the default MLflow database — everything a sweep produces.
- Cache (`PDSWEEP_CACHE`, default `$XDG_CACHE_HOME/pdsweep` or `~/.cache/pdsweep`): things pdsweep
  downloads from package registries (the default corpus, a pretrained teacher, benchmark data),
  shared by every work directory on the machine.
"""

from __future__ import annotations

import os
from pathlib import Path


def workdir() -> Path:
    return Path(os.environ.get("PDSWEEP_WORKDIR") or "pdsweep-work").resolve()


def cache_dir() -> Path:
    if os.environ.get("PDSWEEP_CACHE"):
        return Path(os.environ["PDSWEEP_CACHE"]).resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pdsweep"
