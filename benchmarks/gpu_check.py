"""The GPU check: everything pdsweep must do on a GPU, in one run, into one JSON file.

    python benchmarks/gpu_check.py --out DIR              # on a GPU machine (≤ 8 minutes on one H200)
    python benchmarks/gpu_check.py --out DIR --cpu-smoke  # the same code at tiny sizes on CPU (tests)

Sections (each recorded with its seconds, its figures or its error; one failing does not stop the
others):
  tests         tests/gpu (bf16 ZeRO-3 training; a 2-rank teacher pass on the device against the CPU's)
  train         the paper's 330m student (bf16, DeepSpeed ZeRO-3, one GPU): tokens/s, MFU, peak memory,
                LM-only and PD (KLD, top-0.95-100 read from a store) side by side
  kd_loss       the KD loss at vocabulary 151,552 and 8 × 4096 tokens: peak memory over the LM-only
                loss, and time
  teacher_pass  a SmolLM2-135M-shaped teacher and a 670m preset on the device: positions/s of the pass,
                and whether this machine's cores encode shards as fast (encode_keeps_up)
  sweep         a 20-step PD sweep through `pdsweep run --devices cuda:0`, then `pdsweep report`

Writes DIR/gpu_check.json and, on a GPU, benchmarks/results/bench_gpu.json (the machine named).
The GPU machine has no network: the corpus comes from the cache (PDSWEEP_CACHE) or, for the sweep,
from a small local JSONL corpus made from the repository's own documentation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

GPU = {"student": "330m", "vocab": 32768, "seq": 2048, "micro": 8, "steps": 8, "kd_vocab": 151_552,
       "kd_batch": 8, "kd_seq": 4096, "pass_positions": 32768, "sweep_steps": 20}  # fmt: skip
SMOKE = {"student": "tiny-xs", "vocab": 2048, "seq": 64, "micro": 4, "steps": 3, "kd_vocab": 4096,
         "kd_batch": 2, "kd_seq": 128, "pass_positions": 1024, "sweep_steps": 4}  # fmt: skip


def PD_SPEC() -> Any:  # noqa: N802 - a constant built late (pdsweep imports after the path is set)
    """The KD settings the check measures: KLD at α = 0.5 (the teacher only names one)."""
    from pdsweep.spec import RunSpec

    return RunSpec.model_validate({"teacher": "builtin:smollm2-135m", "loss": {"kd": "kld", "alpha": 0.5}})


def section(results: dict[str, Any], name: str, fn: Any) -> None:
    """Run one section, recording its figures or its error and its seconds."""
    started = time.perf_counter()
    try:
        results[name] = {"ok": True, **fn()}
    except Exception as e:  # noqa: BLE001 - a check records every failure and goes on
        results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    results[name]["seconds"] = round(time.perf_counter() - started, 1)
    print(f"gpu_check: {name}: {'ok' if results[name]['ok'] else results[name]['error']}", flush=True)


def run_tests() -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    summary = (out.stdout.strip().splitlines() or [""])[-1]
    if out.returncode not in (0, 5) and "skipped" not in summary:
        raise RuntimeError(f"tests/gpu failed: {summary}\n{out.stdout[-2000:]}")
    return {"summary": summary, "returncode": out.returncode}


def synthetic_store(path: Path, positions: int, vocab: int, device: str) -> Any:
    """A top-0.95-100 store over `positions` positions of random teacher logits (a sharp-ish
    distribution, as a real teacher's), written chunk by chunk on the device."""
    import numpy as np
    import torch

    from pdsweep.logits import store as logits_store
    from pdsweep.logits import truncation

    info = logits_store.StoreInfo("synthetic", "synthetic", "synthetic", vocab, 0.95, 100)
    writer = logits_store.StoreWriter(path, info)
    g = torch.Generator(device=device).manual_seed(0)
    for start in range(0, positions, 4096):
        n = min(4096, positions - start)
        logits = torch.randn(n, vocab, generator=g, device=device) * 4
        writer.add(np.arange(start, start + n), truncation.top_p_k(logits, 0.95, 100))
    return logits_store.StoreReader(path)


def train_step(cfg: dict[str, Any], device: str, tmp: Path) -> dict[str, Any]:
    """LM-only and PD steps of the same model side by side: tokens/s, MFU, peak memory."""
    import numpy as np
    import torch

    from pdsweep.nn import losses, model
    from pdsweep.spec import RunSpec
    from pdsweep.train import backends

    gpu = device == "cuda"
    V, T, B = cfg["vocab"], cfg["seq"], cfg["micro"]
    train = {"global_batch": B, "micro_batch": B, "precision": "bf16" if gpu else "fp32"}
    train |= {"backend": "deepspeed", "zero_stage": 3} if gpu else {"backend": "torch"}
    spec = RunSpec.model_validate({"student": cfg["student"], "loss": {"alpha": 0}, "data": {"seq_len": T},
                                   "train": train})  # fmt: skip
    backend = backends.DeepSpeedBackend(spec) if gpu else backends.TorchBackend(spec, device="cpu")
    net = backend.setup(model.build(spec.student, V, T, seed=0), spec.optim, accum=1)
    store = synthetic_store(tmp / "store", B * T * 2, V, device)
    x = torch.randint(0, V, (B, T + 1), device=backend.device)
    positions = np.arange(B * T).reshape(B, T)
    kd = losses.KDConfig.from_spec(PD_SPEC())
    out: dict[str, Any] = {}
    for mode in ("lm", "pd"):
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(cfg["steps"] + 2):
            if gpu:
                torch.cuda.synchronize()
            t = time.perf_counter()
            with backend.autocast():
                logits = net(x[:, :-1])
            if mode == "lm":
                loss = losses.lm_loss(logits, x[:, 1:])
            else:
                ids, lp, mask = (a.to(backend.device) for a in store.truncated(positions, 0.95, 100))
                loss, _ = losses.pd_loss(logits, x[:, 1:], 0.5, ids, lp, mask, kd, spec.loss.chunk_tokens)
            backend.backward(loss)
            backend.step()
            if gpu:
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t)
        step = float(np.median(times))
        peak = backends.peak_flops(backend.device)
        tps = B * T / step
        out[mode] = {
            "step_s": round(step, 4),
            "tokens_per_s": round(tps),
            "mfu": round(spec.student.flops_per_token(V, T) * tps / peak, 3) if peak else None,
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
        }
    out["pd_vs_lm_step_ratio"] = round(out["pd"]["step_s"] / out["lm"]["step_s"], 3)
    return out


