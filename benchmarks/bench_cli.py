"""CLI responsiveness: `pdsweep --help` and planning a 10,000-run sweep.

Measured side by side in one run: the bare Python interpreter start (`python -c pass`) is the
reference, so the ratio says what pdsweep itself adds on this (noisy, shared) machine.

Metrics: cli_help_s (goal ≤ 0.3 s), plan_10k_s (goal ≤ 2 s), and their ratios to Python's start.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import repeat, run_cmd, summary, write  # noqa: E402


def big_sweep(path: Path) -> int:
    """25 p × 40 k × 10 seeds = 10,000 student runs (+ 10 LM-only baselines)."""
    ps = [round(0.5 + i * 0.02, 2) for i in range(25)]
    ks = list(range(1, 41))
    path.write_text(
        "name: plan-10k\n"
        "base: {student: tiny-s, teacher: hf:/models/teacher, loss: {alpha: 0.9}}\n"
        f"grid:\n  logits.top_p: {ps}\n  logits.top_k: {ks}\nseeds: 10\n"
    )
    return len(ps) * len(ks) * 10 + 10


def main() -> None:
    exe = shutil.which("pdsweep")
    if exe is None:
        sys.exit("pdsweep is not installed in this environment (pip install -e .)")
    python = summary(repeat(run_cmd([sys.executable, "-c", "pass"]), 21))
    help_ = summary(repeat(run_cmd([exe, "--help"]), 21))
    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "plan-10k.yaml"
        n = big_sweep(sweep)
        plan_json = summary(repeat(run_cmd([exe, "plan", str(sweep), "--json"]), 7))
        plan_table = summary(repeat(run_cmd([exe, "plan", str(sweep)]), 7))
    metrics = [
        {"metric": "cli_help_s", "value": round(help_["median"], 4), "unit": "s", "goal": "<= 0.3", "spread": help_},
        {
            "metric": "cli_help_vs_python_start_ratio",
            "value": round(help_["median"] / python["median"], 2),
            "unit": "x",
            "goal": "informational",
            "spread": python,
        },
        {
            "metric": "plan_10k_s",
            "value": round(plan_json["median"], 3),
            "unit": "s",
            "goal": "<= 2",
            "runs": n,
            "spread": plan_json,
            "note": "pdsweep plan FILE --json, whole process",
        },
        {
            "metric": "plan_10k_table_s",
            "value": round(plan_table["median"], 3),
            "unit": "s",
            "goal": "<= 2",
            "runs": n,
            "spread": plan_table,
            "note": "pdsweep plan FILE (rich table, one row per configuration)",
        },
    ]
    path = write("bench_cli", metrics)
    for m in metrics:
        print(f"{m['metric']:32s} {m['value']:>8} {m['unit']:2s} (goal {m['goal']})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
