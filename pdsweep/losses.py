"""Loss functions: pure tensor functions with their shapes in the docstrings.

The LM loss for now; the KD losses of the design space (NLL, KLD, MSE, RKL, JSD with temperatures
and adaptive τ) join it here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross-entropy over non-ignored tokens.

    Args:
        logits: (B, T, V) student logits (any float dtype; computed in float32).
        targets: (B, T) int64 next-token ids; `ignore_index` marks padding.
    Returns:
        A scalar tensor.
    """
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=ignore_index)
