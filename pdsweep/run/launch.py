"""Executing runs: one run in its directory (lock, spec, status, teacher store, training), and
re-launching a command over several processes or machines.

A run directory holds `spec.yaml` (the resolved RunSpec and its run_id), `status.json`
(running / done / failed with the reason), `metrics.jsonl`, `result.json`, `checkpoints/` and, for
runs that record online logits, `logits/`. Running a run again resumes it from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pdsweep import files, proc, rundir, settings
from pdsweep.data import batches, tokenized
from pdsweep.errors import UserError
from pdsweep.logits import store as logits_store
from pdsweep.logits import teacher, teacher_pass
from pdsweep.run import tracking
from pdsweep.spec import RunSpec, expand, plan
from pdsweep.train import backends, trainer
from pdsweep.train.callbacks import FollowThreads, MetricsFile, RecordLogits

Progress = Callable[[str, int, int], None]


def ensure_builtin_teacher(spec: RunSpec, progress: Progress = lambda *a: None) -> None:
    """A builtin teacher's tokenizer is needed before tokenizing: fetch the teacher first."""
    if spec.teacher is not None and spec.teacher.kind == "builtin" and spec.data.tokenizer.kind == "teacher":
        teacher.builtin_dir(spec.teacher.ref, progress)


def prepare_corpora(*, specs: list[RunSpec], progress: Progress = lambda *a: None) -> list[tokenized.TokenData]:
    """Tokenize the corpus of every run (each distinct corpus and tokenizer once), training its
    tokenizer if needed, and check the result."""
    done: set[str] = set()
    out = []
    for spec in specs:
        key = spec.data.model_dump_json(exclude={"seq_len", "tokens"})
        if key in done:
            continue
        done.add(key)
        ensure_builtin_teacher(spec, progress)
        tokens = tokenized.prepare(spec, progress=progress)
        tokenized.verify(tokens)
        out.append(tokens)
    return out


def store_for(
    spec: RunSpec, tokens: tokenized.TokenData, given: Path | None, progress: Progress
) -> logits_store.StoreReader | None:
    """The logits store a run with a teacher reads: the one given, or its teacher's default store in
    the work directory (generated here, resumably, if it is not complete)."""
    if not spec.uses_teacher:
        return None
    if given is not None:
        return given_store(spec, tokens, given)
    assert spec.teacher is not None
    if spec.teacher.kind == "run":
        raise UserError(f"teacher: {spec.teacher.source} is a teacher run of a sweep; give its store with --logits")
    t = teacher.load(spec.teacher, teacher.pass_device())
    teacher.check_tokenizer(t, tokens, spec.teacher.source)
    lg = spec.logits
    draws = lg.sampling.draws if lg.sampling else None
    store = plan.default_store(t.fingerprint, tokens.manifest["corpus_fingerprint"], lg)
    teacher_pass.generate(
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
        store, expect=teacher_pass.store_info(t, tokens, lg.top_p, lg.top_k, sampling_draws=draws)
    )


def given_store(spec: RunSpec, tokens: tokenized.TokenData, path: Path) -> logits_store.StoreReader:
    """A store given to `spec` (`--logits`), refused unless it was made for this run's tokens — its
    tokenizer and corpus — by its teacher: the very teacher run for `run:NAME` (whose id the sweep
    pins in `teacher.run_id`), the same weights for a checkpoint or model directory. (What it holds,
    top-p-k entries or sampled draws, is checked with the run's other inputs: trainer.check_inputs.)"""
    assert spec.teacher is not None
    reader = logits_store.StoreReader(
        path,
        expect={
            "tokenizer_fingerprint": tokens.manifest["tokenizer_fingerprint"],
            "corpus_fingerprint": tokens.manifest["corpus_fingerprint"],
        },
    )
    if spec.teacher.kind != "run":
        want = {"teacher_fingerprint": teacher.fingerprint(spec.teacher)}
        logits_store.check_identity(path, reader.manifest, want)
    elif spec.teacher.run_id is not None:
        logits_store.check_identity(path, reader.manifest, {"teacher_run": spec.teacher.run_id})
    return reader


class _Track(trainer.Callback):
    """Training and evaluation metrics to the tracker, by optimiser step (rank 0 only)."""

    def __init__(self, tracker: tracking.Tracker):
        self.tracker = tracker

    def on_step(self, state: trainer.TrainState, metrics: dict[str, float]) -> None:
        if state.rank == 0:
            self.tracker.log_metrics(metrics, state.step)

    def on_eval(self, state: trainer.TrainState, metrics: dict[str, float]) -> None:
        if state.rank == 0:
            self.tracker.log_metrics(metrics, state.step)  # eval/… and curve/… (trainer.logged)


