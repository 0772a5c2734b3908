"""A run directory, `<workdir>/runs/<sweep>/<run_id>/`: the only code that knows its files.

    spec.yaml         the resolved RunSpec and its run_id (what the directory holds; checked on resume)
    status.json       pending (no file) · running (with its pid) · done · failed · interrupted, with a reason
    .lock             an exclusive flock while a process trains the run; `pdsweep run` takes it and hands
                      it to the task's process (the `PDSWEEP_LOCK_HELD` environment variable names the
                      directory whose lock the parent holds for it)
    metrics.jsonl     one line per optimiser step (`kind: train`) and per evaluation (`kind: eval`)
    result.json       the final evaluation, every suite
    error.log         the traceback of an unexpected failure
    checkpoints/      `step_NNNNNNNN/` directories, complete when they exist, and `LATEST` naming one
    logits/<name>/    logits stores the run recorded online (named by spec/plan.py)
    tracking.json     the MLflow run this directory's run logs to
    eval.json         `pdsweep eval`'s benchmark results (eval-harness.json: the harness's), also
                      inside a checkpoint directory for that checkpoint
    hf/               the run exported as a Hugging Face model (for lm-evaluation-harness)
    task.json         the task file its worker process runs (run/worker.py)
    job.json          the cluster job that runs the task (`{"executor": "slurm", "job_id": …}`): a second
                      `pdsweep run` finds it pending or running and submits nothing
    threads, events.jsonl, train.log / generate.log   the scheduler's view of the task's process

The same layout serves a logits pass's directory (status, lock, log, the store itself). Everything
here is a plain function of the directory, so the scheduler, the training process, a teacher
reading a checkpoint and `pdsweep status` agree on what a file means.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

from pdsweep import files
from pdsweep.errors import UserError

Status = Literal["pending", "running", "done", "failed", "interrupted"]

SPEC = "spec.yaml"
STATUS = "status.json"
LOCK = ".lock"
METRICS = "metrics.jsonl"
RESULT = "result.json"
ERROR_LOG = "error.log"
CHECKPOINTS = "checkpoints"
CHECKPOINT_STATE = "trainer.json"
TRACKING = "tracking.json"
THREADS = "threads"
EVENTS = "events.jsonl"
TASK = "task.json"
JOB = "job.json"
HF_EXPORT = "hf"
HANDED_LOCK_ENV = "PDSWEEP_LOCK_HELD"


# ----------------------------------------------------------------------------------------------
# What the directory holds: spec.yaml
# ----------------------------------------------------------------------------------------------


def spec_file(run_dir: Path) -> Path:
    return run_dir / SPEC


def is_run_dir(path: Path) -> bool:
    return (path / SPEC).exists()


def read_spec(run_dir: Path) -> dict[str, Any] | None:
    """The directory's spec.yaml as a mapping (its `run_id` included); None when it has none or it is
    not a YAML mapping."""
    import yaml

    path = run_dir / SPEC
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return raw if isinstance(raw, dict) else None


def read_run_spec(run_dir: Path, where: str) -> Any:
    """The RunSpec of a run directory; one UserError naming `where` when it has none or it is not one."""
    from pdsweep.spec import RunSpec

    raw = read_spec(run_dir)
    if raw is None:
        if not (run_dir / SPEC).exists():
            raise UserError(f"{where}: no {SPEC} (expected a pdsweep run directory)")
        raise UserError(f"{where}: {run_dir / SPEC} is not a pdsweep run spec")
    try:
        return RunSpec.model_validate({k: v for k, v in raw.items() if k != "run_id"})
    except Exception as e:  # noqa: BLE001 - any unreadable spec is the same error for the user
        raise UserError(f"{where}: {run_dir / SPEC} is not a pdsweep run spec ({type(e).__name__})") from None


def write_spec(run_dir: Path, run_id: str, spec: Any) -> None:
    import yaml

    body = yaml.safe_dump({"run_id": run_id, **spec.model_dump(mode="json")}, sort_keys=False)
    files.write_text(run_dir / SPEC, body)


def check(run_dir: Path, run_id: str) -> None:
    """`run_dir` is new, or holds this very run (to resume): never another run, never a file."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: is a file, not a run directory")
    if (run_dir / SPEC).exists():
        held = read_spec(run_dir)
        if held is None or held.get("run_id") != run_id:
            raise UserError(f"{run_dir}: holds a different run (its {SPEC} has another run_id)")


# ----------------------------------------------------------------------------------------------
# Status
# ----------------------------------------------------------------------------------------------


def read_status(run_dir: Path) -> dict[str, Any]:
    """`{"status": ..., "reason"?: ..., "pid"?: ...}`; `pending` when the run never started."""
    path = run_dir / STATUS
    return files.read_json(path) if path.exists() else {"status": "pending"}


def has_status(run_dir: Path) -> bool:
    return (run_dir / STATUS).exists()


def write_status(run_dir: Path, status: Status, **fields: Any) -> None:
    files.write_json(run_dir / STATUS, {"status": status, **fields})


def write_error(run_dir: Path, text: str) -> Path:
    path = run_dir / ERROR_LOG
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------------------
# The lock, and its hand-off from `pdsweep run` to the task's process
# ----------------------------------------------------------------------------------------------

_held: list[IO[str]] = []


def try_lock(run_dir: Path) -> IO[str] | None:
    """The run's lock, held by the returned open file (close it to release, or hand it to a child);
    None when another process holds it."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / LOCK, "a+")  # noqa: SIM115 - held open until released or the process exits
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def is_locked(run_dir: Path) -> bool:
    """Is some process holding this run's lock (i.e. running it now)?"""
    if not run_dir.is_dir():
        return False
    f = try_lock(run_dir)
    if f is None:
        return True
    f.close()
    return False


