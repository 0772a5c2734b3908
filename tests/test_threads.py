"""CPU threads follow the sweep: `pdsweep run` shares the cores among the tasks running now, and a
task picks up a new share between steps (a teacher pass that started beside other runs gets every
core once they end)."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from pdsweep import settings
from pdsweep.run import scheduler
from pdsweep.run.executors import Job
from pdsweep.spec import expand
from tests.conftest import ROOT, TINY_RUN, pdsweep


def test_the_budget_is_read_between_steps_and_divided_among_a_runs_processes(tmp_path, monkeypatch) -> None:
    f = tmp_path / "threads"
    monkeypatch.setenv("PDSWEEP_THREADS_FILE", str(f))
    budget = settings.ThreadBudget(interval_s=0)
    assert budget.poll() is None  # not written yet
    f.write_text("4\n")
    assert budget.poll() == 4
    assert budget.poll() is None  # unchanged
    f.write_text("2\n")
    assert budget.poll() == 2
    f.write_text("8\n")
    assert settings.ThreadBudget(share=2, interval_s=0).poll() == 4  # two processes of one run
    assert settings.ThreadBudget(share=16, interval_s=0).poll() == 1
    slow = settings.ThreadBudget(interval_s=3600)
    assert slow.poll() == 8
    f.write_text("1\n")
    assert slow.poll() is None  # read at most once per interval
    monkeypatch.delenv("PDSWEEP_THREADS_FILE")
    assert settings.ThreadBudget(interval_s=0).poll() is None  # run by hand: never changes


def test_the_scheduler_gives_a_task_left_alone_every_core(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PDSWEEP_WORKDIR", str(tmp_path))  # the task directories this test writes
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(scheduler.settings, "cores", lambda: 8)
    sweep = expand.load_sweep(ROOT / "sweeps" / "quickstart.yaml")
    tasks = scheduler.build(sweep.name, expand.expand(sweep, "sweeps/quickstart.yaml"))
    sched = scheduler.Scheduler(sweep.name, tasks, workers=2, devices="cpu", track=False)
    a, b = [t for t in tasks if t.role == "baseline"][:2]
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        for t, proc in zip((a, b), procs, strict=True):
            env = sched._env(t, None)
            t.job = Job(t.key, t.dir / "task.json", t.dir, t.dir / "train.log", env, handle=proc)  # as _start does
            assert env["PDSWEEP_THREADS_FILE"] == str(t.dir / "threads")
            assert (t.dir / "threads").read_text() == env["OMP_NUM_THREADS"] + "\n"
        sched._rebalance()
        assert (a.dir / "threads").read_text() == (b.dir / "threads").read_text() == "4\n"
        procs[1].kill()
        procs[1].wait()
        b.job = None
        sched._rebalance()
        assert (a.dir / "threads").read_text() == "8\n"
        events = [json.loads(x) for x in (a.dir / "events.jsonl").read_text().splitlines()]
        assert events[-1]["event"] == "threads" and events[-1]["threads"] == 8
    finally:
        for p in procs:
            p.kill()
            p.wait()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's setting is left alone
    env = sched._env(next(t for t in tasks if t.role == "student"), None)
    assert "OMP_NUM_THREADS" not in env and "PDSWEEP_THREADS_FILE" not in env  # the process inherits "3"


@pytest.mark.slow
def test_a_training_run_takes_up_a_new_budget_between_steps(tmp_path, shakespeare) -> None:
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump(TINY_RUN))
    budget = tmp_path / "threads"
    budget.write_text("2\n")
    env = {"OMP_NUM_THREADS": "1", "PDSWEEP_THREADS_FILE": str(budget)}
    out = pdsweep("train", run, "--out", tmp_path / "out", "--no-track", env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    threads = [
        json.loads(x)["cpu_threads"]
        for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
        if "cpu_threads" in x
    ]
    assert threads[0] == 1 and threads[-1] == 2 and sorted(threads) == threads
