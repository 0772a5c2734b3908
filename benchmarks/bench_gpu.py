"""GPU throughput of the paper's 330m student (bf16, DeepSpeed ZeRO-3, one GPU): tokens/s, MFU
against the GPU's dense bf16 peak, and peak memory. Run it on a machine with CUDA; without one it
writes nothing and says so.

Metrics: tokens_per_s_gpu, mfu_gpu, peak_mem_gib_gpu.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _common import summary, write  # noqa: E402

from pdsweep.nn import losses, model
from pdsweep.spec import RunSpec
from pdsweep.train import backends

VOCAB, SEQ, MICRO = 32768, 2048, 8


def main() -> None:
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; nothing measured")
        return
    spec = RunSpec.model_validate(
        {
            "student": "330m",
            "loss": {"alpha": 0},
            "data": {"seq_len": SEQ},
            "train": {
                "global_batch": MICRO,
                "micro_batch": MICRO,
                "precision": "bf16",
                "backend": "deepspeed",
                "zero_stage": 3,
            },
        }
    )
    backend = backends.DeepSpeedBackend(spec)
    net = backend.setup(model.build(spec.student, VOCAB, SEQ, seed=0), spec.optim, accum=1)
    tokens = torch.randint(0, VOCAB, (MICRO, SEQ + 1), device=backend.device)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(13):
        torch.cuda.synchronize()
        t = time.perf_counter()
        loss = losses.lm_loss(net(tokens[:, :-1]), tokens[:, 1:])
        backend.backward(loss)
        backend.step()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t)
    s = summary(times)
    tps = MICRO * SEQ / s["median"]
    peak = backends.peak_flops(backend.device)
    fpt = spec.student.flops_per_token(VOCAB, SEQ)
    metrics = [
        {
            "metric": "tokens_per_s_gpu",
            "value": round(tps),
            "unit": "tokens/s",
            "goal": "informational",
            "device": torch.cuda.get_device_name(),
            "spread": {"step_s": s},
        },
        {
            "metric": "mfu_gpu",
            "value": round(fpt * tps / peak, 3) if peak else None,
            "unit": "fraction of dense bf16 peak",
            "goal": "informational",
            "peak_flops": peak,
        },
        {
            "metric": "peak_mem_gib_gpu",
            "value": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "unit": "GiB",
            "goal": "informational",
        },
    ]
    write("bench_gpu", metrics)
    for m in metrics:
        print(m)


if __name__ == "__main__":
    main()
