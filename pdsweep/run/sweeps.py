"""A whole sweep as `pdsweep run` and `pdsweep status` see it: load and check it, track it as one
parent MLflow run, run its task graph through an executor, and say how it ended — or read what its
run directories say now."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pdsweep import proc, rundir, settings
from pdsweep.errors import UserError
from pdsweep.run import executors, launch, scheduler, tracking
from pdsweep.run.executors import local
from pdsweep.run.scheduler import Task
from pdsweep.spec import cluster as cluster_spec
from pdsweep.spec import expand, plan


@dataclass
class Outcome:
    """How `run` ended: every task's state, and whether it was interrupted (Ctrl-C) or stopped by an
    error of its own (its running tasks were interrupted and keep their checkpoints)."""

    sweep: str
    tasks: list[Task]
    slots: int
    dry_run: bool = False
    interrupted: bool = False
    detached: bool = False
    error: str | None = None
    trained: list[Task] = field(default_factory=list)

    @property
    def done(self) -> int:
        return sum(t.status == "done" for t in self.trained)

    @property
    def ok(self) -> bool:
        return not self.interrupted and self.error is None and self.done == len(self.trained)

    @property
    def directory(self) -> Path:
        return plan.sweep_dir(self.sweep)


def run(
    *,
    sweep_file: Path,
    workers: int = 1,
    devices: str = "cpu",
    hostfile: Path | None = None,
    tracking_uri: str | None = None,
    track: bool = True,
    retry_failed: bool = False,
    reuse: bool = True,
    dry_run: bool = False,
    executor: str = "local",
    cluster: Path | None = None,
    detach: bool = False,
    on_start: Callable[[str, int, int], None] = lambda sweep, runs, slots: None,
    on_change: Callable[[list[Task]], None] = lambda tasks: None,
) -> Outcome:
    """Run a sweep's tasks in dependency order, `workers` at a time (resumable: done tasks are
    skipped, killed ones resume). `on_start(sweep, runs, slots)` once everything is checked,
    `on_change(tasks)` whenever a task changes state. UserError for bad input, before anything runs."""
    sweep = expand.load_sweep(sweep_file)
    runs = expand.expand(sweep, str(sweep_file))
    if not dry_run:
        settings.check_workdir()
    tasks = scheduler.build(sweep.name, runs)
    if hostfile is not None and not hostfile.is_file():
        raise UserError(f"--hostfile: {hostfile} does not exist")
    if hostfile is not None:
        launch.hostfile_hosts(hostfile)
    profile = cluster_spec.chosen(sweep.cluster, cluster)
    if executor != "slurm" and (cluster is not None or detach):
        raise UserError(f"--{'cluster' if cluster is not None else 'detach'}: needs --executor slurm")
    ex = executors.make(executor, profile, sweep.name)
    slots = [None] if ex.submits_graph else local.device_slots(devices, workers)
    if dry_run:
        sched = scheduler.Scheduler(
            sweep.name, tasks, workers, devices, track=track, retry_failed=retry_failed, executor=ex, reuse=reuse
        )
        for t in sched.tasks:
            if t.status == "pending" and (src := sched.reuse_source(t)) is not None:
                t.reason = f"would be reused from {src.parent.name}"
        return Outcome(sweep.name, sched.tasks, len(slots), dry_run=True)
    if ex.name == "local":
        local.warm_up()
    tracker = tracking.make(tracking_uri, track)  # an unreachable store fails here, before any run
    parent = tracker.start_sweep(sweep.name, plan.sweep_dir(sweep.name), sweep_file, len(runs))
    sched = scheduler.Scheduler(
        sweep.name,
        tasks,
        workers,
        devices,
        tracking_uri,
        track,
        retry_failed,
        hostfile,
        parent,
        executor=ex,
        detach=detach,
        reuse=reuse,
        tracker=tracker,
    )
    on_start(sweep.name, len(runs), len(slots))
    sched.on_change = on_change
    outcome = Outcome(sweep.name, sched.tasks, len(slots), trained=[t for t in sched.tasks if t.kind == "train"])
    try:
        with _stop_on_sigterm():
            sched.run()
    except KeyboardInterrupt:
        tracker.finish("interrupted", "interrupted (Ctrl-C)")
        outcome.interrupted = True
        return outcome
    except UserError as e:  # refused by the batch system (sbatch): nothing of the sweep ran
        tracker.finish("failed", "; ".join(e.problems))
        raise
    except Exception as e:  # noqa: BLE001 - the scheduler's own failure: its tasks were stopped, resumable
        outcome.error = proc.describe(e)
        with contextlib.suppress(Exception):  # the store may be what failed
            tracker.finish("failed", outcome.error)
        return outcome
    if detach:  # the batch system runs the sweep; its parent MLflow run stays open for the jobs' runs
        outcome.detached = True
        return outcome
    tracker.log_metrics({"runs_done": outcome.done, "runs_failed": len(outcome.trained) - outcome.done}, 0)
    tracker.log_metrics(_pass_costs(sched.tasks), 0)
    tracker.finish("done" if outcome.done == len(outcome.trained) else "failed")
    return outcome


def _pass_costs(tasks: list[Task]) -> dict[str, float]:
    """What each finished teacher pass cost, for the sweep's MLflow run: `teacher_pass/<store>/…`
    positions, bytes, FLOPs and device-hours (logits.store.pass_compute)."""
    from pdsweep.logits import store as logits_store

    out: dict[str, float] = {}
    for t in tasks:
        if t.kind == "logits" and t.status == "done" and logits_store.is_store(t.dir):
            for key, value in logits_store.pass_compute(t.dir).items():
                if value is not None:
                    out[f"teacher_pass/{t.dir.name}/{key}"] = float(value)
    return out


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM (`kill PID`, a batch system ending the job) stops the sweep the way Ctrl-C does: every
    running task checkpoints and is left interrupted, resumable. (SIGINT keeps its own disposition: a
    background job of a script ignores it, as the shell intends.)"""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def status(*, sweep_file: Path) -> tuple[str, list[Task]]:
    """Every task of a sweep as its run directories say now; `running` only while a process holds its
    lock (else `interrupted`). No MLflow needed."""
    sweep = expand.load_sweep(sweep_file)
    sched = scheduler.Scheduler(sweep.name, scheduler.build(sweep.name, expand.expand(sweep, str(sweep_file))))
    jobs = _jobs(sched.tasks)
    live = _job_states(jobs)
    for t in sched.tasks:
        state = live.get(jobs.get(t.key, ""))
        on_disk = rundir.read_status(t.dir)["status"]
        if state is not None:
            t.job_id, t.job_state, t.node, t.elapsed = state.job_id, state.state, state.node, state.elapsed
        if state is not None and state.live and t.status != "done":
            t.status = state.task_status
        elif on_disk == "running":
            t.status = "running" if rundir.is_locked(t.dir) else "interrupted"
        if (
            state is not None
            and not state.live
            and t.status in ("pending", "interrupted")
            and state.state != "COMPLETED"
        ):
            from pdsweep.run.executors import slurm

            t.reason = t.reason or slurm.explain(state)
    return sweep.name, sched.tasks


