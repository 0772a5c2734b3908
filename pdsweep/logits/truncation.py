"""Truncating a teacher's distribution and turning kept entries into training targets.

`top_p_k` keeps the most probable ids until their mass reaches p (at most k of them), with the
full-vocabulary log-sum-exp; `sampled_sparse` is the unbiased random-sampled alternative. At read
time `truncate_entries` applies any p ≤ p_max and k ≤ k_max to stored entries — exactly, using the
counts the store records at `P_GRID` — and `read_targets` applies τ and renormalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

P_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))


def grid_below(top_p: float) -> tuple[float, ...]:
    """The grid points a store truncated at `top_p` records counts for (those below it)."""
    return tuple(g for g in P_GRID if g < top_p - 1e-9)


# ----------------------------------------------------------------------------------------------
# Truncation (pure functions over torch tensors)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sparse:
    """Truncated teacher distributions for N positions, padded to K entries.

    ids (N, K) int64, logprobs (N, K) float32 (log-probabilities under the full vocabulary, −inf
    where padded), count (N,) int64, lse (N,) float32, cuts (N, G) int64: how many entries top-p
    keeps at each grid point below the truncation's p (`grid_below`; G = 0 for sampled targets).
    Entries are sorted, most probable first."""

    ids: Any
    logprobs: Any
    count: Any
    lse: Any
    cuts: Any


def top_p_k(logits: Any, top_p: float, top_k: int | None) -> Sparse:
    """Nucleus then top-k truncation of the τ = 1 distribution (the paper's top-p-k).

    Keeps the smallest prefix of the sorted distribution whose mass reaches `top_p`, then at most
    `top_k` entries (None = no cap), and never fewer than one. The cumulative mass is summed in
    float64, so the cut is the one a float64 reference makes except at exact ties.

    Args:
        logits: (N, V) float teacher logits.
    """
    import torch

    logits = logits.float()
    vocab = logits.shape[-1]
    k = vocab if top_k is None else min(top_k, vocab)
    lse = torch.logsumexp(logits, dim=-1)
    values, ids = torch.topk(logits, k, dim=-1, sorted=True)
    logprobs = values - lse[:, None]
    cum = torch.cumsum(logprobs.double().exp(), dim=-1)

    def kept(p: float) -> Any:
        # Entries strictly before the one that reaches p, plus that one; p = 1 keeps all k (in
        # floating point the cumulative mass can reach 1 early when the tail underflows).
        if p >= 1:
            return torch.full_like(lse, k, dtype=torch.long)
        return ((cum < p).sum(dim=-1) + 1).clamp(1, k)

    count = kept(top_p)
    grid = grid_below(top_p)
    cuts = torch.stack([torch.minimum(kept(g), count) for g in grid], dim=-1) if grid else count[:, None][:, :0]
    keep = torch.arange(k, device=logits.device)[None, :] < count[:, None]
    return Sparse(ids.masked_fill(~keep, 0), logprobs.masked_fill(~keep, float("-inf")), count, lse, cuts)


def concat(parts: list[Sparse]) -> tuple[np.ndarray, ...]:
    """Several Sparse batches as one, padded to the widest: numpy (ids, logprobs, count, lse, cuts)."""
    K = max(p.ids.shape[1] for p in parts)

    def pad(t: Any, value: float) -> np.ndarray:
        a = t.cpu().numpy()
        out = np.full((a.shape[0], K), value, dtype=a.dtype)
        out[:, : a.shape[1]] = a
        return out

    return (
        np.concatenate([pad(p.ids, 0) for p in parts]),
        np.concatenate([pad(p.logprobs, -np.inf) for p in parts]),
        np.concatenate([p.count.cpu().numpy() for p in parts]),
        np.concatenate([p.lse.cpu().numpy() for p in parts]),
        np.concatenate([p.cuts.cpu().numpy() for p in parts]),
    )


def sample_targets(logits: Any, draws: int, generator: Any = None) -> tuple[Any, Any, Any]:
    """Extension: unbiased random-sampled sparse targets.

    Draws `draws` tokens from each position's teacher distribution; returns (ids (N, draws) int64,
    counts (N, draws) int64, n (N,) distinct ids) with ids sorted by count. The target q = counts /
    draws is an unbiased estimate of the teacher distribution: E[q] = p."""
    import torch

    probs = torch.softmax(logits.float(), dim=-1)
    samples = torch.multinomial(probs, draws, replacement=True, generator=generator)  # (N, draws)
    sorted_ids, _ = torch.sort(samples, dim=-1)
    new = torch.ones_like(sorted_ids, dtype=torch.bool)
    new[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    group = torch.cumsum(new.long(), dim=-1) - 1  # (N, draws): index of each draw's distinct id
    counts = torch.zeros_like(samples).scatter_add_(1, group, torch.ones_like(samples))
    ids = torch.zeros_like(samples).scatter_(1, group, sorted_ids)
    n = new.sum(dim=-1)
    order = torch.argsort(counts, dim=-1, descending=True, stable=True)
    return ids.gather(1, order), counts.gather(1, order), n


def sampled_sparse(logits: Any, draws: int, generator: Any = None) -> Sparse:
    """`sample_targets` as stored entries: log(count / draws) per distinct drawn id, most drawn
    first; the full-vocabulary log-sum-exp is kept as for top-p-k entries."""
    import torch

    ids, counts, n = sample_targets(logits, draws, generator)
    logprobs = torch.log(counts.float() / draws)  # −inf where nothing was drawn (padding)
    lse = torch.logsumexp(logits.float(), dim=-1)
    return Sparse(ids.masked_fill(counts == 0, 0), logprobs, n, lse, n[:, None][:, :0])


def truncate_entries(
    ids: Any,
    logprobs: Any,
    count: Any,
    top_p: float,
    top_k: int | None,
    *,
    stored_p: float = 1.0,
    cuts: Any = None,
    p_grid: tuple[float, ...] = (),
) -> tuple[Any, Any, Any]:
    """Stored top-p_max-k_max entries cut to a smaller p and k (torch tensors in, torch out).

    The entries are in probability order (up to ties on the store's value grid), so a smaller k
    keeps the k most probable.
    At p ≥ `stored_p` (the store's own p) every stored entry is kept; at a grid point of `p_grid`
    the exact count recorded in `cuts` is used; at any other p the cut falls where the decoded
    cumulative mass reaches p, clamped between the exact counts of the grid points around it.

    Args:
        ids, logprobs: (N, K) entries, most probable first (logprobs under the full vocabulary, −inf
            where padded); count (N,) kept entries per position; cuts (N, G) exact counts at the
            G points of `p_grid`.
    Returns:
        (ids (N, k), logprobs (N, k) with −inf beyond the cut, mask (N, k) bool).
    """
    import torch

    k = ids.shape[-1] if top_k is None else min(top_k, ids.shape[-1])
    n = count.clamp(max=k)
    if top_p < stored_p - 1e-9:
        exact = [i for i, g in enumerate(p_grid) if abs(g - top_p) < 1e-9]
        if exact and cuts is not None:
            n_p = cuts[:, exact[0]]
        else:
            cum = torch.cumsum(logprobs.double().exp(), dim=-1)  # padded entries: exp(−inf) = 0
            n_p = (cum < top_p).sum(dim=-1) + 1
            if cuts is not None:
                below = [i for i, g in enumerate(p_grid) if g < top_p]
                above = [i for i, g in enumerate(p_grid) if g > top_p]
                if below:
                    n_p = torch.maximum(n_p, cuts[:, below[-1]])
                n_p = torch.minimum(n_p, cuts[:, above[0]] if above else count)
        n = torch.minimum(n_p.clamp(min=1), n)
    ids, logprobs = ids[:, :k], logprobs[:, :k]
    mask = torch.arange(k, device=ids.device)[None, :] < n[:, None]
    return ids, logprobs.masked_fill(~mask, float("-inf")), mask


def read_targets(
    ids: Any,
    logprobs: Any,
    count: Any,
    top_p: float,
    top_k: int | None,
    temperature: float,
    renormalize: bool = True,
    **stored: Any,
) -> tuple[Any, Any, Any, Any]:
    """Targets for a smaller p, k and any τ from stored top-p_max-k_max entries (F(z) = softmax(
    Truncate(z)/τ), the paper's Eq. 4), by the same function the training loss uses; `stored`
    (stored_p, cuts, p_grid) as for `truncate_entries`.

    Returns (ids (N, K), probs (N, K), mask (N, K) bool, residual (N,)): with `renormalize` the
    kept probabilities sum to 1 and residual is 0; without it they keep the kept mass of the τ = 1
    distribution and `residual` = 1 − that mass (the untruncated tail as one bucket)."""
    ids, logprobs, mask = truncate_entries(ids, logprobs, count, top_p, top_k, **stored)
    return to_targets(ids, logprobs, mask, temperature, renormalize)


def to_targets(ids: Any, logprobs: Any, mask: Any, temperature: float, renormalize: bool) -> tuple[Any, Any, Any, Any]:
    """(ids, probs, mask, residual) from truncated entries, by the training loss's own function."""
    from pdsweep.nn.losses import KDConfig, teacher_targets

    probs, residual, _, _ = teacher_targets(logprobs, mask, KDConfig(temperature=temperature, renormalize=renormalize))
    return ids, probs, mask, residual
