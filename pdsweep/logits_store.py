"""The teacher's logits store: truncation, the on-disk format, the atomic writer, the reader.

What is kept per token position (the global position in the tokenized corpus):
    n           how many entries survived top-p-k truncation (1 ≤ n ≤ k_max)
    ids[n]      the kept token ids, most probable first
    values[n]   their probabilities, quantised (see below)
    lse         the full-vocabulary log-sum-exp of the teacher's logits (float16), so raw logits
                z = log p + lse are recoverable
From these, any p ≤ p_max, k ≤ k_max and any τ are applied at read time: one teacher pass serves a
whole truncation and temperature sweep.

Format (a directory): `manifest.json` (format version, teacher/tokenizer/corpus fingerprints, p_max,
k_max, dtypes, the shard list with a SHA-256 each) and shards `shard_NNNNNN.pdl`, each written
atomically and self-contained. A shard holds a set of positions (a contiguous range for offline
generation, any set for online recording; a later shard wins for a position recorded twice) and
its columns, each compressed with zstd:
    positions   first + count, or delta-coded
    counts      n per position
    gaps        each position's kept ids as a set: their ranks in this shard's table of ids by
                frequency, ascending, as gaps (frequent ids → small ranks → small gaps)
    values      the quantised probabilities, in the same order
    argmax      which entry of the set is the most probable (exact even when quantised values tie)
    id_table    the shard's ids, most frequent first
    lse         float16
Values are quantised as y = p^γ (γ = 0.65, recorded per shard) on a grid
of step 2γ·1e-3, so that |p̂ − p| ≤ 1e-3 for every probability, while small probabilities keep
their relative precision better than a linear grid would (they matter at τ > 1).
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pdsweep import files
from pdsweep.specfile import SpecError

FORMAT_VERSION = 3
"""3: the manifest is sealed by a checksum and names the teacher run; 2: entries in probability order
(exact order for any k) with exact counts at P_GRID; 1: entries as a set with only the argmax's place
(reads at a smaller k or p could pick the wrong entries)."""
MAGIC = b"PDSL"
GAMMA = 0.65
"""Values are stored as y = p^GAMMA on a grid of step `value_step(GAMMA)`; each shard records its γ.

Smaller γ keeps more relative precision for small probabilities and costs bytes. Measured on
SmolLM2-135M's top-0.95-100 outputs over the default corpus (16384-position shards, format 1): γ = 0.5
→ 1.73 B/entry, mean KL(exact ‖ decoded targets) 1.7e-5 nats; γ = 0.65 → 1.56 B/entry, 1.1e-4 nats
(total variation 0.36% at τ = 1, 0.43% at τ = 2 — a tenth of what top-0.95 truncation removes);
γ = 0.7 → 1.51 B/entry, 2.0e-4 nats. Every γ keeps |p̂ − p| ≤ 1e-3."""

P_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""[D] The nucleus masses (0.05, 0.10, …, 0.95: every p the paper sweeps) at which every shard records
the exact number of entries top-p keeps. A read at one of them is exact; a read at another p cuts on
the decoded cumulative mass (each value within 1e-3, so the sum can cross p one or two entries early
or late), clamped between the exact counts of the grid points around it."""


def grid_below(top_p: float) -> tuple[float, ...]:
    """The grid points a store truncated at `top_p` records counts for (those below it)."""
    return tuple(g for g in P_GRID if g < top_p - 1e-9)


def value_step(gamma: float) -> float:
    """Grid step of y = p^γ: the error in p is at most step/(2γ)·p^(1−γ) ≤ 1e-3."""
    return 2 * gamma * 1e-3


ZSTD_LEVEL = 9
"""Level 19 makes stores ~1.5% smaller (measured on SmolLM2-135M outputs) at ~10x the compression
time, which bounds generation speed for small teachers; 9 keeps writing well below the forward pass."""


# ----------------------------------------------------------------------------------------------
# Truncation (pure functions over torch tensors)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sparse:
    """Truncated teacher distributions for N positions, padded to K entries.

    ids (N, K) int64, logprobs (N, K) float32 (log-probabilities under the full vocabulary, −inf
    where padded), count (N,) int64, lse (N,) float32, cuts (N, G) int64: how many entries top-p
    keeps at each grid point below the truncation's p (`grid_below`; G = 0 for sampled targets).
    Entries are sorted, most probable first."""

    ids: Any
    logprobs: Any
    count: Any
    lse: Any
    cuts: Any


