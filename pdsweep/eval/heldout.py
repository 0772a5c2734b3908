"""Held-out evaluation: loss, perplexity and bits per byte (over the bytes of the tokens actually
scored) on the first eval.heldout_tokens held-out tokens, and agreement with the teacher (top-1
match rate, KL(teacher ‖ student)) on held-out positions its store covers; the benchmark metrics
of a run come from tasks.py and scoring.py."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pdsweep.data import batches, tokenized
from pdsweep.logits import store as logits_store

Progress = Callable[[str, int, int], None]


# ----------------------------------------------------------------------------------------------
# Held-out text and the teacher
# ----------------------------------------------------------------------------------------------


def heldout(
    net: torch.nn.Module,
    device: torch.device,
    tokens: tokenized.TokenData,
    seq_len: int,
    batch_size: int,
    max_tokens: int,
    autocast: Callable[[], Any] | None = None,
) -> dict[str, float]:
    """Mean next-token loss on the first `max_tokens` held-out tokens, its perplexity and bits per
    byte (over the UTF-8 bytes of the tokens scored, `tokenized.token_bytes`)."""
    return heldout_pass(net, device, tokens, seq_len, batch_size, max_tokens, autocast=autocast)


def teacher_agreement(
    net: torch.nn.Module,
    device: torch.device,
    tokens: tokenized.TokenData,
    store: logits_store.StoreReader,
    seq_len: int,
    batch_size: int,
    max_tokens: int,
) -> dict[str, float]:
    """On the held-out positions the store covers (an offline store covers them all): how often the
    student's top-1 token is the teacher's, and KL(teacher ‖ student) with the teacher's stored
    entries renormalised (τ = 1)."""
    return heldout_pass(net, device, tokens, seq_len, batch_size, max_tokens, loss=False, store=store)


@torch.no_grad()
def heldout_pass(
    net: torch.nn.Module,
    device: torch.device,
    tokens: tokenized.TokenData,
    seq_len: int,
    batch_size: int,
    max_tokens: int,
    *,
    loss: bool = True,
    store: logits_store.StoreReader | None = None,
    autocast: Callable[[], Any] | None = None,
    first_tokens: int | None = None,
) -> dict[str, float]:
    """The held-out metrics (`loss`) and the teacher agreement (`store`) from one forward pass over
    the first `max_tokens` held-out tokens: a distilled run's evaluation costs one pass, not two.

    With `first_tokens`, the same metrics over only the first `first_tokens` of them come back too,
    their keys prefixed `first/` — what the evaluations during training score, so that a curve's
    last point is measured on the same text as the points before it."""
    was_training = net.training
    net.eval()
    bytes_of = tokenized.token_bytes(tokens.tokenizer_path) if loss else None
    # Sums per window (B of them per batch): nats, tokens, bytes; agreed top-1, KL, positions.
    sums: list[np.ndarray] = []
    for batch in batches.heldout_batches(tokens, seq_len, batch_size, max_tokens):
        B = batch.inputs.shape[0]
        flat = batch.positions.reshape(-1)
        ok = store.covers(flat) if store is not None else np.zeros(len(flat), dtype=bool)
        window = np.zeros((B, 6))
        if not loss and not ok.any():
            sums.append(window)
            continue
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            logits = net(torch.from_numpy(batch.inputs).to(device)).float().flatten(0, 1)
        logp = torch.log_softmax(logits, dim=-1)  # one log-softmax for the loss and the agreement
        if loss:
            targets = torch.from_numpy(batch.targets).to(device).flatten()
            nll = -logp.gather(1, targets[:, None]).reshape(B, -1).double().sum(1)
            window[:, 0] = nll.cpu().numpy()
            window[:, 1] = batch.targets.shape[1]
            window[:, 2] = bytes_of[batch.targets].sum(1)  # type: ignore[index]
        if store is not None and ok.any():
            rows = np.flatnonzero(ok) // seq_len  # the window of each covered position
            mine = logp[torch.from_numpy(ok).to(device)]
            ids, logprobs, mask = store.truncated(flat[ok], store.top_p, store.top_k)  # all it holds
            ids, logprobs, mask = ids.to(device), logprobs.to(device), mask.to(device)
            q = torch.softmax(logprobs.masked_fill(~mask, float("-inf")), dim=-1)
            log_p = mine.gather(1, ids)
            kl = (q * (torch.log(q.clamp_min(1e-30)) - log_p)).masked_fill(~mask, 0.0).sum(1).double()
            match = (mine.argmax(-1) == ids[:, 0]).double()
            np.add.at(window[:, 3], rows, match.cpu().numpy())
            np.add.at(window[:, 4], rows, kl.cpu().numpy())
            np.add.at(window[:, 5], rows, 1)
        sums.append(window)
    net.train(was_training)
    per_window = np.concatenate(sums) if sums else np.zeros((0, 6))
    out = _heldout_metrics(per_window.sum(0))
    if first_tokens is not None:
        n_first = max(1, math.ceil(first_tokens / seq_len))
        out |= {f"first/{k}": v for k, v in _heldout_metrics(per_window[:n_first].sum(0)).items()}
    return out


def _heldout_metrics(total: np.ndarray) -> dict[str, float]:
    """Metrics from summed (nats, tokens, bytes, top-1 matches, KL, covered positions)."""
    nats, count, scored_bytes, match, kl, agree = total.tolist()
    out: dict[str, float] = {}
    if count:
        loss_mean = nats / count
        out |= {
            "heldout/loss": loss_mean,
            "heldout/ppl": math.exp(min(loss_mean, 50.0)),
            # the bits of the scored tokens over the UTF-8 bytes of exactly those tokens
            "heldout/bits_per_byte": nats / math.log(2) / max(1.0, scored_bytes),
        }
    if agree:
        out |= {"teacher_agreement/top1": match / agree, "teacher_agreement/kl": kl / agree}
    return out


GSM8K_STOPS = ("Question:", "</s>", "<|im_end|>", "\n\n")
GSM8K_MAX_NEW_TOKENS = 256
"""At most this many padded tokens per scoring forward pass: a batch's logits are tokens × vocabulary
floats (0.8 GB at SmolLM2's 49k vocabulary; a fixed 16 MMLU 5-shot prompts would be 2 GB)."""
