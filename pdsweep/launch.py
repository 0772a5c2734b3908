"""Executing runs: one run in its directory (lock, spec, status, teacher store, training), and
re-launching a command over several processes or machines.

A run directory holds `spec.yaml` (the resolved RunSpec and its run_id), `status.json`
(running / done / failed with the reason), `metrics.jsonl`, `result.json`, `checkpoints/` and, for
runs that record online logits, `logits/`. Running a run again resumes it from its last checkpoint.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pdsweep import backends, data, expand, files, logits_store, settings, teacher, tracking, trainer
from pdsweep.spec import RunSpec, TeacherSpec
from pdsweep.specfile import SpecError

Progress = Callable[[str, int, int], None]

_held_locks: list[Any] = []


def lock(run_dir: Path) -> None:
    """Hold an exclusive lock on the run directory for the life of this process (two processes
    never train one run)."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / ".lock", "a+")  # noqa: SIM115 - held open until the process exits
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SpecError(f"{run_dir}: another pdsweep process is training this run") from None
    _held_locks.append(f)


def ensure_builtin_teacher(spec: RunSpec, progress: Progress = lambda *a: None) -> None:
    """A builtin teacher's tokenizer is needed before tokenizing: fetch the teacher first."""
    if spec.teacher is not None and spec.teacher.kind == "builtin" and spec.data.tokenizer.kind == "teacher":
        teacher.builtin_dir(spec.teacher.ref, progress)


def store_for(
    spec: RunSpec, tokens: data.TokenData, given: Path | None, progress: Progress
) -> logits_store.StoreReader | None:
    """The logits store a run with a teacher reads: the one given, or its teacher's default store in
    the work directory (generated here, resumably, if it is not complete)."""
    if not spec.uses_teacher:
        return None
    if given is not None:
        return logits_store.StoreReader(given)
    assert spec.teacher is not None
    if spec.teacher.kind == "run":
        raise SpecError(f"teacher: {spec.teacher.source} is a teacher run of a sweep; give its store with --logits")
    t = teacher.load(spec.teacher)
    teacher.check_tokenizer(t, tokens, spec.teacher.source)
    lg = spec.logits
    draws = lg.sampling.draws if lg.sampling else None
    store = (
        settings.workdir()
        / "logits"
        / f"{t.fingerprint[:8]}-{tokens.manifest['corpus_fingerprint'][:8]}-{lg.store_label}"
    )
    teacher.generate(
        t,
        tokens,
        store,
        lg.top_p,
        lg.top_k,
        spec.data.seq_len,
        batch_size=spec.teacher.batch_size,
        progress=progress,
        sampling_draws=draws,
    )
    return logits_store.StoreReader(
        store, expect=teacher.store_info(t, tokens, lg.top_p, lg.top_k, sampling_draws=draws)
    )


class _Track(trainer.Callback):
    """Training and evaluation metrics to the tracker, by optimiser step (rank 0 only)."""

    def __init__(self, tracker: tracking.Tracker):
        self.tracker = tracker

    def on_step(self, state: trainer.TrainState, metrics: dict[str, float]) -> None:
        if state.rank == 0:
            self.tracker.log_metrics(metrics, state.step)

    def on_eval(self, state: trainer.TrainState, metrics: dict[str, float]) -> None:
        if state.rank == 0:
            self.tracker.log_metrics({f"eval/{k}": v for k, v in metrics.items()}, state.step)