def kd_loss(cfg: dict[str, Any], device: str) -> dict[str, Any]:
    """The loss alone at a large vocabulary: peak memory and time, PD over LM-only."""
    import torch

    from pdsweep.logits import truncation
    from pdsweep.nn import losses

    gpu = device == "cuda"
    V, B, T = cfg["kd_vocab"], cfg["kd_batch"], cfg["kd_seq"]
    dtype = torch.bfloat16 if gpu else torch.float32
    spec = PD_SPEC()
    g = torch.Generator(device=device).manual_seed(0)
    targets = torch.randint(0, V, (B, T), device=device, generator=g)
    sparse = truncation.top_p_k(torch.randn(B * T, 512, device=device, generator=g) * 4, 0.95, 100)
    ids = sparse.ids % V
    out: dict[str, Any] = {}
    for mode in ("lm", "pd"):
        logits = (torch.randn(B, T, V, device=device, generator=g) * 2).to(dtype).requires_grad_()
        if gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t = time.perf_counter()
        if mode == "lm":
            loss = losses.lm_loss(logits, targets)
        else:
            loss, _ = losses.pd_loss(
                logits, targets, 0.5, ids, sparse.logprobs, sparse.logprobs > -float("inf"), losses.KDConfig.from_spec(spec),
                spec.loss.chunk_tokens,
            )  # fmt: skip
        loss.backward()
        if gpu:
            torch.cuda.synchronize()
        out[mode] = {"seconds": round(time.perf_counter() - t, 4)}
        if gpu:
            out[mode]["peak_over_inputs_gib"] = round((torch.cuda.max_memory_allocated() - base) / 2**30, 3)
        del logits, loss
    if gpu:
        out["pd_vs_lm_peak_mem_ratio"] = round(out["pd"]["peak_over_inputs_gib"] / out["lm"]["peak_over_inputs_gib"], 3)
    out["pd_vs_lm_time_ratio"] = round(out["pd"]["seconds"] / out["lm"]["seconds"], 3)
    return {"vocab": V, "tokens": B * T, **out}


