"""Executing a whole sweep: its dependency graph run by N workers, each task in its own process.

    corpus ─▶ teacher runs ─▶ teacher logits passes ─▶ students        (LM-only baselines: no deps)
                         └──────────(online logits)──▶ students

A task is a training run (`pdsweep train` in a subprocess, log in `<run dir>/train.log`) or a
teacher logits pass (`pdsweep logits generate`; its run file, log and status in the store directory). Before starting a task the
scheduler takes the task's file lock and hands it to the subprocess, so two `pdsweep run` of one
sweep never execute a task twice: the second waits for the lock and then finds the task done.
Every start and end, and every change of a task's CPU threads, is appended to its `events.jsonl`.

Running a sweep again skips done runs, resumes killed or interrupted ones from their checkpoints,
and retries failed ones only with `retry_failed`. Ctrl-C interrupts the running tasks (each writes
`interrupted` to its status and keeps its last checkpoint) and stops the sweep.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pdsweep import files, rundir, settings
from pdsweep.errors import UserError
from pdsweep.run import executors, reuse, tracking, worker
from pdsweep.run.executors import Executor, Job
from pdsweep.run.executors.local import device_slots
from pdsweep.spec import expand, plan

POLL_S = 0.5
STOP_GRACE_S = 30.0


TaskKind = Literal["train", "logits"]
Role = Literal["teacher", "baseline", "student", "logits"]
TaskStatus = Literal["pending", "waiting", "queued", "running", "done", "failed", "interrupted"]
"""A run directory's statuses (rundir.Status), `waiting` (another pdsweep process holds its lock) and
`queued` (its cluster job waits in the batch system's queue)."""


@dataclass
class Task:
    """One node of the sweep's graph: a training run or a teacher logits pass."""

    key: str
    kind: TaskKind
    label: str
    role: Role
    dir: Path
    deps: list[str]
    run: expand.PlannedRun | None = None
    pass_: plan.TeacherPass | None = None
    logits: Path | None = None  # the store a training run reads
    total_steps: int = 0
    status: TaskStatus = "pending"
    reason: str = ""
    step: int = 0
    loss: float | None = None
    started: float = 0.0
    start_step: int = 0
    result: dict[str, Any] = field(default_factory=dict)
    job: Job | None = None  # while the task's process runs (or its job is queued)
    slot: int = -1
    attempted: bool = False
    threads: int = 0  # the CPU threads last given to the running task (its `threads` file)
    job_id: str = ""  # its cluster job (job.json), with the batch system's view of it:
    job_state: str = ""
    node: str = ""
    elapsed: str = ""

    @property
    def eta_s(self) -> float | None:
        if self.status != "running" or self.step <= self.start_step:
            return None
        per_step = (time.monotonic() - self.started) / (self.step - self.start_step)
        return per_step * (self.total_steps - self.step)


def logged_error(log: Path) -> str | None:
    """The one-line reason a task's command printed last (`error: …` for input it refused, `failed: …`
    for a run that failed), if any."""
    if not log.exists():
        return None
    with open(log, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 16384))
        lines = f.read().decode("utf-8", "replace").splitlines()
    found = [line.split(": ", 1)[1] for line in lines if line.startswith(("error: ", "failed: "))]
    return found[-1] if found else None


def build(sweep: str, runs: list[expand.PlannedRun]) -> list[Task]:
    """The sweep's tasks in a dependency-respecting order."""
    passes = plan.teacher_passes(runs)
    store_of = plan.stores(sweep, runs, passes)
    teachers = {r.name: r for r in runs if r.role == "teacher"}
    tasks: list[Task] = []
    for r in runs:
        if r.role == "teacher":
            tasks.append(
                Task(
                    r.run_id,
                    "train",
                    r.label,
                    r.role,
                    plan.run_dir(sweep, r.run_id),
                    [],
                    run=r,
                    total_steps=r.spec.steps(),
                )
            )
    pass_task: dict[str, str] = {}
    for p in passes.values():
        if p.mode == "online":
            continue  # recorded by the teacher run itself (RunSpec.train.record_logits)
        deps = [teachers[p.teacher.removeprefix("run:")].run_id] if p.teacher.startswith("run:") else []
        key = f"logits:{p.pass_id}"
        tasks.append(
            Task(key, "logits", f"logits {p.pass_id}", "logits", plan.pass_dir(sweep, p.pass_id), deps, pass_=p)
        )
        pass_task[p.pass_id] = key
    for r in runs:
        if r.role == "teacher":
            continue
        task = Task(
            r.run_id, "train", r.label, r.role, plan.run_dir(sweep, r.run_id), [], run=r, total_steps=r.spec.steps()
        )
        needs = store_of.get(r.run_id)
        if needs is not None:
            task.logits = needs.path
            task.deps = [needs.teacher_run_id] if needs.teacher_run_id else [pass_task[needs.pass_id or ""]]
        tasks.append(task)
    return tasks


