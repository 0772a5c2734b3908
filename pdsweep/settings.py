"""Machine-local places: the work directory and the download cache.

- Work directory (`PDSWEEP_WORKDIR`, default `./pdsweep-work`): tokenizers, token shards, logits
  stores, run directories and the default MLflow database — everything a sweep produces.
- Cache (`PDSWEEP_CACHE`, default `$XDG_CACHE_HOME/pdsweep` or `~/.cache/pdsweep`): things pdsweep
  downloads from package registries (the default corpus, a pretrained teacher, benchmark data),
  shared by every work directory on the machine.
- CPU threads: `pdsweep run` gives each task a share of the cores and moves it as tasks start and
  end (`ThreadBudget`).
"""

from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path


def workdir() -> Path:
    return Path(os.environ.get("PDSWEEP_WORKDIR") or "pdsweep-work").resolve()


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (tracking or study storage); None for any other."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def shown_paths(text: str) -> str:
    """`text` as a committed report may show it: the work directory's path written `<workdir>`."""
    for where in sorted({str(workdir()), str(workdir().resolve())}, key=len, reverse=True):
        text = text.replace(where, "<workdir>")
    return text


def shown_uri(uri: str) -> str:
    """A tracking or storage URI as a committed report may show it: a database file in the work
    directory as `sqlite:///<workdir>/NAME`, one elsewhere by its file name only, and a server URL
    without its password — no path or secret of this machine."""
    import re

    path = sqlite_file(uri)
    if path is not None:
        inside = path.is_absolute() and path.resolve().parent == workdir()
        return f"sqlite:///<workdir>/{path.name}" if inside else f"sqlite:///…/{path.name}"
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", uri)


def cache_dir() -> Path:
    if os.environ.get("PDSWEEP_CACHE"):
        return Path(os.environ["PDSWEEP_CACHE"]).resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pdsweep"


def cores() -> int:
    """CPU cores this process may use (its affinity: a cluster job's allocation, not the node's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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
    return f"{cpu}, {cores()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


class ThreadBudget:
    """The CPU threads `pdsweep run` gives this process now. The scheduler writes the count to the
    file named by `PDSWEEP_THREADS_FILE` when tasks start and end (a task left running alone gets
    every core); long loops call `poll()` between steps and apply a new count
    (`torch.set_num_threads`). Without the variable (a command run by hand) it never changes.
    `share`: processes of one run dividing the budget (its world size on this machine)."""

    def __init__(self, share: int = 1, interval_s: float = 1.0):
        self.path = os.environ.get("PDSWEEP_THREADS_FILE")
        self.share, self.interval_s = max(1, share), interval_s
        self.current: int | None = None
        self.checked = -math.inf  # the first poll reads the file, however long the machine has been up

    def poll(self) -> int | None:
        """The new thread count when the budget changed since the last call, else None."""
        now = time.monotonic()
        if not self.path or now - self.checked < self.interval_s:
            return None
        self.checked = now
        try:
            n = max(1, int(Path(self.path).read_text().strip()) // self.share)
        except (OSError, ValueError):  # not written yet, or mid-replace
            return None
        if n == self.current:
            return None
        self.current = n
        return n


def check_workdir() -> None:
    """The work directory (PDSWEEP_WORKDIR) is a directory this process can write: checked before
    a command that writes there does anything, so a wrong one is one line, not a traceback."""
    import tempfile

    from pdsweep.errors import UserError

    path = workdir()
    where = f"work directory {path} (PDSWEEP_WORKDIR)"
    if path.exists() and not path.is_dir():
        raise UserError(f"{where}: is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check."):
            pass
    except OSError as e:
        raise UserError(f"{where}: cannot write there ({e.strerror or e})") from None
