"""Evaluation: pdsweep's scorer against lm-evaluation-harness on the real pretrained teacher, and
what evaluation costs a tiny run.

- Agreement: SmolLM2-135M-Instruct (the builtin teacher) scored by `pdsweep eval` and by
  `pdsweep eval --harness` (lm_eval.simple_evaluate on the same local items) on ITEMS items of each
  benchmark; the largest difference in any acc / acc_norm, in points. The published numbers for
  the model (HellaSwag acc_norm ≈ 42, PIQA acc_norm ≈ 66) are shown beside.
- Cost: the tiny LM-only run of docs/examples/tiny-lm.yaml (held-out evaluation every 50 steps):
  time spent evaluating / time spent training (result.json eval_seconds / train_seconds).

Metrics: lm_eval_max_abs_diff_points, eval_vs_train_ratio, scorer_vs_harness_speed (the same items,
batch size and machine, one after the other), scorer_peak_rss_mb.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, summary, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ITEMS = 200
COST_REPEATS = 3
TASKS = ["hellaswag", "winogrande", "piqa", "arc_easy", "arc_challenge", "mmlu", "lambada"]


# Runs a command and reports its peak resident memory (the command's process tree, in KB) on stderr.
_PEAK = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)"
)


def pdsweep(*args: str) -> str:
    return pdsweep_peak(*args)[0]


def pdsweep_peak(*args: str) -> tuple[str, float]:
    """stdout of `pdsweep ARGS` and its peak resident memory in MB."""
    cmd = [sys.executable, "-c", _PEAK, sys.executable, "-m", "pdsweep.cli", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    peak = next(line.split()[1] for line in out.stderr.splitlines() if line.startswith("PEAK_RSS_KB"))
    return out.stdout, int(peak) / 1024


def agreement() -> list[dict]:
    suites = [x for t in TASKS for x in ("--suite", t)]
    pdsweep("eval", "builtin:smollm2-135m", "--suite", "piqa", "--limit", "2", "--json")  # fetch and convert once
    started = time.perf_counter()
    out, ours_mb = pdsweep_peak("eval", "builtin:smollm2-135m", *suites, "--limit", str(ITEMS), "--json")
    ours, ours_s = json.loads(out), time.perf_counter() - started
    started = time.perf_counter()
    out, theirs_mb = pdsweep_peak("eval", "builtin:smollm2-135m", *suites, "--limit", str(ITEMS), "--json", "--harness")
    theirs, theirs_s = json.loads(out), time.perf_counter() - started
    table = {}
    diffs = []
    for key in sorted(ours):
        if key.endswith(("/acc", "/acc_norm")):
            d = 100 * abs(ours[key] - theirs[key])
            diffs.append(d)
            table[key] = {
                "pdsweep": round(100 * ours[key], 2),
                "lm_eval": round(100 * theirs[key], 2),
                "diff": round(d, 2),
            }
        elif key.endswith("/ppl"):
            table[key] = {"pdsweep": round(ours[key], 3), "lm_eval": round(theirs[key], 3)}
    for key, value in table.items():
        print(f"{key:26s} {value}")
    return [
        {
            "metric": "lm_eval_max_abs_diff_points",
            "value": round(max(diffs), 2),
            "unit": "points",
            "goal": "<= 1",
            "items_per_task": ITEMS,
            "table": table,
            "published": {"hellaswag/acc_norm": 42, "piqa/acc_norm": 66},
            "seconds": {"pdsweep": round(ours_s, 1), "lm_eval": round(theirs_s, 1)},
            "note": "SmolLM2-135M-Instruct (builtin teacher), the first items of each task (MMLU: spread over subjects)",
        },
        {
            "metric": "scorer_vs_harness_speed",
            "value": round(theirs_s / ours_s, 2),
            "unit": "x",
            "goal": "informational (> 1: pdsweep's scorer is faster)",
            "seconds": {"pdsweep": round(ours_s, 1), "lm_eval": round(theirs_s, 1)},
            "note": "the same items and batch size (16), one after the other in this run; one repetition each",
        },
        {
            "metric": "scorer_peak_rss_mb",
            "value": round(ours_mb),
            "unit": "MB",
            "goal": "informational",
            "lm_eval_peak_rss_mb": round(theirs_mb),
            "note": "peak resident memory of each evaluation command (model, data, batch logits)",
        },
    ]


def cost(repeats: int = COST_REPEATS) -> list[dict]:
    """eval_seconds / train_seconds of the tiny example run, `repeats` times (the machine is noisy)."""
    ratios, evals, trains = [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            pdsweep("train", str(ROOT / "docs/examples/tiny-lm.yaml"), "--out", str(out), "--no-track")
            result = json.loads((out / "result.json").read_text())
        evals.append(result["eval_seconds"])
        trains.append(result["train_seconds"])
        ratios.append(result["eval_seconds"] / result["train_seconds"])
    return [
        {
            "metric": "eval_vs_train_ratio",
            "value": round(statistics.median(ratios), 4),
            "unit": "x",
            "goal": "<= 0.1",
            "spread": summary(ratios),
            "eval_s": round(statistics.median(evals), 2),
            "train_s": round(statistics.median(trains), 2),
            "note": "docs/examples/tiny-lm.yaml (146 steps of 2,048 tokens): held-out loss on 8,192 tokens at steps "
            "50 and 100 (eval.interval_tokens) and on 32,768 at the end; the median of the runs",
        }
    ]


def main() -> None:
    """`bench_eval.py` runs both parts; `bench_eval.py cost` re-measures only the evaluation cost
    (minutes) and keeps the agreement figures already in the results file."""
    if sys.argv[1:] == ["cost"]:
        kept = [
            r for r in json.loads((RESULTS / "bench_eval.json").read_text()) if r["metric"] != "eval_vs_train_ratio"
        ]
        kept = [
            {k: v for k, v in r.items() if k not in ("machine", "date")} | {"measured": r.get("measured", r["date"])}
            for r in kept
        ]
        write("bench_eval", kept + cost())
        return
    write("bench_eval", agreement() + cost())


if __name__ == "__main__":
    main()
