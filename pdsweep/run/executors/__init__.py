"""Executors: where a task's process runs. The scheduler and `pdsweep tune` hand every task to an
`Executor` as a task file (`python -m pdsweep.run.worker TASK.json`) and only ever submit, poll,
cancel and read logs — so a local process pool and a cluster scheduler are interchangeable.

    submit(job)   start the job's worker (or queue it); the job's lock, when given, is held for it
    poll(job)     None while it runs (or waits in a queue), else its exit code
    cancel(job)   ask it to stop: it writes its checkpoint and state, and ends as interrupted
    kill(job)     end it now (after a cancel that took too long)
    log(job)      the file its output goes to

A job is identified by its task key and its directory; what an executor needs to find it again
(a pid, a Slurm job id) it keeps in `job.handle` and may record in the directory, so that a second
`pdsweep run` does not submit a job that is already queued or running.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol


@dataclass
class Job:
    """One task as an executor sees it."""

    key: str
    task_file: Path
    directory: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    """Environment over the executor's own: threads, visible devices, tracking tags."""
    lock: IO[str] | None = None
    """The task's lock, taken by the scheduler; an executor hands it to the job's process (local) or
    releases it for the job to take itself (a cluster job on another machine)."""
    handle: Any = None


class Executor(Protocol):
    name: str

    def submit(self, job: Job) -> None: ...

    def poll(self, job: Job) -> int | None: ...

    def cancel(self, job: Job) -> None: ...

    def kill(self, job: Job) -> None: ...

    def log(self, job: Job) -> Path: ...


def make(name: str) -> Executor:
    """The executor called `name` (`local`)."""
    from pdsweep.errors import UserError

    if name == "local":
        from pdsweep.run.executors.local import LocalExecutor

        return LocalExecutor()
    raise UserError(f"--executor: {name!r} is not an executor (local)")