def _jobs(tasks: list[Task]) -> dict[str, str]:
    """Each task's recorded cluster job id (job.json), by task key."""
    out = {}
    for t in tasks:
        job = rundir.read_job(t.dir)
        if job is not None and job.get("executor") == "slurm":
            out[t.key] = str(job["job_id"])
    return out


def _job_states(jobs: dict[str, str]) -> dict[str, executors.JobState]:
    if not jobs:
        return {}
    from pdsweep.run.executors import slurm

    try:
        return slurm.states(list(jobs.values()))
    except UserError:  # no Slurm here (the run directories were made on the cluster): pdsweep's view only
        return {}


def cancel(*, sweep_file: Path) -> tuple[str, list[str]]:
    """Cancel every queued or running cluster job of a sweep (each running run ends as interrupted,
    keeping its checkpoints); the job ids cancelled."""
    sweep = expand.load_sweep(sweep_file)
    tasks = scheduler.build(sweep.name, expand.expand(sweep, str(sweep_file)))
    jobs = _jobs(tasks)
    if not jobs:
        return sweep.name, []
    from pdsweep.run.executors import slurm

    live = [j for j, s in slurm.states(list(jobs.values())).items() if s.live]
    slurm.cancel(live)
    return sweep.name, sorted(live, key=int)
