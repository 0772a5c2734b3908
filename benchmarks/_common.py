"""Helpers shared by the benchmark scripts: machine description, repeated timing, result files."""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from pdsweep.settings import machine  # one description of the machine, as reports give it

RESULTS = Path(__file__).resolve().parent / "results"


def repeat(fn: Callable[[], object], n: int) -> list[float]:
    """Wall times of n calls of fn, in seconds."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def run_cmd(cmd: list[str], **kw) -> Callable[[], object]:
    return lambda: subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def summary(times: list[float]) -> dict[str, float]:
    """Median and spread (min, max, interquartile range) of repeated measurements."""
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "iqr": q[2] - q[0],
        "n": len(times),
    }


def write(script: str, metrics: list[dict]) -> Path:
    """Write benchmarks/results/<script>.json: a list of {metric, value, unit, goal, machine, date, ...}."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = [{"machine": machine(), "date": stamp, **m} for m in metrics]
    path = RESULTS / f"{script}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
