"""Engines behind one small interface: plain torch (CPU or one GPU) and DeepSpeed ZeRO.

The training loop (trainer.py) is the same for both; an engine owns what differs: the device, the
optimizer, gradient accumulation and clipping, mixed precision, and checkpoint files.

    backend.setup(model, optim, accum)           # before training
    backend.set_lr(lr)                            # at the start of each optimiser step
    with backend.autocast(): loss = ...          # each micro-batch
    backend.backward(loss)                        # each micro-batch (scaled by 1/accum inside)
    grad_norm = backend.step()                    # once per optimiser step, after its micro-batches
    backend.save(dir, state) / backend.load(dir)  # checkpoints, resumable exactly
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from pdsweep import proc
from pdsweep.spec import OptimSpec, RunSpec


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (linear and embedding weights); never norms or biases."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def precision_of(spec: RunSpec, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on GPU, fp32 on CPU (bf16 is 4–7× slower on CPUs without native bf16)."""
    if spec.train.precision == "bf16" or (spec.train.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


class Backend(Protocol):
    rank: int
    world_size: int
    device: torch.device
    dtype: torch.dtype
    name: str

    def setup(self, model: nn.Module, optim: OptimSpec, accum: int) -> nn.Module: ...
    def autocast(self) -> contextlib.AbstractContextManager[Any]: ...
    def set_lr(self, lr: float) -> None: ...
    def backward(self, loss: torch.Tensor) -> None: ...
    def step(self) -> float: ...
    def save(self, path: Path, state: dict[str, Any]) -> None: ...
    def load(self, path: Path) -> dict[str, Any]: ...
    def mean(self, value: float) -> float: ...
    def barrier(self) -> None: ...
    def close(self) -> None: ...
    def full_state_dict(self) -> dict[str, torch.Tensor]: ...


class TorchBackend:
    """One process: CPU (fp32 by default) or one GPU (bf16 autocast by default)."""

    name = "torch"

    def __init__(self, spec: RunSpec, device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = precision_of(spec, self.device)
        self.rank, self.world_size = 0, 1
        self.grad_clip = spec.optim.grad_clip

    def setup(self, model: nn.Module, optim: OptimSpec, accum: int) -> nn.Module:
        self.model = model.to(self.device)
        self.accum = accum
        self.optimizer = torch.optim.AdamW(
            param_groups(model, optim.weight_decay),
            lr=optim.lr,
            betas=optim.betas,
            eps=optim.eps,
            foreach=self.device.type == "cuda",
        )
        return self.model

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accum).backward()

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> float:
        clip = self.grad_clip if self.grad_clip is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def save(self, path: Path, state: dict[str, Any]) -> None:
        path.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "state": state},
            path / "engine.pt",
        )

    def load(self, path: Path) -> dict[str, Any]:
        from pdsweep.nn import checkpoints

        ckpt = checkpoints.load(path / "engine.pt", map_location=self.device)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        return ckpt["state"]

    def mean(self, value: float) -> float:
        return value

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu() for k, v in self.model.state_dict().items()}


