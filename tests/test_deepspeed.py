"""DeepSpeed ZeRO-3 on CPU (gloo): one and two processes, sharded checkpoints, exact resume after
SIGKILL, and consolidated fp32 weights that load into model.py. Real DeepSpeed, real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from pdsweep import rundir
from pdsweep.nn import model
from pdsweep.spec import RunSpec
from pdsweep.train import callbacks, trainer
from tests.conftest import ROOT, TINY_RUN

pytestmark = pytest.mark.slow

DS_RUN = dict(TINY_RUN, train={**TINY_RUN["train"], "backend": "deepspeed", "zero_stage": 3, "micro_batch": 4})


def train_cli(spec_file, out, nproc: int = 1) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "pdsweep.cli", "train", str(spec_file), "--out", str(out), "--nproc", str(nproc)]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )  # its own process group: torchrun's workers die with it


def finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare):
    """One uninterrupted ZeRO-3 run on 1 process and one on 2 processes, and a plain torch run."""
    root = tmp_path_factory.mktemp("ds")
    spec_file = root / "run.yaml"
    spec_file.write_text(yaml.safe_dump(DS_RUN))
    one, two = train_cli(spec_file, root / "one"), None
    finish(one)
    two = train_cli(spec_file, root / "two", nproc=2)
    finish(two)
    torch_dir = root / "torch"
    spec = RunSpec.model_validate(dict(DS_RUN, train={**DS_RUN["train"], "backend": "torch"}))
    from pdsweep.train import backends

    trainer.train(spec, torch_dir, shakespeare, backends.TorchBackend(spec), [callbacks.MetricsFile(torch_dir)])
    return root, spec_file


def test_zero3_one_process_trains_like_plain_torch(runs) -> None:
    root, _ = runs
    ds, plain = losses(root / "one"), losses(root / "torch")
    assert len(ds) == 30 and ds[-1] < ds[0] - 0.5
    assert ds == pytest.approx(plain, rel=1e-4)  # same math, different engine


def test_zero3_two_processes_partition_and_agree(runs) -> None:
    root, _ = runs
    assert losses(root / "two") == pytest.approx(losses(root / "one"), rel=1e-4)
    shards = sorted(p.name for p in (root / "two" / "checkpoints" / "step_00000030" / "engine").iterdir())
    assert shards == [
        "zero_pp_rank_0_mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_model_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    result = json.loads((root / "two" / "result.json").read_text())
    assert result["world_size"] == 2 and result["backend"] == "deepspeed"


def test_consolidated_fp32_weights_load_into_model_py(runs, shakespeare) -> None:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    root, _ = runs
    state = get_fp32_state_dict_from_zero_checkpoint(str(root / "two" / "checkpoints" / "step_00000030"), tag="engine")
    spec = RunSpec.model_validate(DS_RUN)
    net = model.build(spec.student, shakespeare.vocab_size, spec.data.seq_len, seed=0)
    state.setdefault("lm_head.weight", state["embed_tokens.weight"])
    net.load_state_dict(state)
    from pdsweep.train import backends

    loss = trainer.evaluation(net, backends.TorchBackend(spec), shakespeare, spec, None)["heldout/loss"]
    assert loss == pytest.approx(json.loads((root / "two" / "result.json").read_text())["heldout/loss"], abs=1e-4)


def test_zero3_two_processes_resume_exactly_after_sigkill(runs) -> None:
    root, spec_file = runs
    out = root / "killed"
    victim = train_cli(spec_file, out, nproc=2)
    deadline = time.time() + 300
    while time.time() < deadline:
        done = losses(out) if (out / "metrics.jsonl").exists() else []
        if len(done) >= 14 and rundir.latest_checkpoint(out) is not None:
            break
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=60)
    assert rundir.latest_checkpoint(out).name == "step_00000010"
    finish(train_cli(spec_file, out, nproc=2))
    a = json.loads((root / "two" / "result.json").read_text())
    b = json.loads((out / "result.json").read_text())
    assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-6)
    assert losses(out) == pytest.approx(losses(root / "two"), rel=1e-6)


def test_auto_backend_is_torch_on_one_cpu_process() -> None:
    spec = RunSpec.model_validate(TINY_RUN | {"train": {**TINY_RUN["train"], "backend": "auto"}})
    from pdsweep.train import backends

    assert isinstance(backends.make(spec), backends.TorchBackend)


def test_deepspeed_launcher_agrees_with_torchrun(runs) -> None:
    root, spec_file = runs
    out = root / "ds-launcher"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pdsweep.cli",
            "train",
            str(spec_file),
            "--out",
            str(out),
            "--nproc",
            "2",
            "--launcher",
            "deepspeed",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert losses(out) == pytest.approx(losses(root / "two"), rel=1e-6)


def test_hostfile_goes_to_the_deepspeed_launcher(runs, tmp_path) -> None:
    """Several machines are DeepSpeed's multi-node launcher (pdsh/ssh): the hostfile reaches it.
    This machine has no ssh server, so the launcher itself refuses — after reading our hostfile."""
    _, spec_file = runs
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pdsweep.cli",
            "train",
            str(spec_file),
            "--out",
            str(tmp_path / "r"),
            "--hostfile",
            str(hostfile),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert f"Using hostfile at {hostfile}" in proc.stderr + proc.stdout
