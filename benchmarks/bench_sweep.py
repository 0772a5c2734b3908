"""Orchestration overhead of `pdsweep run` per run, next to a tiny run's training time.

One sweep of tiny LM-only runs (tiny-xs, 30 steps) executed by `pdsweep run` three times in one go:
tasks forked from the warm worker with MLflow tracking (the embedded sqlite store) and with
--no-track, and — side by side — every task in a fresh interpreter (PDSWEEP_WARM_WORKERS=0, how
pdsweep ran tasks before), tracked. For every run, the overhead is the wall time of its task (its
start and end events, i.e. process start, imports, data and model set-up, tracking, checkpoints,
final evaluation) minus the time of its training loop (result.json `train_seconds`). The sweep-level
figure adds the scheduler's own time between tasks (and the warm worker's start-up).

Metric: orchestration_overhead_s (warm, tracked; median over runs; goal ≤ 2 s), with the untracked
figure, the fresh-interpreter figure and its ratio, the sweep-level per-run overhead and the tiny
run's training time beside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import yaml  # noqa: E402
from _common import summary, write  # noqa: E402

RUNS, STEPS = 6, 30


def sweep(name: str) -> dict:
    return {
        "name": name,
        "base": {
            "student": "tiny-xs",
            "loss": {"alpha": 0},
            "data": {"tokenizer": {"kind": "bpe", "vocab_size": 2048}, "seq_len": 64, "tokens": 64 * 16 * STEPS},
            "train": {"global_batch": 16, "micro_batch": 16, "backend": "torch", "checkpoint_every": 10},
            "eval": {"interval": 1000, "heldout_tokens": 2048},
        },
        "grid": {"optim.lr": [0.002, 0.003, 0.005]},
        "seeds": RUNS // 3,
    }


def run_sweep(work: Path, name: str, *flags: str, warm: bool = True) -> tuple[float, list[Path]]:
    """`pdsweep run` of the sweep `name` in `work`: its wall time and the run directories it finished."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep(name)))
    env = {**os.environ, "PDSWEEP_WORKDIR": str(work), "PDSWEEP_WARM_WORKERS": "1" if warm else "0"}
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "pdsweep.cli", "run", str(path), *flags]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    done = [d for d in (work / "runs" / name).iterdir() if (d / "result.json").exists()]
    assert len(done) == RUNS
    return wall, done


def measure(work: Path, name: str, *flags: str, warm: bool = True) -> dict:
    wall, done = run_sweep(work, name, *flags, warm=warm)
    overhead, train = [], []
    for run_dir in done:
        events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
        task = events[-1]["time"] - events[0]["time"]
        seconds = json.loads((run_dir / "result.json").read_text())["train_seconds"]
        overhead.append(task - seconds)
        train.append(seconds)
    return {"overhead": overhead, "train": train, "per_run_sweep": (wall - sum(train)) / RUNS}


def slurm_latency(work: Path) -> dict | None:
    """Submit-to-start latency of Slurm jobs on this machine's cluster (scripts/slurm-cluster): the
    sweep run through the Slurm executor, each job's start read from the line its script prints
    first, against the submit event pdsweep recorded. None when no Slurm answers here."""
    import datetime as dt
    import shutil

    if shutil.which("sinfo") is None or subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        return None
    wall, done = run_sweep(work, "slurm-latency", "--no-track", "--executor", "slurm")
    latency, overhead = [], []
    for run_dir in done:
        events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
        submitted = next(e["time"] for e in events if e["event"] == "submit")
        line = next(x for x in (run_dir / "train.log").read_text().splitlines() if x.startswith("pdsweep: job "))
        at = line.split(" at ", 1)[1].split(",", 1)[0]
        start = dt.datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()
        latency.append(start - submitted)
        result = json.loads((run_dir / "result.json").read_text())
        overhead.append(events[-1]["time"] - start - result["train_seconds"])
    return {"latency": latency, "overhead": overhead, "wall_per_run": wall / len(latency)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # Tokenize the corpus once, outside the measurement.
        warm = work / "warm.yaml"
        warm.write_text(yaml.safe_dump(sweep("warm") | {"grid": {"optim.lr": [0.001]}, "seeds": 1}))
        subprocess.run(
            [sys.executable, "-m", "pdsweep.cli", "run", str(warm), "--no-track"],
            check=True,
            env={**os.environ, "PDSWEEP_WORKDIR": str(work)},
            stdout=subprocess.DEVNULL,
        )
        tracked = measure(work, "tracked")
        untracked = measure(work, "untracked", "--no-track")
        fresh = measure(work, "fresh", warm=False)
        slurm = slurm_latency(work)
    t, u, train = summary(tracked["overhead"]), summary(untracked["overhead"]), summary(tracked["train"])
    f = summary(fresh["overhead"])
    write(
        "bench_sweep",
        [
            {
                "metric": "orchestration_overhead_s",
                "value": round(t["median"], 2),
                "unit": "s/run",
                "goal": "<= 2",
                "spread": t,
                "untracked_s": round(u["median"], 2),
                "untracked_spread": u,
                "fresh_interpreter_s": round(f["median"], 2),
                "fresh_interpreter_spread": f,
                "fresh_over_warm": round(f["median"] / t["median"], 2),
                "sweep_level_per_run_s": round(tracked["per_run_sweep"], 2),
                "fresh_sweep_level_per_run_s": round(fresh["per_run_sweep"], 2),
                "note": f"{RUNS} tiny-xs runs of {STEPS} steps, workers 1, sqlite MLflow store; overhead = task wall "
                "time (start to exit) − training loop time; tasks forked from a warm worker (fresh: a new "
                "interpreter per task, side by side in the same run)",
            },
            *(
                [
                    {
                        "metric": "slurm_submit_to_start_s",
                        "value": round(summary(slurm["latency"])["median"], 2),
                        "unit": "s/job",
                        "goal": "report",
                        "spread": summary(slurm["latency"]),
                        "slurm_job_overhead_s": round(summary(slurm["overhead"])["median"], 2),
                        "slurm_wall_per_run_s": round(slurm["wall_per_run"], 2),
                        "note": f"the same {RUNS} runs through pdsweep run --executor slurm (untracked) on the "
                        "single-node test cluster of scripts/slurm-cluster (all submitted at once, 1-core jobs); "
                        "latency = the job script's first line − pdsweep's submit event; job overhead = job start "
                        "to pdsweep's end event − training loop (a fresh interpreter per job)",
                    }
                ]
                if slurm
                else []
            ),
            {
                "metric": "tiny_run_train_s",
                "value": round(train["median"], 2),
                "unit": "s/run",
                "goal": "reference",
                "spread": train,
            },
        ],
    )


if __name__ == "__main__":
    main()
