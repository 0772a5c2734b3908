"""Loading pdsweep's own checkpoints without running code from them.

A checkpoint file is a pickle; `torch.load(weights_only=False)` runs whatever a crafted file says. pdsweep
writes only tensors, plain containers and numbers (and DeepSpeed adds a few of its own classes), so
every checkpoint is loaded with `weights_only=True`: PyTorch's restricted unpickler, which builds
tensors, containers and the allow-listed classes below and refuses anything else. DeepSpeed's own
loader does not restrict itself, so its files are checked that way before it reads them.
"""

from __future__ import annotations

import importlib
import pickle
import re
from pathlib import Path
from typing import Any

from pdsweep import proc
from pdsweep.errors import UserError

DEEPSPEED_CLASSES = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
)
"""The classes DeepSpeed pickles into ZeRO checkpoints (its optimizer states); nothing else is built."""


def _refused(path: Path, e: BaseException) -> UserError:
    found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", str(e))
    why = f" (it asks to run {found.group(1)})" if found else ""
    return UserError(f"{path}: refused to load — not a checkpoint of plain tensors written by pdsweep{why}")


def _restricted_load(path: Path, allowed: list[Any] | None = None, **kwargs: Any) -> Any:
    """torch.load with the restricted unpickler (plus `allowed` classes); UserError otherwise."""
    import torch

    try:
        with torch.serialization.safe_globals(allowed or []):
            return torch.load(path, weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        raise _refused(path, e) from None
    except (OSError, RuntimeError, EOFError) as e:
        raise UserError(f"{path}: cannot read the checkpoint ({proc.first_line(e, 200)})") from None


def load(path: Path, map_location: Any = "cpu") -> Any:
    """A pdsweep checkpoint file (torch.save of tensors and plain containers), loaded safely."""
    return _restricted_load(path, map_location=map_location)


def _deepspeed_globals() -> list[Any]:
    allowed = []
    for dotted in DEEPSPEED_CLASSES:
        module, name = dotted.rsplit(".", 1)
        try:
            allowed.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue  # another DeepSpeed version: what it lacks it cannot have pickled
    return allowed


def check_deepspeed(directory: Path) -> None:
    """Every `*.pt` of a DeepSpeed checkpoint directory unpickles with the restricted loader (tensor
    data is memory-mapped, not read): refuse the checkpoint before DeepSpeed's unrestricted loader
    sees it."""
    allowed = _deepspeed_globals()
    for file in sorted(directory.glob("*.pt")):
        _restricted_load(file, allowed, map_location="cpu", mmap=True)
