"""The teacher pass: a teacher run over a tokenized corpus into a logits store, over any number of
ranks.

`plan` cuts the pass into shards of whole windows, each named by the positions it holds, so every
rank and every rerun agrees on the plan without talking; rank r of N (`pass_rank`: a launcher, an
`srun` step or a Slurm job array) writes shards r, r + N, …. `generate` runs the teacher window by
window, truncates each position's distribution to top-p_max-k_max on the device chunk by chunk
(Teacher.sparse), and encodes and writes each shard beside the next forward pass; a killed pass
resumes with the shards it had not written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pdsweep import files, rundir, settings
from pdsweep.data import tokenized
from pdsweep.errors import UserError
from pdsweep.logits import store as logits_store
from pdsweep.logits import truncation
from pdsweep.logits.teacher import Teacher


def store_info(
    teacher: Teacher,
    tokens: tokenized.TokenData,
    top_p: float,
    top_k: int | None,
    mode: str = "offline",
    sampling_draws: int | None = None,
    seq_len: int | None = None,
) -> logits_store.StoreInfo:
    """What a pass of `teacher` over `tokens` writes a store from (its FLOPs per position with `seq_len`)."""
    return logits_store.StoreInfo(
        teacher.fingerprint,
        tokens.manifest["tokenizer_fingerprint"],
        tokens.manifest["corpus_fingerprint"],
        teacher.vocab_size,
        top_p,
        top_k,
        mode,
        sampling_draws,
        teacher.run_id,
        teacher.flops_per_position(seq_len) if seq_len else None,
    )


@dataclass
class PlannedShard:
    """One shard of a teacher pass: its name (from the positions it holds, so every rank and every
    rerun names it alike) and its windows (array, global offset, start, end)."""

    name: str
    windows: list[tuple[Any, int, int, int]]
    first_window: int
    """The global index of its first window: seeds its sampled draws."""

    @property
    def positions(self) -> int:
        return sum(e - s for _, _, s, e in self.windows)


def plan(
    tokens: tokenized.TokenData,
    seq_len: int,
    shard_positions: int = 16384,
    limit: int | None = None,
    train_windows: Any = None,
    heldout_limit: int | None = None,
) -> list[PlannedShard]:
    """The shards of a pass, in position order: consecutive windows of `seq_len` tokens (training
    positions first, then held-out ones after them), `shard_positions // seq_len` windows a shard."""
    n_train = len(tokens.train) if limit is None else min(limit, len(tokens.train))
    spans = [(tokens.train, 0, n_train)] + (
        [(tokens.heldout, len(tokens.train), min(len(tokens.heldout), heldout_limit or len(tokens.heldout)))]
        if limit is None
        else []
    )
    windows: list[tuple[int, tuple[Any, int, int, int]]] = []
    for arr, offset, n in spans:
        base = len(windows)
        windows += [
            (base + start // seq_len, (arr, offset, start, min(start + seq_len, n))) for start in range(0, n, seq_len)
        ]
    if train_windows is not None:
        wanted = set(np.asarray(train_windows).tolist())
        windows = [(g, w) for g, w in windows if w[0] is not tokens.train or w[2] // seq_len in wanted]
    per_shard = max(1, shard_positions // seq_len)
    out = []
    for i in range(0, len(windows), per_shard):
        group = windows[i : i + per_shard]
        ranges = ",".join(f"{off + s}:{off + e}" for _, (_, off, s, e) in group)
        first = group[0][1][1] + group[0][1][2]
        digest = files.sha256_bytes(ranges.encode())[:8]
        out.append(PlannedShard(f"shard-{first:012d}-{digest}.pdl", [w for _, w in group], group[0][0]))
    return out


def pass_rank(env: Any = None) -> tuple[int, int]:
    """(rank, ranks) of this process in a teacher pass: from a launcher (RANK, WORLD_SIZE: torchrun,
    the deepspeed launcher, `pdsweep logits generate --ranks`), an `srun` step (SLURM_PROCID), and a
    Slurm job array (each array task its own set of ranks)."""
    import os

    env = os.environ if env is None else env
    if "RANK" in env:
        rank, world = int(env["RANK"]), int(env.get("WORLD_SIZE", "1"))
    elif "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:
        rank, world = int(env["SLURM_PROCID"]), int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")))
    else:
        rank, world = 0, 1
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        task = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        rank, world = task * world + rank, int(env["SLURM_ARRAY_TASK_COUNT"]) * world
    if not 0 <= rank < world:
        raise UserError(f"teacher pass: rank {rank} is not one of {world} ranks (RANK, WORLD_SIZE)")
    return rank, world


def _write(path: Path, info: Any, name: str, positions: np.ndarray, arrays: Any) -> None:
    """Encode and write one planned shard (in the pass's process, or in an encoding process)."""
    writer = _writers.get(str(path))
    if writer is None:
        writer = _writers[str(path)] = logits_store.StoreWriter(path, info)
    writer.write_shard(name, positions, arrays)


_writers: dict[str, logits_store.StoreWriter] = {}


@torch.no_grad()
def generate(
    teacher: Teacher,
    tokens: tokenized.TokenData,
    out: Path,
    top_p: float,
    top_k: int | None,
    seq_len: int,
    batch_size: int = 8,
    shard_positions: int = 16384,
    limit: int | None = None,
    progress: Callable[[str, int, int], None] = lambda *a: None,
    sampling_draws: int | None = None,
    seed: int = 0,
    train_windows: Any = None,
    heldout_limit: int | None = None,
    rank: int = 0,
    ranks: int = 1,
    encoders: int = 0,
) -> dict[str, Any]:
    """Write the teacher's top-p-k logits for every position of the corpus (training positions
    first, then held-out ones after them) — or for the first `limit` training positions. With
    `sampling_draws`, store sampled targets instead (`sampling_draws` tokens drawn per position from
    the full teacher distribution; the draws of a shard depend only on (seed, its first window)).

    The pass is `plan`ned in shards of whole windows; of `ranks` processes, rank r writes the shards
    r, r + ranks, … of the plan, each independently (StoreWriter.write_shard), and the manifest is
    assembled from their records when a rank ends. `train_windows` (sorted window indices) limits
    the training positions to the windows the store's students will visit
    (`batches.visited_windows`), `heldout_limit` the held-out ones to the first that their
    evaluation reads. A rerun writes only the shards not written yet: a killed rank's, and no
    other. `encoders` > 0 encodes shards in that many processes (a GPU teacher outruns one core's
    encoding); 0 in one thread beside the teacher."""
    if sampling_draws is not None:
        top_p, top_k = 1.0, None  # the sampled ids are not a truncation
    info = store_info(teacher, tokens, top_p, top_k, sampling_draws=sampling_draws, seq_len=seq_len)
    writer = logits_store.StoreWriter(out, info)
    shards = plan(tokens, seq_len, shard_positions, limit, train_windows, heldout_limit)
    names = {sh.name for sh in shards}
    if any(e["name"] not in names for e in writer.shards):  # a store another pass wrote: what it holds is kept
        have = logits_store.StoreReader(out).positions()
        shards = [sh for sh in shards if not np.isin([off + s for _, off, s, _ in sh.windows], have).all()]
    mine = [sh for k, sh in enumerate(shards) if k % ranks == rank]
    done = writer.begin([sh.name for sh in shards], [sh.name for sh in mine])
    todo = [sh for sh in mine if sh.name not in done]
    total = sum(sh.positions for sh in todo)
    device = next(teacher.module.parameters()).device
    started = time.perf_counter()
    written = 0
    # Encoding and writing a shard overlaps the teacher's next forward pass: in one thread, or in a
    # pool of processes; at most one shard per encoder waits to be written.
    if encoders > 0:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool: Any = ProcessPoolExecutor(encoders, mp_context=multiprocessing.get_context("spawn"))
    else:
        pool = ThreadPoolExecutor(max_workers=1)
    pending: list[tuple[Future[Any], int]] = []
    threads = settings.ThreadBudget()  # more cores when the tasks beside this pass end
    try:
        for sh in todo:
            positions: list[np.ndarray] = []
            parts: list[truncation.Sparse] = []
            gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + sh.first_window)

            def keep(logits: torch.Tensor, gen: torch.Generator = gen) -> truncation.Sparse:
                if sampling_draws is None:
                    return truncation.top_p_k(logits, top_p, top_k)
                return truncation.sampled_sparse(logits, sampling_draws, gen)

            for b in range(0, len(sh.windows), batch_size):
                batch = sh.windows[b : b + batch_size]
                length = max(e - s for _, _, s, e in batch)
                same = all(e - s == length for _, _, s, e in batch)
                chunks = [batch] if same else [[w] for w in batch]  # a short last window goes alone
                for chunk in chunks:
                    if (n := threads.poll()) is not None and n != torch.get_num_threads():
                        torch.set_num_threads(n)
                    x = torch.from_numpy(np.stack([np.asarray(arr[s:e], dtype=np.int64) for arr, _, s, e in chunk])).to(
                        device
                    )
                    parts.extend(teacher.sparse(x, keep))
                    positions.extend(np.arange(off + s, off + e) for _, off, s, e in chunk)
            while len(pending) > max(0, encoders - 1):
                future, size = pending.pop(0)
                future.result()
                written += size
                progress("teacher logits", written, total)
            arrays = truncation.concat(parts)
            pending.append((pool.submit(_write, out, info, sh.name, np.concatenate(positions), arrays), sh.positions))
        for future, size in pending:
            future.result()
            written += size
            progress("teacher logits", written, total)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        manifest = writer.assemble()
    elapsed = time.perf_counter() - started
    if written:  # what this rank's attempt cost: store.pass_compute sums them
        event = {"event": "pass_rank", "rank": rank, "ranks": ranks, "generated": written, "seconds": elapsed}
        rundir.append_event(out, event | {"device": device.type, "time": time.time()})
    return {
        "store": str(out),
        "positions": sum(sh.positions for sh in shards),
        "generated": written,
        "seconds": elapsed,
        "tokens_per_s": written / elapsed if elapsed > 0 and written else None,
        "rank": rank,
        "ranks": ranks,
        "pending": len(manifest["pending"]),
    }