@dataclass
class Outcome:
    """How a run ended: `done` (result), `failed` (reason, e.g. a non-finite loss) or `invalid`
    (its input was found wrong only while running, e.g. data shorter than seq_len)."""

    status: str
    rank: int
    result: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def run_one(
    spec: RunSpec,
    run_dir: Path,
    logits: Path | None = None,
    progress: Progress = lambda *a: None,
    callbacks: tuple[trainer.Callback, ...] = (),
    tracking_uri: str | None = None,
    track: bool = True,
    sweep: str = "single",
    label: str | None = None,
) -> Outcome:
    """Train `spec` in `run_dir` (resuming), keeping `status.json` and its MLflow run true.
    SpecError for bad input found before training starts (an unreachable tracking store included)."""
    backend = backends.make(spec)
    rank0 = backend.rank == 0
    rid = expand.run_id(spec)
    if rank0:
        lock(run_dir)
        spec_file = run_dir / "spec.yaml"
        if spec_file.exists() and yaml.safe_load(spec_file.read_text()).get("run_id") != rid:
            raise SpecError(f"{run_dir}: holds a different run (its spec.yaml has another run_id)")
        files.write_text(spec_file, yaml.safe_dump({"run_id": rid, **spec.model_dump(mode="json")}, sort_keys=False))
    ensure_builtin_teacher(spec, progress)
    tokens = data.prepare(spec, progress=progress)
    store = store_for(spec, tokens, logits, progress if rank0 else lambda *a: None)
    hooks: list[trainer.Callback] = [trainer.MetricsFile(run_dir)]
    if spec.train.record_logits:
        if backend.world_size > 1:
            raise SpecError("train.record_logits: online recording runs on one process for now")
        for rec in spec.train.record_logits:
            info = logits_store.StoreInfo(
                f"pdsweep-run:{rid}",
                tokens.manifest["tokenizer_fingerprint"],
                tokens.manifest["corpus_fingerprint"],
                tokens.vocab_size,
                rec.top_p,
                rec.top_k,
                "online",
            )
            hooks.append(trainer.RecordLogits(rec, run_dir / "logits" / rec.name, info))
    tracker: tracking.Tracker = tracking.MlflowTracker(tracking_uri) if (track and rank0) else tracking.NullTracker()
    tracker.start(spec, run_dir, rid, label or rid, sweep)
    hooks.append(_Track(tracker))
    if rank0:
        files.write_json(run_dir / "status.json", {"status": "running", "pid": os.getpid()})
    try:
        return _train_and_record(spec, run_dir, tokens, backend, [*hooks, *callbacks], store, tracker)
    finally:
        backend.close()


def _train_and_record(
    spec: RunSpec,
    run_dir: Path,
    tokens: data.TokenData,
    backend: backends.Backend,
    callbacks: list[trainer.Callback],
    store: logits_store.StoreReader | None,
    tracker: tracking.Tracker,
) -> Outcome:
    rank0 = backend.rank == 0
    try:
        result = trainer.train(spec, run_dir, tokens, backend, callbacks, store=store)
    except trainer.TrainingFailed as e:
        if rank0:
            files.write_json(run_dir / "status.json", {"status": "failed", "step": e.step, "reason": e.reason})
        tracker.finish("failed", e.reason)
        return Outcome("failed", backend.rank, reason=e.reason)
    except SpecError as e:
        if rank0:
            files.write_json(run_dir / "status.json", {"status": "failed", "reason": "; ".join(e.problems)})
        tracker.finish("failed", "; ".join(e.problems))
        return Outcome("invalid", backend.rank, reason="\n".join(e.problems))
    if rank0:
        files.write_json(run_dir / "status.json", {"status": "done"})
    tracker.finish("done")
    return Outcome("done", backend.rank, result=result)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def relaunch(args: list[str], nproc: int, launcher: str, hostfile: Path | None) -> int:
    """Run `python -m pdsweep.cli ARGS` under torchrun (one machine) or DeepSpeed's launcher
    (several machines through `hostfile`), `nproc` processes per machine, each with its share of
    the CPU threads. The launcher dies with this process, and its workers with it."""
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    if launcher == "torchrun":
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "pdsweep.cli",
            *args,
        ]
    else:
        cmd = [
            sys.executable,
            "-m",
            "deepspeed.launcher.runner",
            f"--num_gpus={nproc}",
            "--master_port",
            str(_free_port()),
            "--no_local_rank",
            *([f"--hostfile={hostfile}"] if hostfile else []),
            "--module",
            "pdsweep.cli",
            *args,
        ]
    return subprocess.run(cmd, env=env, preexec_fn=backends.die_with_parent).returncode  # noqa: PLW1509


# ----------------------------------------------------------------------------------------------
# Sweeps
# ----------------------------------------------------------------------------------------------


@dataclass
class RunStatus:
    run_id: str
    label: str
    role: str
    status: str
    reason: str = ""
    result: dict[str, Any] = field(default_factory=dict)


def sweep_dir(name: str) -> Path:
    return settings.workdir() / "runs" / name


