"""One shard's bytes: the store's on-disk format, encoded and decoded.

A shard is self-contained: a magic number, the format version, a JSON header, then columns each
compressed with zstd (byte-shuffled when wider than a byte). Each position's entries are in
probability order, grouped by quantised value (a group: the entries whose values fall on one grid
point; their true probabilities differ by less than the grid's resolution there):
    counts           kept entries per position
    first, group_drops, group_sizes   the quantised values: a position's first (most probable) one,
                     then for each further group its drop from the one before; every group's size
    lead*, inner*    the ids as ranks in this shard's table of ids by frequency, ascending within a group:
                     each group's first rank, and the gaps between the following ones, as a symbol
                     byte each (the value when small; else its high part, with the low byte apart)
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

FORMAT_VERSION = 5
"""5: entries tied on the value grid in the order of their ids' ranks (the ranks within a group as
gaps, as symbol bytes): 1.59 B/entry instead of 1.79 on SmolLM2-135M; 4: entries in exact probability
order, ties included; a pass's shards are named by the positions they hold and each has a sealed record beside it
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


def _sorted(logprobs: np.ndarray, mask: np.ndarray) -> bool:
    """Are each position's kept entries in probability order already?"""
    both = mask[:, 1:]
    return bool(np.all((logprobs[:, :-1] >= logprobs[:, 1:]) | ~both))


def _zigzag(a: np.ndarray) -> np.ndarray:
    return np.where(a >= 0, 2 * a, -2 * a - 1)


