"""The teacher's logits store: a directory of shards and a sealed manifest, keyed by global position.

Per position (the global position in the tokenized corpus) it keeps the top-p-k entries of the
teacher's distribution in probability order (up to ties on the value grid), their probabilities
within 1e-3, the exact top-p
counts at P_GRID and the log-sum-exp, so any p ≤ p_max, k ≤ k_max and τ are applied at read time:
one teacher pass serves a whole truncation and temperature sweep.

`manifest.json` names the format, the teacher / tokenizer / corpus fingerprints (and the teacher
run), p_max, k_max and every shard with its SHA-256, and is sealed by a checksum over all of it.
`StoreWriter` writes each shard atomically; `StoreReader` checks the identity a run expects, caches
decoded shards, and refuses positions the store does not cover.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pdsweep import files, rundir
from pdsweep.errors import UserError
from pdsweep.logits.codec import (
    FORMAT_VERSION,
    GAMMA,
    ZSTD_LEVEL,
    Entries,
    Shard,
    decode_shard,
    encode_shard,
    value_step,
)
from pdsweep.logits.manifest import (
    IDENTITY,
    StoreInfo,
    check_identity,
    checksum,
    entry_file,
    manifest_lock,
    read_manifest,
    write_manifest,
    written_entry,
)
from pdsweep.logits.truncation import Sparse, grid_below, to_targets

"""Values are stored as y = p^GAMMA on a grid of step `value_step(GAMMA)`; each shard records its γ.