def _event(task: Task, event: str, **extra: Any) -> None:
    rundir.append_event(task.dir, {"event": event, "time": time.time(), "pid": os.getpid(), "task": task.key, **extra})


class Scheduler:
    """Runs the tasks of one sweep with `workers` at a time; `on_change` is called whenever a task
    changes state and every POLL_S while tasks run (for a live view)."""

    def __init__(
        self,
        sweep: str,
        tasks: list[Task],
        workers: int = 1,
        devices: str = "cpu",
        tracking_uri: str | None = None,
        track: bool = True,
        retry_failed: bool = False,
        hostfile: Path | None = None,
        parent_run: str | None = None,
        on_change: Callable[[list[Task]], None] = lambda tasks: None,
        executor: Executor | None = None,
        detach: bool = False,
        reuse: bool = True,
        tracker: tracking.Tracker | None = None,
    ):
        self.sweep, self.tasks = sweep, tasks
        self.executor: Executor = executor or executors.make("local")
        self.graph = self.executor.submits_graph  # a batch system holds the graph: no slots, no locks here
        self.detach, self.stopping = detach, False
        self.by_key = {t.key: t for t in tasks}
        self.slots = [None] * max(1, len(tasks)) if self.graph else device_slots(devices, workers)
        self.free = list(range(len(self.slots)))
        self.tracking_uri, self.track, self.retry_failed, self.reuse = tracking_uri, track, retry_failed, reuse
        self.hostfile, self.parent_run, self.on_change = hostfile, parent_run, on_change
        self.tracker = tracker
        for t in tasks:
            self._refresh_from_disk(t)

    # -- state ---------------------------------------------------------------------------------

    def _refresh_from_disk(self, t: Task) -> None:
        state = rundir.read_status(t.dir)
        t.status, t.reason = state["status"], state.get("reason", "")
        if state.get("reused_from"):  # copied from another sweep (run/reuse.py)
            t.reason = f"reused from {state['reused_from'].split('/')[0]}"
        if t.status == "running":  # left by a process that is gone (or another pdsweep's: see _start)
            t.status = "pending"
        if t.kind == "train":
            m = rundir.last_metrics(t.dir)
            t.step, t.loss = int(m.get("step", 0)), m.get("loss")
            if t.status == "done" and (result := rundir.read_result(t.dir)) is not None:
                t.result = result
                t.step = t.total_steps

    def _ready(self, t: Task) -> bool | None:
        """True when every dependency is done, None when one can no longer be (failed)."""
        deps = [self.by_key[d] for d in t.deps]
        if any(d.status in ("failed",) for d in deps):
            return None
        if self.graph:  # submitted after its dependencies' jobs, which the batch system waits for
            return all(d.status == "done" or d.job is not None for d in deps)
        return all(d.status == "done" for d in deps)

    # -- starting and finishing tasks ----------------------------------------------------------

    def _task_file(self, t: Task, slot: str | None) -> Path:
        """The task file its worker process runs (worker.py): a training run, or a teacher pass with
        the runs it serves (the pass stores only the windows they visit)."""
        path = rundir.task_file(t.dir)
        if t.kind == "logits":
            served = [
                worker.ServedRun(
                    seed=r.spec.train.order_seed,
                    steps=r.spec.steps(),
                    global_batch=r.spec.train.global_batch,
                    seq_len=r.spec.data.seq_len,
                    heldout_tokens=r.spec.eval.heldout_tokens,
                )
                for r in (x.run for x in self.tasks if x.logits == t.dir)
                if r is not None
            ]
            ranks = len(slot.split(",")) if slot else 1  # one rank per GPU of the slot
            return worker.write(
                path, worker.LogitsTask(store=t.dir, spec=self._pass_spec(t), serves=served, ranks=ranks)
            )
        assert t.run is not None
        gpus = slot.split(",") if slot else []
        task = worker.TrainTask(
            run_dir=t.dir,
            spec=t.run.spec.model_dump(mode="json"),
            sweep=self.sweep,
            label=t.label,
            logits=t.logits,
            tracking_uri=self.tracking_uri,
            track=self.track,
            nproc=len(gpus) if len(gpus) > 1 else 1,
            launcher="deepspeed",
            hostfile=self.hostfile,
        )
        return worker.write(path, task)

    def _env(self, t: Task, slot: str | None) -> dict[str, str]:
        """The task's environment: its lock, its CPU threads, its GPUs (CUDA_VISIBLE_DEVICES — the
        `train` command hands a multi-GPU set on to its launcher) and the sweep's parent MLflow run."""
        env = {**({"PDSWEEP_MLFLOW_PARENT_RUN": self.parent_run} if self.parent_run else {})}
        if self.graph:  # a cluster job: its own lock, and the devices and threads Slurm gives it
            return env
        env.update(rundir.handed_lock_env(t.dir))
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        elif "CUDA_VISIBLE_DEVICES" not in os.environ:
            env["CUDA_VISIBLE_DEVICES"] = ""  # --devices cpu: CPU even on a GPU machine
        if "OMP_NUM_THREADS" not in os.environ:  # a user's OMP_NUM_THREADS is left alone
            t.threads = self._threads_for(t)
            files.write_text(rundir.threads_file(t.dir), f"{t.threads}\n")
            env["OMP_NUM_THREADS"] = str(t.threads)
            env["PDSWEEP_THREADS_FILE"] = str(rundir.threads_file(t.dir))
        return env

    def _rebalance(self) -> None:
        """Share the cores among the tasks running now: a task whose neighbours ended gets their
        threads (a teacher pass that started beside LM-only runs speeds up when they finish)."""
        running = [t for t in self.tasks if t.job is not None and t.threads]
        for t in running:
            n = max(1, settings.cores() // len(running))
            if n != t.threads:
                t.threads = n
                files.write_text(rundir.threads_file(t.dir), f"{n}\n")
                _event(t, "threads", threads=n)

    def _pass_spec(self, t: Task) -> dict[str, Any]:
        """The RunSpec (as JSON) whose teacher, data and logits make this pass's store."""
        p = t.pass_
        assert p is not None
        example = next(task.run for task in self.tasks if task.run is not None and task.run.run_id in p.runs)
        assert example is not None
        source = p.teacher
        if source.startswith("run:"):
            teacher_run = next(x for x in self.tasks if x.role == "teacher" and x.run and x.run.name == source[4:])
            source = f"ckpt:{teacher_run.dir}"
        spec = example.spec.model_dump(mode="json")
        spec["teacher"] = {**spec["teacher"], "source": source, "run_id": None}  # a teacher run is read as ckpt:DIR
        spec["logits"] = {
            **spec["logits"],
            "mode": "offline",
            "top_p": p.top_p,
            "top_k": p.top_k,
            "sampling": {"draws": p.sampling_draws} if p.sampling_draws else None,
        }
        return spec

    def _threads_for(self, t: Task) -> int:
        """CPU threads for a task starting now: the cores shared among the tasks that will run beside
        it — all of them when it runs alone (a teacher pass every student waits for), cores/workers
        when every worker is busy."""
        running = sum(1 for x in self.tasks if x.job is not None)
        others = sum(1 for x in self.tasks if x is not t and x.job is None and self._candidate(x) and self._ready(x))
        sharing = 1 + running + min(others, len(self.free))
        return max(1, settings.cores() // min(len(self.slots), sharing))

    def _start(self, t: Task) -> bool:
        """Start `t` if its lock is free; False when another pdsweep process holds it."""
        if self.graph:
            return self._submit(t)
        lock = rundir.try_lock(t.dir)
        if lock is None:
            t.status = "waiting"
            return False
        self._refresh_from_disk(t)  # another process may have finished it meanwhile
        if t.status == "pending":
            self._adopt(t)
        if t.status == "done" or (t.status == "failed" and not self.retry_failed):
            lock.close()
            t.attempted = True
            return True
        slot_index = self.free.pop(0)
        slot = self.slots[slot_index]
        env = self._env(t, slot)
        job = Job(
            t.key, self._task_file(t, slot), t.dir, rundir.log_file(t.dir, t.kind), env, lock, None, t.label, t.role
        )
        self.executor.submit(job)
        t.job, t.slot, t.status, t.reason, t.attempted = job, slot_index, "running", "", True
        t.started, t.start_step = time.monotonic(), t.step
        _event(t, "start", slot=slot or "cpu", executor=self.executor.name)
        return True

    def _submit(self, t: Task) -> bool:
        """Submit `t` to the batch system after its dependencies' jobs (or adopt its job when an earlier
        pdsweep submitted it and it is queued or running). The job takes the task's lock itself."""
        self._refresh_from_disk(t)
        if t.status == "pending" and (lock := rundir.try_lock(t.dir)) is not None:
            with contextlib.closing(lock):
                self._adopt(t)
        if t.status == "done" or (t.status == "failed" and not self.retry_failed):
            t.attempted = True
            return True
        after = [d.job for d in (self.by_key[k] for k in t.deps) if d.job is not None]
        job = Job(t.key, rundir.task_file(t.dir), t.dir, rundir.log_file(t.dir, t.kind), self._env(t, None), None,
                  None, t.label, t.role, after)  # fmt: skip
        self._task_file(t, None)
        self.executor.submit(job)
        t.job, t.slot, t.status, t.reason, t.attempted = job, self.free.pop(0), "queued", "", True
        t.job_id, t.started, t.start_step = str(job.handle), time.monotonic(), t.step
        _event(t, "adopt" if job.adopted else "submit", executor=self.executor.name, job=t.job_id)
        return True

    def _adopt(self, t: Task) -> None:
        """Copy the run another sweep of the work directory finished with this run's spec and this
        code instead of training it (run/reuse.py); its lock is held by the caller."""
        src = self.reuse_source(t)
        if src is None or t.run is None:
            return
        try:
            reuse.adopt(src, t.dir, sweep=self.sweep, label=t.label, seed=t.run.spec.train.seed,
                        tracker=self._tracker(), parent_run=self.parent_run)  # fmt: skip
        except (UserError, OSError) as e:  # the copy failed and was undone: the run trains as if new
            _event(t, "reuse-failed", source=str(src), reason=str(e)[:500])
            return
        self._refresh_from_disk(t)

    def _tracker(self) -> tracking.Tracker:
        """Where copies of reused runs are tracked (made on the first copy: a dry run writes nothing)."""
        if self.tracker is None:
            self.tracker = tracking.make(self.tracking_uri, self.track)
        return self.tracker

    def reuse_source(self, t: Task) -> Path | None:
        """The run directory of another sweep that `t` would be copied from (None: it trains)."""
        if not self.reuse or t.kind != "train" or t.run is None:
            return None
        return reuse.source_for(self.sweep, t.run, t.dir, self.track)

    def _finish(self, t: Task, rc: int) -> None:
        assert t.job is not None
        log = self.executor.log(t.job)
        if t.kind == "logits" and rundir.read_status(t.dir)["status"] in ("running", "pending") and not self.stopping:
            if rc == 0:
                rundir.write_status(t.dir, "done")
            elif (reason := logged_error(log)) is not None:
                rundir.write_status(t.dir, "failed", reason=reason)
        state = rundir.read_status(t.dir)
        t.status, t.reason = state["status"], state.get("reason", "")
        if t.status in ("running", "pending"):  # the process ended without writing why
            slurm = self.executor.reason(t.job)
            t.status = "failed"
            t.reason = (
                "stopped by Ctrl-C"
                if self.stopping
                else logged_error(log) or slurm or f"the process ended unexpectedly with exit code {rc} (see {log})"
            )
            job = self.executor.state(t.job)
            never_ran = state["status"] == "pending" and job is not None and job.state == "CANCELLED"
            if self.stopping:
                t.status = "interrupted"
            if not never_ran:  # a queued job cancelled (a dependency failed, Ctrl-C) leaves no trace
                rundir.write_status(t.dir, t.status, reason=t.reason)
            if slurm and t.kind == "train" and not never_ran:
                with contextlib.suppress(Exception):  # its MLflow run says so too, as far as the store answers
                    tracking.end_run(t.dir, t.status, t.reason)
        self._refresh_progress(t)
        if t.kind == "train" and t.status == "done" and (result := rundir.read_result(t.dir)) is not None:
            t.result = result
        _event(t, "end", status=t.status, exit_code=rc)
        if t.job.lock is not None:
            t.job.lock.close()
        t.job = None
        self.free.append(t.slot)
        self.free.sort()

    def _refresh_progress(self, t: Task) -> None:
        m = rundir.last_metrics(t.dir)
        if m:
            t.step, t.loss = int(m["step"]), m.get("loss")
        if self.graph and t.job is not None:
            s = self.executor.state(t.job)
            if s is not None:
                t.job_state, t.node, t.elapsed = s.state, s.node, s.elapsed
                if s.live:
                    t.status = s.task_status

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> list[Task]:
        """Run the sweep; on Ctrl-C or an error of the scheduler itself (a full disk, a bug), stop every
        running task the way Ctrl-C does — each keeps its last checkpoint and resumes on the next run —
        and raise."""
        try:
            self._loop()
        except BaseException:
            self.stop()
            raise
        return self.tasks

    def _candidate(self, t: Task) -> bool:
        """Should this invocation still (try to) run `t`? Each task is started at most once."""
        if t.attempted or t.job is not None or t.status == "done":
            return False
        return not (t.status == "failed" and not self.retry_failed)

    def _loop(self) -> None:
        while True:
            for t in self.tasks:
                if t.job is None:
                    continue
                rc = self.executor.poll(t.job)
                if rc is not None:
                    self._finish(t, rc)
                else:
                    self._refresh_progress(t)
            with rundir.held(plan.sweep_dir(self.sweep)) if self.graph else contextlib.nullcontext():
                # one pdsweep at a time submits a sweep's jobs: a second finds them recorded, and adopts them
                for t in self.tasks:  # in dependency order, so a failure propagates in one pass
                    if not self._candidate(t):
                        continue
                    ready = self._ready(t)
                    if ready is None:
                        failed = next(d for d in t.deps if self.by_key[d].status == "failed")
                        t.status, t.reason, t.attempted = "failed", f"{self.by_key[failed].label} did not finish", True
                    elif ready and self.free:
                        self._start(t)
            self._rebalance()
            self.on_change(self.tasks)
            if self.detach:
                return
            busy = any(t.job is not None or t.status == "waiting" for t in self.tasks)
            if not busy and not any(self._candidate(t) and self._ready(t) for t in self.tasks):
                return
            time.sleep(POLL_S)

    def stop(self) -> None:
        """Cancel every running task (its process checkpoints and writes its state, as on Ctrl-C), give
        them STOP_GRACE_S, then kill what is left."""
        self.stopping = True
        running = [t for t in self.tasks if t.job is not None]
        for t in running:
            assert t.job is not None
            self.executor.cancel(t.job)
        deadline = time.monotonic() + STOP_GRACE_S
        ended: dict[str, int] = {}
        while len(ended) < len(running):
            for t in running:
                if t.key not in ended and t.job is not None and (rc := self.executor.poll(t.job)) is not None:
                    ended[t.key] = rc
            if len(ended) < len(running):
                if time.monotonic() > deadline:
                    for t in running:
                        if t.key not in ended and t.job is not None:
                            self.executor.kill(t.job)
                    deadline = float("inf")
                time.sleep(0.05)
        for t in running:
            with contextlib.suppress(OSError):  # stopping goes on when a file cannot be written (full disk)
                self._finish(t, ended[t.key])
        self.on_change(self.tasks)