def handed_lock_env(run_dir: Path) -> dict[str, str]:
    """The environment that tells a child process its parent holds this run's lock for it."""
    return {HANDED_LOCK_ENV: str(run_dir.resolve())}


def lock(run_dir: Path) -> IO[str] | None:
    """Take the run's lock for this process (two processes never train one run), held until `unlock`
    or the process's exit; None when the parent took it and handed it over."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if os.environ.get(HANDED_LOCK_ENV) == str(run_dir.resolve()):
        return None
    f = try_lock(run_dir)
    if f is None:
        raise UserError(f"{run_dir}: another pdsweep process is training this run")
    _held.append(f)
    return f


@contextlib.contextmanager
def held(directory: Path, name: str = LOCK) -> Iterator[None]:
    """The directory's lock (or another lock file `name` in it), held for a block (waiting for it)."""
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / name, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def unlock(held: IO[str] | None) -> None:
    if held is not None and held in _held:
        _held.remove(held)
        held.close()


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def append_metrics(run_dir: Path, kind: Literal["train", "eval"], step: int, metrics: dict[str, float]) -> None:
    with open(run_dir / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps({"kind": kind, "step": step, **metrics}) + "\n")


def _rows(lines: list[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        with contextlib.suppress(json.JSONDecodeError):
            row = json.loads(line)
            if isinstance(row, dict):
                yield row


def metrics(run_dir: Path, kind: Literal["train", "eval"]) -> list[dict[str, Any]]:
    """Every `kind` line of metrics.jsonl, in order (a torn last line is skipped)."""
    path = run_dir / METRICS
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [row for row in _rows(lines) if row.get("kind") == kind]


def last_metrics(run_dir: Path) -> dict[str, Any]:
    """The last training line of metrics.jsonl, read from its end (cheap for a live view)."""
    path = run_dir / METRICS
    if not path.exists():
        return {}
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 8192))
        lines = f.read().decode("utf-8", "replace").splitlines()
    for row in reversed(list(_rows(lines))):
        if row.get("kind") == "train":
            return row
    return {}


def truncate_metrics(run_dir: Path, step: int) -> None:
    """On resume, forget metrics logged after the checkpoint (they will be logged again)."""
    path = run_dir / METRICS
    if path.exists():
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        kept = [json.dumps(row) for row in _rows(lines) if row.get("step", 0) <= step]
        files.write_text(path, "".join(line + "\n" for line in kept))


def result_file(run_dir: Path) -> Path:
    return run_dir / RESULT


def read_result(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / RESULT
    return files.read_json(path) if path.exists() else None


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def is_checkpoint(path: Path) -> bool:
    return (path / CHECKPOINT_STATE).exists()


def checkpoint_state(checkpoint: Path) -> dict[str, Any]:
    """What the trainer wrote last into a checkpoint: step, tokens seen, world size, backend."""
    return files.read_json(checkpoint / CHECKPOINT_STATE)


def write_checkpoint_state(checkpoint: Path, state: dict[str, Any]) -> None:
    """Written last: a checkpoint directory with this file is complete."""
    files.write_json(checkpoint / CHECKPOINT_STATE, state)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `LATEST` names, if it is complete."""
    pointer = run_dir / CHECKPOINTS / "LATEST"
    if not pointer.exists():
        return None
    path = run_dir / CHECKPOINTS / pointer.read_text().strip()
    return path if is_checkpoint(path) else None


def set_latest(run_dir: Path, checkpoint: Path) -> None:
    files.write_text(run_dir / CHECKPOINTS / "LATEST", checkpoint.name)


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint directory sits in."""
    return checkpoint.parent.parent


# ----------------------------------------------------------------------------------------------
# The scheduler's files beside a task
# ----------------------------------------------------------------------------------------------


def eval_file(directory: Path, harness: bool = False) -> Path:
    """Where `pdsweep eval` keeps a run's (or a checkpoint's) benchmark results."""
    return directory / ("eval-harness.json" if harness else "eval.json")


def hf_export_dir(run_dir: Path) -> Path:
    return run_dir / HF_EXPORT


def task_file(run_dir: Path) -> Path:
    return run_dir / TASK


def log_file(run_dir: Path, kind: str) -> Path:
    return run_dir / ("train.log" if kind == "train" else "generate.log")


def job_file(run_dir: Path) -> Path:
    return run_dir / JOB


def read_job(run_dir: Path) -> dict[str, Any] | None:
    """The cluster job recorded for the task (executor, job_id, submitted), if any."""
    try:
        data = json.loads(job_file(run_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "job_id" in data else None


def write_job(run_dir: Path, executor: str, job_id: str, **fields: Any) -> None:
    files.write_json(job_file(run_dir), {"executor": executor, "job_id": job_id, **fields})


def threads_file(run_dir: Path) -> Path:
    return run_dir / THREADS


def tracking_file(run_dir: Path) -> Path:
    return run_dir / TRACKING


def append_event(run_dir: Path, event: dict[str, Any]) -> None:
    """One line appended to the directory's event log (a single short write: lines of processes
    writing at once do not interleave)."""
    with open(run_dir / EVENTS, "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")


def events(run_dir: Path) -> list[dict[str, Any]]:
    """The directory's event log (a torn last line of a killed writer is skipped)."""
    try:
        return list(_rows((run_dir / EVENTS).read_text(encoding="utf-8").splitlines()))
    except FileNotFoundError:
        return []
