"""Executors: where a task's process runs. The scheduler and `pdsweep tune` hand every task to an
`Executor` as a task file (`python -m pdsweep.run.worker TASK.json`) and only ever submit, poll,
cancel and read logs — so a local process pool and a cluster scheduler are interchangeable.

    submit(job)   start the job's worker (or queue it); the job's lock, when given, is held for it
    poll(job)     None while it runs (or waits in a queue), else its exit code
    reason(job)   why an ended job ended when its process could not say (killed for memory or time)
    state(job)    the batch system's view of it (None for a local process)
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
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from pdsweep.spec.cluster import ClusterSpec


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
    name: str = ""
    """What a person calls the task (its label); a cluster job is named after it."""
    kind: str = ""
    """The task's role (teacher, logits, baseline, student): a cluster profile's resources per kind."""
    after: list[Job] = field(default_factory=list)
    """Jobs it must wait for: a cluster executor makes them its batch system's dependencies (the
    scheduler only submits it once they are submitted); the local executor never sees any."""
    adopted: bool = False
    """The executor found this task's job already queued or running (submitted by an earlier pdsweep)."""


@dataclass(frozen=True)
class JobState:
    """A batch system's view of a job: its state (Slurm's words: PENDING, RUNNING, COMPLETED, …),
    node, elapsed time, exit code and the scheduler's reason."""

    job_id: str
    state: str
    live: bool
    """Queued, running or requeued: not ended."""
    node: str = ""
    elapsed: str = ""
    exit_code: int = 0
    reason: str = ""

    @property
    def task_status(self) -> Literal["running", "queued"]:
        """What a live job means for its task: running once it started, else queued."""
        return "running" if self.state in ("RUNNING", "COMPLETING") else "queued"


class Executor(Protocol):
    name: str
    submits_graph: bool
    """True: a task is submitted as soon as the tasks it depends on are (they are its `after`), and its
    batch system holds it; False: only once they are done."""

    def submit(self, job: Job) -> None: ...

    def poll(self, job: Job) -> int | None: ...

    def cancel(self, job: Job) -> None: ...

    def kill(self, job: Job) -> None: ...

    def reason(self, job: Job) -> str | None: ...

    def state(self, job: Job) -> JobState | None: ...

    def log(self, job: Job) -> Path: ...


def make(name: str, cluster: ClusterSpec | None = None, sweep: str = "") -> Executor:
    """The executor called `name`: `local`, or `slurm` with a cluster profile (its defaults when none)."""
    from pdsweep.errors import UserError

    if name == "local":
        from pdsweep.run.executors.local import LocalExecutor

        return LocalExecutor()
    if name == "slurm":
        from pdsweep.run.executors.slurm import SlurmExecutor
        from pdsweep.spec.cluster import ClusterSpec

        return SlurmExecutor(cluster or ClusterSpec(), sweep)
    raise UserError(f"--executor: {name!r} is not an executor (local, slurm)")
