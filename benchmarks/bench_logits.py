"""The logits store on real teacher outputs (SmolLM2-135M over the default corpus, top-0.95-100).

Side by side in one run:
- size: pdsweep's format vs int32 ids + fp32 values (naive) vs fp16 log-probs + 17-bit ids + zstd
  level 3 (what Megatron-LM stores), on the same kept entries;
- generation: teacher_pass.generate tokens/s vs the teacher's plain forward over the same windows;
- reading: StoreReader.targets for random student batches (tokens/s) vs the rate at which a student
  consumes tokens (a tiny-s training step on this CPU).

Metrics: bytes_per_entry, encode_positions_per_s_core, decode_positions_per_s_core,
bytes_per_entry_megatron, bytes_per_entry_naive, gen_vs_forward_ratio, read_vs_consume_ratio.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import zstandard  # noqa: E402
from _common import summary, write  # noqa: E402

from pdsweep.data import tokenized
from pdsweep.logits import codec, teacher, teacher_pass, truncation
from pdsweep.logits import store as logits_store
from pdsweep.nn import losses, model
from pdsweep.spec import RunSpec
from pdsweep.train import backends

POSITIONS, SEQ, BATCH = 4096, 256, 8
SIZE_POSITIONS = 16384
"""The size comparison uses one store shard of the default size (teacher_pass.generate's shard_positions)."""


def megatron_bytes(ids: np.ndarray, logprobs: np.ndarray) -> int:
    """fp16 log-probs + ids packed in 17 bits, then zstd level 3."""
    ids32 = ids.astype(np.uint32)
    bits = np.unpackbits(ids32.view(np.uint8).reshape(-1, 4)[:, :3], axis=1, bitorder="little")[:, :17]
    packed = np.packbits(bits.reshape(-1), bitorder="little").tobytes()
    return len(zstandard.ZstdCompressor(level=3).compress(logprobs.astype(np.float16).tobytes() + packed))


def grid_index(p: float) -> int:
    return [round(g, 2) for g in truncation.grid_below(0.95)].index(round(p, 2))


def position_of(ids: np.ndarray, read: np.ndarray) -> np.ndarray:
    """(N, K): where each id of `read` sits in the same row of `ids` (rows searched at once, offset
    by their index so one sorted array holds them all)."""
    n, k = ids.shape
    big = int(max(ids.max(), read.max())) + 1
    keyed = ids.astype(np.int64) + np.arange(n)[:, None] * big
    order = np.argsort(keyed, axis=None)
    at = np.searchsorted(keyed.reshape(-1)[order], (read.astype(np.int64) + np.arange(n)[:, None] * big).reshape(-1))
    return (order[np.minimum(at, n * k - 1)] % k).reshape(n, k)


def tie_order_bits(logprobs: np.ndarray, count: np.ndarray) -> float:
    """Bits needed to order entries whose quantised values tie: Σ log2(m!) over each position's groups of
    m equal values — what any exact-order format must pay beyond a set-coded one (values alone order
    the rest)."""
    mask = np.arange(logprobs.shape[1])[None] < count[:, None]
    q = np.where(mask, codec.quantize(np.where(mask, logprobs, 0.0)), -1)
    bits = 0.0
    for row in q:
        _, m = np.unique(row[row >= 0], return_counts=True)
        bits += sum(math.lgamma(x + 1) for x in m) / math.log(2)
    return bits


def main() -> None:
    spec = RunSpec.model_validate(
        {
            "student": "tiny-s",
            "teacher": "builtin:smollm2-135m",
            "data": {"tokenizer": "teacher", "seq_len": SEQ},
            "logits": {"top_p": 0.95, "top_k": 100},
        }
    )
    t = teacher.load(spec.teacher)
    tokens = tokenized.prepare(spec)
    windows = torch.from_numpy(np.asarray(tokens.train[:POSITIONS], dtype=np.int64)).reshape(-1, SEQ)

    def forward() -> None:
        with torch.no_grad():
            for b in range(0, len(windows), BATCH):
                t.logits(windows[b : b + BATCH])

    with tempfile.TemporaryDirectory() as tmp:
        fwd, gen = [], []
        for r in range(3):  # interleaved repeats: forward, generate, forward, ...
            s = time.perf_counter()
            forward()
            fwd.append(time.perf_counter() - s)
            s = time.perf_counter()
            teacher_pass.generate(t, tokens, Path(tmp) / f"store{r}", 0.95, 100, SEQ, batch_size=BATCH, limit=POSITIONS)
            gen.append(time.perf_counter() - s)
        store = Path(tmp) / "store0"
        totals = logits_store.StoreReader(store).verify()

        # Size: the exact top-0.95-100 entries of SIZE_POSITIONS positions, in one default-size shard.
        parts = []
        with torch.no_grad():
            size_windows = torch.from_numpy(np.asarray(tokens.train[:SIZE_POSITIONS], dtype=np.int64)).reshape(-1, SEQ)
            for b in range(0, len(size_windows), BATCH):
                z = t.logits(size_windows[b : b + BATCH]).float()
                parts.append(truncation.top_p_k(z.reshape(-1, z.shape[-1]), 0.95, 100))
        ids_x, lp_x, count_x, lse_x, cuts_x = truncation.concat(parts)
        writer = logits_store.StoreWriter(Path(tmp) / "size", teacher_pass.store_info(t, tokens, 0.95, 100))
        writer.add(np.arange(SIZE_POSITIONS), (ids_x, lp_x, count_x, lse_x, cuts_x))
        mask = np.arange(ids_x.shape[1])[None] < count_x[:, None]
        ids, lp = ids_x[mask], lp_x[mask]
        entries = int(mask.sum())
        ours = logits_store.store_bytes(Path(tmp) / "size") / entries
        e = logits_store.StoreReader(Path(tmp) / "size").entries(np.arange(SIZE_POSITIONS))
        assert np.array_equal(e.ids[:, 0], ids_x[:, 0]) and np.array_equal(e.count, count_x)
        mask_x = np.arange(ids_x.shape[1])[None] < count_x[:, None]
        q_x = np.where(mask_x, codec.quantize(np.where(mask_x, lp_x, 0.0)), -1)
        assert np.array_equal(np.where(mask_x, codec.quantize(np.where(mask_x, e.logprobs, 0.0)), -1), q_x)
        exact_order = float(np.all(np.where(mask_x, e.ids == ids_x, True), axis=1).mean())  # ties aside
        assert np.array_equal(e.cuts, cuts_x)  # the exact top-p counts at every grid point
        # Reads of the truncation sweep: how often the kept set differs from the exact one (by entries
        # on one grid point: their probabilities differ by less than its resolution), and by how much mass.
        swaps = {}
        p_x = np.exp(lp_x.astype(np.float64))
        for p, k in [(0.5, 100), (0.8, 100), (0.9, 100), (0.95, 3), (0.95, 10), (0.95, 20), (0.95, 50)]:
            n = np.minimum(count_x if p == 0.95 else cuts_x[:, grid_index(p)], k)  # 0.95: the store's own
            keep = np.arange(ids_x.shape[1])[None] < n[:, None]
            read_mass = np.where(keep, np.take_along_axis(p_x, position_of(ids_x, e.ids), axis=1), 0).sum(1)
            exact_mass = np.where(keep, p_x, 0).sum(1)
            differs = [set(e.ids[i, : n[i]].tolist()) != set(ids_x[i, : n[i]].tolist()) for i in range(SIZE_POSITIONS)]
            swaps[f"top-{p}-{k}"] = {
                "positions_differing": round(float(np.mean(differs)), 4),
                "mean_kept_mass_difference": float(f"{np.abs(read_mass - exact_mass).mean():.2e}"),
            }

        def by_id(ids_: np.ndarray, lp_: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            keep = np.arange(ids_.shape[1])[None] < n[:, None]
            order = np.argsort(np.where(keep, ids_, 1 << 40), axis=1)
            p = np.where(keep, np.exp(lp_), 0.0)
            return np.take_along_axis(np.where(keep, ids_, -1), order, 1), np.take_along_axis(p, order, 1)

        ids_a, p_a = by_id(ids_x, lp_x, count_x)
        ids_b, p_b = by_id(e.ids, e.logprobs, e.count)
        assert np.array_equal(ids_a, ids_b)  # the same (id, probability) pairs
        max_err = float(np.abs(p_a - p_b).max())

        # Codec speed on the same shard, one core: encode, decode, and decode with the exact top-p
        # counts (computed only for a read below the store's p), interleaved, median of 3.
        grid = truncation.grid_below(0.95)
        pos = np.arange(SIZE_POSITIONS)
        enc, dec, dec_cuts = [], [], []
        for _ in range(3):
            s = time.perf_counter()
            data = codec.encode_shard(pos, ids_x, lp_x, count_x, lse_x, cuts_x, grid)
            enc.append(time.perf_counter() - s)
            s = time.perf_counter()
            codec.decode_shard(data)
            dec.append(time.perf_counter() - s)
            s = time.perf_counter()
            assert np.array_equal(codec.decode_shard(data).cuts, cuts_x)
            dec_cuts.append(time.perf_counter() - s)

        # Reading: random student batches (16 × 128 positions), fresh reader each repeat (cold cache).
        rng = np.random.default_rng(0)
        read = []
        for _ in range(5):
            rd = logits_store.StoreReader(store)
            s = time.perf_counter()
            for _ in range(10):
                starts = rng.integers(0, POSITIONS - 128, 16)
                rd.targets(starts[:, None] + np.arange(128)[None], 0.95, 100, 2.0)
            read.append((time.perf_counter() - s) / (10 * 16 * 128))
    student = RunSpec.model_validate(
        {
            "student": "tiny-s",
            "loss": {"alpha": 0},
            "data": {"seq_len": 128},
            "train": {"global_batch": 16, "micro_batch": 16, "backend": "torch"},
        }
    )
    backend = backends.TorchBackend(student, device="cpu")
    net = backend.setup(model.build(student.student, tokens.vocab_size, 128, seed=0), student.optim, accum=1)
    x = torch.randint(0, tokens.vocab_size, (16, 129))
    consume = []
    for i in range(6):
        s = time.perf_counter()
        backend.backward(losses.lm_loss(net(x[:, :-1]), x[:, 1:]))
        backend.step()
        if i:
            consume.append((time.perf_counter() - s) / (16 * 128))

    f, g, rd_s, c = summary(fwd), summary(gen), summary(read), summary(consume)
    metrics = [
        {
            "metric": "bytes_per_entry",
            "value": round(ours, 3),
            "unit": "B/entry",
            "goal": "<= 1.6",
            "entries_per_token": round(entries / SIZE_POSITIONS, 1),
            "bytes_per_token": round(ours * entries / SIZE_POSITIONS, 1),
            "max_abs_prob_error": float(f"{max_err:.2e}"),
            "value_gamma": codec.GAMMA,
            "positions_in_exact_order": round(exact_order, 4),
            "truncated_reads": swaps,
            "note": f"SmolLM2-135M-Instruct on Shakespeare, top-0.95-100, one {SIZE_POSITIONS}-position shard; "
            f"format {codec.FORMAT_VERSION}: entries in probability order up to ties on the value grid (in rank "
            "order there; the argmax first); truncated_reads: how often a smaller read keeps another set than "
            "the exact one, always by entries on one grid point, and the mean mass it moves",
        },
        {
            "metric": "encode_positions_per_s_core",
            "value": round(SIZE_POSITIONS / summary(enc)["median"]),
            "unit": "positions/s",
            "goal": ">= 50000",
            "spread_s": summary(enc),
            "note": f"codec.encode_shard of one {SIZE_POSITIONS}-position shard, SmolLM2-135M top-0.95-100, one core",
        },
        {
            "metric": "decode_positions_per_s_core",
            "value": round(SIZE_POSITIONS / summary(dec)["median"]),
            "unit": "positions/s",
            "goal": ">= 250000",
            "spread_s": summary(dec),
            "with_exact_cuts_positions_per_s": round(SIZE_POSITIONS / summary(dec_cuts)["median"]),
            "note": "codec.decode_shard of the same shard, one core; with_exact_cuts adds the exact top-p counts at "
            "every grid point, which a shard computes when a read below the store's own p first asks for them",
        },
        {
            "metric": "tie_order_bytes_per_entry",
            "value": round(tie_order_bits(lp_x, count_x) / 8 / entries, 3),
            "unit": "B/entry",
            "goal": "reference",
            "note": "what ordering the entries that tie on the value grid by their true probabilities would add at "
            "the least (format 4 did, at 1.79 B/entry): their probabilities differ by less than the grid's "
            "resolution, and format 5 keeps them in the order of their ids' ranks instead",
        },
        {
            "metric": "bytes_per_entry_megatron",
            "value": round(megatron_bytes(ids, lp) / entries, 3),
            "unit": "B/entry",
            "goal": "reference",
        },
        {
            "metric": "bytes_per_entry_naive",
            "value": round((ids.astype(np.int32).nbytes + lp.astype(np.float32).nbytes) / entries, 3),
            "unit": "B/entry",
            "goal": "reference",
        },
        {
            "metric": "gen_vs_forward_ratio",
            "value": round(f["median"] / g["median"], 3),
            "unit": "x",
            "goal": ">= 0.9",
            "forward_tokens_per_s": round(POSITIONS / f["median"]),
            "generate_tokens_per_s": round(POSITIONS / g["median"]),
            "spread": {"forward_s": f, "generate_s": g},
        },
        {
            "metric": "read_vs_consume_ratio",
            "value": round(c["median"] / rd_s["median"], 1),
            "unit": "x",
            "goal": ">= 20",
            "read_tokens_per_s": round(1 / rd_s["median"]),
            "student_tokens_per_s": round(1 / c["median"]),
            "note": "student: tiny-s LM step, batch 16 × 128, vocabulary 49,152",
            "spread": {"read_s_per_token": rd_s, "consume_s_per_token": c},
        },
    ]
    print(totals)
    path = write("bench_logits", metrics)
    for m in metrics:
        print(f"{m['metric']:26s} {m['value']:>10} {m['unit']} (goal {m['goal']})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