def teacher_pass(cfg: dict[str, Any], device: str, tmp: Path) -> dict[str, Any]:
    """Positions/s of a teacher pass on the device (random weights: the speed of the shape), and the
    rate at which this machine's cores encode what it keeps."""
    import numpy as np
    import torch

    from pdsweep.logits import codec, teacher, teacher_pass
    from pdsweep.logits import store as logits_store
    from pdsweep.nn import model
    from pdsweep.spec import costs
    from pdsweep.spec.sizes import ModelSpec

    vocab, seq = 49152, 512 if device == "cuda" else 64
    n = cfg["pass_positions"]
    rng = np.random.default_rng(0)
    arr = rng.integers(0, vocab, n + 4 * seq).astype(np.int32)
    tokens = SimpleNamespace(
        train=arr[:n],
        heldout=arr[n:],
        manifest={"tokenizer_fingerprint": "synthetic", "corpus_fingerprint": "synthetic"},
    )
    out: dict[str, Any] = {}
    shapes = {"smollm2-135m": costs.SMOLLM2, "670m": ModelSpec.model_validate({"preset": "670m"})}
    if device != "cuda":
        shapes = {"tiny-s": ModelSpec.model_validate({"preset": "tiny-s"})}
    for name, shape in shapes.items():
        net = model.build(shape, vocab, seq, seed=0).eval()
        if device == "cuda":
            net = net.to(device="cuda", dtype=torch.bfloat16)
        t = teacher.Teacher(net, vocab, f"synthetic-{name}", None)
        store = tmp / f"pass-{name}"
        result = teacher_pass.generate(t, tokens, store, 0.95, 100, seq, batch_size=8, limit=n, shard_positions=8192)
        entries = logits_store.StoreReader(store).verify()["entries"]
        out[name] = {"positions_per_s": round(result["tokens_per_s"]), "entries_per_position": round(entries / n, 1)}
    # Encoding on this machine's cores: one shard of the last pass, encoded on one core, times the cores.
    reader = logits_store.StoreReader(store)
    shard = reader.shard(0)
    ids, lp = shard.rows(np.arange(len(shard.positions)), int(shard.count.max()))
    started = time.perf_counter()
    codec.encode_shard(shard.positions, ids, lp, shard.count, shard.lse, shard.cuts, shard.p_grid)
    per_core = len(shard.positions) / (time.perf_counter() - started)
    cores = len(os.sched_getaffinity(0))
    fastest = max(v["positions_per_s"] for v in out.values())
    out["encode_positions_per_s_core"] = round(per_core)
    out["cores"] = cores
    out["encode_keeps_up"] = bool(per_core * max(1, cores - 1) >= fastest)
    out["encode_rate_all_cores_but_one"] = round(per_core * max(1, cores - 1))
    return out


