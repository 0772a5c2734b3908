"""Scoring benchmark items the way lm-evaluation-harness does.

A request is (context, continuation); the continuation is tokenized as
`tokens(context + continuation)[len(tokens(context)):]` (trailing spaces of the context move to the
continuation); the model sees the last `max_len` tokens of context + continuation minus its final
token, and the request's log-likelihood is the sum over the continuation's tokens, which are also
checked for being the greedy choice. An empty context is preceded by the end-of-text token.
Multiple choice reports `acc` and `acc_norm` (per character of the choice); WinoGrande uses partial
scoring; LAMBADA reports last-word accuracy and perplexity; GSM8K generates greedily until a stop
sequence and reports `exact_match` of the number after "the answer is" (else the last number).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pdsweep.data import tokenized
from pdsweep.eval.heldout import GSM8K_MAX_NEW_TOKENS, GSM8K_STOPS, Progress
from pdsweep.eval.tasks import TASKS, gsm8k_answer, items

# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------


@dataclass
class ScoringModel:
    """What the scorer needs: tokens (B, T) → logits (B, T, V), its tokenizer and context length."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    tokenizer: Any  # tokenizers.Tokenizer
    max_len: int
    device: torch.device
    prefix_id: int

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)


def _split(model: ScoringModel, context: str, continuation: str) -> tuple[list[int], list[int]]:
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = model.encode(context + continuation)
    ctx = model.encode(context) if context else []
    cont = whole[len(ctx) :]
    if not ctx:
        ctx = [model.prefix_id]
    return ctx, cont


SCORING_TOKENS = 4096


@torch.no_grad()
def loglikelihoods(
    model: ScoringModel,
    requests: list[tuple[str, str]],
    batch_size: int = 16,
    progress: Progress = lambda *a: None,
    max_tokens: int = SCORING_TOKENS,
) -> list[tuple[float, bool]]:
    """(log-likelihood of the continuation, whether it is the greedy continuation) per request.

    Requests whose model input is the same (MMLU's four one-token answers after one context) share
    one forward pass; inputs are scored longest first in padded batches of at most `batch_size`
    inputs and `max_tokens` tokens (right padding never affects a causal model's earlier
    positions); the log-softmax is taken only where continuations are. Results are returned in the
    order given."""
    encoded = [_split(model, c, x) for c, x in requests]
    by_input: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, cont) in enumerate(encoded):
        by_input.setdefault(tuple((ctx + cont)[-(model.max_len + 1) :][:-1]), []).append(i)
    inputs = sorted(by_input, key=len, reverse=True)
    out: list[tuple[float, bool]] = [(0.0, False)] * len(encoded)
    start = 0
    while start < len(inputs):
        chunk = inputs[start : start + max(1, min(batch_size, max_tokens // len(inputs[start])))]
        start += len(chunk)
        x = torch.zeros(len(chunk), len(chunk[0]), dtype=torch.long)
        for r, seq in enumerate(chunk):
            x[r, : len(seq)] = torch.tensor(seq)
        logits = model.forward(x.to(model.device))
        for r, seq in enumerate(chunk):
            for i in by_input[seq]:
                cont = encoded[i][1]
                n = min(len(cont), len(seq))  # a continuation longer than the model's context: its last tokens
                target = torch.tensor(cont[len(cont) - n :], device=logits.device)
                lp = torch.log_softmax(logits[r, len(seq) - n : len(seq)].float(), dim=-1)
                out[i] = (float(lp.gather(1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all()))
        progress("scoring", start, len(inputs))
    return out


@torch.no_grad()
def generate_until(
    model: ScoringModel,
    contexts: list[str],
    stops: Iterable[str],
    max_new_tokens: int,
    batch_size: int = 16,
    progress: Progress = lambda *a: None,
) -> list[str]:
    """Greedy continuations of `contexts`, each cut at the first stop sequence (or end-of-text, or
    `max_new_tokens`). Contexts are left-truncated to leave room for the generation."""
    stops = tuple(stops)
    texts: list[str] = []
    for start in range(0, len(contexts), batch_size):
        prompts = [model.encode(c) or [model.prefix_id] for c in contexts[start : start + batch_size]]
        generated: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        for _ in range(max_new_tokens):
            seqs = [(p + g)[-model.max_len :] for p, g in zip(prompts, generated, strict=True)]
            x = torch.zeros(len(seqs), max(len(s) for s in seqs), dtype=torch.long)
            for r, s in enumerate(seqs):
                x[r, : len(s)] = torch.tensor(s)
            logits = model.forward(x.to(model.device))
            for r, s in enumerate(seqs):
                if done[r]:
                    continue
                token = int(logits[r, len(s) - 1].argmax())
                generated[r].append(token)
                text = model.tokenizer.decode(generated[r])
                done[r] = token == model.prefix_id or any(stop in text for stop in stops)
            if all(done):
                break
        for g in generated:
            text = model.tokenizer.decode(g)
            cut = min([text.index(s) for s in stops if s in text], default=len(text))
            texts.append(text[:cut])
        progress("generating", min(start + batch_size, len(contexts)), len(contexts))
    return texts


def score(
    model: ScoringModel,
    task: str,
    limit: int | None = None,
    batch_size: int = 16,
    progress: Progress = lambda *a: None,
) -> dict[str, float]:
    """A benchmark's metrics: acc and acc_norm (multiple choice), acc and ppl (LAMBADA),
    exact_match (GSM8K: greedy generation, the number after "the answer is"), and the number of
    items scored."""
    its = items(task, limit)
    if task == "gsm8k":
        texts = generate_until(
            model, [it.requests[0][0] for it in its], GSM8K_STOPS, GSM8K_MAX_NEW_TOKENS, batch_size, progress
        )
        hits = [gsm8k_answer(t) == it.answer.replace(",", "") for t, it in zip(texts, its, strict=True)]
        return {"items": float(len(its)), "exact_match": float(np.mean(hits))}
    flat = [req for it in its for req in it.requests]
    results = loglikelihoods(model, flat, batch_size, lambda what, done, total: progress(task, done, total))
    metrics: dict[str, float] = {"items": float(len(its))}
    if task == "lambada":
        metrics["acc"] = float(np.mean([greedy for _, greedy in results]))
        metrics["ppl"] = math.exp(-float(np.mean([ll for ll, _ in results])))
        return metrics
    acc = acc_norm = 0
    k = 0
    for it in its:
        lls = np.array([ll for ll, _ in results[k : k + len(it.requests)]])
        k += len(it.requests)
        acc += int(np.argmax(lls) == it.gold)
        acc_norm += int(np.argmax(lls / np.array([len(c) for c in it.choices])) == it.gold)
    metrics["acc"] = acc / len(its)
    if task != "winogrande":  # lm-evaluation-harness reports acc only for partial scoring
        metrics["acc_norm"] = acc_norm / len(its)
    return metrics


def scoring_model(
    net: torch.nn.Module, tokens: tokenized.TokenData, max_len: int, device: torch.device
) -> ScoringModel:
    """A pdsweep model with the tokenizer of its corpus."""
    tok = tokens.tokenizer()
    return ScoringModel(net, tok, max_len, device, tokenized.eos_id(tok))


def benchmark_metrics(
    model: ScoringModel, suites: Iterable[str], limit: int | None, progress: Progress = lambda *a: None
) -> dict[str, float]:
    """`<task>/<metric>` for every benchmark among `suites`."""
    out: dict[str, float] = {}
    for task in suites:
        if task in TASKS:
            out.update({f"{task}/{k}": v for k, v in score(model, task, limit, progress=progress).items()})
    return out