def top_p_k(logits: Any, top_p: float, top_k: int | None) -> Sparse:
    """Nucleus then top-k truncation of the τ = 1 distribution (the paper's top-p-k).

    Keeps the smallest prefix of the sorted distribution whose mass reaches `top_p`, then at most
    `top_k` entries (None = no cap), and never fewer than one. The cumulative mass is summed in
    float64, so the cut is the one a float64 reference makes except at exact ties.

    Args:
        logits: (N, V) float teacher logits.
    """
    import torch

    logits = logits.float()
    vocab = logits.shape[-1]
    k = vocab if top_k is None else min(top_k, vocab)
    lse = torch.logsumexp(logits, dim=-1)
    values, ids = torch.topk(logits, k, dim=-1, sorted=True)
    logprobs = values - lse[:, None]
    cum = torch.cumsum(logprobs.double().exp(), dim=-1)

    def kept(p: float) -> Any:
        # Entries strictly before the one that reaches p, plus that one; p = 1 keeps all k (in
        # floating point the cumulative mass can reach 1 early when the tail underflows).
        if p >= 1:
            return torch.full_like(lse, k, dtype=torch.long)
        return ((cum < p).sum(dim=-1) + 1).clamp(1, k)

    count = kept(top_p)
    grid = grid_below(top_p)
    cuts = torch.stack([torch.minimum(kept(g), count) for g in grid], dim=-1) if grid else count[:, None][:, :0]
    keep = torch.arange(k, device=logits.device)[None, :] < count[:, None]
    return Sparse(ids.masked_fill(~keep, 0), logprobs.masked_fill(~keep, float("-inf")), count, lse, cuts)


def concat(parts: list[Sparse]) -> tuple[np.ndarray, ...]:
    """Several Sparse batches as one, padded to the widest: numpy (ids, logprobs, count, lse, cuts)."""
    K = max(p.ids.shape[1] for p in parts)

    def pad(t: Any, value: float) -> np.ndarray:
        a = t.cpu().numpy()
        out = np.full((a.shape[0], K), value, dtype=a.dtype)
        out[:, : a.shape[1]] = a
        return out

    return (
        np.concatenate([pad(p.ids, 0) for p in parts]),
        np.concatenate([pad(p.logprobs, -np.inf) for p in parts]),
        np.concatenate([p.count.cpu().numpy() for p in parts]),
        np.concatenate([p.lse.cpu().numpy() for p in parts]),
        np.concatenate([p.cuts.cpu().numpy() for p in parts]),
    )