def sweep(cfg: dict[str, Any], device: str, tmp: Path) -> dict[str, Any]:
    """A tiny PD sweep through `pdsweep run` on the device, then its report: tracking, checkpoints and
    the report on this machine (a local corpus: the GPU machine reaches no network)."""
    corpus = tmp / "corpus.jsonl"
    with corpus.open("w") as f:
        for doc in sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]:
            for para in doc.read_text().split("\n\n"):
                if len(para) > 40:
                    f.write(json.dumps({"text": para}) + "\n")
    steps = cfg["sweep_steps"]
    data = {"corpus": str(corpus), "tokenizer": {"kind": "bpe", "vocab_size": 1024}, "seq_len": 64, "heldout_fraction": 0.1,
            "tokens": 64 * 8 * steps}  # fmt: skip
    spec = {
        "name": "gpu-check",
        "base": {
            "student": "tiny-xs",
            "teacher": "run:teacher",
            "loss": {"kd": "kld", "alpha": 0.5},
            "logits": {"top_p": 0.95, "top_k": 50},
            "data": data,
            "train": {"global_batch": 8, "micro_batch": 8, "checkpoint_every": 5},
            "eval": {"interval": 10, "heldout_tokens": 1024},
        },  # fmt: skip
        "teachers": {"teacher": {"data.tokens": 64 * 8 * steps}},
        "seeds": 2,
    }
    import yaml

    file = tmp / "sweep.yaml"
    file.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "PDSWEEP_WORKDIR": str(tmp / "work"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
    devices = "cuda:0" if device == "cuda" else "cpu"
    cmd = [sys.executable, "-m", "pdsweep.cli", "run", str(file), "--devices", devices, "--report"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"pdsweep run failed ({done.returncode}): {done.stderr[-2000:] or done.stdout[-2000:]}")
    from pdsweep.spec import expand

    planned = expand.expand(expand.load_sweep(file))
    runs = tmp / "work" / "runs" / "gpu-check"
    results = [json.loads(p.read_text()) for p in runs.glob("*/result.json")]
    checkpoints = list(runs.glob("*/checkpoints/*"))
    report = (tmp / "work" / "reports" / "gpu-check" / "report.html").exists()
    if len(results) != len(planned) or not checkpoints or not report:
        raise RuntimeError(f"{len(results)} of {len(planned)} results, {len(checkpoints)} checkpoints, report {report}")
    return {"runs": len(results), "checkpoints": len(checkpoints), "report": "report.html"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cpu-smoke", action="store_true", help="Tiny sizes on CPU: the check's own test.")
    parser.add_argument("--only", nargs="*", help="Run only these sections.")
    args = parser.parse_args(argv)
    import torch

    from pdsweep.settings import machine

    device = "cpu" if args.cpu_smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (use --cpu-smoke for the CPU run of the same check)", file=sys.stderr)
        return 2
    cfg = SMOKE if args.cpu_smoke else GPU
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": machine(),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
        "sizes": cfg,
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sections = {
            "tests": run_tests,
            "train": lambda: train_step(cfg, device, tmp),
            "kd_loss": lambda: kd_loss(cfg, device),
            "teacher_pass": lambda: teacher_pass(cfg, device, tmp),
            "sweep": lambda: sweep(cfg, device, tmp),
        }
        for name, fn in sections.items():
            if not args.only or name in args.only:
                section(results, name, fn)
                (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1) + "\n")
    if device == "cuda":
        write_bench(results)
    failed = [k for k, v in results.items() if isinstance(v, dict) and v.get("ok") is False]
    print(f"gpu_check: {args.out / 'gpu_check.json'}; failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


def write_bench(results: dict[str, Any]) -> None:
    from _common import write

    train, kd, tp = results.get("train", {}), results.get("kd_loss", {}), results.get("teacher_pass", {})
    metrics = [
        {"metric": "pd_vs_lm_step_ratio_gpu", "value": train.get("pd_vs_lm_step_ratio"), "unit": "x", "goal": "<= 1.10"},
        {"metric": "mfu_gpu", "value": train.get("lm", {}).get("mfu"), "unit": "fraction of dense bf16 peak",
         "goal": ">= 0.40", "pd_mfu": train.get("pd", {}).get("mfu")},
        {"metric": "tokens_per_s_gpu", "value": train.get("lm", {}).get("tokens_per_s"), "unit": "tokens/s",
         "goal": "informational"},
        {"metric": "kd_loss_peak_mem_ratio_gpu", "value": kd.get("pd_vs_lm_peak_mem_ratio"), "unit": "x",
         "goal": "<= 1.1"},
        {"metric": "teacher_pass_positions_per_s_gpu", "value": tp.get("smollm2-135m", {}).get("positions_per_s"),
         "unit": "positions/s", "goal": "informational", "by_model": {k: v for k, v in tp.items() if isinstance(v, dict)},
         "encode_keeps_up": tp.get("encode_keeps_up")},
    ]  # fmt: skip
    write("bench_gpu", [{**m, "device": results["device"]} for m in metrics])


if __name__ == "__main__":
    sys.exit(main())
