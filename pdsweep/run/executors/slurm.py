"""The Slurm executor: every task of a sweep is a batch job, submitted with its dependencies
(`--dependency=afterok:…`), so the sweep goes on when the submitting shell is gone.

A job runs `srun python -m pdsweep.run.worker TASK.json`: one process per GPU (or per
`tasks_per_node` on CPU) on each of its nodes, which take rank, world size and the rendezvous from
Slurm's environment (worker.slurm_ranks). The job script is written beside the task file
(`job.sbatch`) and its id recorded in the task's directory (`job.json`): a second `pdsweep run`
finds the job pending or running and submits nothing.

Ending early: Slurm warns a job `signal_s` before its time limit or a preemption with SIGUSR1; the
run writes a checkpoint after its current step and exits 75, and the job script requeues the job,
which resumes from that checkpoint. `scancel` (pdsweep cancel, Ctrl-C) sends SIGTERM: the run ends
as interrupted, keeping its last checkpoint. A job that dies without saying why (out of memory, the
time limit without a warning) gets Slurm's reason.

sbatch and the Slurm commands are called directly (not through submitit): a task is already a file
and a command, the multi-node launch is one `srun` line in a script the user can read and re-submit
by hand, and the requeue is pdsweep's own signal handling.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from pdsweep import files, rundir
from pdsweep.errors import UserError
from pdsweep.run import worker
from pdsweep.run.executors import Job, JobState
from pdsweep.spec.cluster import ClusterSpec, Kind, Resources

LIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
        "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT"}  # fmt: skip
REASONS = {
    "TIMEOUT": "Slurm ended the job at its time limit",
    "OUT_OF_MEMORY": "Slurm killed the job: out of memory",
    "NODE_FAIL": "Slurm: the job's node failed",
    "PREEMPTED": "Slurm preempted the job",
    "CANCELLED": "the job was cancelled (scancel)",
    "BOOT_FAIL": "Slurm: the job's node failed to boot",
    "DEADLINE": "Slurm: the job missed its deadline",
}
REFRESH_S = 2.0


def explain(s: JobState) -> str:
    """Why an ended job ended, in a line."""
    base = REASONS.get(s.state, f"Slurm job {s.state}")
    if s.state == "CANCELLED" and "Dependency" in s.reason:
        base = "cancelled by Slurm: a task it depends on failed"
    if s.state == "FAILED":
        base = f"the job failed with exit code {s.exit_code}"
    return f"{base} (job {s.job_id}{f' on {s.node}' if s.node else ''})"


def _slurm(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout)  # noqa: S603
    except FileNotFoundError:
        raise UserError(f"--executor slurm: {args[0]} is not installed here (run on a Slurm login node)") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"--executor slurm: {args[0]} did not answer in {timeout:.0f} s") from None


def _combined(job_id: str, tasks: list[JobState]) -> JobState:
    """One state for a job array (a teacher pass's ranks): live while any task is; else completed
    when all completed, or the first task that did not (its exit code and reason)."""
    if len(tasks) == 1:
        return dataclasses.replace(tasks[0], job_id=job_id)
    live = [t for t in tasks if t.live]
    bad = [t for t in tasks if not t.live and t.state != "COMPLETED"]
    pick = next((t for t in live if t.state == "RUNNING"), live[0]) if live else (bad[0] if bad else tasks[0])
    nodes = ",".join(sorted({t.node for t in tasks if t.node}))
    return JobState(job_id, pick.state, bool(live), nodes, pick.elapsed, pick.exit_code, pick.reason)


def _gather(rows: list[JobState], ids: list[str]) -> dict[str, JobState]:
    """Rows of jobs and of job array tasks (`123_4`, `123_[5-7]`) gathered per job id asked about."""
    found: dict[str, list[JobState]] = {}
    for row in rows:
        base = row.job_id.split("_")[0]
        if base in ids:
            found.setdefault(base, []).append(row)
    return {j: _combined(j, rows) for j, rows in found.items()}


def states(job_ids: list[str]) -> dict[str, JobState]:
    """Every job's state: squeue for queued and running jobs, then sacct (or, without accounting,
    scontrol while Slurm still remembers the job) for ended ones. A job Slurm forgot is absent. A
    job array is one job: live while any of its tasks is."""
    ids = sorted({j for j in job_ids if j})
    if not ids:
        return {}
    rows: list[JobState] = []
    q = _slurm(["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%N|%M|%r"])
    for line in q.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 5:
            rows.append(JobState(parts[0], parts[1], parts[1] in LIVE, parts[2], parts[3], reason=parts[4]))
    out = _gather(rows, ids)
    missing = [j for j in ids if j not in out]
    if not missing:
        return out
    a = _slurm(
        ["sacct", "-n", "-P", "-X", "-j", ",".join(missing), "-o", "JobID,State,NodeList,Elapsed,ExitCode,Reason"]
    )
    if a.returncode == 0:
        rows = []
        for line in a.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 6:
                state = parts[1].split()[0]  # "CANCELLED by 0"
                rc = int(parts[4].split(":")[0] or 0)
                node = "" if parts[2] == "None assigned" else parts[2]
                rows.append(JobState(parts[0], state, state in LIVE, node, parts[3], rc, parts[5]))
        return {**out, **_gather(rows, missing)}
    rows = []
    for j in missing:  # no accounting: scontrol knows an ended job for MinJobAge seconds
        s = _slurm(["scontrol", "-o", "show", "job", j])
        for record in s.stdout.splitlines() if s.returncode == 0 else []:  # one line per array task
            fields = dict(re.findall(r"(\w+)=(\S*)", record))
            if "JobState" in fields:
                rc = int(fields.get("ExitCode", "0:0").split(":")[0] or 0)
                state = fields["JobState"]
                node = "" if fields.get("NodeList") in (None, "(null)") else fields["NodeList"]
                task = f"{j}_{fields['ArrayTaskId']}" if "ArrayTaskId" in fields else j
                rows.append(
                    JobState(task, state, state in LIVE, node, fields.get("RunTime", ""), rc, fields.get("Reason", ""))
                )
    return {**out, **_gather(rows, missing)}


def cancel(job_ids: list[str], signal: str | None = None) -> None:
    """scancel the jobs (SIGTERM to a running one: it ends as interrupted; a queued one is removed)."""
    ids = [j for j in job_ids if j]
    if ids:
        _slurm(["scancel", *([f"--signal={signal}", "--full"] if signal else []), *ids])


class SlurmExecutor:
    name = "slurm"
    submits_graph = True
    """Tasks are submitted as soon as their dependencies are submitted; Slurm holds them (afterok)."""

    def __init__(self, cluster: ClusterSpec, sweep: str):
        self.cluster, self.sweep = cluster, sweep
        self.python = cluster.python or sys.executable
        self._states: dict[str, JobState] = {}
        self._fetched = 0.0
        self.submitted: list[str] = []  # job ids this executor submitted (not adopted)

    # -- the job script ------------------------------------------------------------------------

    def resources(self, job: Job) -> Resources:
        kind: Kind = job.kind if job.kind in ("teacher", "logits", "baseline", "student") else "student"  # type: ignore[assignment]
        return self.cluster.resources(kind)

    def script(self, job: Job) -> str:
        """The batch script of a job (also written as job.sbatch beside its task file)."""
        r = self.resources(job)
        gpus = r.gpus_per_node or 0
        per_node = r.tasks_per_node or max(1, gpus)
        name = re.sub(r"[^A-Za-z0-9_.:+=-]", "_", f"{self.cluster.job_name}:{self.sweep}:{job.name or job.key}")[:120]
        opts = [
            f"--job-name={name}",
            f"--output={job.log}",
            "--open-mode=append",
            f"--nodes={r.nodes or 1}",
            f"--ntasks-per-node={per_node}",
            f"--signal=USR1@{self.cluster.signal_s}",
            "--requeue" if self.cluster.requeue else "--no-requeue",
        ]
        opts += [f"--gpus-per-node={gpus}"] if gpus else []
        opts += [f"--array=0-{r.array - 1}"] if job.kind == "logits" and r.array else []
        for field, flag in (("cpus_per_task", "cpus-per-task"), ("mem", "mem"), ("time", "time"),
                            ("partition", "partition"), ("account", "account"), ("qos", "qos")):  # fmt: skip
            if (value := getattr(r, field)) is not None:
                opts.append(f"--{flag}={value}")
        opts += r.sbatch or []
        lines = ["#!/bin/bash", *(f"#SBATCH {o}" for o in opts), f"# pdsweep task {job.key} of sweep {self.sweep}", ""]
        lines += r.setup or []
        requeue = worker.REQUEUE_EXIT if self.cluster.requeue else -1
        lines += [
            'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
            'export MASTER_PORT="$((20000 + SLURM_JOB_ID % 20000))"',
            'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
            'echo "pdsweep: job $SLURM_JOB_ID on $(hostname) at $(date -u +%FT%T.%3NZ), attempt $((${SLURM_RESTART_COUNT:-0} + 1))"',
            f"srun --kill-on-bad-exit=1 {shlex.quote(self.python)} -m pdsweep.run.worker {shlex.quote(str(job.task_file))}",
            "rc=$?",
            f'if [ "$rc" -eq {requeue} ]; then',
            '    echo "pdsweep: stopped on Slurm\'s warning with a checkpoint; requeueing job $SLURM_JOB_ID"',
            '    scontrol requeue "$SLURM_JOB_ID"',
            "fi",
            'exit "$rc"',
        ]
        return "\n".join(lines) + "\n"

    # -- the Executor protocol -----------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """sbatch the job after its dependencies — or adopt the job recorded for the task when it is
        still queued or running (a second `pdsweep run` submits nothing)."""
        recorded = rundir.read_job(job.directory)
        if recorded is not None and recorded.get("executor") == self.name:
            state = states([recorded["job_id"]]).get(recorded["job_id"])
            if state is not None and state.live:
                job.handle = recorded["job_id"]
                job.adopted = True
                return
        job.directory.mkdir(parents=True, exist_ok=True)
        script = job.directory / "job.sbatch"
        files.write_text(script, self.script(job))
        deps = [d.handle for d in job.after if d.handle]
        cmd = ["sbatch", "--parsable"]
        if deps:
            cmd += ["--dependency=afterok:" + ":".join(deps), "--kill-on-invalid-dep=yes"]
        out = _slurm([*cmd, str(script)])
        if out.returncode != 0:
            line = (out.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"sbatch refused {script}: {line}")
        job_id = out.stdout.strip().split(";")[0]
        rundir.write_job(job.directory, self.name, job_id, submitted=time.time(), script=str(script))
        job.handle = job_id
        self.submitted.append(job_id)
        self._fetched = 0.0

    def state(self, job: Job) -> JobState | None:
        if time.monotonic() - self._fetched > REFRESH_S:  # one squeue (and sacct) for every job, every REFRESH_S
            asked = [j for j, s in self._states.items() if s.live] + [
                j for j in self.submitted if j not in self._states
            ]
            self._states.update(states([*asked, str(job.handle)]))
            self._fetched = time.monotonic()
        if str(job.handle) not in self._states:
            self._states.update(states([str(job.handle)]))
        return self._states.get(str(job.handle))

    def poll(self, job: Job) -> int | None:
        """None while the job is queued, running or requeued; else its exit code (a job Slurm has
        forgotten, or that sacct does not show yet, counts as running until it shows)."""
        s = self.state(job)
        if s is None or s.live:
            return None
        return 0 if s.state == "COMPLETED" else (s.exit_code or 1)

    def reason(self, job: Job) -> str | None:
        """Why an ended job ended, when it was not its own doing."""
        s = self.state(job)
        return explain(s) if s is not None and not s.live and s.state != "COMPLETED" else None

    def cancel(self, job: Job) -> None:
        cancel([str(job.handle)])
        self._fetched = 0.0

    def kill(self, job: Job) -> None:
        cancel([str(job.handle)], signal="KILL")
        self._fetched = 0.0

    def log(self, job: Job) -> Path:
        return job.log


def available() -> bool:
    """Whether this machine can submit to a Slurm cluster (sbatch installed and slurmctld answering)."""
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
