"""Training throughput and MFU of the tiny CPU presets, against this machine's measured fp32 matmul peak.

Side by side in one run: the matmul peak (2·n³ FLOP per n×n product, best of repeats, torch's
default threads) is measured before and after each preset, and each preset's training step
(forward, LM loss, backward, clipping, AdamW — the TorchBackend the trainer uses) is timed over
repeated steps. MFU = training FLOPs per token (6·N + attention, from the spec) × tokens/s ÷ peak.

Metrics: matmul_peak_gflops, tokens_per_s_cpu (per preset), mfu_cpu (per preset; goal for the
~20M-parameter tiny-l at sequence 256: ≥ 0.5).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _common import summary, write  # noqa: E402

from pdsweep.nn import losses, model
from pdsweep.spec import RunSpec
from pdsweep.train import backends

VOCAB, SEQ, BATCH = 8192, 256, 8
PRESETS = ["tiny-xs", "tiny-s", "tiny-m", "tiny-l"]


def step_times(preset: str, steps: int = 8, warmup: int = 2) -> list[float]:
    spec = RunSpec.model_validate(
        {
            "student": preset,
            "loss": {"alpha": 0},
            "data": {"seq_len": SEQ},
            "train": {"global_batch": BATCH, "micro_batch": BATCH, "backend": "torch"},
        }
    )
    backend = backends.TorchBackend(spec, device="cpu")
    net = backend.setup(model.build(spec.student, VOCAB, SEQ, seed=0), spec.optim, accum=1)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=gen)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        loss = losses.lm_loss(net(tokens[:, :-1]), tokens[:, 1:])
        backend.backward(loss)
        backend.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def main() -> None:
    peaks = [backends.measure_cpu_matmul_flops(seconds=1.0)]
    rows = []
    for preset in PRESETS:
        times = step_times(preset)
        peaks.append(backends.measure_cpu_matmul_flops(seconds=1.0))
        spec = RunSpec.model_validate({"student": preset, "loss": {"alpha": 0}})
        rows.append((preset, spec.student.num_params(VOCAB), spec.student.flops_per_token(VOCAB, SEQ), times))
    peak = statistics.median(peaks)
    metrics = [
        {
            "metric": "matmul_peak_gflops",
            "value": round(peak / 1e9, 1),
            "unit": "GFLOP/s",
            "goal": "reference",
            "spread": {"samples": [round(p / 1e9, 1) for p in peaks]},
            "note": f"fp32 1024x1024 torch.mm, {torch.get_num_threads()} threads",
        }
    ]
    for preset, params, fpt, times in rows:
        s = summary(times)
        tps = BATCH * SEQ / s["median"]
        metrics.append(
            {
                "metric": "tokens_per_s_cpu",
                "preset": preset,
                "params": params,
                "value": round(tps),
                "unit": "tokens/s",
                "goal": "informational",
                "seq_len": SEQ,
                "batch": BATCH,
                "spread": {"step_s": s},
            }
        )
        goal = ">= 0.5" if preset == "tiny-l" else "informational"
        metrics.append(
            {
                "metric": "mfu_cpu",
                "preset": preset,
                "params": params,
                "value": round(fpt * tps / peak, 3),
                "unit": "fraction of measured matmul peak",
                "goal": goal,
                "spread": {
                    "min": round(fpt * BATCH * SEQ / s["max"] / peak, 3),
                    "max": round(fpt * BATCH * SEQ / s["min"] / peak, 3),
                },
            }
        )
    path = write("bench_train", metrics)
    for m in metrics:
        print(f"{m['metric']:20s} {m.get('preset', ''):8s} {m['value']:>10} {m['unit']}  (goal {m['goal']})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