Smaller γ keeps more relative precision for small probabilities and costs bytes. Measured on
SmolLM2-135M's top-0.95-100 outputs over the default corpus (16384-position shards, format 1): γ = 0.5
→ 1.73 B/entry, mean KL(exact ‖ decoded targets) 1.7e-5 nats; γ = 0.65 → 1.56 B/entry, 1.1e-4 nats
(total variation 0.36% at τ = 1, 0.43% at τ = 2 — a tenth of what top-0.95 truncation removes);
γ = 0.7 → 1.51 B/entry, 2.0e-4 nats. Every γ keeps |p̂ − p| ≤ 1e-3."""
"""[D] The nucleus masses (0.05, 0.10, …, 0.95: every p the paper sweeps) at which every shard records
the exact number of entries top-p keeps. A read at one of them is exact; a read at another p cuts on
the decoded cumulative mass (each value within 1e-3, so the sum can cross p one or two entries early
or late), clamped between the exact counts of the grid points around it."""
"""Level 19 makes stores ~1.5% smaller (measured on SmolLM2-135M outputs) at ~10x the compression
time, which bounds generation speed for small teachers; 9 keeps writing well below the forward pass."""


# ----------------------------------------------------------------------------------------------
# The store on disk
# ----------------------------------------------------------------------------------------------


class StoreWriter:
    """Writes a store's shards; every shard, record and the manifest are written atomically.

    Two ways to write: `add` appends shards one after another and updates the manifest each time
    (one writer: a run recording its own logits); a teacher pass plans its shards (`begin`), writes
    each with `write_shard` — a shard and its record, nothing shared, so any number of ranks write at
    once — and `assemble`s the manifest from the records when it ends (under a lock: ranks finish in
    any order). A killed writer leaves a store that is valid up to its last complete shard."""

    def __init__(self, path: Path, info: StoreInfo):
        self.path = path
        with manifest_lock(path):
            if (path / "manifest.json").exists():
                self.manifest = read_manifest(path)
                mine = dataclasses.asdict(info)
                theirs = {k: self.manifest.get(k) for k in mine}
                if theirs != mine:
                    diff = ", ".join(f"{k}: {theirs[k]} ≠ {mine[k]}" for k in mine if theirs[k] != mine[k])
                    raise UserError(f"{path}: an existing store was made differently ({diff})")
            else:
                self.manifest = {
                    "format": FORMAT_VERSION,
                    **dataclasses.asdict(info),
                    "id_dtype": "uint16" if info.vocab_size <= 65536 else "uint32",
                    "value_codec": {"kind": "power-grid", "gamma": GAMMA, "step": value_step(GAMMA)},
                    "p_grid": list(self.p_grid(info)),
                    "lse_dtype": "float16",
                    "compressor": f"zstd-{ZSTD_LEVEL}",
                    "pending": [],
                    "shards": [],
                }
                write_manifest(path, self.manifest)

    @staticmethod
    def p_grid(info: StoreInfo) -> tuple[float, ...]:
        """The grid points whose exact top-p counts the shards record (none for sampled targets)."""
        return () if info.sampling_draws else grid_below(info.top_p)

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.manifest["shards"]

    def _encode(self, positions: np.ndarray, sparse: Sparse | tuple[np.ndarray, ...]) -> tuple[np.ndarray, bytes, int]:
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
        return positions, data, int(np.asarray(count).sum())

    @staticmethod
    def _entry(
        name: str, positions: np.ndarray, data: bytes, entries: int, meta: dict[str, Any] | None
    ) -> dict[str, Any]:
        return {
            "contiguous": bool(positions[-1] - positions[0] == len(positions) - 1),
            "name": name,
            "positions": int(len(positions)),
            "first": int(positions[0]),
            "last": int(positions[-1]),
            "entries": entries,
            "bytes": len(data),
            "sha256": files.sha256_bytes(data),
            **(meta or {}),
        }

    def add(
        self, positions: np.ndarray, sparse: Sparse | tuple[np.ndarray, ...], meta: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write one shard for `positions` (ascending) and record it in the manifest (one writer)."""
        positions, data, entries = self._encode(positions, sparse)
        name = f"shard_{len(self.shards):06d}.pdl"
        files.write_bytes(self.path / name, data)
        entry = self._entry(name, positions, data, entries, meta)
        self.manifest["shards"].append(entry)
        write_manifest(self.path, self.manifest)
        return entry

    # -- a teacher pass: planned shards, written by any number of ranks ---------------------------

    def begin(self, planned: list[str], mine: list[str]) -> set[str]:
        """Record a pass's planned shards as pending and return those already written (a rerun
        redoes only the rest); remove what a killed writer left half-written of this rank's
        shards (`mine`: another rank may be writing its own right now)."""
        for name in mine:
            for stale in self.path.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)
            for stale in self.path.glob(f".{entry_file(self.path, name).name}.*.tmp"):
                stale.unlink(missing_ok=True)
        with manifest_lock(self.path):
            manifest = read_manifest(self.path)
            known = {s["name"] for s in manifest["shards"]}
            pending = [n for n in planned if n not in known]
            if manifest["pending"] != pending:
                manifest["pending"] = pending
                write_manifest(self.path, manifest)
        self.manifest = self.assembled(self.path)  # the records of shards written since
        return {n for n in planned if n not in self.manifest["pending"]}

    def write_shard(
        self,
        name: str,
        positions: np.ndarray,
        sparse: Sparse | tuple[np.ndarray, ...],
        meta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write one planned shard and then its record (the record says the shard is complete)."""
        positions, data, entries = self._encode(positions, sparse)
        files.write_bytes(self.path / name, data)
        entry = self._entry(name, positions, data, entries, meta)
        files.write_json(entry_file(self.path, name), {**entry, "checksum": checksum(entry)})
        return entry

    def assemble(self) -> dict[str, Any]:
        """Bring the manifest up to date with every shard record written so far (any rank's): its
        shards by position, and the planned ones still missing as pending. Returns the manifest."""
        self.manifest = self.assembled(self.path)
        return self.manifest

    @staticmethod
    def assembled(path: Path) -> dict[str, Any]:
        """`assemble` for the store at `path` (by a process that writes no shard of it)."""
        with manifest_lock(path):
            manifest = read_manifest(path)
            known = {s["name"] for s in manifest["shards"]}
            done = [e for n in manifest["pending"] if (e := written_entry(path, n)) is not None and n not in known]
            if done:
                finished = {e["name"] for e in done}
                manifest["shards"] = sorted(manifest["shards"] + done, key=lambda s: (s["first"], s["name"]))
                manifest["pending"] = [n for n in manifest["pending"] if n not in finished]
                write_manifest(path, manifest)
            return manifest


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
        self.pending: list[str] = list(self.manifest.get("pending", []))
        if self.pending:  # a pass still writing (or stopped): what its ranks completed since is readable
            done = [e for n in self.pending if (e := written_entry(path, n)) is not None]
            finished = {e["name"] for e in done}
            self.manifest = {
                **self.manifest,
                "shards": sorted(self.manifest["shards"] + done, key=lambda s: (s["first"], s["name"])),
            }
            self.pending = [n for n in self.pending if n not in finished]
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, Shard] = OrderedDict()
        self._loading: dict[int, Future[Shard]] = {}
        self._prefetcher: ThreadPoolExecutor | None = None
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
        loading = self._loading.pop(i, None)
        shard = loading.result() if loading is not None else self._load(i)
        self._cache[i] = shard
        while len(self._cache) > 1 and sum(s.nbytes for s in self._cache.values()) > self.cache_bytes:
            self._cache.popitem(last=False)
        return shard

    def prefetch(self, positions: np.ndarray) -> None:
        """Start reading and decoding, in a background thread, the shards that hold `positions` (the
        next batch's) and are not in the cache yet, so that the read at the next step finds them
        decoded. Positions the store does not hold are left to that read to refuse."""
        flat = np.asarray(positions, dtype=np.int64).reshape(-1)
        if not self._sorted or not len(flat):
            return
        k = np.searchsorted(self._firsts, flat, side="right") - 1
        for kk in np.unique(k[k >= 0]):
            i = int(self._order[kk])
            if i not in self._cache and i not in self._loading:
                if self._prefetcher is None:
                    self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="pdsweep-prefetch")
                self._loading[i] = self._prefetcher.submit(self._load, i)

    def _load(self, i: int) -> Shard:
        entry = self.manifest["shards"][i]
        file = self.path / entry["name"]
        try:
            raw = file.read_bytes()
        except OSError as e:
            raise UserError(f"{file}: cannot read logits shard ({e.strerror})") from None
        if files.sha256_bytes(raw) != entry["sha256"]:
            raise UserError(f"{file}: checksum mismatch (corrupted logits shard)")
        return decode_shard(raw, str(file))

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
        why = (
            f"; its teacher pass has {len(self.pending)} shards still to write (running, or stopped: run it again)"
            if self.pending
            else ""
        )
        raise UserError(
            f"{self.path}: no teacher logits for position {int(missing[0])} ({len(missing)} of {total} missing{why})"
        )

    def entries(self, positions: np.ndarray, cuts: bool = True) -> Entries:
        """Stored entries for `positions` (any shape; flattened), padded to the longest; with the exact
        top-p counts at the grid points unless `cuts` is False (a read at the store's own p)."""
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
        counts = np.zeros((N, len(grid) if cuts else 0), dtype=np.int64)
        for i in np.unique(shard_of):
            sel = shard_of == i
            shard = self.shard(int(i))
            ids[sel], logprobs[sel] = shard.rows(row_of[sel], K)
            if cuts:
                counts[sel] = shard.cuts[row_of[sel]]
        return Entries(ids, logprobs, count, counts, grid if cuts else (), self.top_p)

    def truncated(self, positions: np.ndarray, top_p: float, top_k: int | None) -> tuple[Any, Any, Any]:
        """Torch tensors (ids, logprobs at τ = 1, mask), (B·T, K), truncated to top-p-k at read time."""
        self._check_serves(top_p, top_k)
        return self.entries(positions, cuts=top_p < self.top_p - 1e-9).truncated(top_p, top_k)

    def _check_serves(self, top_p: float, top_k: int | None) -> None:
        if top_p > self.top_p + 1e-9 or (top_k or math.inf) > (self.top_k or math.inf):
            raise UserError(f"{self.path}: holds top-{self.top_p}-{self.top_k}; cannot serve top-{top_p}-{top_k}")

    def targets(
        self, positions: np.ndarray, top_p: float, top_k: int | None, temperature: float, renormalize: bool = True
    ) -> tuple[Any, Any, Any, Any]:
        """Padded torch tensors (ids, probs, mask, residual) for a batch of positions (B, T) → (B·T, K)."""
        self._check_serves(top_p, top_k)
        entries = self.entries(positions, cuts=top_p < self.top_p - 1e-9)
        return to_targets(*entries.truncated(top_p, top_k), temperature, renormalize)

    def verify(self) -> dict[str, Any]:
        """Check that the store is complete and every shard's checksum and decodability; return totals."""
        if self.pending:
            n = len(self.pending) + len(self.manifest["shards"])
            raise UserError(
                f"{self.path}: incomplete: {len(self.pending)} of the {n} shards of its teacher pass are not written"
                " (the pass is running, or stopped: run it again to finish them)"
            )
        total_pos = total_entries = total_bytes = 0
        for i, entry in enumerate(self.manifest["shards"]):
            sh = self.shard(i)
            if len(sh.positions) != entry["positions"] or int(sh.count.sum()) != entry["entries"]:
                raise UserError(f"{self.path / entry['name']}: contents do not match the manifest")
            total_pos += entry["positions"]
            total_entries += entry["entries"]
            total_bytes += entry["bytes"]
        return {
            "shards": len(self.manifest["shards"]),
            "positions": total_pos,
            "entries": total_entries,
            "bytes": total_bytes,
        }


def summary(
    path: Path, top_p: list[float] | None = None, top_k: list[int] | None = None
) -> tuple[list[float], list[int], list[dict[str, Any]], dict[str, Any]]:
    """`logits stats`: the (p, k) grid (default: the usual values up to the store's own), the mean kept
    entries and bytes per token at each, and the store's verified totals."""
    reader = StoreReader(path)
    ps = top_p or [p for p in (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95) if p <= reader.top_p + 1e-9]
    ks = top_k or [k for k in (1, 3, 5, 10, 20, 50, 100) if reader.top_k is None or k <= reader.top_k]
    return ps, ks, stats(reader, ps, ks), reader.verify()


def is_store(path: Path) -> bool:
    """Does `path` hold a store (a manifest; complete or being written)?"""
    return (path / "manifest.json").exists()


def store_bytes(path: Path) -> int:
    """Bytes on disk of a store (shards, their records and the manifest)."""
    return sum(
        p.stat().st_size
        for p in path.iterdir()
        if p.suffix == ".pdl" or p.name == "manifest.json" or (p.name.startswith("shard-") and p.suffix == ".json")
    )


def pass_compute(path: Path) -> dict[str, Any]:
    """What a store's teacher pass cost: positions, bytes written, FLOPs (the teacher's forward FLOPs
    per position × positions; None when unknown) and device-hours (the wall seconds every rank logged
    in the store's event log, summed over ranks and attempts)."""
    manifest = read_manifest(path)
    positions = sum(s["positions"] for s in manifest["shards"])
    per = manifest.get("flops_per_position")
    seconds = sum(e.get("seconds", 0.0) for e in rundir.events(path) if e.get("event") == "pass_rank")
    return {
        "positions": positions,
        "bytes": store_bytes(path),
        "flops": per * positions if per is not None else None,
        "flops_per_position": per,
        "device_hours": seconds / 3600,
    }


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
