"""Runs shared between the sweeps of one work directory.

The sweeps of a design space share runs: every table of the paper compares against the same LM-only
baseline, distils from the same teacher run, and has vanilla PD as a row. A run is named by its
run_id, a hash of its whole resolved RunSpec (with its teacher run pinned by id), so a run directory
with that run_id in another sweep holds the very run this sweep asks for. `pdsweep run` reuses it
instead of training it again when

- it is done there, with its spec.yaml equal to this run's spec;
- the pdsweep code that trained it is the code that would train it now (`files.code_fingerprint()`,
  recorded in its status.json when it finished): a fix to pdsweep never serves results of the code
  before it;
- tracked: its MLflow run can be read.

Reusing copies the run directory — files that are never changed in place (checkpoints, the shards of
logits it recorded, its Hugging Face export) as hard links, everything else as copies — and tracks it
in this sweep's experiment as a new MLflow run with every point of every metric, tagged
`pdsweep.reused_from: <sweep>/<run_id>`. The copy stands alone: deleting or re-running the other sweep
leaves it whole. `pdsweep run --no-reuse` trains every run of the sweep itself.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pdsweep import files, rundir
from pdsweep.errors import UserError
from pdsweep.spec import plan
from pdsweep.spec.expand import PlannedRun

if TYPE_CHECKING:
    from pdsweep.run.tracking import Tracker

NOT_COPIED = {rundir.LOCK, rundir.STATUS, rundir.TRACKING, rundir.THREADS, rundir.TASK, rundir.JOB}
"""The source's own process state (and its status, written last: the copy is done only when whole)."""
LINKED = {rundir.CHECKPOINTS, plan.RECORDED_STORES, rundir.HF_EXPORT}
"""Directories whose files are written once (atomically) and never changed in place: hard-linked."""


def source_for(sweep: str, run: PlannedRun, run_dir: Path, tracked: bool) -> Path | None:
    """The run directory to copy into `run_dir` for this planned run of `sweep`: None when `run_dir`
    already holds an attempt of its own (any status) or no other sweep finished the run."""
    if rundir.has_status(run_dir):
        return None
    return source(sweep, run.run_id, run.spec.model_dump(mode="json"), tracked)


def source(sweep: str, run_id: str, spec: dict[str, Any], tracked: bool) -> Path | None:
    """The finished run directory another sweep holds for this run (`spec`: its RunSpec as JSON),
    trained by this very code; None when there is none."""
    want = {"run_id": run_id, **spec}
    for d in plan.run_dirs(run_id):
        if d.parent == plan.sweep_dir(sweep):
            continue
        status = rundir.read_status(d)
        if status["status"] != "done" or status.get("code") != files.code_fingerprint():
            continue
        if rundir.read_spec(d) != want or rundir.read_result(d) is None:
            continue
        if tracked:
            from pdsweep.run import tracking

            if not tracking.readable(d):  # its store is gone or unreachable: train the run instead
                continue
        return d
    return None


def adopt(
    src: Path,
    dst: Path,
    *,
    sweep: str,
    label: str,
    seed: int,
    tracker: Tracker,
    parent_run: str | None = None,
) -> None:
    """Make `dst` (locked by the caller) a finished copy of the run directory `src`, tracked under the
    sweep's MLflow run `parent_run`; its done status is written last, so an interrupted copy is simply
    made again. On failure (UserError, OSError) `dst` is emptied again (but for its lock), so the run
    trains from scratch."""
    dst.mkdir(parents=True, exist_ok=True)
    reused_from = f"{src.parent.name}/{src.name}"
    try:
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src)
            if rel.parts[0] in NOT_COPIED or path.is_dir():
                continue
            _place(path, dst / rel, link=rel.parts[0] in LINKED and path.suffix != ".jsonl")
        tracker.copy_run(src, dst, sweep=sweep, label=label, seed=seed, reused_from=reused_from, parent=parent_run)
    except (UserError, OSError):
        for path in dst.iterdir():
            if path.name == rundir.LOCK:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        raise
    rundir.append_event(dst, {"event": "reused", "time": time.time(), "pid": os.getpid(), "from": reused_from})
    fields = {k: v for k, v in rundir.read_status(src).items() if k != "status"}
    rundir.write_status(dst, "done", **{**fields, "reused_from": reused_from})


def _place(path: Path, target: Path, link: bool) -> None:
    """`target` as a hard link to `path` (a copy where the file system has none), or a copy; atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        if link:
            try:
                os.link(path, tmp)
            except OSError:
                shutil.copy2(path, tmp)
        else:
            shutil.copy2(path, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