class DeepSpeedBackend:
    """DeepSpeed ZeRO (stage from the spec) over 1..N processes: gloo on CPU, NCCL on GPUs.

    Started by `torchrun`/the `deepspeed` launcher (RANK, WORLD_SIZE, ... in the environment) or,
    for a single process, by itself."""

    name = "deepspeed"

    def __init__(self, spec: RunSpec):
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
        if "RANK" not in os.environ:  # a single process without a launcher
            os.environ.update(
                RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(proc.free_port())
            )
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed.*")
        warnings.filterwarnings("ignore", message=r".*deprecated.*", category=FutureWarning)
        import deepspeed
        import deepspeed.comm  # noqa: F401

        if os.environ["DS_ACCELERATOR"] == "cpu":
            # The CPU accelerator JIT-compiles a shared-memory collective with g++ (~90 s) on first
            # use; it only speeds up inference, so training skips it. The module object must be the
            # one deepspeed.comm holds (see STACK.md).
            sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None  # type: ignore[attr-defined]
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)
        self.rank = int(os.environ["RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.dtype = precision_of(spec, self.device)
        self.spec = spec

    def config(self, accum: int) -> dict[str, Any]:
        t = self.spec.train
        cfg: dict[str, Any] = {
            "train_batch_size": t.global_batch,
            "train_micro_batch_size_per_gpu": t.micro_batch,
            "gradient_accumulation_steps": accum,
            "zero_optimization": {"stage": t.zero_stage},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        if self.spec.optim.grad_clip is not None:
            cfg["gradient_clipping"] = self.spec.optim.grad_clip
        if self.dtype == torch.bfloat16:
            cfg["bf16"] = {"enabled": True}
        return cfg

    def setup(self, model: nn.Module, optim: OptimSpec, accum: int) -> nn.Module:
        import deepspeed

        # torch's AdamW as the client optimizer: DeepSpeed's own Adam kernels JIT-compile on CPU.
        optimizer = torch.optim.AdamW(
            param_groups(model, optim.weight_decay), lr=optim.lr, betas=optim.betas, eps=optim.eps
        )
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.config(accum)
        )
        return self.engine

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()  # the engine runs the model in its configured precision

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)  # scales by 1/gradient_accumulation_steps
        self.engine.step()  # a no-op except at the accumulation boundary

    def step(self) -> float:
        # The update happened in the last micro-batch's engine.step() (the accumulation boundary).
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def save(self, path: Path, state: dict[str, Any]) -> None:
        self.engine.save_checkpoint(str(path), tag="engine", client_state={"state": state})

    def load(self, path: Path) -> dict[str, Any]:
        from pdsweep.nn import checkpoints

        checkpoints.check_deepspeed(path / "engine")  # DeepSpeed's loader itself runs any pickle
        _, client = self.engine.load_checkpoint(str(path), tag="engine")
        return client["state"]

    def mean(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world_size

    def barrier(self) -> None:
        torch.distributed.barrier()

    def close(self) -> None:
        """Wait for every rank, then tear the process group down: ranks that simply exit while a
        peer is still busy (rank 0 logging to MLflow, say) can abort in gloo's threads."""
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Consolidated fp32 weights, gathered from the ZeRO partitions (on every rank)."""
        import deepspeed

        module = self.engine.module
        out = {}
        params = dict(module.named_parameters())
        with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
            for name, p in params.items():
                out[name] = p.detach().float().cpu().clone()
        for name, b in module.named_buffers():
            out[name] = b.detach().float().cpu().clone()
        if "lm_head.weight" not in out and getattr(module.cfg, "tie_embeddings", False):
            out["lm_head.weight"] = out["embed_tokens.weight"]
        return out


def make(spec: RunSpec) -> Backend:
    """The backend a spec asks for: `auto` = DeepSpeed when launched on several processes or
    several GPUs are visible, plain torch otherwise."""
    kind = spec.train.backend
    if kind == "auto":
        many = int(os.environ.get("WORLD_SIZE", "1")) > 1 or torch.cuda.device_count() > 1
        kind = "deepspeed" if many else "torch"
    if kind == "deepspeed":
        proc.require("deepspeed", "deepspeed", f"train.backend {spec.train.backend} (DeepSpeed ZeRO)")
        if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ:
            proc.die_with_parent()  # started by torchrun / the deepspeed launcher
        return DeepSpeedBackend(spec)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError("train.backend torch runs one process; use deepspeed for several")
    return TorchBackend(spec)


# ----------------------------------------------------------------------------------------------
# Peak FLOP/s (for MFU)
# ----------------------------------------------------------------------------------------------

GPU_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}
"""Dense bf16 tensor-core peaks (no sparsity), by a substring of the device name."""

_cpu_peak: float | None = None


def measure_cpu_matmul_flops(size: int = 1024, seconds: float = 0.5) -> float:
    """Measured fp32 matmul FLOP/s of this CPU with torch's current threads (the best of a few
    repeats): the peak against which CPU MFU is reported."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.mm(a, b)  # warm up
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        t = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - t))
    return best


def peak_flops(device: torch.device) -> float | None:
    global _cpu_peak
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in GPU_PEAK_BF16.items() if k in name), None)
    if _cpu_peak is None:
        _cpu_peak = _cached_cpu_peak()
    return _cpu_peak


def _cached_cpu_peak() -> float:
    """The CPU's matmul peak at this thread count, measured once per machine (0.5 s) and kept in the
    cache directory: every run on the machine reports its MFU against the same peak."""
    from pdsweep import files, settings

    path = settings.cache_dir() / "cpu-matmul-peak.json"
    key = f"{settings.machine()} | {torch.get_num_threads()} threads | torch {torch.__version__}"
    known: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        known = files.read_json(path)
    if isinstance(known.get(key), float):
        return float(known[key])
    peak = measure_cpu_matmul_flops()
    with contextlib.suppress(OSError):  # a read-only cache still gets the measured value
        files.write_json(path, {**known, key: peak})
    return peak
