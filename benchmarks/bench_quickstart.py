"""The README's main command, on a fresh work directory and a fresh download cache: fetch and tokenize
the default corpus, train the teacher, store its logits, train LM-only and PD students (3 seeds
each), evaluate, print the Δ table and write the HTML report.

Metrics: quickstart_wall_s (goal ≤ 600 s on 2 CPU cores) and quickstart_pd_effect_halfwidths (the
PD − LM-only difference in held-out loss, paired by seed, in 95% CI half-widths; goal ≥ 3), plus the
time of each stage from the runs' event logs, the host's fp32 matmul throughput and the paired
differences seed by seed. BENCH_QUICKSTART_REPEATS=n repeats it (default 1: it takes minutes);
BENCH_QUICKSTART_REPORT=DIR keeps the report (reports/quickstart/ is made so).
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import summary, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "pdsweep run sweeps/quickstart.yaml --workers 2 --report"
"""The README's main command (tests/test_readme.py checks that the README says exactly this)."""


def stages(workdir: Path) -> dict[str, float]:
    """Seconds from the first start to the last end of each kind of task: teacher, logits pass,
    baseline (LM-only students), student (PD students)."""
    from pdsweep.spec import expand

    role = {r.run_id: r.role for r in expand.expand(expand.load_sweep(ROOT / "sweeps" / "quickstart.yaml"))}
    spans: dict[str, list[float]] = {}
    for events in (workdir / "runs" / "quickstart").rglob("events.jsonl"):
        lines = [json.loads(x) for x in events.read_text().splitlines() if x.strip()]
        task = str(lines[0].get("task", ""))
        kind = "logits pass" if task.startswith("logits:") else role.get(task, "other")
        spans.setdefault(kind, []).extend([lines[0]["time"], lines[-1]["time"]])
    return {k: round(max(v) - min(v), 1) for k, v in spans.items()}


def eval_ratios(workdir: Path) -> dict[str, list[float]]:
    """eval_seconds / train_seconds of each done run (result.json), by role."""
    from pdsweep.spec import expand

    role = {r.run_id: r.role for r in expand.expand(expand.load_sweep(ROOT / "sweeps" / "quickstart.yaml"))}
    out: dict[str, list[float]] = {}
    for result in (workdir / "runs" / "quickstart").glob("*/result.json"):
        r = json.loads(result.read_text())
        out.setdefault(role.get(result.parent.name, "other"), []).append(r["eval_seconds"] / r["train_seconds"])
    return out


def paired(workdir: Path) -> list[float]:
    """PD − LM-only held-out loss of each seed (result.json of the seed's two students)."""
    from pdsweep.spec import expand

    runs = expand.expand(expand.load_sweep(ROOT / "sweeps" / "quickstart.yaml"))
    loss: dict[tuple[str, int], float] = {}
    for r in runs:
        result = workdir / "runs" / "quickstart" / r.run_id / "result.json"
        if r.role != "teacher" and result.exists():
            loss[(r.role, r.seed)] = json.loads(result.read_text())["heldout/loss"]
    seeds = sorted({s for _, s in loss})
    return [round(loss[("student", s)] - loss[("baseline", s)], 5) for s in seeds]


def once() -> tuple[float, pd.DataFrame, dict[str, float], str, dict[str, list[float]], list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PDSWEEP_WORKDIR": f"{tmp}/work", "PDSWEEP_CACHE": f"{tmp}/cache"}
        env.pop("MLFLOW_TRACKING_URI", None)
        start = time.perf_counter()
        out = subprocess.run(shlex.split(COMMAND), cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if out.returncode != 0:
            raise SystemExit(f"{COMMAND} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        table = pd.read_csv(Path(tmp) / "work" / "reports" / "quickstart" / "report.csv")
        work = Path(tmp) / "work"
        if os.environ.get("BENCH_QUICKSTART_REPORT"):  # keep the report (reports/quickstart/ is this run's)
            import shutil

            keep = Path(os.environ["BENCH_QUICKSTART_REPORT"])
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(work / "reports" / "quickstart", keep)
        return wall, table, stages(work), out.stdout, eval_ratios(work), paired(work)


def main() -> None:
    n = int(os.environ.get("BENCH_QUICKSTART_REPEATS", "1"))
    from pdsweep.train import backends

    gflops = backends.measure_cpu_matmul_flops(seconds=2.0) / 1e9
    walls, effects, deltas, parts, pairs = [], [], [], [], []
    ratios: dict[str, list[float]] = {}
    for _ in range(n):
        wall, table, stage, stdout, runs, pair = once()
        pairs.append(pair)
        for k, v in runs.items():
            ratios.setdefault(k, []).extend(v)
        row = table[table["role"] == "student"].iloc[0]
        walls.append(wall)
        effects.append(float(row["effect_halfwidths"]))
        deltas.append(float(row["delta_pct"]))
        parts.append(stage)
        print(stdout[-2500:])
        print(
            f"wall {wall:.0f} s, PD effect {row['effect']:+.4f} ± {row['effect_ci']:.4f} ({row['effect_halfwidths']:.1f} half-widths), stages {stage}"
        )
    write(
        "bench_quickstart",
        [
            {
                "metric": "quickstart_wall_s",
                "value": round(statistics.median(walls), 1),
                "unit": "s",
                "goal": "<= 600 on 2 CPU cores, fresh work directory and download cache",
                "spread": summary(walls),
                "stages_s": parts,
                "command": COMMAND,
                "host_fp32_matmul_gflops": round(gflops, 1),
                "note": "compute scales with the host's fp32 matmul throughput (measured before the run: "
                "backends.measure_cpu_matmul_flops, 1024² matrices, both cores)",
            },
            {
                "metric": "quickstart_pd_effect_halfwidths",
                "value": round(statistics.median(effects), 2),
                "unit": "95% CI half-widths (paired t over the quickstart's 5 seeds)",
                "goal": ">= 3",
                "spread": summary(effects),
                "delta_pct_heldout_loss": deltas,
                "paired_differences_by_seed": pairs,
                "paired_difference_sd": [round(statistics.stdev(p), 5) for p in pairs if len(p) > 1],
            },
            {
                "metric": "quickstart_eval_vs_train_ratio",
                "value": round(statistics.median([x for k in ("baseline", "student") for x in ratios.get(k, [])]), 4),
                "unit": "x",
                "goal": "<= 0.1",
                "by_role": {k: summary(v) for k, v in sorted(ratios.items())},
                "note": "each run's evaluation time / training time (result.json): held-out loss of 32,768 tokens "
                "(PD runs: and teacher agreement, in the same pass) every 100 steps and at the end; median over "
                "the LM-only and PD runs",
            },
        ],
    )


if __name__ == "__main__":
    main()
