"""Evaluation: pdsweep's scorer against lm-evaluation-harness on the real pretrained teacher, and
what evaluation costs a tiny run.

- Agreement: SmolLM2-135M-Instruct (the builtin teacher) scored by `pdsweep eval` and by
  `pdsweep eval --harness` (lm_eval.simple_evaluate on the same local items) on ITEMS items of each
  benchmark; the largest difference in any acc / acc_norm, in points. The published numbers for
  the model (HellaSwag acc_norm ≈ 42, PIQA acc_norm ≈ 66) are shown beside.
- Cost: the tiny LM-only run of docs/examples/tiny-lm.yaml (held-out evaluation every 50 steps):
  time spent evaluating / time spent training (result.json eval_seconds / train_seconds).

Metrics: lm_eval_max_abs_diff_points, eval_vs_train_ratio.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ITEMS = 200
TASKS = ["hellaswag", "winogrande", "piqa", "arc_easy", "arc_challenge", "mmlu", "lambada"]


def pdsweep(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "pdsweep.cli", *args], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return out.stdout


def main() -> None:
    suites = [x for t in TASKS for x in ("--suite", t)]
    started = time.perf_counter()
    ours = json.loads(pdsweep("eval", "builtin:smollm2-135m", *suites, "--limit", str(ITEMS), "--json"))
    ours_s = time.perf_counter() - started
    started = time.perf_counter()
    theirs = json.loads(pdsweep("eval", "builtin:smollm2-135m", *suites, "--limit", str(ITEMS), "--json", "--harness"))
    theirs_s = time.perf_counter() - started
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

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        pdsweep("train", str(ROOT / "docs/examples/tiny-lm.yaml"), "--out", str(out), "--no-track")
        result = json.loads((out / "result.json").read_text())
    ratio = result["eval_seconds"] / result["train_seconds"]
    write(
        "bench_eval",
        [
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
                "metric": "eval_vs_train_ratio",
                "value": round(ratio, 4),
                "unit": "x",
                "goal": "<= 0.1",
                "eval_s": round(result["eval_seconds"], 2),
                "train_s": round(result["train_seconds"], 2),
                "note": "docs/examples/tiny-lm.yaml: held-out evaluation of 32768 tokens every 50 steps and at the end",
            },
        ],
    )


if __name__ == "__main__":
    main()