def _unzigzag(a: np.ndarray) -> np.ndarray:
    return np.where(a % 2 == 0, a // 2, -(a + 1) // 2)


# ----------------------------------------------------------------------------------------------
# The byte code of ranks and gaps
# ----------------------------------------------------------------------------------------------

LITERAL = 128
"""Values below it are their own symbol byte; a larger value v is the symbol LITERAL + (v − LITERAL) // 256
with its low byte apart (close to uniform: stored raw), and the largest (symbol ESCAPE) are stored whole.
On SmolLM2-135M's ranks and gaps this comes within 0.005 B/entry of coding every bit length apart and
0.05 below zstd on 16-bit values, at a few byte operations per entry."""
ESCAPE = 255


def _bytes_encode(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-negative integers → (a symbol byte each, the low bytes of the large ones, the escaped ones)."""
    v = v.astype(np.int64)
    high = (v - LITERAL) >> 8
    escaped = high >= ESCAPE - LITERAL
    sym = np.where(v < LITERAL, v, np.where(escaped, ESCAPE, LITERAL + high)).astype(np.uint8)
    low = ((v - LITERAL) & 255)[(v >= LITERAL) & ~escaped].astype(np.uint8)
    return sym, low, v[escaped].astype(np.uint32)


def _bytes_decode(sym: np.ndarray, low: np.ndarray, escapes: np.ndarray) -> np.ndarray:
    """The inverse of `_bytes_encode` (int32: ranks and gaps of a shard's ids)."""
    large = sym >= LITERAL
    wide = np.zeros(len(sym), dtype=np.int32)
    wide[large & (sym != ESCAPE)] = low
    out = np.where(large, LITERAL + ((sym.astype(np.int32) - LITERAL) << 8 | wide), sym.astype(np.int32))
    if len(escapes):
        out[sym == ESCAPE] = escapes
    return out


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

    Each position's entries are stored in probability order — exactly, except among entries whose
    values fall on one grid point, which follow their ids' ranks — so a read at any smaller k keeps
    the most probable ones up to such ties: the ids as ranks in this shard's table of ids by
    frequency (kept ids are mostly frequent ones; within a group as gaps), the quantised values as
    each position's first one, the drops from group to group and the groups' sizes, and the grid
    counts as corrections to what the decoded values suggest (`estimated_cuts`; 95% are 0). Exact
    order among tied values would cost 0.21 B/entry more (format 4, benchmarks/bench_logits.py)."""
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
    row_start = np.zeros(len(flat_q), dtype=bool)
    row_start[offsets[:-1][count > 0]] = True
    group_start = row_start.copy()
    group_start[1:] |= flat_q[1:] != flat_q[:-1]
    group = np.cumsum(group_start) - 1
    top = ranks[row_start]  # each position's argmax, kept first even when it ties (`top_picks`)
    ranks = np.sort(group * len(table) + ranks, kind="stable") - group * len(table)  # ascending in a group
    starts = np.flatnonzero(group_start)
    sizes = np.diff(np.append(starts, len(flat_q)))
    row_starts = np.flatnonzero(row_start)
    top_group_sizes = sizes[row_start[starts]]
    tied = top_group_sizes > 1  # positions whose argmax ties on the grid
    top_sizes = top_group_sizes[tied]
    in_top_group = np.repeat(np.flatnonzero(tied), top_sizes)
    where = np.arange(len(in_top_group)) - np.repeat(np.cumsum(top_sizes) - top_sizes, top_sizes)
    hit = ranks[row_starts[in_top_group] + where] == top[in_top_group]
    picks = where[hit]
    gaps = np.diff(ranks, prepend=0) - 1
    firsts = flat_q[row_start]
    drops = (np.concatenate([flat_q[:1], flat_q[:-1]]) - flat_q)[group_start & ~row_start]
    small = np.minimum(drops, 255).astype(np.uint8)
    lead, lead_low, lead_escapes = _bytes_encode(ranks[group_start])
    inner, inner_low, inner_escapes = _bytes_encode(gaps[~group_start])
    contiguous = P > 0 and positions[-1] - positions[0] == P - 1
    columns: dict[str, np.ndarray] = {
        "counts": count.astype(_smallest_uint(int(count.max(initial=0)))),
        "first": firsts.astype(_smallest_uint(int(firsts.max(initial=0)))),
        "group_drops": small,
        "big_group_drops": drops[small == 255].astype(np.uint16),
        "group_sizes": sizes.astype(_smallest_uint(int(sizes.max(initial=0)))),
        "top_picks": picks.astype(_smallest_uint(int(picks.max(initial=0)))),
        "lead": lead,
        "lead_low": lead_low,
        "lead_escapes": lead_escapes,
        "inner": inner,
        "inner_low": inner_low,
        "inner_escapes": inner_escapes,
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
        raw = _shuffle(arr) if shuffled else arr.tobytes()
        blob = raw if name in RAW_COLUMNS else (fast if name in FAST_COLUMNS else cctx).compress(raw)
        header["columns"].append(
            {"name": name, "dtype": arr.dtype.str, "n": int(arr.size), "shuffled": shuffled, "bytes": len(blob),
             "raw": name in RAW_COLUMNS}
        )  # fmt: skip
        blobs.append(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<HI", FORMAT_VERSION, len(head)) + head + b"".join(blobs)


FAST_COLUMNS = {"lead", "inner"}
"""Compressed at zstd level 1: symbol bytes that only zstd's entropy stage shrinks (as small as at
level 9, at a fraction of the time)."""
RAW_COLUMNS = {"lead_low", "inner_low"}
"""Stored as they are: the low bytes of large ranks and gaps are close to uniform (zstd finds nothing)."""


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
        blob = data[offset : offset + c["bytes"]]
        raw = blob if c.get("raw") else dctx.decompress(blob, max_output_size=c["n"] * dtype.itemsize)
        offset += c["bytes"]
        cols[c["name"]] = _unshuffle(raw, dtype, c["n"]) if c["shuffled"] else np.frombuffer(raw, dtype=dtype).copy()
    P, gamma, grid = header["P"], float(header["gamma"]), tuple(header["p_grid"])
    count = cols["counts"].astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(count)]).astype(np.int64)
    entries = int(offsets[-1])
    sizes = cols["group_sizes"].astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if len(sizes) else sizes
    # Values: each group's value is its position's first value, less the drops of the groups before.
    row_start = np.zeros(entries, dtype=bool)
    row_start[offsets[:-1][count > 0]] = True
    first_group = row_start[starts]
    drops = cols["group_drops"].astype(np.int64)
    drops[drops == 255] = cols["big_group_drops"].astype(np.int64)
    g_steps = np.zeros(len(sizes), dtype=np.int64)
    g_steps[first_group] = cols["first"]
    g_steps[~first_group] = -drops
    group_offsets = np.append(np.flatnonzero(first_group), len(sizes))  # each position's groups
    _restart_rows(g_steps, group_offsets, np.diff(group_offsets))
    flat_q = np.repeat(np.cumsum(g_steps), sizes)
    # Ranks: each group's first, then the gaps to the next (+ 1), as one running sum: a group's
    # first step is its first rank less the last rank of the group before.
    group_start = np.zeros(entries, dtype=bool)
    group_start[starts] = True
    steps = np.zeros(entries, dtype=np.int32)  # every running sum is a rank: no overflow
    steps[~group_start] = _bytes_decode(cols["inner"], cols["inner_low"], cols["inner_escapes"]) + 1
    lead = _bytes_decode(cols["lead"], cols["lead_low"], cols["lead_escapes"])
    if entries:
        last = lead + np.add.reduceat(steps, starts)
        steps[starts] = lead - np.concatenate([[0], last[:-1]])
    ranks = np.cumsum(steps, dtype=np.int32)
    # The argmax of a position whose top values tie comes first (it sat at `top_picks` in its group).
    top_sizes = sizes[first_group]
    rows = starts[first_group][top_sizes > 1]
    picked = rows + cols["top_picks"]
    ranks[rows], ranks[picked] = ranks[picked], ranks[rows].copy()
    table = cols["id_table"]
    flat_ids = table[ranks]
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
