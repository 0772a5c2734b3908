"""Batches as a pure function of (seed, step, rank): windows of seq_len + 1 tokens with their global
positions, which windows a run visits (what a teacher pass must cover), and the held-out batches.
A resumed run is exactly equal to an uninterrupted one because nothing here has state.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pdsweep.errors import UserError

if TYPE_CHECKING:
    pass
from pdsweep.data.tokenized import TokenData

# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """`inputs`/`targets` (B, T) token ids; `positions` (B, T) global positions of the inputs
    (the teacher's distribution at position p predicts the token at p + 1)."""

    inputs: np.ndarray
    targets: np.ndarray
    positions: np.ndarray


def num_windows(n_tokens: int, seq_len: int) -> int:
    """Non-overlapping windows of seq_len inputs (+1 target token) in n_tokens tokens."""
    return max(0, (n_tokens - 1) // seq_len)


@functools.lru_cache(maxsize=4)
def _epoch_order(n_windows: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n_windows)


def batch_at(
    tokens: np.ndarray,
    seq_len: int,
    global_batch: int,
    seed: int,
    step: int,
    rank: int = 0,
    world: int = 1,
    offset: int = 0,
    windows: np.ndarray | None = None,
) -> Batch:
    """The rows of optimiser step `step` that belong to `rank`: a pure function of its arguments.

    Every epoch visits each window once, in an order drawn from (seed, epoch); the global batch
    of a step is split evenly across ranks. `offset` is added to positions (held-out tokens).
    `windows` restricts training to those window indices (an online student trains on the windows
    its teacher recorded)."""
    n = num_windows(len(tokens), seq_len) if windows is None else len(windows)
    if n == 0:
        raise UserError(f"data.seq_len: {seq_len} is longer than the data ({len(tokens)} tokens)")
    if global_batch % world:
        raise ValueError(f"global batch {global_batch} is not divisible by {world} ranks")
    per_rank = global_batch // world
    rows = np.arange(step * global_batch + rank * per_rank, step * global_batch + (rank + 1) * per_rank)
    chosen = np.array([_epoch_order(n, seed, int(g // n))[g % n] for g in rows])
    starts = (chosen if windows is None else np.asarray(windows, dtype=np.int64)[chosen]) * seq_len
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    chunk = np.asarray(tokens[idx], dtype=np.int64)
    return Batch(chunk[:, :-1], chunk[:, 1:], (starts[:, None] + np.arange(seq_len)[None, :]) + offset)


def visited_windows(n_tokens: int, seq_len: int, global_batch: int, seed: int, steps: int) -> np.ndarray:
    """Indices (sorted) of the training windows a run visits in `steps` optimiser steps: all of them
    once it reaches a second epoch, else the first rows of its first epoch's order (`batch_at`)."""
    n = num_windows(n_tokens, seq_len)
    rows = steps * global_batch
    if rows >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(_epoch_order(n, seed, 0)[:rows]).astype(np.int64)


def windows_covering(windows: np.ndarray, seq_len: int, other_seq_len: int) -> np.ndarray:
    """The windows of length `other_seq_len` that hold the input positions of `windows` (of length
    `seq_len`), sorted and unique."""
    starts = np.asarray(windows, dtype=np.int64) * seq_len
    spans = [
        (starts + min(j * other_seq_len, seq_len - 1)) // other_seq_len for j in range(seq_len // other_seq_len + 2)
    ]
    return np.unique(np.concatenate(spans))


def covered_windows(positions: np.ndarray, seq_len: int, n_tokens: int) -> np.ndarray:
    """Indices of the training windows all of whose `seq_len` input positions are in `positions`
    (sorted, unique) — the windows an online logits store can supervise."""
    positions = np.asarray(positions, dtype=np.int64)
    positions = positions[positions < num_windows(n_tokens, seq_len) * seq_len]
    counts = np.bincount(positions // seq_len, minlength=num_windows(n_tokens, seq_len))
    return np.flatnonzero(counts == seq_len)


def heldout_batches(tokens: TokenData, seq_len: int, batch_size: int, max_tokens: int) -> Iterator[Batch]:
    """The first `max_tokens` held-out tokens in order, as batches (positions after the train split)."""
    n = min(num_windows(len(tokens.heldout), seq_len), max(1, math.ceil(max_tokens / seq_len)))
    offset = len(tokens.train)
    for first in range(0, n, batch_size):
        starts = np.arange(first, min(first + batch_size, n)) * seq_len
        idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
        chunk = np.asarray(tokens.heldout[idx], dtype=np.int64)
        yield Batch(chunk[:, :-1], chunk[:, 1:], starts[:, None] + np.arange(seq_len)[None, :] + offset)
