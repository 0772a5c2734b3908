"""The local executor: each job is a process on this machine, in its own session (Ctrl-C reaches
the scheduler, which stops its jobs in order), dying with its parent, its output appended to the
job's log, and the task's lock handed to it as a file descriptor.

A job's process is forked from a warm worker (multiprocessing's fork server) that imported torch,
MLflow and the trainer once: a task starts in milliseconds instead of paying ~5 s of imports, and
is still a process of its own — a run that fails or is killed takes nothing else with it. The fork
server is started on the first job, from a fresh interpreter (no threads, no CUDA), and ends with
this process (its children, the jobs, get SIGKILL then). `PDSWEEP_WARM_WORKERS=0` starts every job
in a fresh interpreter instead (`python -m pdsweep.run.worker TASK.json`).

Which of this machine's GPUs each worker's jobs see (`--devices`) is decided here too
(`device_slots`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from pdsweep import proc
from pdsweep.errors import UserError
from pdsweep.run import worker
from pdsweep.run.executors import Job, JobState

PRELOAD = ["pdsweep.run.worker", "pdsweep.run.launch", "pdsweep.run.search", "torch._dynamo", "mlflow.tracking",
           "mlflow.store.tracking.sqlalchemy_store"]  # fmt: skip
"""What the fork server imports once for every job: the trainer (torch; torch._dynamo, which torch's
optimizers import on first use, 1.7 s), MLflow and its sqlite store."""

_context: Any = None


def _forkserver() -> Any:
    global _context
    if _context is None:
        import importlib.util
        import multiprocessing

        _context = multiprocessing.get_context("forkserver")
        preload = [m for m in PRELOAD if importlib.util.find_spec(m.split(".")[0]) is not None]
        _context.set_forkserver_preload(preload)
    return _context


class _HandedFd:
    """A file descriptor handed to a forked job (its task's lock: the same open file, so the same flock)."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        from multiprocessing import reduction

        return (_received_fd, (reduction.DupFd(self.fd),))


def _received_fd(dup: Any) -> int:
    return int(dup.detach())


def _run_forked(task_file: str, log: str, env: dict[str, str], lock_fd: int | None) -> None:
    """A job's process, forked from the warm worker: its own session, its output to its log, its
    environment, then the task — as `python -m pdsweep.run.worker TASK.json` would run it."""
    from multiprocessing import forkserver

    # Every process forked by a fork server holds the write end of its "alive" pipe, which keeps the
    # server running while any of them lives: a job must not, or killing pdsweep would not end the
    # server and, with it (PR_SET_PDEATHSIG), the job. A job that runs tasks of its own (a study
    # worker) starts a fork server of its own.
    server: Any = forkserver._forkserver  # its private state: Python has no API for this
    if server._forkserver_alive_fd is not None:
        os.close(server._forkserver_alive_fd)
    server._forkserver_alive_fd = server._forkserver_address = server._forkserver_pid = None
    os.setsid()
    proc.die_with_parent()  # the fork server, which ends with pdsweep
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    os.environ.clear()  # exactly the environment a fresh process would get (the fork server's is older)
    os.environ.update(env)
    sys.argv = [worker.__file__, task_file]
    if "OMP_NUM_THREADS" in env:  # the OpenMP runtime read the fork server's value when torch loaded
        import torch

        torch.set_num_threads(max(1, int(env["OMP_NUM_THREADS"])))
    del lock_fd  # held open (and with it the task's lock) until the process exits
    code = worker.main([task_file])
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


def warm() -> bool:
    return os.environ.get("PDSWEEP_WARM_WORKERS", "1") != "0"


def warm_up() -> None:
    """Start the fork server now (it imports in the background while pdsweep prepares the sweep)."""
    if warm():
        from multiprocessing import forkserver

        _forkserver()
        forkserver.ensure_running()


class LocalExecutor:
    name = "local"
    submits_graph = False

    def submit(self, job: Job) -> None:
        job.directory.mkdir(parents=True, exist_ok=True)
        if warm():
            lock = _HandedFd(job.lock.fileno()) if job.lock is not None else None
            process = _forkserver().Process(
                target=_run_forked,
                args=(str(job.task_file), str(job.log), {**os.environ, **job.env}, lock),
                daemon=False,
            )
            process.start()
            job.handle = process
            return
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
        return int(job.handle.pid)

    def poll(self, job: Job) -> int | None:
        if isinstance(job.handle, subprocess.Popen):
            return job.handle.poll()
        code = job.handle.exitcode
        return None if code is None else int(code)

    def _signal(self, job: Job, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            try:
                os.killpg(self.pid(job), sig)
            except ProcessLookupError:  # not yet its own session leader
                os.kill(self.pid(job), sig)

    def cancel(self, job: Job) -> None:
        """SIGINT to the job's process group, as Ctrl-C would: it checkpoints and ends as interrupted."""
        self._signal(job, signal.SIGINT)

    def kill(self, job: Job) -> None:
        self._signal(job, signal.SIGKILL)

    def reason(self, job: Job) -> str | None:
        return None  # the process's own log says why (scheduler.logged_error)

    def state(self, job: Job) -> JobState | None:
        return None

    def log(self, job: Job) -> Path:
        return job.log


def device_slots(devices: str, workers: int) -> list[str | None]:
    """One device set per worker: None (CPU) or a CUDA_VISIBLE_DEVICES value."""
    if devices == "auto":
        ids = _cuda_ids()
        if not ids:
            return [None] * workers
    elif devices == "cpu":
        return [None] * workers
    else:
        if not devices.startswith("cuda:") or not all(x.strip().isdigit() for x in devices[5:].split(",")):
            raise UserError(f"--devices: must be cpu, auto or cuda:0,1,…, got {devices!r}")
        ids = [x.strip() for x in devices[5:].split(",")]
    if len(ids) % workers:
        raise UserError(f"--devices: {len(ids)} GPUs do not split evenly into {workers} workers")
    per = len(ids) // workers
    return [",".join(ids[w * per : (w + 1) * per]) for w in range(workers)]


def _cuda_ids() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [x for x in visible.split(",") if x.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]
