"""What the training loop tells the rest of pdsweep: the state callbacks see, the named hooks a
callback overrides, and the callbacks every run uses — the CPU threads it follows, the logits it
records online (`train.record_logits`) and its metrics file."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pdsweep import rundir, settings
from pdsweep.logits import store as logits_store
from pdsweep.logits import truncation
from pdsweep.spec import RecordLogitsSpec, RunSpec


@dataclass
class TrainState:
    """What callbacks see."""

    spec: RunSpec
    run_dir: Path
    total_steps: int
    rank: int
    step: int = 0
    tokens_seen: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: int = 0
    """The step this process started at (> 0 when it resumed from a checkpoint)."""
    teacher_tokens: int = 0
    """Tokens trained on with the teacher's targets (α > 0): the teacher positions the run read."""
    seconds: float = 0.0
    """Wall seconds of training and evaluation of the attempts before this one (from the checkpoint)."""
    started: float = field(default_factory=time.perf_counter)
    """When this attempt started (time.perf_counter)."""


class Callback:
    """Named hooks; override the ones you need. Called on every rank (check `state.rank`)."""

    def on_start(self, state: TrainState, net: torch.nn.Module) -> None: ...
    def on_logits(self, state: TrainState, positions: np.ndarray, logits: torch.Tensor) -> None:
        """Each micro-batch's logits (B, T, V), detached, with the global positions (B, T) of its inputs."""

    def on_step(self, state: TrainState, metrics: dict[str, float]) -> None: ...
    def on_eval(self, state: TrainState, metrics: dict[str, float]) -> None:
        """An evaluation's metrics, keyed `curve/<suite>/<metric>` and, at the end, `eval/…` (`logged`)."""

    def on_checkpoint(self, state: TrainState, path: Path) -> None: ...
    def on_end(self, state: TrainState, result: dict[str, Any]) -> None: ...


class FollowThreads(Callback):
    """Apply the CPU threads `pdsweep run` gives this process as other tasks start and end
    (settings.ThreadBudget), between optimiser steps; `share`: processes of the run on this machine."""

    def __init__(self, share: int = 1):
        self.budget = settings.ThreadBudget(share)

    def on_step(self, state: TrainState, metrics: dict[str, float]) -> None:
        n = self.budget.poll()
        if n is not None and n != torch.get_num_threads():
            torch.set_num_threads(n)


class RecordLogits(Callback):
    """Online logits: record the truncated logits of the batches trained on within a window of
    training into a store, shard by shard (a position recorded again later wins)."""

    def __init__(self, spec: RecordLogitsSpec, store: Path, info: logits_store.StoreInfo, shard_positions: int = 16384):
        self.spec, self.shard_positions = spec, shard_positions
        self.writer = logits_store.StoreWriter(store, info)
        self.positions: list[np.ndarray] = []
        self.parts: list[truncation.Sparse] = []

    def _active(self, state: TrainState) -> bool:
        start, end = self.spec.window
        return start * state.total_steps <= state.step < end * state.total_steps

    def on_logits(self, state: TrainState, positions: np.ndarray, logits: torch.Tensor) -> None:
        if not self._active(state):
            return
        self.parts.append(
            truncation.top_p_k(logits.reshape(-1, logits.shape[-1]).float(), self.spec.top_p, self.spec.top_k)
        )
        self.positions.append(positions.reshape(-1))
        if sum(len(p) for p in self.positions) >= self.shard_positions:
            self.flush()

    def flush(self) -> None:
        if not self.positions:
            return
        positions = np.concatenate(self.positions)
        columns = truncation.concat(self.parts)  # ids, logprobs, count, lse, cuts
        # A window may see a position twice (more than one epoch): the later recording wins.
        _, last = np.unique(positions[::-1], return_index=True)
        keep = len(positions) - 1 - last
        self.writer.add(positions[keep], tuple(c[keep] for c in columns))
        self.positions, self.parts = [], []

    def on_checkpoint(self, state: TrainState, path: Path) -> None:
        self.flush()

    def on_end(self, state: TrainState, result: dict[str, Any]) -> None:
        self.flush()


class MetricsFile(Callback):
    """Rank 0 appends every step's and evaluation's metrics to the run directory's metrics file."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def on_step(self, state: TrainState, metrics: dict[str, float]) -> None:
        if state.rank == 0:
            rundir.append_metrics(self.run_dir, "train", state.step, metrics)

    def on_eval(self, state: TrainState, metrics: dict[str, float]) -> None:
        if state.rank == 0:
            rundir.append_metrics(self.run_dir, "eval", state.step, metrics)
