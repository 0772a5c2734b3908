"""The internal protocol: typed task files run by `python -m pdsweep.run.worker`, through the local
executor (its process, its log, its exit code and the one-line reason a refused task gives)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pdsweep import rundir
from pdsweep.errors import UserError
from pdsweep.run import executors, worker
from pdsweep.run.executors import Job


def test_task_files_round_trip_and_a_bad_one_is_one_line(tmp_path) -> None:
    tasks = [
        worker.TrainTask(run_dir=tmp_path / "r", spec={"student": "tiny-xs"}, label="a", nproc=2, launcher="deepspeed"),
        worker.LogitsTask(
            store=tmp_path / "s",
            spec={"student": "tiny-xs"},
            serves=[worker.ServedRun(seed=1, steps=10, global_batch=8, seq_len=64, heldout_tokens=256)],
        ),
        worker.TuneTask(sweep_file=tmp_path / "x.yaml", storage="sqlite:///o.db", index=1),
    ]
    for i, task in enumerate(tasks):
        assert worker.read(worker.write(tmp_path / f"{i}.json", task)) == task
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "train", "run_dir": "r", "spec": {}, "label": "a", "nproc": 0}')
    with pytest.raises(UserError, match=r"bad.json: not a pdsweep task file \(train.nproc: Input should be greater"):
        worker.read(bad)
    bad.write_text('{"kind": "evaluate"}')
    with pytest.raises(UserError, match="not a pdsweep task file"):
        worker.read(bad)
    assert worker.main([str(tmp_path / "missing.json")]) == 2


def _wait(executor: executors.Executor, job: Job, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while (rc := executor.poll(job)) is None:
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.1)
    return rc


def test_the_local_executor_runs_a_task_file_and_keeps_its_log(tmp_path: Path, workdir) -> None:
    executor = executors.make("local")
    task = worker.TuneTask(sweep_file=tmp_path / "gone.yaml", storage=f"sqlite:///{tmp_path / 'o.db'}", index=0)
    lock = rundir.try_lock(tmp_path / "job")
    assert lock is not None
    job = Job(
        "t", worker.write(tmp_path / "job" / "task.json", task), tmp_path / "job", tmp_path / "job" / "w.log", lock=lock
    )
    executor.submit(job)
    assert _wait(executor, job) == 2
    lines = executor.log(job).read_text().splitlines()
    assert lines[-1].startswith("error: ") and "gone.yaml" in lines[-1]
    lock.close()
    assert not rundir.is_locked(tmp_path / "job")
    with pytest.raises(UserError, match="--executor: 'kubernetes' is not an executor"):
        executors.make("kubernetes")