@dataclass
class Outcome:
    """How a run ended: `done` (result), `failed` (reason, e.g. a non-finite loss) or `invalid`
    (its input was found wrong only while running, e.g. data shorter than seq_len)."""

    status: Literal["done", "failed", "invalid"]
    rank: int
    result: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    run_dir: Path | None = None


def train(
    *,
    spec_file: Path,
    out: Path | None = None,
    logits: Path | None = None,
    nproc: int = 1,
    launcher: str = "torchrun",
    hostfile: Path | None = None,
    tracking_uri: str | None = None,
    track: bool = True,
    sweep: str = "single",
    label: str | None = None,
    progress: Progress = lambda *a: None,
    callbacks: tuple[trainer.Callback, ...] = (),
) -> Outcome | int:
    """`pdsweep train`: one run of a run file in `out` (default: the work directory's runs/single/ID),
    resuming. Over several processes (`nproc`, `hostfile`) the same command is started under the
    launcher and its exit code returned; else the run's Outcome. UserError for bad input."""
    import re

    spec = expand.load_run(spec_file)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", sweep):
        raise UserError(f"--sweep: must be a sweep name (letters, digits, _ . -; at most 100), got {sweep[:60]!r}")
    settings.check_workdir()
    run_dir = out or plan.single_run_dir(expand.run_id(spec))
    if launcher not in ("torchrun", "deepspeed"):
        raise UserError(f"--launcher: must be torchrun or deepspeed, got {launcher!r}")
    if hostfile is not None and not hostfile.is_file():
        raise UserError(f"--hostfile: {hostfile} does not exist")
    if hostfile is not None:
        hostfile_hosts(hostfile)
    if (nproc > 1 or hostfile is not None) and "RANK" not in os.environ:
        args = [
            "pdsweep.cli",
            "train",
            str(spec_file),
            "--out",
            str(run_dir),
            *(["--logits", str(logits)] if logits else []),
            *(["--tracking-uri", tracking_uri] if tracking_uri else []),
            *([] if track else ["--no-track"]),
            *["--sweep", sweep, "--label", label or run_dir.name],
        ]
        return relaunch(args, nproc, "deepspeed" if hostfile else launcher, hostfile)
    return run_one(spec, run_dir, logits, progress, callbacks, tracking_uri, track, sweep, label or run_dir.name)


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
    UserError for bad input found before training starts (an unreachable tracking store included)."""
    backend = backends.make(spec)
    rank0 = backend.rank == 0
    rid = expand.run_id(spec)
    if rank0:
        rundir.check(run_dir, rid)
    # Every input is checked (data, teacher, store) before the run directory is made.
    ensure_builtin_teacher(spec, progress)
    tokens = tokenized.prepare(spec, progress=progress)
    store = store_for(spec, tokens, logits, progress if rank0 else lambda *a: None)
    if spec.train.record_logits and backend.world_size > 1:
        raise UserError("train.record_logits: online recording runs on one process for now")
    trainer.check_inputs(spec, tokens, backend.world_size, store)
    tracker = tracking.make(tracking_uri, track and rank0)
    held = None
    if rank0:
        held = rundir.lock(run_dir)
    try:
        if rank0:
            rundir.check(run_dir, rid)  # again, under the lock
            rundir.write_spec(run_dir, rid, spec)
        outcome = _start_and_train(spec, run_dir, rid, tokens, backend, store, tracker, callbacks, label, sweep)
        outcome.run_dir = run_dir
        return outcome
    finally:
        rundir.unlock(held)


def _start_and_train(
    spec: RunSpec,
    run_dir: Path,
    rid: str,
    tokens: tokenized.TokenData,
    backend: backends.Backend,
    store: logits_store.StoreReader | None,
    tracker: tracking.Tracker,
    callbacks: tuple[trainer.Callback, ...],
    label: str | None,
    sweep: str,
) -> Outcome:
    rank0 = backend.rank == 0
    hooks: list[trainer.Callback] = [MetricsFile(run_dir)]
    if spec.train.record_logits:
        for rec in spec.train.record_logits:
            info = logits_store.StoreInfo(
                f"pdsweep-run:{rid}",
                tokens.manifest["tokenizer_fingerprint"],
                tokens.manifest["corpus_fingerprint"],
                tokens.vocab_size,
                rec.top_p,
                rec.top_k,
                "online",
                teacher_run=rid,
                flops_per_position=0.0,  # recorded from the forward passes training makes anyway
            )
            hooks.append(RecordLogits(rec, plan.recorded_store(run_dir, rec.name), info))
    tracker.start(spec, run_dir, rid, label or rid, sweep)
    hooks.append(_Track(tracker))
    hooks.append(FollowThreads(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if rank0:
        rundir.write_status(run_dir, "running", pid=os.getpid())
    try:
        return _train_and_record(spec, run_dir, tokens, backend, [*hooks, *callbacks], store, tracker)
    finally:
        backend.close()


def _train_and_record(
    spec: RunSpec,
    run_dir: Path,
    tokens: tokenized.TokenData,
    backend: backends.Backend,
    callbacks: list[trainer.Callback],
    store: logits_store.StoreReader | None,
    tracker: tracking.Tracker,
) -> Outcome:
    rank0 = backend.rank == 0
    try:
        result = trainer.train(spec, run_dir, tokens, backend, callbacks, store=store)
    except KeyboardInterrupt as e:
        reason = e.reason if isinstance(e, trainer.Stopped) else "interrupted (Ctrl-C)"
        if rank0:
            rundir.write_status(run_dir, "interrupted", reason=reason)
        tracker.finish("interrupted", reason)
        raise
    except trainer.TrainingFailed as e:
        if rank0:
            rundir.write_status(run_dir, "failed", step=e.step, reason=e.reason)
        tracker.finish("failed", e.reason)
        return Outcome("failed", backend.rank, reason=e.reason)
    except UserError as e:
        if rank0:
            rundir.write_status(run_dir, "failed", reason="; ".join(e.problems))
        tracker.finish("failed", "; ".join(e.problems))
        return Outcome("invalid", backend.rank, reason="\n".join(e.problems))
    except Exception as e:  # noqa: BLE001 - whatever ends a run (a full disk, a bug) ends it as failed
        return _failed_by(e, run_dir, backend.rank, tracker)
    if rank0:
        tracker.log_metrics({k: v for k, v in result.items() if k.startswith("compute/")}, result["step"])
        rundir.write_status(run_dir, "done", code=files.code_fingerprint())  # what trained it (run/reuse.py)
        tracker.log_artifact(rundir.result_file(run_dir))  # the final evaluation, every suite, as JSON
    tracker.finish("done")
    return Outcome("done", backend.rank, result=result)


def _failed_by(e: Exception, run_dir: Path, rank: int, tracker: tracking.Tracker) -> Outcome:
    """Record an unexpected exception as the run's failure: the traceback in `error.log`, the reason
    in `status.json` and on the MLflow run (FAILED) — each as far as it can still be written (a full
    disk may refuse them), so the run is never left `running`."""
    import traceback

    reason = proc.describe(e)
    if rank == 0:
        with contextlib.suppress(OSError):
            log = rundir.write_error(run_dir, "".join(traceback.format_exception(e)))
            reason += f" (traceback in {log})"
        with contextlib.suppress(OSError):
            rundir.write_status(run_dir, "failed", reason=reason)
    with contextlib.suppress(Exception):
        tracker.finish("failed", reason)
    return Outcome("failed", rank, reason=reason)


def launcher_command(
    module_args: list[str], nproc: int, launcher: str, hostfile: Path | None, env: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run `python -m MODULE ARGS` under torchrun (one
    machine) or DeepSpeed's launcher (several machines through `hostfile`), `nproc` processes per
    machine, each with its share of the CPU threads.

    GPUs: torchrun's workers inherit CUDA_VISIBLE_DEVICES and index into it. DeepSpeed's launcher
    sets CUDA_VISIBLE_DEVICES itself for its workers and, given `--num_gpus` or a hostfile, ignores
    the caller's value (two workers of `pdsweep run` would share GPUs 0…n−1), so the visible GPUs
    become DeepSpeed's `--include`: `localhost:IDS` on one machine, `HOST:IDS@HOST:IDS…` for every
    machine of the hostfile (a worker's share of GPUs is the same on each machine)."""
    threads = env.get("OMP_NUM_THREADS", str(max(1, settings.cores() // nproc)))
    env = {**env, "OMP_NUM_THREADS": threads}
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        return [*cmd, "-m", *module_args], env
    proc.require("deepspeed", "deepspeed", "the deepspeed launcher")
    visible = [x.strip() for x in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()]
    resources = [f"--hostfile={hostfile}"] if hostfile is not None else []
    if visible:
        if len(visible) < nproc:
            raise UserError(f"--nproc: {nproc} processes per machine but CUDA_VISIBLE_DEVICES has {len(visible)} GPUs")
        hosts = hostfile_hosts(hostfile) if hostfile is not None else ["localhost"]
        resources.append("--include=" + "@".join(f"{h}:{','.join(visible[:nproc])}" for h in hosts))
        del env["CUDA_VISIBLE_DEVICES"]
    else:
        resources.append(f"--num_gpus={nproc}")  # an empty CUDA_VISIBLE_DEVICES (CPU) stays as it is
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", *resources]
    cmd += ["--master_port", str(proc.free_port()), "--no_local_rank", "--module", *module_args]
    return cmd, env


def hostfile_hosts(hostfile: Path) -> list[str]:
    """The machines of a DeepSpeed hostfile (`HOST slots=N` lines; `#` comments)."""
    hosts = []
    for n, line in enumerate(hostfile.read_text(encoding="utf-8").splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 2 or not words[1].startswith("slots=") or not words[1][6:].isdigit():
            raise UserError(f"{hostfile}:{n}: expected 'HOST slots=N', got {line.strip()!r}")
        hosts.append(words[0])
    if not hosts:
        raise UserError(f"{hostfile}: names no machine")
    return hosts


def relaunch(module_args: list[str], nproc: int, launcher: str, hostfile: Path | None) -> int:
    """Run `python -m MODULE ARGS` over `nproc` processes per machine (launcher_command). The
    launcher dies with this process, and its workers with it."""
    cmd, env = launcher_command(module_args, nproc, launcher, hostfile, dict(os.environ))
    return subprocess.run(cmd, env=env, preexec_fn=proc.die_with_parent).returncode  # noqa: PLW1509


# ----------------------------------------------------------------------------------------------
# A teacher logits pass
# ----------------------------------------------------------------------------------------------


def generate_pass(
    *,
    spec: RunSpec,
    store: Path | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    serves: list[dict[str, int]] | None = None,
    progress: Progress = lambda *a: None,
    source: str = "",
    encoders: int = 0,
    shard_positions: int = 16384,
    rank: tuple[int, int] = (0, 1),
) -> dict[str, Any]:
    """Run `spec`'s teacher over its tokenized corpus into `store` (default: the teacher's store in the
    work directory), resumably. With `serves` (each run's seed, steps, global_batch, seq_len and
    heldout_tokens) only the training windows those runs visit and the held-out positions they
    evaluate on are generated. `rank` (rank, ranks): this process writes its share of the shards
    (teacher_pass.generate). Returns the pass's counts and the store's path."""
    if spec.teacher is None:
        raise UserError(f"{source}: teacher: the run has no teacher" if source else "teacher: the run has no teacher")
    t = teacher.load(spec.teacher, teacher.pass_device())
    tokens = tokenized.prepare(spec, progress=progress)
    teacher.check_tokenizer(t, tokens, spec.teacher.source)
    lg = spec.logits
    train_windows = heldout_limit = None
    if serves:
        import numpy as np

        train_windows = np.unique(
            np.concatenate(
                [
                    batches.windows_covering(
                        batches.visited_windows(
                            len(tokens.train), r["seq_len"], r["global_batch"], r["seed"], r["steps"]
                        ),
                        r["seq_len"],
                        spec.data.seq_len,
                    )
                    for r in serves
                ]
            )
        )
        heldout_limit = max(-(-r["heldout_tokens"] // r["seq_len"]) * r["seq_len"] for r in serves)
    store = store or plan.default_store(t.fingerprint, tokens.manifest["corpus_fingerprint"], lg, limit)
    result = teacher_pass.generate(
        t,
        tokens,
        store,
        lg.top_p,
        lg.top_k,
        spec.data.seq_len,
        batch_size=batch_size or spec.teacher.batch_size,
        limit=limit,
        progress=progress,
        sampling_draws=lg.sampling.draws if lg.sampling else None,
        train_windows=train_windows,
        heldout_limit=heldout_limit,
        shard_positions=shard_positions,
        rank=rank[0],
        ranks=rank[1],
        encoders=encoders,
    )
    return {**result, "store": store}


def pass_store(spec: RunSpec, limit: int | None, progress: Progress = lambda *a: None, source: str = "") -> Path:
    """The default store of `spec`'s teacher pass (what generate_pass writes when given none)."""
    if spec.teacher is None:
        raise UserError(f"{source}: teacher: the run has no teacher" if source else "teacher: the run has no teacher")
    ensure_builtin_teacher(spec, progress)
    tokens = tokenized.prepare(spec, progress=progress)
    return plan.default_store(
        teacher.fingerprint(spec.teacher), tokens.manifest["corpus_fingerprint"], spec.logits, limit
    )
