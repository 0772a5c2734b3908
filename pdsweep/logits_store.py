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

FORMAT_VERSION = 1
MAGIC = b"PDSL"
GAMMA = 0.65
"""Values are stored as y = p^GAMMA on a grid of step `value_step(GAMMA)`; each shard records its γ.

Smaller γ keeps more relative precision for small probabilities and costs bytes. Measured on
SmolLM2-135M's top-0.95-100 outputs over the default corpus (16384-position shards): γ = 0.5 →
1.73 B/entry, mean KL(exact ‖ decoded targets) 1.7e-5 nats; γ = 0.65 → 1.56 B/entry, 1.1e-4 nats
(total variation 0.36% at τ = 1, 0.43% at τ = 2 — a tenth of what top-0.95 truncation removes);
γ = 0.7 → 1.51 B/entry, 2.0e-4 nats. Every γ keeps |p̂ − p| ≤ 1e-3."""


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
    where padded), count (N,) int64, lse (N,) float32. Entries are sorted, most probable first."""

    ids: Any
    logprobs: Any
    count: Any
    lse: Any


def top_p_k(logits: Any, top_p: float, top_k: int | None) -> Sparse:
    """Nucleus then top-k truncation of the τ = 1 distribution (the paper's top-p-k).

    Keeps the smallest prefix of the sorted distribution whose mass reaches `top_p`, then at most
    `top_k` entries (None = no cap), and never fewer than one.

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
    cum = torch.cumsum(logprobs.exp(), dim=-1)
    # Entries strictly before the one that reaches p, plus that one; p = 1 keeps all k (in floating
    # point the cumulative mass can reach 1 early when the tail underflows).
    count = ((cum < top_p).sum(dim=-1) + 1).clamp(1, k) if top_p < 1 else torch.full_like(lse, k, dtype=torch.long)
    keep = torch.arange(k, device=logits.device)[None, :] < count[:, None]
    return Sparse(ids.masked_fill(~keep, 0), logprobs.masked_fill(~keep, float("-inf")), count, lse)


def concat(parts: list[Sparse]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Several Sparse batches as one, padded to the widest: numpy (ids, logprobs, count, lse)."""
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
    return Sparse(ids.masked_fill(counts == 0, 0), logprobs, n, torch.logsumexp(logits.float(), dim=-1))


def truncate_entries(ids: Any, logprobs: Any, count: Any, top_p: float, top_k: int | None) -> tuple[Any, Any, Any]:
    """Stored top-p_max-k_max entries cut to a smaller p and k (torch tensors in, torch out).

    Args:
        ids, logprobs: (N, K) entries, most probable first (logprobs under the full vocabulary, −inf
            where padded); count (N,) kept entries per position.
    Returns:
        (ids (N, k), logprobs (N, k) with −inf beyond the cut, mask (N, k) bool).
    """
    import torch

    k = ids.shape[-1] if top_k is None else min(top_k, ids.shape[-1])
    ids, logprobs = ids[:, :k], logprobs[:, :k]
    n = count.clamp(max=k)
    if top_p < 1:
        cum = torch.cumsum(logprobs.double().exp(), dim=-1)  # padded entries: exp(−inf) = 0
        n = torch.minimum(((cum < top_p).sum(dim=-1) + 1).clamp(1, k), n)
    mask = torch.arange(k, device=ids.device)[None, :] < n[:, None]
    return ids, logprobs.masked_fill(~mask, float("-inf")), mask


def read_targets(
    ids: Any, logprobs: Any, count: Any, top_p: float, top_k: int | None, temperature: float, renormalize: bool = True
) -> tuple[Any, Any, Any, Any]:
    """Targets for a smaller p, k and any τ from stored top-p_max-k_max entries (F(z) = softmax(
    Truncate(z)/τ), the paper's Eq. 4), by the same function the training loss uses.

    Returns (ids (N, K), probs (N, K), mask (N, K) bool, residual (N,)): with `renormalize` the
    kept probabilities sum to 1 and residual is 0; without it they keep the kept mass of the τ = 1
    distribution and `residual` = 1 − that mass (the untruncated tail as one bucket)."""
    from pdsweep.losses import KDConfig, teacher_targets

    ids, logprobs, mask = truncate_entries(ids, logprobs, count, top_p, top_k)
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


def encode_shard(
    positions: np.ndarray,
    ids: np.ndarray,
    logprobs: np.ndarray,
    count: np.ndarray,
    lse: np.ndarray,
    level: int = ZSTD_LEVEL,
    gamma: float = GAMMA,
) -> bytes:
    """One shard's bytes. positions (P,) int64 ascending; ids/logprobs (P, K) with the kept entries
    first (any order), count (P,); lse (P,).

    Each position's entries are stored as a *set*, ordered by the ids' frequency rank in this shard:
    the ranks as gaps (small numbers, since kept ids are mostly frequent ones), the quantised values
    in the same order, and which entry is the most probable (so the teacher's argmax survives ties
    of quantised values). Coding the set rather than the probability order saves ~5 bits per entry
    on ids and costs ~4 on values (measured on SmolLM2-135M: benchmarks/bench_logits.py)."""
    P, K = ids.shape
    mask = np.arange(K)[None, :] < count[:, None]
    q = np.where(mask, quantize(np.where(mask, logprobs, 0.0), gamma), 0)
    argmax = np.argmax(np.where(mask, logprobs, -np.inf), axis=1)
    table, inverse, freq = np.unique(ids[mask], return_inverse=True, return_counts=True)
    by_freq = np.argsort(-freq, kind="stable")
    rank_of = np.empty_like(by_freq)
    rank_of[by_freq] = np.arange(len(by_freq))
    big = np.iinfo(np.int64).max
    R = np.full((P, K), big, dtype=np.int64)
    R[mask] = rank_of[inverse]
    order = np.argsort(R, axis=1, kind="stable")  # set order: by frequency rank
    Rs = np.take_along_axis(R, order, axis=1)
    gaps = np.diff(np.concatenate([np.full((P, 1), -1, dtype=np.int64), Rs], axis=1), axis=1) - 1
    qs = np.take_along_axis(q, order, axis=1)
    where_max = np.argmax(order == argmax[:, None], axis=1)  # the argmax entry's index in set order
    contiguous = P > 0 and positions[-1] - positions[0] == P - 1
    columns: dict[str, np.ndarray] = {
        "counts": count.astype(_smallest_uint(int(count.max(initial=0)))),
        "argmax": where_max.astype(_smallest_uint(int(K))),
        "gaps": gaps[mask].astype(_smallest_uint(int(gaps[mask].max(initial=0)))),
        "values": qs[mask].astype(_smallest_uint(int(qs[mask].max(initial=0)))),
        "id_table": table[by_freq].astype(_smallest_uint(int(table.max(initial=0)))),
        "lse": lse.astype(np.float16).view(np.uint16),
    }
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
    lse (P,) float32."""

    positions: np.ndarray
    count: np.ndarray
    offsets: np.ndarray
    flat_ids: np.ndarray
    flat_q: np.ndarray
    lse: np.ndarray
    gamma: float = 0.5

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.positions, self.count, self.offsets, self.flat_ids, self.flat_q, self.lse))

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
    τ = 1 (−inf padded), count (N,)."""

    ids: np.ndarray
    logprobs: np.ndarray
    count: np.ndarray


def decode_shard(data: bytes, name: str = "shard") -> Shard:
    if data[:4] != MAGIC:
        raise SpecError(f"{name}: not a pdsweep logits shard")
    version, head_len = struct.unpack("<HI", data[4:10])
    if version != FORMAT_VERSION:
        raise SpecError(f"{name}: shard format {version}, this pdsweep reads {FORMAT_VERSION}")
    header = json.loads(data[10 : 10 + head_len])
    offset = 10 + head_len
    dctx = _zstd().ZstdDecompressor()
    cols: dict[str, np.ndarray] = {}
    for c in header["columns"]:
        dtype = np.dtype(c["dtype"])
        raw = dctx.decompress(data[offset : offset + c["bytes"]], max_output_size=c["n"] * dtype.itemsize)
        offset += c["bytes"]
        cols[c["name"]] = _unshuffle(raw, dtype, c["n"]) if c["shuffled"] else np.frombuffer(raw, dtype=dtype).copy()
    P = header["P"]
    count = cols["counts"].astype(np.int64)
    K = int(count.max(initial=1))
    mask = np.arange(K)[None, :] < count[:, None]
    table = cols["id_table"].astype(np.int64)
    gaps = np.zeros((P, K), dtype=np.int64)
    gaps[mask] = cols["gaps"].astype(np.int64) + 1
    ranks = np.cumsum(gaps, axis=1) - 1
    ids = np.where(mask, table[np.clip(ranks, 0, max(len(table) - 1, 0))], 0)
    q = np.zeros((P, K), dtype=np.int64)
    q[mask] = cols["values"].astype(np.int64)
    # Back to probability order: the stored argmax first, then by value (stable).
    key = np.where(mask, -q, 1)
    key[np.arange(P), cols["argmax"].astype(np.int64)] = -(1 << 40)
    order = np.argsort(key, axis=1, kind="stable")
    ids = np.take_along_axis(ids, order, axis=1)
    q = np.take_along_axis(q, order, axis=1)
    if header["contiguous"]:
        positions = header["first"] + np.arange(P, dtype=np.int64)
    else:
        positions = header["first"] + np.cumsum(cols["position_deltas"].astype(np.int64))
    lse = cols["lse"].view(np.float16).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(count)]).astype(np.int64)
    id_dtype = np.uint16 if int(table.max(initial=0)) < 65536 else np.uint32
    return Shard(
        positions,
        count,
        offsets,
        ids[mask].astype(id_dtype),
        np.maximum(q[mask], 1).astype(np.uint16),
        lse,
        float(header.get("gamma", 0.5)),  # stores written before γ was recorded used 0.5
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


class StoreWriter:
    """Appends shards to a store directory; every shard and the manifest are written atomically, so
    a killed writer leaves a store that is valid up to its last complete shard."""

    def __init__(self, path: Path, info: StoreInfo):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        manifest_path = path / "manifest.json"
        if manifest_path.exists():
            self.manifest = files.read_json(manifest_path)
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
                "lse_dtype": "float16",
                "compressor": f"zstd-{ZSTD_LEVEL}",
                "shards": [],
            }
            files.write_json(manifest_path, self.manifest)

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
            ids, logprobs, count, lse = (
                np.asarray(x.cpu()) if hasattr(x, "cpu") else np.asarray(x)
                for x in (sparse.ids, sparse.logprobs, sparse.count, sparse.lse)
            )
        else:
            ids, logprobs, count, lse = sparse
        order = np.argsort(positions, kind="stable")
        positions = np.asarray(positions, dtype=np.int64)[order]
        data = encode_shard(positions, ids[order], logprobs[order], count[order], lse[order])
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
        files.write_json(self.path / "manifest.json", self.manifest)
        return entry


class StoreReader:
    """Reads targets by global position, for any p ≤ p_max, k ≤ k_max and τ.

    Decoded shards are kept in a least-recently-used cache bounded in bytes (`cache_bytes`; about
    4 bytes per entry). Offline stores (contiguous shards) are searched by position range; online
    stores get an index in which the last shard that recorded a position wins."""

    def __init__(self, path: Path, expect: StoreInfo | None = None, cache_bytes: int = 4 << 30):
        self.path = path
        try:
            self.manifest = files.read_json(path / "manifest.json")
        except (OSError, json.JSONDecodeError) as e:
            raise SpecError(f"{path}: not a logits store (manifest.json: {e})") from None
        if self.manifest.get("format") != FORMAT_VERSION:
            raise SpecError(f"{path}: logits store format {self.manifest.get('format')} is not {FORMAT_VERSION}")
        if expect is not None:
            for key in ("teacher_fingerprint", "tokenizer_fingerprint", "corpus_fingerprint", "vocab_size"):
                if self.manifest.get(key) != getattr(expect, key):
                    raise SpecError(
                        f"{path}: {key} {self.manifest.get(key)} does not match the run's {getattr(expect, key)}"
                    )
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
        ids = np.zeros((N, K), dtype=np.int64)
        logprobs = np.full((N, K), -np.inf, dtype=np.float32)
        for i in np.unique(shard_of):
            sel = shard_of == i
            ids[sel], logprobs[sel] = self.shard(int(i)).rows(row_of[sel], K)
        return Entries(ids, logprobs, count)

    def truncated(self, positions: np.ndarray, top_p: float, top_k: int | None) -> tuple[Any, Any, Any]:
        """Torch tensors (ids, logprobs at τ = 1, mask), (B·T, K), truncated to top-p-k at read time."""
        import torch

        self._check_serves(top_p, top_k)
        e = self.entries(positions)
        return truncate_entries(
            torch.from_numpy(e.ids), torch.from_numpy(e.logprobs), torch.from_numpy(e.count), top_p, top_k
        )

    def _check_serves(self, top_p: float, top_k: int | None) -> None:
        if top_p > self.top_p + 1e-9 or (top_k or math.inf) > (self.top_k or math.inf):
            raise SpecError(f"{self.path}: holds top-{self.top_p}-{self.top_k}; cannot serve top-{top_p}-{top_k}")

    def targets(
        self, positions: np.ndarray, top_p: float, top_k: int | None, temperature: float, renormalize: bool = True
    ) -> tuple[Any, Any, Any, Any]:
        """Padded torch tensors (ids, probs, mask, residual) for a batch of positions (B, T) → (B·T, K)."""
        import torch

        self._check_serves(top_p, top_k)
        e = self.entries(positions)
        return read_targets(
            torch.from_numpy(e.ids),
            torch.from_numpy(e.logprobs),
            torch.from_numpy(e.count),
            top_p,
            top_k,
            temperature,
            renormalize,
        )

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
    import torch

    e = reader.entries(positions)
    ids, logprobs, count = torch.from_numpy(e.ids), torch.from_numpy(e.logprobs), torch.from_numpy(e.count)
    rows = []
    for p in ps:
        for k in ks:
            mean = float(truncate_entries(ids, logprobs, count, p, k)[2].sum(dim=1).double().mean())
            rows.append({"top_p": p, "top_k": k, "entries_per_token": mean, "bytes_per_token": mean * bytes_per_entry})
    return rows
