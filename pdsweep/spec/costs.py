"""What a sweep will cost before it runs: FLOPs of every run and teacher pass, GPU-hours at a stated
model FLOPs utilisation on a stated GPU, the teacher pass's positions and its store's expected size.

Training FLOPs per token are `ModelSpec.flops_per_token` (6·N for the matmuls, output head included,
plus 12·L·h·T for attention); a teacher pass is one forward: a third of that. GPU-hours are
FLOPs / (peak × MFU) / 3600 — the peak is the GPU's dense bf16 tensor throughput from its data sheet.

A store's size is positions × entries per token at its (p, k) × bytes per entry. Entries per token
depend on the teacher (a sharper teacher keeps fewer at a given p): the table below was measured on
the builtin SmolLM2-135M over the default corpus (`pdsweep logits stats`, 16,384 positions); run
`pdsweep logits stats STORE` on a few thousand positions of your own teacher for its numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdsweep.spec.sizes import ModelSpec

GPUS = {"a100": 312e12, "h100": 989e12, "h200": 989e12, "b200": 2250e12, "mi300x": 1307e12}
"""Dense bf16 peak FLOP/s by GPU (NVIDIA and AMD data sheets, without sparsity)."""
GPU, MFU = "h100", 0.4
"""[D] The GPU and model FLOPs utilisation `pdsweep plan` states GPU-hours at (`--gpu`, `--mfu`):
0.4 is what well-tuned dense LM training reaches on H100s; a teacher pass runs near it."""

ENTRIES_PER_TOKEN = {
    0.5: {1: 1.0, 3: 2.47, 5: 3.52, 10: 5.33, 20: 7.61, 50: 11.44, 100: 14.16},
    0.6: {1: 1.0, 3: 2.62, 5: 3.92, 10: 6.43, 20: 9.87, 50: 16.21, 100: 22.27},
    0.7: {1: 1.0, 3: 2.74, 5: 4.23, 10: 7.41, 20: 12.3, 50: 22.07, 100: 32.73},
    0.8: {1: 1.0, 3: 2.83, 5: 4.5, 10: 8.25, 20: 14.72, 50: 29.47, 100: 47.06},
    0.85: {1: 1.0, 3: 2.86, 5: 4.62, 10: 8.67, 20: 15.86, 50: 33.67, 100: 56.39},
    0.9: {1: 1.0, 3: 2.9, 5: 4.73, 10: 9.08, 20: 17.07, 50: 38.06, 100: 67.41},
    0.95: {1: 1.0, 3: 2.94, 5: 4.84, 10: 9.47, 20: 18.37, 50: 43.08, 100: 80.27},
}
"""Mean entries top-p-k keeps per position, measured (SmolLM2-135M-Instruct, default corpus)."""
BYTES_PER_ENTRY = 1.81
"""pdsweep's store, bytes per kept entry at top-0.95-100 on the same outputs (benchmarks/bench_logits)."""
FULL_VALUE_BYTES = 4
"""A full-vocabulary float32 logit."""

SMOLLM2 = ModelSpec.model_validate(
    {
        "preset": "custom",
        "hidden_size": 576,
        "num_layers": 30,
        "num_heads": 9,
        "num_kv_groups": 3,
        "ffn_hidden_size": 1536,
        "tie_embeddings": True,
    }
)
"""The builtin teacher's shape (its config.json)."""


