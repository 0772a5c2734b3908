"""The one entry point of every process pdsweep starts for a task: `python -m pdsweep.run.worker TASK.json`.

A task file is a typed, validated description of one unit of work — train a run, make a teacher
logits pass, or work on an Optuna study — written by the scheduler or `pdsweep tune` and read here.
It is the internal protocol between pdsweep and its subprocesses (and, through an executor, its
cluster jobs), so the user's command line can change without breaking it:

    {"kind": "train",  "run_dir": …, "spec": {RunSpec}, "sweep": …, "label": …, "logits": STORE|null,
                       "tracking_uri": …, "track": true, "nproc": 1, "launcher": "torchrun", "hostfile": null}
    {"kind": "logits", "store": …, "spec": {RunSpec of the pass}, "serves": [{seed, steps, global_batch,
                       seq_len, heldout_tokens}, …]}
    {"kind": "tune",   "sweep_file": …, "storage": URL, "index": 0, "trials": null, "tracking_uri": …, "track": true}

The process prints its outcome as the last lines of its log — `done: …`, `failed: REASON` (the run
failed) or `error: LINE` (input it refused) — which the scheduler shows as the task's reason, and
exits 0 (done), 1 (failed) or 2 (refused input).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pdsweep import files
from pdsweep.errors import UserError


class _Task(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServedRun(_Task):
    """What a teacher pass needs to know of a run it serves: which windows it visits, which held-out
    positions it evaluates on."""

    seed: int
    steps: int
    global_batch: int
    seq_len: int
    heldout_tokens: int


class TrainTask(_Task):
    kind: Literal["train"] = "train"
    run_dir: Path
    spec: dict[str, Any]
    """The resolved RunSpec, as JSON."""
    sweep: str = "single"
    label: str
    logits: Path | None = None
    """The store the run reads (a pass of the sweep, or its teacher run's recorded store)."""
    tracking_uri: str | None = None
    track: bool = True
    nproc: int = Field(default=1, ge=1)
    launcher: Literal["torchrun", "deepspeed"] = "torchrun"
    hostfile: Path | None = None


class LogitsTask(_Task):
    kind: Literal["logits"] = "logits"
    store: Path
    spec: dict[str, Any]
    """A RunSpec whose teacher, data and logits (offline, the pass's largest p and k) define the pass."""
    serves: list[ServedRun] = []
    """The runs the pass serves: only the windows they visit are generated (all when empty)."""
    limit: int | None = None
    """Only the first N training positions (`pdsweep logits generate --limit`)."""
    batch_size: int | None = None
    ranks: int = Field(default=1, ge=1)
    """Processes on this machine, each writing its own shards (one per GPU); under a launcher or
    `srun` the ranks come from it instead."""
    encoders: int = Field(default=0, ge=0)
    """Processes per rank that encode shards (0: one thread beside the teacher)."""
    shard_positions: int = Field(default=16384, ge=1)


class TuneTask(_Task):
    kind: Literal["tune"] = "tune"
    sweep_file: Path
    storage: str
    index: int = Field(ge=0)
    trials: int | None = None
    tracking_uri: str | None = None
    track: bool = True


Task = Annotated[TrainTask | LogitsTask | TuneTask, Field(discriminator="kind")]


def write(path: Path, task: TrainTask | LogitsTask | TuneTask) -> Path:
    files.write_text(path, task.model_dump_json(indent=1) + "\n")
    return path


def read(path: Path) -> TrainTask | LogitsTask | TuneTask:
    from pydantic import TypeAdapter, ValidationError

    try:
        raw = path.read_text()
    except OSError as e:
        raise UserError(f"{path}: cannot read the task file ({e.strerror})") from None
    try:
        return TypeAdapter(Task).validate_json(raw)  # type: ignore[no-any-return]
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise UserError(f"{path}: not a pdsweep task file ({where}: {first['msg']})") from None


def command(task_file: Path) -> list[str]:
    """The command line that runs a task file on this machine's Python."""
    return [sys.executable, "-m", "pdsweep.run.worker", str(task_file)]


# ----------------------------------------------------------------------------------------------
# Running a task
# ----------------------------------------------------------------------------------------------


def run(task_file: Path) -> int:
    """Run the task a file describes; the exit code (0 done, 1 failed, 2 refused input)."""
    task = read(task_file)
    if isinstance(task, TrainTask):
        return _train(task, task_file)
    if isinstance(task, LogitsTask):
        return _logits(task, task_file)
    return _tune(task)


def _train(task: TrainTask, task_file: Path) -> int:
    from pdsweep.run import launch
    from pdsweep.spec import RunSpec

    if (task.nproc > 1 or task.hostfile is not None) and "RANK" not in os.environ:
        launcher = "deepspeed" if task.hostfile else task.launcher
        return launch.relaunch(["pdsweep.run.worker", str(task_file)], task.nproc, launcher, task.hostfile)
    spec = RunSpec.model_validate(task.spec)
    outcome = launch.run_one(
        spec,
        task.run_dir,
        task.logits,
        tracking_uri=task.tracking_uri,
        track=task.track,
        sweep=task.sweep,
        label=task.label,
    )
    return report(outcome)


def report(outcome: Any) -> int:
    """Print how a run ended (rank 0 only) and return its exit code."""
    code = {"done": 0, "failed": 1}.get(outcome.status, 2)
    if outcome.rank != 0:
        return code
    if outcome.status == "failed":
        print(f"failed: {outcome.reason}", file=sys.stderr, flush=True)
    elif outcome.status == "invalid":
        for line in outcome.reason.splitlines():
            print(f"error: {line}", file=sys.stderr, flush=True)
    else:
        r = outcome.result
        ev = f", held-out loss {r['heldout/loss']:.4f}" if "heldout/loss" in r else ""
        ev += f", resumed at step {r['resumed_from']}" if r.get("resumed_from") else ""
        print(
            f"done: {outcome.run_dir} — {r['step']} steps, train loss {r['train/loss']:.4f}{ev}"
            f" (unigram entropy {r['unigram_entropy_nats']:.3f})",
            flush=True,
        )
    return code


def _logits(task: LogitsTask, task_file: Path) -> int:
    """A teacher pass, or one rank of it; its state goes to the store directory's status.json
    (pdsweep status reads it there, whether the pass ran under `pdsweep run` or as a cluster job):
    running from its first rank, done from the rank that completes the store, failed from any."""
    from pdsweep import proc, rundir

    spawn = task.ranks > 1 and "RANK" not in os.environ  # this process only starts the ranks: no torch here
    if spawn:
        rank, ranks = 0, task.ranks
    else:
        from pdsweep.logits import teacher_pass
        from pdsweep.run import launch
        from pdsweep.spec import RunSpec

        rank, ranks = teacher_pass.pass_rank()
    if rank == 0:
        rundir.write_status(task.store, "running", pid=os.getpid(), ranks=ranks)
    try:
        if spawn:
            result = spawn_pass(task_file, task.store, task.ranks)
        else:
            result = launch.generate_pass(
                spec=RunSpec.model_validate(task.spec),
                store=task.store,
                limit=task.limit,
                batch_size=task.batch_size,
                serves=[r.model_dump() for r in task.serves] or None,
                encoders=task.encoders,
                shard_positions=task.shard_positions,
                rank=(rank, ranks),
            )
    except KeyboardInterrupt:
        rundir.write_status(task.store, "interrupted", reason=proc.stop_requested() or "interrupted (Ctrl-C)")
        raise
    except UserError as e:
        rundir.write_status(task.store, "failed", reason="; ".join(e.problems))
        raise
    except Exception as e:
        rundir.write_status(task.store, "failed", reason=proc.describe(e))
        print(f"failed: {proc.describe(e)}", file=sys.stderr, flush=True)
        raise
    if result.get("failed"):
        reason = "; ".join(result["failed"]) + " — run the pass again: it redoes only their shards"
        rundir.write_status(task.store, "failed", reason=reason)
        print(f"failed: {reason}", file=sys.stderr, flush=True)
        return 1
    if result["pending"] == 0:
        from pdsweep.logits import store as logits_store

        rundir.write_status(task.store, "done", **logits_store.pass_compute(task.store))
    where = f"rank {rank} of {ranks}: " if ranks > 1 and not spawn else ""
    now = f"{result['generated']:,} generated now in {result['seconds']:.1f} s" if not spawn else "every rank done"
    print(f"done: {where}{task.store}: {result['positions']:,} positions ({now})", flush=True)
    return 0


def spawn_pass(
    task_file: Path, store: Path, ranks: int, progress: Any = lambda *a: None, poll_s: float = 0.5
) -> dict[str, Any]:
    """Run a pass's task file over `ranks` processes on this machine (RANK, WORLD_SIZE, LOCAL_RANK; a
    GPU each, or an equal share of the cores), each writing its own shards. The ranks are
    independent: one that dies leaves the others to finish, and a rerun redoes only its shards.
    Returns the pass's totals, with `failed`: a line for each rank that did not finish."""
    import subprocess
    import time

    from pdsweep import proc, settings
    from pdsweep.logits import store as logits_store

    share = max(1, settings.cores() // ranks)
    procs = []
    for r in range(ranks):
        env = {**os.environ, "RANK": str(r), "WORLD_SIZE": str(ranks), "LOCAL_RANK": str(r)}
        env["LOCAL_WORLD_SIZE"] = str(ranks)
        env.setdefault("OMP_NUM_THREADS", str(share))
        env.pop("PDSWEEP_THREADS_FILE", None)  # the machine's share is fixed per rank
        cmd = [sys.executable, "-m", "pdsweep.run.worker", str(task_file)]
        procs.append(subprocess.Popen(cmd, env=env, preexec_fn=proc.die_with_parent))  # noqa: PLW1509
    total = None
    while any(p.poll() is None for p in procs):
        time.sleep(poll_s)
        with contextlib.suppress(UserError, KeyError, OSError):
            manifest = logits_store.read_manifest(store)
            total = total or (len(manifest["pending"]) + len(manifest["shards"]))
            done = sum(1 for p in store.glob("shard-*.json"))
            progress(f"teacher logits ({ranks} ranks, shards)", min(done, total), total)
    failed = [f"rank {r} {proc.exit_reason(p.returncode)}" for r, p in enumerate(procs) if p.returncode != 0]
    manifest = logits_store.StoreWriter.assembled(store)
    return {
        "store": store,
        "positions": sum(s["positions"] for s in manifest["shards"]),
        "generated": None,
        "pending": len(manifest["pending"]),
        "failed": failed,
    }


def _tune(task: TuneTask) -> int:
    from pdsweep.run import search

    def show(o: Any) -> None:
        value = f"{o.value:.6g}" if o.value is not None else o.reason or "-"
        print(f"trial {o.number}: {o.state} {value}  {o.params}", flush=True)

    search.work(
        task.sweep_file, task.storage, task.index, task.tracking_uri, task.track, on_trial=show, trials=task.trials
    )
    return 0


REQUEUE_EXIT = 75
"""The exit code of a task that stopped on its batch system's warning (a checkpoint written): its job
script requeues the job, which resumes from that checkpoint."""


def _interrupt(signum: int, frame: object) -> None:
    """SIGINT (pdsweep stopping its tasks, Ctrl-C) and SIGTERM (scancel, a batch system ending the job):
    a training run stops after its current step, with a checkpoint; anything else stops at once."""
    from pdsweep import proc

    proc.interrupt("interrupted (Ctrl-C)" if signum == signal.SIGINT else "interrupted (SIGTERM)")


def _warned(signum: int, frame: object) -> None:
    """SIGUSR1, a Slurm job's warning before its time limit or a preemption (`--signal=USR1@…`): as
    `_interrupt`, and the job script requeues the job when the task exits with REQUEUE_EXIT."""
    from pdsweep import proc

    proc.interrupt("stopped on the batch system's warning (time limit or preemption); resumes when requeued", True)


def slurm_ranks(env: Mapping[str, str]) -> dict[str, str]:
    """The torch.distributed variables of one process of a multi-process Slurm step (`srun -n N`):
    rank, world size, local rank and size from Slurm's, the rendezvous on the step's first node (the
    job script exports MASTER_ADDR and MASTER_PORT). Empty outside such a step or under a launcher."""
    if "RANK" in env or "SLURM_STEP_ID" not in env or int(env.get("SLURM_STEP_NUM_TASKS", "1")) <= 1:
        return {}
    per_node: list[int] = []
    for part in env.get("SLURM_STEP_TASKS_PER_NODE", "1").split(","):
        count, _, times = part.partition("(x")
        per_node += [int(count)] * int(times.rstrip(")") or 1)
    node = int(env.get("SLURM_NODEID", "0"))
    out = {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env["SLURM_STEP_NUM_TASKS"],
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": str(per_node[node] if node < len(per_node) else 1),
    }
    if "MASTER_ADDR" not in env:
        out["MASTER_ADDR"] = "127.0.0.1"
    if "MASTER_PORT" not in env:
        out["MASTER_PORT"] = str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # SIGINT is how pdsweep asks its task to stop (checkpoint, then interrupted): honour it even when
    # `pdsweep run` itself was started with SIGINT ignored (a script's background job), which every
    # process would otherwise inherit. A task runs in its own session: a terminal's Ctrl-C reaches
    # `pdsweep run`, never the task directly. SIGTERM (scancel, a batch system ending the job) stops
    # it the same way; SIGUSR1 (a Slurm job's warning) checkpoints first.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGUSR1, _warned)
    if len(args) != 1:
        print("usage: python -m pdsweep.run.worker TASK.json", file=sys.stderr)
        return 2
    os.environ.update(slurm_ranks(os.environ))
    try:
        return run(Path(args[0]))
    except UserError as e:
        if os.environ.get("RANK", "0") == "0":  # every rank refuses the same input: say it once
            for line in e.problems:
                print(f"error: {line}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        from pdsweep import proc

        return REQUEUE_EXIT if proc.requeue_requested() else 130


if __name__ == "__main__":
    sys.exit(main())
