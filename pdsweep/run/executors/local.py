"""The local executor: each job is a process on this machine, in its own session (Ctrl-C reaches
the scheduler, which stops its jobs in order), dying with its parent, its output appended to the
job's log, and the task's lock handed to it as an inherited file descriptor."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from pdsweep import proc
from pdsweep.run import worker
from pdsweep.run.executors import Job, JobState


class LocalExecutor:
    name = "local"
    submits_graph = False

    def submit(self, job: Job) -> None:
        job.directory.mkdir(parents=True, exist_ok=True)
        with open(job.log, "ab") as log:
            job.handle = subprocess.Popen(  # noqa: S603
                worker.command(job.task_file),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **job.env},
                pass_fds=(job.lock.fileno(),) if job.lock is not None else (),
                start_new_session=True,
                preexec_fn=proc.die_with_parent,  # noqa: PLW1509
            )

    def pid(self, job: Job) -> int:
        assert isinstance(job.handle, subprocess.Popen)
        return job.handle.pid

    def poll(self, job: Job) -> int | None:
        assert isinstance(job.handle, subprocess.Popen)
        return job.handle.poll()

    def cancel(self, job: Job) -> None:
        """SIGINT to the job's process group, as Ctrl-C would: it checkpoints and ends as interrupted."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid(job), signal.SIGINT)

    def kill(self, job: Job) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid(job), signal.SIGKILL)

    def reason(self, job: Job) -> str | None:
        return None  # the process's own log says why (scheduler.logged_error)

    def state(self, job: Job) -> JobState | None:
        return None

    def log(self, job: Job) -> Path:
        return job.log
