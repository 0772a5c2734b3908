"""Distillation cost, side by side in one run (tiny CPU presets, real text, a real offline store).

- pd_vs_lm_step_ratio: a PD training step (α = 0.9, KLD, top-0.95-100 targets read from the store
  by position) vs an LM-only step of the same student (goal ≤ 1.05).
- offline_vs_online_speedup: offline PD tokens/s vs online dense KD (a teacher 4× the student's size
  runs forward every step and the KL is taken over the full vocabulary — what torchtune and TRL
  do) (goal ≥ 2).
- kd_peak_mem_ratio: peak memory of a PD step over an LM-only step at vocabulary 49,152 and k = 100,
  each measured in a fresh process (peak RSS above the process's state before the step) (goal ≤ 1.1).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import summary, write  # noqa: E402

from pdsweep.data import batches, corpora, tokenized
from pdsweep.logits import store as logits_store
from pdsweep.nn import losses, model
from pdsweep.spec import RunSpec
from pdsweep.train import backends, trainer

SEQ, BATCH = 128, 16


def base_spec(preset: str, **kw) -> RunSpec:
    return RunSpec.model_validate(
        {
            "student": preset,
            "loss": {"alpha": 0},
            "data": {"tokenizer": {"kind": "bpe", "vocab_size": 4096}, "seq_len": SEQ, "tokens": SEQ * BATCH * 40},
            "train": {"global_batch": BATCH, "micro_batch": BATCH, "backend": "torch", "checkpoint_every": 10**6},
            "eval": {"interval": 10**6},
        }
        | kw
    )


def step_timer(spec: RunSpec, vocab: int, store=None, teacher_net=None):  # noqa: ANN001, ANN202
    """A function doing one training step of `spec` on batch `step`, as trainer.train does it."""
    backend = backends.TorchBackend(spec, device="cpu")
    net = backend.setup(model.build(spec.student, vocab, SEQ, seed=0), spec.optim, accum=1)
    kd = losses.KDConfig.from_spec(spec)

    def step(tokens: tokenized.TokenData, i: int) -> None:
        b = batches.batch_at(tokens.train, SEQ, BATCH, 0, i)
        x, y = torch.from_numpy(b.inputs), torch.from_numpy(b.targets)
        logits = net(x)
        if teacher_net is not None:  # online dense KD
            with torch.no_grad():
                t_logits = teacher_net(x)
            kl = F.kl_div(
                F.log_softmax(logits.float(), -1).flatten(0, 1),
                F.log_softmax(t_logits.float(), -1).flatten(0, 1),
                reduction="batchmean",
                log_target=True,
            )
            loss = 0.1 * losses.lm_loss(logits, y) + 0.9 * kl
        elif store is not None:
            t = store.truncated(b.positions, spec.logits.top_p, spec.logits.top_k)
            loss, _ = losses.pd_loss(logits, y, 0.9, *t, kd, spec.loss.chunk_tokens)
        else:
            loss = losses.lm_loss(logits, y)
        backend.backward(loss)
        backend.step()

    return step


def time_steps(step, tokens, n: int = 12, warmup: int = 2) -> list[float]:  # noqa: ANN001
    times = []
    for i in range(warmup + n):
        s = time.perf_counter()
        step(tokens, i)
        if i >= warmup:
            times.append(time.perf_counter() - s)
    return times


MEM_CHILD = r"""
import json, resource, sys, torch
from pdsweep import losses
from pdsweep.losses import KDConfig
V, N, K, pd = 49152, 2048, 100, sys.argv[1] == "pd"
g = torch.Generator().manual_seed(0)
h = torch.randn(N, 256, generator=g)
w = (torch.randn(V, 256, generator=g) * 0.02).requires_grad_(True)
y = torch.randint(0, V, (N,), generator=g)
# Teacher entries as the store hands them over (no (N, V) tensor before the measured step):
ids = torch.randint(0, V, (N, K), generator=g)  # small set-up, so the peak above it is the step's
lp = torch.log_softmax(torch.sort(torch.randn(N, K, generator=g) * 2, dim=-1, descending=True).values, -1)
mask = torch.ones(N, K, dtype=torch.bool)
import gc; gc.collect()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
logits = (h @ w.T)[None]  # (1, N, V): the student's output head
if pd:
    loss, _ = losses.pd_loss(logits, y[None], 0.9, ids, lp, mask, KDConfig("kld"), 256)