def entries_per_token(top_p: float, top_k: int | None, vocab_size: int | None) -> float | None:
    """Expected kept entries per position at (p, k): the measured table (nearest p at or above,
    k interpolated in log k); None for a truncation the table does not reach (p > 0.95 or k > 100
    without a table row: the whole distribution can be kept)."""
    import math

    if top_k is None or top_p > 0.95 + 1e-9 or top_k > 100:  # at most k, at most the vocabulary
        bounds = [x for x in (top_k, vocab_size) if x]
        return float(min(bounds)) if bounds else None
    p = min(x for x in ENTRIES_PER_TOKEN if x >= top_p - 1e-9)
    row = ENTRIES_PER_TOKEN[p]
    if top_k in row:
        return row[top_k]
    ks = sorted(row)
    lo = max(k for k in ks if k <= top_k)
    hi = min(k for k in ks if k >= top_k)
    w = (math.log(top_k) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return row[lo] + w * (row[hi] - row[lo])


def teacher_shape(teacher: Any, sweep_teachers: dict[str, ModelSpec]) -> ModelSpec | None:
    """The teacher's model shape when it is known without loading weights: a teacher run's preset,
    the builtin teacher's, or an `hf:` directory's config.json."""
    if teacher.kind == "run":
        return sweep_teachers.get(teacher.ref)
    if teacher.kind == "builtin":
        return SMOLLM2
    if teacher.kind == "hf":
        return hf_shape(Path(teacher.ref))
    return None


def hf_shape(path: Path) -> ModelSpec | None:
    """A Hugging Face config.json as a ModelSpec (Llama-like fields), or None when absent or other."""
    try:
        return config_shape(json.loads((path / "config.json").read_text()))
    except (OSError, ValueError):
        return None


def config_shape(c: dict[str, Any]) -> ModelSpec | None:
    """A Hugging Face model config (Llama-like fields) as a ModelSpec, or None when it is another kind."""
    try:
        return ModelSpec.model_validate(
            {
                "preset": "custom",
                "hidden_size": c["hidden_size"],
                "num_layers": c["num_hidden_layers"],
                "num_heads": c["num_attention_heads"],
                "num_kv_groups": c.get("num_key_value_heads", c["num_attention_heads"]),
                "ffn_hidden_size": c["intermediate_size"],
                "tie_embeddings": bool(c.get("tie_word_embeddings", False)),
            }
        )
    except (ValueError, KeyError, TypeError):
        return None


def hf_vocab(path: Path) -> int | None:
    try:
        return int(json.loads((path / "config.json").read_text())["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def gpu_hours(flops: float, gpu: str = GPU, mfu: float = MFU) -> float:
    return flops / (GPUS[gpu] * mfu) / 3600


@dataclass
class PassCost:
    """A teacher pass: its positions, expected store and compute."""

    positions: int
    vocab_size: int | None
    entries_per_token: float | None
    store_bytes: float | None
    full_bytes: float | None
    """Full float32 logits of every position (what a store without truncation would hold)."""
    flops: float | None
    gpu_hours: float | None


def pass_cost(
    positions: int,
    top_p: float,
    top_k: int | None,
    sampling_draws: int,
    vocab_size: int | None,
    shape: ModelSpec | None,
    params: float | None,
    seq_len: int,
    gpu: str = GPU,
    mfu: float = MFU,
) -> PassCost:
    """The cost of one pass: forward FLOPs per position from the teacher's shape (or 2 × its stated
    parameters when only that is known), entries from the measured table."""
    entries = float(sampling_draws) if sampling_draws else entries_per_token(top_p, top_k, vocab_size)
    store = positions * entries * BYTES_PER_ENTRY if entries is not None else None
    full = positions * vocab_size * FULL_VALUE_BYTES if vocab_size else None
    if shape is not None and vocab_size:
        per = shape.flops_per_token(vocab_size, seq_len) / 3
    elif params:
        per = 2.0 * params
    else:
        per = None
    flops = per * positions if per is not None else None
    return PassCost(positions, vocab_size, entries, store, full, flops, gpu_hours(flops, gpu, mfu) if flops else None)


def paper_full_logits(vocab_size: int, tokens: int) -> dict[str, float]:
    """Full float32 logits of `tokens` positions, in the paper's arithmetic and in exact units.

    The paper (Section 3.2) gives ~586 KB/token and 58.6 PB for 100B tokens of a 151k vocabulary:
    150,000 entries (the vocabulary to two significant figures) × 4 B = 585.9 KiB per token, × 10¹¹
    tokens = 5.86 × 10¹³ KiB, read as 58.6 PB (10¹² KiB taken for a PB). Exactly, 151,552 × 4 B per
    token is 606 kB: 60.6 PB (10¹⁵ B) or 53.8 PiB (2⁵⁰ B)."""
    from math import floor, log10

    digits = floor(log10(vocab_size)) - 1
    rounded = round(vocab_size / 10**digits) * 10**digits
    kib_per_token = rounded * FULL_VALUE_BYTES / 1024
    exact = vocab_size * FULL_VALUE_BYTES * tokens
    return {
        "rounded_vocab": rounded,
        "paper_kb_per_token": kib_per_token,
        "paper_pb": kib_per_token * tokens / 1e12,
        "pb": exact / 1e15,
        "pib": exact / 2**50,
    }
