"""One shard's bytes: the store's on-disk format, encoded and decoded.

A shard is self-contained: a magic number, the format version, a JSON header, then columns each
compressed with zstd (byte-shuffled when wider than a byte):
    counts           kept entries per position
    ranks            each entry's id as its rank in this shard's table of ids by frequency
    first, drops     the quantised values: the first (most probable) one, then the drop to the next
    cut_fixes        the exact top-p counts at P_GRID, as corrections to what the values suggest
    id_table         the shard's ids, most frequent first
    lse              the full-vocabulary log-sum-exp, float16
    position_deltas  only when the positions are not one contiguous range
Values are quantised as y = p^γ (γ = 0.65) on a grid of step 2γ·1e-3, so |p̂ − p| ≤ 1e-3 for every
probability while small probabilities keep their relative precision (they matter at τ > 1).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from pdsweep.errors import UserError
from pdsweep.logits.truncation import truncate_entries

FORMAT_VERSION = 4
"""4: a pass's shards are named by the positions they hold and each has a sealed record beside it
(ranks write independently; the manifest lists what is still pending); 3: the manifest is sealed by a checksum and names the teacher run; 2: entries in probability order
(exact order for any k) with exact counts at P_GRID; 1: entries as a set with only the argmax's place
(reads at a smaller k or p could pick the wrong entries)."""

MAGIC = b"PDSL"
GAMMA = 0.65


def value_step(gamma: float) -> float:
    """Grid step of y = p^γ: the error in p is at most step/(2γ)·p^(1−γ) ≤ 1e-3."""
    return 2 * gamma * 1e-3


ZSTD_LEVEL = 9


# ----------------------------------------------------------------------------------------------
# Value quantisation
# ----------------------------------------------------------------------------------------------


def quantize(logprobs: np.ndarray, gamma: float = GAMMA) -> np.ndarray:
    """log p → integer grid of y = p^γ (≥ 1 for any kept entry). Float32 is ample: y is rounded to
    a grid of step 1.3e-3, 10⁴ times coarser than its rounding error."""
    y = np.exp(np.float32(gamma) * logprobs.astype(np.float32))
    return np.maximum(np.rint(y * np.float32(1 / value_step(gamma))), 1).astype(np.int64)


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


FIXED = 1 << 40
"""The fixed point (probability × 2⁴⁰) in which encoder and decoder add up decoded values to guess
top-p's counts: integer sums are exact, in any order, on any machine."""


def _fixed_table(max_q: int, gamma: float) -> np.ndarray:
    """p̂ of every grid value 0..max_q, in fixed point (0 for 0)."""
    q = np.arange(max_q + 1, dtype=np.float64)
    with np.errstate(divide="ignore"):
        p = np.where(q > 0, np.exp(np.log(np.maximum(q, 1) * value_step(gamma)) / gamma), 0.0)
    return np.rint(p * FIXED).astype(np.int64)


def estimated_cuts(flat_q: np.ndarray, count: np.ndarray, gamma: float, grid: tuple[float, ...]) -> np.ndarray:
    """(P, G) counts top-p would keep at each grid point judged from the decoded values — each
    position's `count` values in probability order, flattened (`flat_q`) — the guess that a shard
    corrects to the exact counts (encoder and decoder compute it identically, so only the few
    corrections are stored). One search over every position at once: the running sums, offset by
    a position's index, are sorted across positions too."""
    P = len(count)
    if P == 0 or not grid:
        return np.zeros((P, len(grid)), dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(count)])
    fixed = _fixed_table(int(flat_q.max(initial=0)), gamma)[flat_q]
    span = 4 * FIXED  # > any position's total (≤ 1 + rounding)
    _restart_rows(fixed, offsets, count, span)
    keys = np.cumsum(fixed)
    targets = np.arange(P, dtype=np.int64)[:, None] * span + np.rint(np.asarray(grid) * FIXED).astype(np.int64)[None]
    below = np.searchsorted(keys, targets.reshape(-1), side="left").reshape(P, len(grid)) - offsets[:-1, None]
    return np.minimum(below + 1, count[:, None])


def _restart_rows(steps: np.ndarray, offsets: np.ndarray, count: np.ndarray, span: int = 0) -> None:
    """Make one running sum over every position's steps restart at each position: add to each
    position's first step what undoes the previous position's total (plus `span` per position, which
    keeps the running sums sorted across positions when the steps are ≥ 0). In place."""
    full = count > 0
    starts = offsets[:-1][full]
    totals = np.add.reduceat(steps, starts) if len(starts) else steps[:0]
    steps[starts[1:]] += span - totals[:-1]
    if span:
        rows = np.flatnonzero(full)
        steps[starts[1:]] += span * (np.diff(rows) - 1)  # positions without entries still count
        steps[starts[:1]] += span * rows[:1]


FAST_COLUMNS = {"ranks"}
"""Compressed at zstd level 1: the ids' ranks are near-random bytes that only the entropy stage
shrinks, and level 1 makes them 1% smaller than level 9 at an eighth of the time (measured on
SmolLM2-135M outputs)."""


