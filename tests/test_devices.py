"""GPU placement without GPUs: how `--devices` splits GPUs among workers, what environment and
launcher command each run gets, and how a hostfile turns a worker's GPUs into DeepSpeed's
`--include`. (Training on GPUs itself is in tests/gpu/, which skips without CUDA.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pdsweep.errors import UserError
from pdsweep.run import launch, scheduler, worker
from pdsweep.run.executors import local
from pdsweep.spec import expand

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("devices", "workers", "slots"),
    [
        ("cpu", 3, [None, None, None]),
        ("cuda:0", 1, ["0"]),
        ("cuda:0,1,2,3,4,5,6,7", 2, ["0,1,2,3", "4,5,6,7"]),
        ("cuda:0,1,2,3,4,5,6,7", 8, ["0", "1", "2", "3", "4", "5", "6", "7"]),
        ("cuda:4, 6", 2, ["4", "6"]),
    ],
)
def test_devices_split_evenly_among_workers(devices, workers, slots) -> None:
    assert local.device_slots(devices, workers) == slots


@pytest.mark.parametrize(
    ("devices", "workers", "message"),
    [
        ("cuda:0,1,2", 2, "3 GPUs do not split evenly into 2 workers"),
        ("gpu:0", 1, "must be cpu, auto or cuda:0,1,…"),
        ("cuda:a,b", 1, "must be cpu, auto or cuda:0,1,…"),
        ("cuda:", 1, "must be cpu, auto or cuda:0,1,…"),
    ],
)
def test_bad_devices_are_one_clear_error(devices, workers, message) -> None:
    with pytest.raises(UserError, match=message):
        local.device_slots(devices, workers)


def test_auto_takes_the_visible_gpus_and_falls_back_to_cpu(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,5,7")
    assert local.device_slots("auto", 2) == ["2,3", "5,7"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local.device_slots("auto", 2) == [None, None]


@pytest.fixture()
def quickstart_tasks(tmp_path, monkeypatch) -> tuple[str, list[scheduler.Task]]:
    monkeypatch.setenv("PDSWEEP_WORKDIR", str(tmp_path))  # _task_file writes each task's file
    sweep = expand.load_sweep(ROOT / "sweeps" / "quickstart.yaml")
    runs = expand.expand(sweep, "sweeps/quickstart.yaml")
    return sweep.name, scheduler.build(sweep.name, runs)


def _student(tasks: list[scheduler.Task]) -> scheduler.Task:
    return next(t for t in tasks if t.kind == "train" and t.role != "teacher")


def test_each_worker_runs_on_its_own_gpus(quickstart_tasks, monkeypatch) -> None:
    name, tasks = quickstart_tasks
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sched = scheduler.Scheduler(name, tasks, workers=2, devices="cuda:0,1,2,3", track=False)
    t = _student(tasks)
    for slot, gpus in zip(sched.slots, (["0", "1"], ["2", "3"]), strict=True):
        assert sched._env(t, slot)["CUDA_VISIBLE_DEVICES"] == ",".join(gpus)
        task = worker.read(sched._task_file(t, slot))
        assert isinstance(task, worker.TrainTask) and task.nproc == 2 and task.launcher == "deepspeed"
        assert task.run_dir == t.dir and task.logits == t.logits and not task.track
    one = scheduler.Scheduler(name, tasks, workers=4, devices="cuda:0,1,2,3", track=False)
    assert worker.read(one._task_file(t, one.slots[3])).nproc == 1
    assert one._env(t, one.slots[3])["CUDA_VISIBLE_DEVICES"] == "3"


def test_cpu_runs_hide_the_gpus_of_a_gpu_machine(quickstart_tasks, monkeypatch) -> None:
    name, tasks = quickstart_tasks
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sched = scheduler.Scheduler(name, tasks, workers=2, devices="cpu", track=False)
    env = sched._env(_student(tasks), None)
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["PDSWEEP_LOCK_HELD"] == str(_student(tasks).dir.resolve())


def test_deepspeed_gets_the_visible_gpus_as_include() -> None:
    args = ["pdsweep.run.worker", "task.json"]
    cmd, env = launch.launcher_command(args, 2, "deepspeed", None, {"CUDA_VISIBLE_DEVICES": "4,5"})
    assert "--include=localhost:4,5" in cmd
    assert not any(c.startswith("--num_gpus") for c in cmd)  # DeepSpeed refuses both
    assert "CUDA_VISIBLE_DEVICES" not in env  # DeepSpeed sets it for its workers from --include
    assert cmd[-2:] == args
    # torchrun's workers index into the inherited CUDA_VISIBLE_DEVICES
    cmd, env = launch.launcher_command(args, 2, "torchrun", None, {"CUDA_VISIBLE_DEVICES": "4,5"})
    assert env["CUDA_VISIBLE_DEVICES"] == "4,5"
    assert "--nproc_per_node=2" in cmd
    # CPU: processes, not GPUs; an empty CUDA_VISIBLE_DEVICES stays empty
    cmd, env = launch.launcher_command(args, 2, "deepspeed", None, {"CUDA_VISIBLE_DEVICES": ""})
    assert "--num_gpus=2" in cmd and env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["OMP_NUM_THREADS"].isdigit()
    with pytest.raises(UserError, match="--nproc: 4 processes per machine but CUDA_VISIBLE_DEVICES has 2"):
        launch.launcher_command(args, 4, "deepspeed", None, {"CUDA_VISIBLE_DEVICES": "4,5"})


def test_a_hostfile_takes_the_workers_gpus_on_every_machine(tmp_path) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes\nnode1 slots=8\n\nnode2 slots=8  # spare\n")
    assert launch.hostfile_hosts(hostfile) == ["node1", "node2"]
    cmd, env = launch.launcher_command(
        ["pdsweep.run.worker", "task.json"], 2, "deepspeed", hostfile, {"CUDA_VISIBLE_DEVICES": "6,7"}
    )
    assert f"--hostfile={hostfile}" in cmd
    assert "--include=node1:6,7@node2:6,7" in cmd
    assert "CUDA_VISIBLE_DEVICES" not in env
    hostfile.write_text("node1 8\n")
    with pytest.raises(UserError, match=r"hostfile:1: expected 'HOST slots=N', got 'node1 8'"):
        launch.hostfile_hosts(hostfile)


def test_the_launchers_accept_the_command(tmp_path) -> None:
    """The flags pdsweep builds parse in the real launchers (their --help after our flags)."""
    cmd, _ = launch.launcher_command(["pdsweep.run.worker", "--help"], 2, "torchrun", None, {})
    assert subprocess.run(cmd[:-3] + ["--help"], capture_output=True, timeout=120).returncode == 0
    parser = __import__("deepspeed.launcher.runner", fromlist=["parse_args"]).parse_args
    cmd, _ = launch.launcher_command(
        ["pdsweep.run.worker", "task.json"], 2, "deepspeed", None, {"CUDA_VISIBLE_DEVICES": "4,5"}
    )
    args = parser(cmd[cmd.index("deepspeed.launcher.runner") + 1 :])
    assert args.include == "localhost:4,5" and args.num_gpus == -1
    assert args.module and args.user_script == "pdsweep.run.worker" and args.user_args == ["task.json"]


def test_a_bad_hostfile_is_one_clear_error_before_anything_runs(tmp_path, workdir) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node1 slots=eight\n")
    out = subprocess.run(
        [sys.executable, "-m", "pdsweep.cli", "run", "sweeps/quickstart.yaml", "--hostfile", str(hostfile)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [f"error: {hostfile}:1: expected 'HOST slots=N', got 'node1 slots=eight'"]
