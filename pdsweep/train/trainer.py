"""The training loop: one readable function for every backend.

    for step in steps:                                  (resumes from the last checkpoint)
        lr ← lr_at(step)                                 schedules.py
        batch ← batch_at(seed, step, rank)               data.py: a pure function of the step
        for micro-batch in batch:  loss ← LM loss; backend.backward(loss)
        backend.step()                                   clip + AdamW (torch) / ZeRO (DeepSpeed)
        every eval.interval: held-out loss               every checkpoint_every: checkpoint

Side concerns (metrics files, progress bars, tracking) are callbacks with named hooks. Because
batches depend only on (seed, step, rank) and a checkpoint holds the model, optimizer and step, a
run killed at any point and resumed ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from pdsweep import files, proc, rundir
from pdsweep.data import batches, tokenized
from pdsweep.eval import heldout, scoring, tasks
from pdsweep.logits import store as logits_store
from pdsweep.nn import losses, model
from pdsweep.nn.schedules import alpha_at, lr_at
from pdsweep.spec import RunSpec
from pdsweep.train.backends import Backend, peak_flops
from pdsweep.train.callbacks import Callback, TrainState


class TrainingFailed(Exception):
    """The run cannot continue (non-finite loss, ...): `step` and `reason` say where and why."""

    def __init__(self, step: int, reason: str):
        self.step, self.reason = step, reason
        super().__init__(f"step {step}: {reason}")


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------

KEEP_CHECKPOINTS = 2


class Stopped(KeyboardInterrupt):
    """The run was asked to stop (proc.interrupt from a signal: pdsweep stopping its tasks, scancel, a
    batch system's warning before a time limit or a preemption) and wrote a checkpoint at the step it
    reached; it resumes from there."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _stop_agreed(backend: Backend) -> bool:
    """Whether any rank was asked to stop: every rank stops (and checkpoints) at the same step."""
    asked = proc.stop_requested() is not None
    if backend.world_size == 1:
        return asked
    return backend.mean(1.0 if asked else 0.0) > 0


def save_checkpoint(backend: Backend, state: TrainState) -> Path:
    """All ranks write into a temporary directory; rank 0 renames it into place and moves LATEST,
    so a checkpoint directory that exists is always complete."""
    root = rundir.checkpoints_dir(state.run_dir)
    final = root / rundir.checkpoint_name(state.step)
    tmp = root / f".{final.name}.tmp"
    if backend.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    backend.barrier()
    try:
        backend.save(
            tmp,
            {
                "step": state.step,
                "tokens_seen": state.tokens_seen,
                "metrics": state.metrics,
                "teacher_tokens": state.teacher_tokens,
                "seconds": state.seconds + time.perf_counter() - state.started,
            },
        )
    except (OSError, RuntimeError) as e:  # a full disk: torch's writer raises RuntimeError
        if backend.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"cannot write the checkpoint {final} ({proc.first_line(e, 200)})") from e
    backend.barrier()
    if backend.rank == 0:
        rundir.write_checkpoint_state(
            tmp,
            {
                "step": state.step,
                "tokens_seen": state.tokens_seen,
                "world_size": backend.world_size,
                "backend": backend.name,
            },
        )
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        rundir.set_latest(state.run_dir, final)
        for old in sorted(root.glob("step_*"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old)
    backend.barrier()
    return final


# ----------------------------------------------------------------------------------------------
# Evaluation during training
# ----------------------------------------------------------------------------------------------


def evaluation(
    net: torch.nn.Module,
    backend: Backend,
    tokens: tokenized.TokenData,
    spec: RunSpec,
    store: logits_store.StoreReader | None,
    final: bool = True,
) -> dict[str, float]:
    """The suites of `spec.eval`: held-out metrics, agreement with the teacher (runs that read a
    store) and benchmarks, as `<suite>/<metric>` — on `eval.heldout_tokens` at the end (`final`),
    on the first `eval.tokens_during()` of them before. The final evaluation also returns the
    held-out metrics of those first tokens, as `first/<suite>/<metric>` (`logged`)."""
    ev, t = spec.eval, spec.data
    heldout_tokens = ev.heldout_tokens if final else ev.tokens_during()
    first = ev.tokens_during() if final and ev.tokens_during() < ev.heldout_tokens else None
    out: dict[str, float] = {}
    agreement = "teacher_agreement" in ev.suites and store is not None
    if "heldout" in ev.suites or agreement:  # one forward pass for both
        out |= heldout.heldout_pass(
            net,
            backend.device,
            tokens,
            t.seq_len,
            spec.train.micro_batch,
            heldout_tokens,
            loss="heldout" in ev.suites,
            store=store if agreement else None,
            autocast=backend.autocast,
            first_tokens=first,
        )
    if any(s in tasks.TASKS for s in ev.suites):
        was_training = net.training
        net.eval()
        scorer = scoring.scoring_model(net, tokens, t.seq_len, backend.device)
        out |= scoring.benchmark_metrics(scorer, ev.suites, ev.limit)
        net.train(was_training)
    return out


def logged(metrics: dict[str, float], final: bool) -> dict[str, float]:
    """An evaluation's metrics as tracked: `curve/<metric>` on what the evaluations during training
    score (at every interval, and at the end on the same first tokens), so a curve never mixes two
    evaluation sets; `eval/<metric>` the final evaluation on all of `eval.heldout_tokens` (what
    reports compare)."""
    if not final:
        return {f"curve/{k}": v for k, v in metrics.items()}
    full = {k: v for k, v in metrics.items() if not k.startswith("first/")}
    curve = full | {k.removeprefix("first/"): v for k, v in metrics.items() if k.startswith("first/")}
    return {f"eval/{k}": v for k, v in full.items()} | {f"curve/{k}": v for k, v in curve.items()}


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def _read_truncation(spec: RunSpec, store: logits_store.StoreReader | None) -> tuple[float, int | None]:
    """The (p, k) to read the store with: the run's top-p-k, or every stored entry of a store of
    sampled targets with the run's number of draws."""
    if store is None or not spec.uses_teacher:
        return spec.logits.top_p, spec.logits.top_k
    from pdsweep.errors import UserError

    want = spec.logits.sampling.draws if spec.logits.sampling else None
    have = store.manifest.get("sampling_draws")
    if want != have:

        def what(draws: int | None) -> str:
            return "top-p-k entries" if draws is None else f"{draws} sampled draws"

        raise UserError(f"{store.path}: the store holds {what(have)} but logits.sampling asks for {what(want)}")
    return (1.0, None) if want else (spec.logits.top_p, spec.logits.top_k)


def check_inputs(
    spec: RunSpec, tokens: tokenized.TokenData, world_size: int, store: logits_store.StoreReader | None
) -> Any:
    """UserError for a run its data, store or processes cannot serve (checked before anything is
    written); the training windows an online student is limited to (None otherwise)."""
    from pdsweep.errors import UserError

    t, tr = spec.data, spec.train
    per_rank = tr.global_batch // world_size
    if tr.global_batch % world_size or per_rank % tr.micro_batch:
        raise UserError(
            f"train.global_batch {tr.global_batch} does not split into {world_size} ranks × micro_batch {tr.micro_batch}"
        )
    if batches.num_windows(len(tokens.train), t.seq_len) == 0:
        raise UserError(f"data.seq_len: {t.seq_len} is longer than the training data ({len(tokens.train)} tokens)")
    if spec.uses_teacher and store is None:
        raise ValueError("a run with a teacher needs a logits store")
    _read_truncation(spec, store)
    if spec.uses_teacher and spec.logits.mode == "online":
        assert store is not None
        windows = batches.covered_windows(store.positions(), t.seq_len, len(tokens.train))
        if len(windows) == 0:
            raise UserError(
                f"{store.path}: the online logits store holds no complete training window of seq_len {t.seq_len}"
            )
        return windows
    return None


def compute(
    spec: RunSpec,
    state: TrainState,
    flops_per_token: float,
    backend: Backend,
    store: logits_store.StoreReader | None,
) -> dict[str, float]:
    """What the run cost, as `compute/…` numbers (spec/costs.py has the conventions): its training
    FLOPs (forward and backward, attention included: `ModelSpec.flops_per_token` × tokens), its
    wall seconds over every attempt (training and evaluations) and device-hours (× processes), and
    its share of the teacher pass: the teacher's forward FLOPs over the positions it read (0 for
    logits recorded while the teacher trained; absent when the store does not say)."""
    seconds = state.seconds + time.perf_counter() - state.started
    out = {
        "compute/flops": flops_per_token * state.tokens_seen,
        "compute/flops_per_token": flops_per_token,
        "compute/seconds": seconds,
        "compute/device_hours": seconds * backend.world_size / 3600,
        "compute/teacher_tokens": float(state.teacher_tokens),
    }
    per_position = store.manifest.get("flops_per_position") if store is not None else None
    if spec.uses_teacher and per_position is not None:
        out["compute/teacher_pass_flops"] = per_position * state.teacher_tokens
    return out


def train(
    spec: RunSpec,
    run_dir: Path,
    tokens: tokenized.TokenData,
    backend: Backend,
    callbacks: list[Callback] | tuple[Callback, ...] = (),
    store: logits_store.StoreReader | None = None,
) -> dict[str, Any]:
    """Train `spec` in `run_dir` (resuming from its last checkpoint); return the final metrics.

    A run with a teacher (α not identically 0) reads its targets from `store`, by the global
    positions of each batch, truncated to the run's top-p-k at read time. An online student trains
    only on the windows its teacher recorded (every epoch visits each of them once)."""
    t, tr = spec.data, spec.train
    total = spec.steps()
    windows = check_inputs(spec, tokens, backend.world_size, store)
    accum = tr.global_batch // backend.world_size // tr.micro_batch
    read_p, read_k = _read_truncation(spec, store)
    kd = losses.KDConfig.from_spec(spec)
    run_dir.mkdir(parents=True, exist_ok=True)
    net = model.build(spec.student, tokens.vocab_size, t.seq_len, seed=tr.seed)
    engine = backend.setup(net, spec.optim, accum)
    state = TrainState(spec, run_dir, total, backend.rank)
    ckpt = rundir.latest_checkpoint(run_dir)
    if ckpt is not None:
        resumed = backend.load(ckpt)
        state.step, state.tokens_seen, state.metrics = (
            resumed["step"],
            resumed["tokens_seen"],
            resumed.get("metrics", {}),
        )
        state.resumed_from = state.step
        state.teacher_tokens, state.seconds = resumed.get("teacher_tokens", 0), resumed.get("seconds", 0.0)
    if backend.rank == 0:  # rows of a killed attempt after the checkpoint (or all of them) come again
        rundir.truncate_metrics(run_dir, state.step)
    for cb in callbacks:
        cb.on_start(state, engine)

    flops_per_token = spec.student.flops_per_token(tokens.vocab_size, t.seq_len)
    peak = peak_flops(backend.device)
    tokens_per_step = tr.global_batch * t.seq_len
    wants_logits = [cb for cb in callbacks if type(cb).on_logits is not Callback.on_logits]
    engine.train()
    loop_started = time.perf_counter()
    eval_seconds = 0.0

    def batch_of(step: int) -> batches.Batch:
        return batches.batch_at(
            tokens.train, t.seq_len, tr.global_batch, tr.order_seed, step, backend.rank, backend.world_size,
            windows=windows,
        )  # fmt: skip

    upcoming: tuple[int, batches.Batch] | None = None
    with proc.deferred_interrupts():  # a stop request (a signal) ends the loop after a step, with a checkpoint
        while state.step < total:
            step = state.step
            started = time.perf_counter()
            lr = spec.optim.lr * lr_at(step, total, spec.optim.lr_schedule)
            alpha = alpha_at(step, total, spec.loss.alpha, spec.optim.lr_schedule) if spec.uses_teacher else 0.0
            backend.set_lr(lr)
            batch = upcoming[1] if upcoming is not None and upcoming[0] == step else batch_of(step)
            upcoming = None
            if alpha > 0 and step + 1 < total:  # the next step's teacher shards decode while this one trains
                assert store is not None
                upcoming = (step + 1, batch_of(step + 1))
                store.prefetch(upcoming[1].positions)
            sums: dict[str, float] = {}
            for m in range(accum):
                rows = slice(m * tr.micro_batch, (m + 1) * tr.micro_batch)
                inputs = torch.from_numpy(batch.inputs[rows]).to(backend.device)
                targets = torch.from_numpy(batch.targets[rows]).to(backend.device)
                with backend.autocast():
                    logits = engine(inputs)
                for cb in wants_logits:
                    cb.on_logits(state, batch.positions[rows], logits.detach())
                t_ids = t_logprobs = t_mask = None
                if alpha > 0:
                    assert store is not None
                    t_ids, t_logprobs, t_mask = (
                        x.to(backend.device) for x in store.truncated(batch.positions[rows], read_p, read_k)
                    )
                loss, parts = losses.pd_loss(
                    logits, targets, alpha, t_ids, t_logprobs, t_mask, kd, spec.loss.chunk_tokens
                )
                backend.backward(loss)
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) / accum
                for key, value in parts.items():
                    sums[key] = sums.get(key, 0.0) + value / accum
            grad_norm = backend.step()
            step_loss = backend.mean(sums["loss"])
            if not math.isfinite(step_loss):
                raise TrainingFailed(step, f"non-finite loss ({step_loss}) at step {step}")
            state.step += 1
            state.tokens_seen += tokens_per_step
            state.teacher_tokens += tokens_per_step if alpha > 0 else 0
            elapsed = time.perf_counter() - started
            tps = tokens_per_step / elapsed
            metrics = {
                "loss": step_loss,
                **{k: backend.mean(v) for k, v in sums.items() if k != "loss"},  # lm_loss, kd_loss, alpha, tau
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_s": tps,
                "tokens_seen": float(state.tokens_seen),
                "cpu_threads": float(torch.get_num_threads()),
            }
            if peak:
                metrics["mfu"] = flops_per_token * tps / (peak * backend.world_size)
            state.metrics = metrics
            for cb in callbacks:
                cb.on_step(state, metrics)
            if state.step % spec.eval.interval == 0 and state.step < total:
                eval_started = time.perf_counter()
                ev = evaluation(engine, backend, tokens, spec, store, final=False)
                eval_seconds += time.perf_counter() - eval_started
                for cb in callbacks:
                    cb.on_eval(state, logged(ev, final=False))
            if state.step % tr.checkpoint_every == 0 and state.step < total:
                path = save_checkpoint(backend, state)
                for cb in callbacks:
                    cb.on_checkpoint(state, path)
            if state.step < total and _stop_agreed(backend):
                if state.step % tr.checkpoint_every:
                    path = save_checkpoint(backend, state)
                    for cb in callbacks:
                        cb.on_checkpoint(state, path)
                raise Stopped(proc.stop_requested() or f"stopped at step {state.step}: another rank was asked to stop")

    loop_seconds = time.perf_counter() - loop_started - eval_seconds
    eval_started = time.perf_counter()
    final_eval = evaluation(engine, backend, tokens, spec, store)
    eval_seconds += time.perf_counter() - eval_started
    for cb in callbacks:
        cb.on_eval(state, logged(final_eval, final=True))
    final_eval = {k: v for k, v in final_eval.items() if not k.startswith("first/")}
    last = rundir.latest_checkpoint(run_dir)
    if last is None or last.name != rundir.checkpoint_name(state.step):
        path = save_checkpoint(backend, state)
        for cb in callbacks:
            cb.on_checkpoint(state, path)
    result = {
        "step": state.step,
        "tokens_seen": state.tokens_seen,
        "train/loss": state.metrics.get("loss", float("nan")),
        **final_eval,
        "unigram_entropy_nats": tokens.manifest["unigram_entropy_nats"],
        "backend": backend.name,
        "world_size": backend.world_size,
        "params": spec.student.num_params(tokens.vocab_size),
        "resumed_from": state.resumed_from,
        "train_seconds": loop_seconds,  # the training loop (checkpoints included), without its evaluations
        "eval_seconds": eval_seconds,
        **compute(spec, state, flops_per_token, backend, store),
    }
    if backend.rank == 0:
        files.write_json(rundir.result_file(run_dir), result)
    for cb in callbacks:
        cb.on_end(state, result)
    return result