else:
    loss = losses.lm_loss(logits, y[None])
loss.backward()
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))
"""


def peak_mem(kind: str) -> int:
    out = subprocess.run([sys.executable, "-c", MEM_CHILD, kind], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_kib"]


def main() -> None:
    # Memory first, from a clean parent: children measured after the timing runs below reported
    # implausibly small peaks (their environment after tokenizers/trainer use differs).
    mem = {k: [peak_mem(k) for _ in range(3)] for k in ("lm", "pd")}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = next(p for p in corpora.corpus_files(base_spec("tiny-s").data) if p.name == "hamlet_gut.txt")
        spec_t = base_spec(
            "tiny-m",
            data={
                "corpus": str(corpus),
                "tokenizer": {"kind": "bpe", "vocab_size": 4096},
                "seq_len": SEQ,
                "tokens": SEQ * BATCH * 40,
            },
        )
        tokens = tokenized.prepare(spec_t, work)
        t_net = model.build(spec_t.student, tokens.vocab_size, SEQ, seed=1)
        trainer.train(spec_t, work / "teacher", tokens, backends.TorchBackend(spec_t))  # a briefly trained teacher
        state = torch.load(work / "teacher" / "checkpoints" / "step_00000040" / "engine.pt", weights_only=False)[
            "model"
        ]
        t_net.load_state_dict(state)
        t_net.eval()
        from pdsweep.logits.teacher import Teacher
        from pdsweep.logits.teacher_pass import generate

        info_teacher = Teacher(t_net, tokens.vocab_size, "bench-teacher", None)
        generate(info_teacher, tokens, work / "store", 0.95, 100, SEQ)
        store = logits_store.StoreReader(work / "store")

        student = dict(
            data={
                "corpus": str(corpus),
                "tokenizer": {"kind": "bpe", "vocab_size": 4096},
                "seq_len": SEQ,
                "tokens": SEQ * BATCH * 40,
            }
        )
        lm = base_spec("tiny-s", **student)
        pd = base_spec(
            "tiny-s",
            **student,
            teacher="hf:/bench",
            loss={"kd": "kld", "alpha": 0.9},
            logits={"top_p": 0.95, "top_k": 100},
        )
        results: dict[str, list[float]] = {"lm": [], "pd": [], "online": []}
        steps = {
            "lm": step_timer(lm, tokens.vocab_size),
            "pd": step_timer(pd, tokens.vocab_size, store=store),
            "online": step_timer(lm, tokens.vocab_size, teacher_net=t_net),
        }
        for _ in range(3):  # interleaved rounds
            for name, fn in steps.items():
                results[name] += time_steps(fn, tokens, n=8)
    lm_s, pd_s, on_s = summary(results["lm"]), summary(results["pd"]), summary(results["online"])
    mem_ratio = float(np.median(mem["pd"])) / float(np.median(mem["lm"]))
    params_t = spec_t.student.num_params(tokens.vocab_size)
    params_s = lm.student.num_params(tokens.vocab_size)
    metrics = [
        {
            "metric": "pd_vs_lm_step_ratio",
            "value": round(pd_s["median"] / lm_s["median"], 3),
            "unit": "x",
            "goal": "<= 1.05",
            "spread": {"pd_step_s": pd_s, "lm_step_s": lm_s},
            "note": f"tiny-s student, batch {BATCH}x{SEQ}, vocabulary {tokens.vocab_size}, top-0.95-100 KLD",
        },
        {
            "metric": "offline_vs_online_speedup",
            "value": round(on_s["median"] / pd_s["median"], 2),
            "unit": "x",
            "goal": ">= 2",
            "teacher_params": params_t,
            "student_params": params_s,
            "spread": {"online_step_s": on_s, "offline_step_s": pd_s},
        },
        {
            "metric": "kd_peak_mem_ratio",
            "value": round(mem_ratio, 3),
            "unit": "x",
            "goal": "<= 1.1",
            "note": "output head + loss of 2048 tokens at vocabulary 49,152, k = 100, chunk 256; peak RSS above the start, fresh process each",
            "spread": {"pd_kib": mem["pd"], "lm_kib": mem["lm"]},
        },
    ]
    path = write("bench_kd", metrics)
    for m in metrics:
        print(f"{m['metric']:28s} {m['value']:>8} {m['unit']} (goal {m['goal']})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