def _sorted(logprobs: np.ndarray, mask: np.ndarray) -> bool:
    """Are each position's kept entries in probability order already?"""
    both = mask[:, 1:]
    return bool(np.all((logprobs[:, :-1] >= logprobs[:, 1:]) | ~both))


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
    if not _sorted(logprobs, mask):  # a pass's truncation gives them sorted already
        order = np.argsort(np.where(mask, -logprobs.astype(np.float64), np.inf), axis=1, kind="stable")
        ids = np.take_along_axis(ids, order, axis=1)
        logprobs = np.take_along_axis(logprobs, order, axis=1)
    flat_ids = ids[mask]
    flat_q = quantize(logprobs[mask], gamma)
    freq = np.bincount(flat_ids, minlength=1)
    table = np.flatnonzero(freq)
    table = table[np.argsort(-freq[table], kind="stable")]  # the shard's ids, most frequent first
    rank_of = np.zeros(len(freq), dtype=np.int64)
    rank_of[table] = np.arange(len(table))
    ranks = rank_of[flat_ids]
    offsets = np.concatenate([[0], np.cumsum(count)]).astype(np.int64)
    firsts = flat_q[offsets[:-1][count > 0]]
    drops = np.concatenate([flat_q[:1], flat_q[:-1]]) - flat_q
    drops[offsets[:-1][count > 0]] = 0  # a position's first value is its own column
    small = np.minimum(drops, 255).astype(np.uint8)
    contiguous = P > 0 and positions[-1] - positions[0] == P - 1
    columns: dict[str, np.ndarray] = {
        "counts": count.astype(_smallest_uint(int(count.max(initial=0)))),
        "ranks": ranks.astype(_smallest_uint(int(ranks.max(initial=0)))),
        "first": firsts.astype(_smallest_uint(int(firsts.max(initial=0)))),
        "drops": small,
        "big_drops": drops[small == 255].astype(np.uint16),
        "id_table": table.astype(_smallest_uint(int(table.max(initial=0)))),
        "lse": lse.astype(np.float16).view(np.uint16),
    }
    if p_grid:
        assert cuts is not None and cuts.shape == (P, len(p_grid)), "a shard with a p grid needs its cut counts"
        fixes = _zigzag(cuts.astype(np.int64) - estimated_cuts(flat_q, count, gamma, p_grid)).reshape(-1)
        columns["cut_fixes"] = fixes.astype(_smallest_uint(int(fixes.max(initial=0))))
    if not contiguous:
        deltas = np.diff(positions, prepend=positions[:1] if P else positions)
        columns["position_deltas"] = deltas.astype(_smallest_uint(int(deltas.max(initial=0))))
    fast = _zstd().ZstdCompressor(level=1)
    cctx = _zstd().ZstdCompressor(level=level)
    header: dict[str, Any] = {
        "P": int(P),
        "entries": int(len(flat_q)),
        "first": int(positions[0]) if P else 0,
        "contiguous": bool(contiguous),
        "gamma": gamma,
        "p_grid": list(p_grid),
        "columns": [],
    }
    blobs = []
    for name, arr in columns.items():
        shuffled = arr.itemsize > 1
        blob = (fast if name in FAST_COLUMNS else cctx).compress(_shuffle(arr) if shuffled else arr.tobytes())
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
    lse (P,) float32, and the corrections (`cut_fixes`) that make `cuts` — (P, G) exact top-p counts
    at the grid points p_grid — computed when first read: only a read at p below the store's own
    needs them."""

    positions: np.ndarray
    count: np.ndarray
    offsets: np.ndarray
    flat_ids: np.ndarray
    flat_q: np.ndarray
    lse: np.ndarray
    cut_fixes: np.ndarray
    p_grid: tuple[float, ...]
    gamma: float = GAMMA
    _cuts: np.ndarray | None = None

    @property
    def cuts(self) -> np.ndarray:
        if self._cuts is None:
            P, G = len(self.count), len(self.p_grid)
            if G:
                fixes = _unzigzag(self.cut_fixes.astype(np.int64)).reshape(P, G)
                cuts = estimated_cuts(self.flat_q, self.count, self.gamma, self.p_grid) + fixes
            else:
                cuts = np.zeros((P, 0), dtype=np.int64)
            self._cuts = cuts.astype(np.int16 if cuts.size == 0 or cuts.max() < 32767 else np.int64)
        return self._cuts

    @property
    def nbytes(self) -> int:
        arrays = (self.positions, self.count, self.offsets, self.flat_ids, self.flat_q, self.lse, self.cut_fixes)
        return sum(a.nbytes for a in arrays) + (self._cuts.nbytes if self._cuts is not None else 0)

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
        raise UserError(f"{name}: not a pdsweep logits shard")
    version, head_len = struct.unpack("<HI", data[4:10])
    if version != FORMAT_VERSION:
        raise UserError(
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
    flat_ids = table[cols["ranks"]]
    # Values: each position's first value, then running differences (the drops; 0 at a first).
    steps = -cols["drops"].astype(np.int64)
    steps[steps == -255] = -cols["big_drops"].astype(np.int64)
    starts = offsets[:-1][count > 0]
    steps[starts] = cols["first"]
    _restart_rows(steps, offsets, count)
    flat_q = np.cumsum(steps)
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
        flat_q.astype(np.uint16),
        lse,
        cols.get("cut_fixes", np.zeros(0, dtype=np.uint8)),
        grid,
        gamma,
    )