def _status(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "status.json"
    return files.read_json(path) if path.exists() else {"status": "pending"}


def _train_subprocess(
    spec: RunSpec, run_dir: Path, logits: Path | None, tracking_uri: str | None, track: bool, sweep: str, label: str
) -> None:
    """One run in its own process (a crash or NaN fails that run, not the sweep); its log lands in
    the run directory."""
    run_dir.mkdir(parents=True, exist_ok=True)
    run_file = run_dir / "run.yaml"
    files.write_text(run_file, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    cmd = [
        sys.executable,
        "-m",
        "pdsweep.cli",
        "train",
        str(run_file),
        "--out",
        str(run_dir),
        "--sweep",
        sweep,
        "--label",
        label,
        *(["--logits", str(logits)] if logits else []),
        *(["--tracking-uri", tracking_uri] if tracking_uri else []),
        *([] if track else ["--no-track"]),
    ]
    with open(run_dir / "train.log", "a", encoding="utf-8") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=backends.die_with_parent)  # noqa: PLW1509


def run_sweep(
    sweep: str,
    runs: list[expand.PlannedRun],
    tracking_uri: str | None = None,
    track: bool = True,
    retry_failed: bool = False,
    progress: Callable[[RunStatus], None] = lambda s: None,
) -> list[RunStatus]:
    """Execute a sweep in dependency order — teacher runs, their logits passes, then baselines and
    students — one run at a time, each in its own process. Done runs are skipped, killed ones
    resume from their checkpoints, failed ones are retried only with `retry_failed`."""
    root = sweep_dir(sweep)
    passes = expand.teacher_passes(runs)
    teacher_dirs = {r.name: root / r.run_id for r in runs if r.role == "teacher"}
    statuses: list[RunStatus] = []

    def execute(run: expand.PlannedRun, logits: Path | None) -> RunStatus:
        run_dir = root / run.run_id
        state = _status(run_dir)
        if state["status"] != "done" and not (state["status"] == "failed" and not retry_failed):
            _train_subprocess(run.spec, run_dir, logits, tracking_uri, track, sweep, run.label)
            state = _status(run_dir)
        if state["status"] == "running":  # the process died without saying why
            state = {
                "status": "failed",
                "reason": f"the training process ended unexpectedly (see {run_dir / 'train.log'})",
            }
        result = files.read_json(run_dir / "result.json") if (run_dir / "result.json").exists() else {}
        s = RunStatus(run.run_id, run.label, run.role, state["status"], state.get("reason", ""), result)
        statuses.append(s)
        progress(s)
        return s

    done_teachers = {}
    for run in runs:
        if run.role == "teacher":
            done_teachers[run.name] = execute(run, None).status == "done"
    stores: dict[str, Path] = {}
    for p in passes.values():
        name = p.teacher.removeprefix("run:")
        if p.teacher.startswith("run:") and not done_teachers.get(name):
            continue
        if p.mode == "online":
            continue  # recorded by the teacher run itself (see RunSpec.train.record_logits)
        source = f"ckpt:{teacher_dirs[name]}" if p.teacher.startswith("run:") else p.teacher
        example = next(r for r in runs if r.run_id in p.runs)
        t = teacher.load(TeacherSpec(source=source))
        ensure_builtin_teacher(example.spec)
        tokens = data.prepare(example.spec)
        teacher.check_tokenizer(t, tokens, source)
        stores[p.pass_id] = root / "logits" / p.pass_id
        teacher.generate(
            t,
            tokens,
            stores[p.pass_id],
            p.top_p,
            p.top_k,
            example.spec.data.seq_len,
            sampling_draws=p.sampling_draws or None,
        )
    pass_of = {rid: p for p in passes.values() for rid in p.runs}
    for run in runs:
        if run.role == "teacher":
            continue
        pass_ = pass_of.get(run.run_id)
        logits = None
        if pass_ is not None:
            if pass_.mode == "online":
                rec = next(r for r in runs if r.role == "teacher" and r.name == pass_.teacher.removeprefix("run:"))
                window = tuple(run.spec.logits.online_window)
                spec_rec = next(x for x in rec.spec.train.record_logits if tuple(x.window) == window)
                logits = teacher_dirs[rec.name] / "logits" / spec_rec.name
            else:
                logits = stores.get(pass_.pass_id)
            if logits is None:
                s = RunStatus(
                    run.run_id, run.label, run.role, "failed", f"its teacher ({pass_.teacher}) did not finish"
                )
                statuses.append(s)
                progress(s)
                continue
        execute(run, logits)
    return statuses