def sample_targets(logits: Any, draws: int, generator: Any = None) -> tuple[Any, Any, Any]:
    """Extension: unbiased random-sampled sparse targets.

    Draws `draws` tokens from each position's teacher distribution; returns (ids (N, draws) int64,
    counts (N, draws) int64, n (N,) distinct ids) with ids sorted by count. The target q = counts /
    draws is an unbiased estimate of the teacher distribution: E[q] = p."""
    import torch

    probs = torch.softmax(logits.float(), dim=-1)
    samples = torch.multinomial(probs, draws, replacement=True, generator=generator)  # (N, draws)
    sorted_ids, _ = torch.sort(samples, dim=-1)
    new = torch.ones_like(sorted_ids, dtype=torch.bool)
    new[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    group = torch.cumsum(new.long(), dim=-1) - 1  # (N, draws): index of each draw's distinct id
    counts = torch.zeros_like(samples).scatter_add_(1, group, torch.ones_like(samples))
    ids = torch.zeros_like(samples).scatter_(1, group, sorted_ids)
    n = new.sum(dim=-1)
    order = torch.argsort(counts, dim=-1, descending=True, stable=True)
    return ids.gather(1, order), counts.gather(1, order), n


def sampled_sparse(logits: Any, draws: int, generator: Any = None) -> Sparse:
    """`sample_targets` as stored entries: log(count / draws) per distinct drawn id, most drawn
    first; the full-vocabulary log-sum-exp is kept as for top-p-k entries."""
    import torch

    ids, counts, n = sample_targets(logits, draws, generator)
    logprobs = torch.log(counts.float() / draws)  # −inf where nothing was drawn (padding)
    lse = torch.logsumexp(logits.float(), dim=-1)
    return Sparse(ids.masked_fill(counts == 0, 0), logprobs, n, lse, n[:, None][:, :0])


def truncate_entries(
    ids: Any,
    logprobs: Any,
    count: Any,
    top_p: float,
    top_k: int | None,
    *,
    stored_p: float = 1.0,
    cuts: Any = None,
    p_grid: tuple[float, ...] = (),
) -> tuple[Any, Any, Any]:
    """Stored top-p_max-k_max entries cut to a smaller p and k (torch tensors in, torch out).

    The entries are in exact probability order, so a smaller k keeps exactly the k most probable.
    At p ≥ `stored_p` (the store's own p) every stored entry is kept; at a grid point of `p_grid`
    the exact count recorded in `cuts` is used; at any other p the cut falls where the decoded
    cumulative mass reaches p, clamped between the exact counts of the grid points around it.

    Args:
        ids, logprobs: (N, K) entries, most probable first (logprobs under the full vocabulary, −inf
            where padded); count (N,) kept entries per position; cuts (N, G) exact counts at the
            G points of `p_grid`.
    Returns:
        (ids (N, k), logprobs (N, k) with −inf beyond the cut, mask (N, k) bool).
    """
    import torch

    k = ids.shape[-1] if top_k is None else min(top_k, ids.shape[-1])
    n = count.clamp(max=k)
    if top_p < stored_p - 1e-9:
        exact = [i for i, g in enumerate(p_grid) if abs(g - top_p) < 1e-9]
        if exact and cuts is not None:
            n_p = cuts[:, exact[0]]
        else:
            cum = torch.cumsum(logprobs.double().exp(), dim=-1)  # padded entries: exp(−inf) = 0
            n_p = (cum < top_p).sum(dim=-1) + 1
            if cuts is not None:
                below = [i for i, g in enumerate(p_grid) if g < top_p]
                above = [i for i, g in enumerate(p_grid) if g > top_p]
                if below:
                    n_p = torch.maximum(n_p, cuts[:, below[-1]])
                n_p = torch.minimum(n_p, cuts[:, above[0]] if above else count)
        n = torch.minimum(n_p.clamp(min=1), n)
    ids, logprobs = ids[:, :k], logprobs[:, :k]
    mask = torch.arange(k, device=ids.device)[None, :] < n[:, None]
    return ids, logprobs.masked_fill(~mask, float("-inf")), mask


def read_targets(
    ids: Any,
    logprobs: Any,
    count: Any,
    top_p: float,
    top_k: int | None,
    temperature: float,
    renormalize: bool = True,
    **stored: Any,
) -> tuple[Any, Any, Any, Any]:
    """Targets for a smaller p, k and any τ from stored top-p_max-k_max entries (F(z) = softmax(
    Truncate(z)/τ), the paper's Eq. 4), by the same function the training loss uses; `stored`
    (stored_p, cuts, p_grid) as for `truncate_entries`.

    Returns (ids (N, K), probs (N, K), mask (N, K) bool, residual (N,)): with `renormalize` the
    kept probabilities sum to 1 and residual is 0; without it they keep the kept mass of the τ = 1
    distribution and `residual` = 1 − that mass (the untruncated tail as one bucket)."""
    ids, logprobs, mask = truncate_entries(ids, logprobs, count, top_p, top_k, **stored)
    return _targets(ids, logprobs, mask, temperature, renormalize)


def _targets(ids: Any, logprobs: Any, mask: Any, temperature: float, renormalize: bool) -> tuple[Any, Any, Any, Any]:
    """(ids, probs, mask, residual) from truncated entries, by the training loss's own function."""
    from pdsweep.losses import KDConfig, teacher_targets

    probs, residual, _, _ = teacher_targets(logprobs, mask, KDConfig(temperature=temperature, renormalize=renormalize))
    return ids, probs, mask, residual


# ----------------------------------------------------------------------------------------------
# Value quantisation
# ----------------------------------------------------------------------------------------------


def quantize(logprobs: np.ndarray, gamma: float = GAMMA) -> np.ndarray:
    """log p → integer grid of y = p^γ (≥ 1 for any kept entry)."""
    y = np.exp(gamma * logprobs.astype(np.float64))
    return np.maximum(np.rint(y / value_step(gamma)), 1).astype(np.int64)


def dequantize(q: np.ndarray, gamma: float = GAMMA) -> np.ndarray:
    """Integer grid → log p (float32)."""
    return (np.log(q.astype(np.float64) * value_step(gamma)) / gamma).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Shards
# ----------------------------------------------------------------------------------------------


def _zstd():  # noqa: ANN202
    import zstandard

    return zstandard


def _shuffle(a: np.ndarray) -> bytes:
    """Byte-transpose a multi-byte integer array (all low bytes, then all high bytes)."""
    return np.ascontiguousarray(a.view(np.uint8).reshape(-1, a.itemsize).T).tobytes()


def _unshuffle(raw: bytes, dtype: np.dtype, n: int) -> np.ndarray:
    return np.frombuffer(raw, dtype=np.uint8).reshape(dtype.itemsize, n).T.copy().view(dtype).reshape(n)


def _smallest_uint(max_value: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def estimated_cuts(q: np.ndarray, count: np.ndarray, gamma: float, grid: tuple[float, ...]) -> np.ndarray:
    """(P, G) counts top-p would keep at each grid point judged from the decoded values q (P, K) in
    probability order — the guess that a shard corrects to the exact counts (encoder and decoder
    compute it identically, so only the few corrections are stored)."""
    P, K = q.shape
    mask = np.arange(K)[None, :] < count[:, None]
    p = np.where(mask, np.exp(dequantize(np.maximum(q, 1), gamma).astype(np.float64)), 0.0)
    cum = np.cumsum(p, axis=1)
    return np.stack([np.minimum((cum < g).sum(axis=1) + 1, count) for g in grid], axis=1).reshape(P, len(grid))


def _zigzag(a: np.ndarray) -> np.ndarray:
    return np.where(a >= 0, 2 * a, -2 * a - 1)


def _unzigzag(a: np.ndarray) -> np.ndarray:
    return np.where(a % 2 == 0, a // 2, -(a + 1) // 2)


def encode_shard(
    positions: np.ndarray,
    ids: np.ndarray,
    logprobs: np.ndarray,
    count: np.ndarray,
    lse: np.ndarray,
    cuts: np.ndarray | None = None,
    p_grid: tuple[float, ...] = (),
    level: int = ZSTD_LEVEL,
    gamma: float = GAMMA,
) -> bytes:
    """One shard's bytes. positions (P,) int64 ascending; ids/logprobs (P, K) with the kept entries
    first (any order), count (P,); lse (P,); cuts (P, G) the exact top-p counts at `p_grid`.

    Each position's entries are stored in probability order, so a read at any smaller k keeps
    exactly the most probable ones: the ids as ranks in this shard's table of ids by frequency
    (kept ids are mostly frequent ones), the quantised values as the first one and then the drops
    from one entry to the next (mostly 0 or 1 in the tail), and the grid counts as corrections to
    what the decoded values suggest (`estimated_cuts`; 95% are 0). Order costs bytes: on SmolLM2-135M
    (benchmarks/bench_logits.py) a set-coded shard without it was 1.56 B/entry."""
    P, K = ids.shape
    mask = np.arange(K)[None, :] < count[:, None]
    order = np.argsort(np.where(mask, -logprobs.astype(np.float64), np.inf), axis=1, kind="stable")
    ids = np.take_along_axis(ids, order, axis=1)
    logprobs = np.take_along_axis(logprobs, order, axis=1)
    q = np.where(mask, quantize(np.where(mask, logprobs, 0.0), gamma), 0)
    table, inverse, freq = np.unique(ids[mask], return_inverse=True, return_counts=True)
    by_freq = np.argsort(-freq, kind="stable")
    rank_of = np.empty_like(by_freq)
    rank_of[by_freq] = np.arange(len(by_freq))
    ranks = rank_of[inverse.reshape(-1)]
    drops = (q[:, :-1] - q[:, 1:])[mask[:, 1:]]
    contiguous = P > 0 and positions[-1] - positions[0] == P - 1
    columns: dict[str, np.ndarray] = {
        "counts": count.astype(_smallest_uint(int(count.max(initial=0)))),
        "ranks": ranks.astype(_smallest_uint(int(ranks.max(initial=0)))),
        "first": q[:, 0].astype(_smallest_uint(int(q[:, 0].max(initial=0)))),
        "drops": drops.astype(_smallest_uint(int(drops.max(initial=0)))),
        "id_table": table[by_freq].astype(_smallest_uint(int(table.max(initial=0)))),
        "lse": lse.astype(np.float16).view(np.uint16),
    }
    if p_grid:
        assert cuts is not None and cuts.shape == (P, len(p_grid)), "a shard with a p grid needs its cut counts"
        fixes = _zigzag(cuts.astype(np.int64) - estimated_cuts(q, count, gamma, p_grid)).reshape(-1)
        columns["cut_fixes"] = fixes.astype(_smallest_uint(int(fixes.max(initial=0))))
    if not contiguous:
        deltas = np.diff(positions, prepend=positions[:1] if P else positions)
        columns["position_deltas"] = deltas.astype(_smallest_uint(int(deltas.max(initial=0))))
    cctx = _zstd().ZstdCompressor(level=level)
    header: dict[str, Any] = {
        "P": int(P),
        "entries": int(mask.sum()),
        "first": int(positions[0]) if P else 0,
        "contiguous": bool(contiguous),
        "gamma": gamma,
        "p_grid": list(p_grid),
        "columns": [],
    }
    blobs = []
    for name, arr in columns.items():
        shuffled = arr.itemsize > 1
        blob = cctx.compress(_shuffle(arr) if shuffled else arr.tobytes())
        header["columns"].append(
            {"name": name, "dtype": arr.dtype.str, "n": int(arr.size), "shuffled": shuffled, "bytes": len(blob)}
        )
        blobs.append(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<HI", FORMAT_VERSION, len(head)) + head + b"".join(blobs)


@dataclass
class Shard:
    """A decoded shard, compact: each position's entries in probability order, flattened.

    positions (P,), count (P,), offsets (P + 1,) into flat_ids / flat_q (the quantised values),
    lse (P,) float32, cuts (P, G) exact top-p counts at the grid points p_grid."""

    positions: np.ndarray
    count: np.ndarray
    offsets: np.ndarray
    flat_ids: np.ndarray
    flat_q: np.ndarray
    lse: np.ndarray
    cuts: np.ndarray
    p_grid: tuple[float, ...]
    gamma: float = GAMMA

    @property
    def nbytes(self) -> int:
        arrays = (self.positions, self.count, self.offsets, self.flat_ids, self.flat_q, self.lse, self.cuts)
        return sum(a.nbytes for a in arrays)

    def rows(self, rows: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
        """ids (N, K) int64 and logprobs (N, K) float32 (−inf padded) of the given rows."""
        start, n = self.offsets[rows], self.count[rows]
        mask = np.arange(K)[None, :] < n[:, None]
        idx = np.where(mask, start[:, None] + np.arange(K)[None, :], 0)
        ids = np.where(mask, self.flat_ids[idx], 0).astype(np.int64)
        logprobs = np.where(mask, dequantize(self.flat_q[idx], self.gamma), np.float32(-np.inf)).astype(np.float32)
        return ids, logprobs

    @property
    def ids(self) -> np.ndarray:
        return self.rows(np.arange(len(self.positions)), int(self.count.max(initial=1)))[0]

    @property
    def logprobs(self) -> np.ndarray:
        return self.rows(np.arange(len(self.positions)), int(self.count.max(initial=1)))[1]


@dataclass
class Entries:
    """Stored entries of a batch of positions, padded: ids (N, K) int64, logprobs (N, K) float32 at
    τ = 1 (−inf padded), count (N,), cuts (N, G) exact top-p counts at p_grid, and the store's own
    p (`stored_p`): what `truncate_entries` needs to cut them exactly."""

    ids: np.ndarray
    logprobs: np.ndarray
    count: np.ndarray
    cuts: np.ndarray
    p_grid: tuple[float, ...] = ()
    stored_p: float = 1.0

    def truncated(self, top_p: float, top_k: int | None) -> tuple[Any, Any, Any]:
        """Torch (ids, logprobs, mask) cut to top-p-k (`truncate_entries`)."""
        import torch

        return truncate_entries(
            torch.from_numpy(self.ids),
            torch.from_numpy(self.logprobs),
            torch.from_numpy(self.count),
            top_p,
            top_k,
            stored_p=self.stored_p,
            cuts=torch.from_numpy(self.cuts),
            p_grid=self.p_grid,
        )


def decode_shard(data: bytes, name: str = "shard") -> Shard:
    if data[:4] != MAGIC:
        raise SpecError(f"{name}: not a pdsweep logits shard")
    version, head_len = struct.unpack("<HI", data[4:10])
    if version != FORMAT_VERSION:
        raise SpecError(
            f"{name}: shard format {version} was written by another pdsweep (this one reads {FORMAT_VERSION});"
            " delete the store and generate it again"
        )
    header = json.loads(data[10 : 10 + head_len])
    offset = 10 + head_len
    dctx = _zstd().ZstdDecompressor()
    cols: dict[str, np.ndarray] = {}
    for c in header["columns"]:
        dtype = np.dtype(c["dtype"])
        raw = dctx.decompress(data[offset : offset + c["bytes"]], max_output_size=c["n"] * dtype.itemsize)
        offset += c["bytes"]
        cols[c["name"]] = _unshuffle(raw, dtype, c["n"]) if c["shuffled"] else np.frombuffer(raw, dtype=dtype).copy()
    P, gamma, grid = header["P"], float(header["gamma"]), tuple(header["p_grid"])
    count = cols["counts"].astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(count)]).astype(np.int64)
    table = cols["id_table"]
    flat_ids = table[cols["ranks"].astype(np.int64)]
    # Values: each position's first value, then running sums of the drops.
    steps = np.zeros(int(offsets[-1]), dtype=np.int64)
    starts = offsets[:-1][count > 0]
    steps[starts] = cols["first"].astype(np.int64)[count > 0]
    rest = np.ones(len(steps), dtype=bool)
    rest[starts] = False
    steps[rest] = -cols["drops"].astype(np.int64)
    running = np.cumsum(steps)
    flat_q = running - np.repeat(np.concatenate([[0], running[offsets[1:-1] - 1]]) if P else running[:0], count)
    if grid:
        K = int(count.max(initial=1))
        mask = np.arange(K)[None, :] < count[:, None]
        q = np.zeros((P, K), dtype=np.int64)
        q[mask] = flat_q
        cuts = estimated_cuts(q, count, gamma, grid) + _unzigzag(cols["cut_fixes"].astype(np.int64)).reshape(P, -1)
    else:
        cuts = np.zeros((P, 0), dtype=np.int64)
    if header["contiguous"]:
        positions = header["first"] + np.arange(P, dtype=np.int64)
    else:
        positions = header["first"] + np.cumsum(cols["position_deltas"].astype(np.int64))
    lse = cols["lse"].view(np.float16).astype(np.float32)
    id_dtype = np.uint16 if int(table.max(initial=0)) < 65536 else np.uint32
    return Shard(
        positions,
        count,
        offsets,
        flat_ids.astype(id_dtype),
        np.maximum(flat_q, 1).astype(np.uint16),
        lse,
        cuts.astype(np.int16 if cuts.size == 0 or cuts.max() < 32767 else np.int64),
        grid,
        gamma,
    )


# ----------------------------------------------------------------------------------------------
# The store on disk
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreInfo:
    """What a store was made from; a reader refuses a store whose fingerprints differ from the run's."""

    teacher_fingerprint: str
    tokenizer_fingerprint: str
    corpus_fingerprint: str
    vocab_size: int
    top_p: float
    top_k: int | None
    mode: str = "offline"
    sampling_draws: int | None = None
    """Set for a store of sampled targets (`sample_targets`): the draws per position."""
    teacher_run: str | None = None
    """The pdsweep run id of the teacher when it is a pdsweep run (`ckpt:`, a sweep's `run:NAME`, or
    a run recording its own logits): what a student of `run:NAME` checks the store against."""


IDENTITY = ("teacher_fingerprint", "tokenizer_fingerprint", "corpus_fingerprint", "vocab_size", "sampling_draws")
"""The StoreInfo fields a store must match to serve a run (p and k are checked per read)."""


def _manifest_checksum(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return files.sha256_bytes(json.dumps(body, sort_keys=True, ensure_ascii=False).encode())


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest sealed with a checksum over every other field (an edit is refused on read)."""
    manifest["checksum"] = _manifest_checksum(manifest)
    files.write_json(path / "manifest.json", manifest)


def read_manifest(path: Path) -> dict[str, Any]:
    """A store's manifest, checked: readable, this format, and not edited since pdsweep wrote it."""
    file = path / "manifest.json"
    if not path.is_dir():
        raise SpecError(f"{path}: not a logits store (no such directory)")
    try:
        manifest = files.read_json(file)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"{file}: not a logits store manifest ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(manifest, dict):
        raise SpecError(f"{file}: not a logits store manifest (a JSON object expected)")
    _check_format(path, manifest)
    if manifest.get("checksum") != _manifest_checksum(manifest):
        raise SpecError(f"{file}: checksum mismatch (the manifest was edited or damaged); generate the store again")
    return manifest


def check_identity(path: Path, manifest: dict[str, Any], expect: dict[str, Any]) -> None:
    """Refuse a store made from another teacher, tokenizer, corpus or sampling than `expect` says."""
    names = {
        "teacher_fingerprint": "teacher",
        "teacher_run": "teacher run",
        "tokenizer_fingerprint": "tokenizer",
        "corpus_fingerprint": "corpus",
        "vocab_size": "vocabulary size",
        "sampling_draws": "number of sampled draws",
    }
    for key, want in expect.items():
        have = manifest.get(key)
        if have != want:
            raise SpecError(
                f"{path}: this logits store was made for another {names.get(key, key)} ({key} {str(have)[:12]};"
                f" this run's: {str(want)[:12]}); give the store of this run's own teacher and data"
            )


def _check_format(path: Path, manifest: dict[str, Any]) -> None:
    if manifest.get("format") != FORMAT_VERSION:
        raise SpecError(
            f"{path}: logits store format {manifest.get('format')} was written by another pdsweep (this one reads"
            f" format {FORMAT_VERSION}); delete the store and generate it again"
        )


class StoreWriter:
    """Appends shards to a store directory; every shard and the manifest are written atomically, so
    a killed writer leaves a store that is valid up to its last complete shard."""

    def __init__(self, path: Path, info: StoreInfo):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob(".*.tmp"):  # a shard a killed writer left half-written (one writer at a time)
            stale.unlink(missing_ok=True)
        manifest_path = path / "manifest.json"
        if manifest_path.exists():
            self.manifest = read_manifest(path)
            mine = {k: v for k, v in dataclasses.asdict(info).items()}
            theirs = {k: self.manifest.get(k) for k in mine}
            if theirs != mine:
                diff = ", ".join(f"{k}: {theirs[k]} ≠ {mine[k]}" for k in mine if theirs[k] != mine[k])
                raise SpecError(f"{path}: an existing store was made differently ({diff})")
        else:
            self.manifest = {
                "format": FORMAT_VERSION,
                **dataclasses.asdict(info),
                "id_dtype": "uint16" if info.vocab_size <= 65536 else "uint32",
                "value_codec": {"kind": "power-grid", "gamma": GAMMA, "step": value_step(GAMMA)},
                "p_grid": list(self.p_grid(info)),
                "lse_dtype": "float16",
                "compressor": f"zstd-{ZSTD_LEVEL}",
                "shards": [],
            }
            _write_manifest(path, self.manifest)

    @staticmethod
    def p_grid(info: StoreInfo) -> tuple[float, ...]:
        """The grid points whose exact top-p counts the shards record (none for sampled targets)."""
        return () if info.sampling_draws else grid_below(info.top_p)

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.manifest["shards"]

    def covered(self) -> int:
        """Positions in complete shards (offline generation resumes after them)."""
        return sum(s["positions"] for s in self.shards)

    def add(
        self, positions: np.ndarray, sparse: Sparse | tuple[np.ndarray, ...], meta: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write one shard for `positions` (ascending) and record it in the manifest."""
        if isinstance(sparse, Sparse):
            ids, logprobs, count, lse, cuts = (
                np.asarray(x.cpu()) if hasattr(x, "cpu") else np.asarray(x)
                for x in (sparse.ids, sparse.logprobs, sparse.count, sparse.lse, sparse.cuts)
            )
        else:
            ids, logprobs, count, lse, cuts = sparse
        grid = tuple(self.manifest["p_grid"])
        if cuts.shape[1] != len(grid):
            raise ValueError(
                f"{len(grid)} grid counts expected for top-p {self.manifest['top_p']}, got {cuts.shape[1]}"
            )
        order = np.argsort(positions, kind="stable")
        positions = np.asarray(positions, dtype=np.int64)[order]
        data = encode_shard(positions, ids[order], logprobs[order], count[order], lse[order], cuts[order], grid)
        name = f"shard_{len(self.shards):06d}.pdl"
        files.write_bytes(self.path / name, data)
        entry = {
            "contiguous": bool(positions[-1] - positions[0] == len(positions) - 1),
            "name": name,
            "positions": int(len(positions)),
            "first": int(positions[0]),
            "last": int(positions[-1]),
            "entries": int(np.asarray(count).sum()),
            "bytes": len(data),
            "sha256": files.sha256_bytes(data),
            **(meta or {}),
        }
        self.manifest["shards"].append(entry)
        _write_manifest(self.path, self.manifest)
        return entry


class StoreReader:
    """Reads targets by global position, for any p ≤ p_max, k ≤ k_max and τ.

    Decoded shards are kept in a least-recently-used cache bounded in bytes (`cache_bytes`; about
    4 bytes per entry). Offline stores (contiguous shards) are searched by position range; online
    stores get an index in which the last shard that recorded a position wins."""

    def __init__(
        self, path: Path, expect: StoreInfo | dict[str, Any] | None = None, cache_bytes: int = 4 << 30
    ) -> None:
        """`expect`: what the store must have been made from — a StoreInfo (its IDENTITY fields), or
        a dict of the manifest fields a run can check without its teacher at hand."""
        self.path = path
        self.manifest = read_manifest(path)
        if isinstance(expect, StoreInfo):
            expect = {k: getattr(expect, k) for k in IDENTITY}
        if expect:
            check_identity(path, self.manifest, expect)
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, Shard] = OrderedDict()
        shards = self.manifest["shards"]
        order = sorted(range(len(shards)), key=lambda i: shards[i]["first"])
        firsts = np.asarray([shards[i]["first"] for i in order], dtype=np.int64)
        lasts = np.asarray([shards[i]["last"] for i in order], dtype=np.int64)
        self._sorted = bool(np.all(firsts[1:] > lasts[:-1]))  # shards do not overlap (offline stores)
        self._ranges = self._sorted and all(s.get("contiguous", False) for s in shards)
        self._order, self._firsts, self._lasts = np.asarray(order, dtype=np.int64), firsts, lasts
        self._index: dict[int, tuple[int, int]] | None = None
        self._covered: np.ndarray | None = None

    @property
    def top_p(self) -> float:
        return float(self.manifest["top_p"])

    @property
    def top_k(self) -> int | None:
        return self.manifest["top_k"]

    def shard(self, i: int) -> Shard:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        entry = self.manifest["shards"][i]
        file = self.path / entry["name"]
        try:
            raw = file.read_bytes()
        except OSError as e:
            raise SpecError(f"{file}: cannot read logits shard ({e.strerror})") from None
        if files.sha256_bytes(raw) != entry["sha256"]:
            raise SpecError(f"{file}: checksum mismatch (corrupted logits shard)")
        shard = decode_shard(raw, str(file))
        self._cache[i] = shard
        while len(self._cache) > 1 and sum(s.nbytes for s in self._cache.values()) > self.cache_bytes:
            self._cache.popitem(last=False)
        return shard

    def _locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, row in shard) per position."""
        if self._sorted:
            k = np.searchsorted(self._firsts, positions, side="right") - 1
            ok = (k >= 0) & (positions <= self._lasts[np.clip(k, 0, None)])
            if not ok.all():
                self._missing(positions[~ok], len(positions))
            if self._ranges:
                return self._order[k], positions - self._firsts[k]
            # Shards of a subset of windows (a pass for runs that see part of the corpus): search
            # each shard's sorted positions.
            rows = np.empty(len(positions), dtype=np.int64)
            for kk in np.unique(k):
                sel = k == kk
                stored = self.shard(int(self._order[kk])).positions
                r = np.clip(np.searchsorted(stored, positions[sel]), 0, len(stored) - 1)
                bad = stored[r] != positions[sel]
                if bad.any():
                    self._missing(positions[sel][bad], len(positions))
                rows[sel] = r
            return self._order[k], rows
        index = self._position_index()
        found = [index.get(int(p)) for p in positions]
        missing = np.asarray([int(p) for p, f in zip(positions, found, strict=True) if f is None])
        if len(missing):
            self._missing(missing, len(positions))
        arr = np.asarray(found, dtype=np.int64)
        return arr[:, 0], arr[:, 1]

    def _position_index(self) -> dict[int, tuple[int, int]]:
        """position → (shard, row), built once; shards are visited in writing order, so the last
        shard that recorded a position wins."""
        if self._index is None:
            index: dict[int, tuple[int, int]] = {}
            for i in range(len(self.manifest["shards"])):
                for row, pos in enumerate(self.shard(i).positions.tolist()):
                    index[pos] = (i, row)
            self._index = index
        return self._index

    def positions(self) -> np.ndarray:
        """Every position the store holds, sorted."""
        if not self.manifest["shards"]:
            return np.zeros(0, dtype=np.int64)
        if self._ranges:
            return np.concatenate([np.arange(f, last + 1) for f, last in zip(self._firsts, self._lasts, strict=True)])
        index = self._position_index()
        return np.sort(np.fromiter(index.keys(), dtype=np.int64, count=len(index)))

    def covers(self, positions: np.ndarray) -> np.ndarray:
        """Whether the store holds each of `positions` (a bool array of the same shape); cheap to
        call again (a held-out evaluation asks at every interval)."""
        flat = np.asarray(positions, dtype=np.int64).reshape(-1)
        if not self.manifest["shards"]:
            return np.zeros(np.shape(positions), dtype=bool)
        if self._ranges:
            k = np.searchsorted(self._firsts, flat, side="right") - 1
            ok = (k >= 0) & (flat <= self._lasts[np.clip(k, 0, None)])
        else:
            if self._covered is None:
                self._covered = self.positions()
            at = np.minimum(np.searchsorted(self._covered, flat), len(self._covered) - 1)
            ok = self._covered[at] == flat
        return ok.reshape(np.shape(positions))

    def _missing(self, missing: np.ndarray, total: int) -> None:
        raise SpecError(
            f"{self.path}: no teacher logits for position {int(missing[0])} ({len(missing)} of {total} missing)"
        )

    def entries(self, positions: np.ndarray) -> Entries:
        """Stored entries for `positions` (any shape; flattened), padded to the longest."""
        flat = np.asarray(positions, dtype=np.int64).reshape(-1)
        shard_of, row_of = self._locate(flat)
        N = len(flat)
        count = np.zeros(N, dtype=np.int64)
        for i in np.unique(shard_of):
            sel = shard_of == i
            count[sel] = self.shard(int(i)).count[row_of[sel]]
        K = int(count.max(initial=1))
        grid = tuple(self.manifest["p_grid"])
        ids = np.zeros((N, K), dtype=np.int64)
        logprobs = np.full((N, K), -np.inf, dtype=np.float32)
        cuts = np.zeros((N, len(grid)), dtype=np.int64)
        for i in np.unique(shard_of):
            sel = shard_of == i
            shard = self.shard(int(i))
            ids[sel], logprobs[sel] = shard.rows(row_of[sel], K)
            cuts[sel] = shard.cuts[row_of[sel]]
        return Entries(ids, logprobs, count, cuts, grid, self.top_p)

    def truncated(self, positions: np.ndarray, top_p: float, top_k: int | None) -> tuple[Any, Any, Any]:
        """Torch tensors (ids, logprobs at τ = 1, mask), (B·T, K), truncated to top-p-k at read time."""
        self._check_serves(top_p, top_k)
        return self.entries(positions).truncated(top_p, top_k)

    def _check_serves(self, top_p: float, top_k: int | None) -> None:
        if top_p > self.top_p + 1e-9 or (top_k or math.inf) > (self.top_k or math.inf):
            raise SpecError(f"{self.path}: holds top-{self.top_p}-{self.top_k}; cannot serve top-{top_p}-{top_k}")

    def targets(
        self, positions: np.ndarray, top_p: float, top_k: int | None, temperature: float, renormalize: bool = True
    ) -> tuple[Any, Any, Any, Any]:
        """Padded torch tensors (ids, probs, mask, residual) for a batch of positions (B, T) → (B·T, K)."""
        self._check_serves(top_p, top_k)
        return _targets(*self.entries(positions).truncated(top_p, top_k), temperature, renormalize)

    def verify(self) -> dict[str, Any]:
        """Check every shard's checksum and decodability; return totals."""
        total_pos = total_entries = total_bytes = 0
        for i, entry in enumerate(self.manifest["shards"]):
            sh = self.shard(i)
            if len(sh.positions) != entry["positions"] or int(sh.count.sum()) != entry["entries"]:
                raise SpecError(f"{self.path / entry['name']}: contents do not match the manifest")
            total_pos += entry["positions"]
            total_entries += entry["entries"]
            total_bytes += entry["bytes"]
        return {
            "shards": len(self.manifest["shards"]),
            "positions": total_pos,
            "entries": total_entries,
            "bytes": total_bytes,
        }


def store_bytes(path: Path) -> int:
    """Bytes on disk of a store (shards and manifest)."""
    return sum(p.stat().st_size for p in path.iterdir() if p.suffix == ".pdl" or p.name == "manifest.json")


def stats(
    reader: StoreReader, ps: Iterable[float], ks: Iterable[int | None], max_positions: int = 200_000
) -> list[dict[str, Any]]:
    """Mean kept entries and estimated bytes per token for each (p, k) — the data behind the paper's
    Figures 2–3 — from one store: entries are counted exactly; bytes are entries × this store's
    measured bytes per entry (per-position columns included)."""
    totals = reader.verify()
    bytes_per_entry = totals["bytes"] / max(1, totals["entries"])
    positions = np.concatenate([reader.shard(i).positions for i in range(totals["shards"])])[:max_positions]
    e = reader.entries(positions)
    rows = []
    for p in ps:
        for k in ks:
            mean = float(e.truncated(p, k)[2].sum(dim=1).double().mean())
            rows.append({"top_p": p, "top_k": k, "entries_per_token": mean, "bytes_per_token": mean * bytes_per_entry})
    return rows
