"""The one registry of evaluation suites: the held-out and teacher-agreement evaluations and the
paper's benchmarks that can be had offline. The spec's `eval.suites` accepts exactly these names,
evaluation (eval/tasks.py) has a reader for each benchmark, and the report takes each one's title
and the score it leads with from here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    """How the report's column is headed (the paper's spelling)."""
    primary: str
    """The score lm-evaluation-harness leads with for this task, and the report's column."""
    generate: bool = False
    """Scored by greedy generation (exact match) rather than log-likelihoods."""


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("hellaswag", "HellaSwag", "acc_norm"),
        Benchmark("winogrande", "WinoGrande", "acc"),
        Benchmark("piqa", "PIQA", "acc_norm"),
        Benchmark("arc_easy", "ARC-e", "acc_norm"),
        Benchmark("arc_challenge", "ARC-c", "acc_norm"),
        Benchmark("mmlu", "MMLU", "acc"),
        Benchmark("lambada", "LAMBADA", "acc"),
        Benchmark("gsm8k", "GSM8k", "exact_match", generate=True),
    )
}

SUITES: tuple[str, ...] = ("heldout", "teacher_agreement", *BENCHMARKS)
"""Every name `eval.suites` accepts."""
