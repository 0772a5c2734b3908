"""The training loop on the real corpus: learning, exact resume (also after SIGKILL), failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from pdsweep import rundir
from pdsweep.spec import RunSpec
from pdsweep.train import backends, trainer
from pdsweep.train.callbacks import MetricsFile
from tests.conftest import ROOT, TINY_RUN, Poison


def run(spec: RunSpec, run_dir, tokens, callbacks=()) -> dict:
    return trainer.train(spec, run_dir, tokens, backends.TorchBackend(spec), [MetricsFile(run_dir), *callbacks])


def metrics(run_dir, kind="train") -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [m for m in map(json.loads, lines) if m["kind"] == kind]


@pytest.mark.slow
def test_training_reduces_loss(shakespeare, tmp_path) -> None:
    spec = RunSpec.model_validate(TINY_RUN)
    result = run(spec, tmp_path, shakespeare)
    losses = [m["loss"] for m in metrics(tmp_path)]
    assert len(losses) == spec.steps() == 30
    assert losses[-1] < losses[0] - 0.5  # starts near ln(2048) ≈ 7.6
    assert result["heldout/loss"] < 7.0 and result["step"] == 30
    assert [m["step"] for m in metrics(tmp_path)] == list(range(1, 31))
    assert all(0 < m["lr"] <= spec.optim.lr for m in metrics(tmp_path))


class StopAt(trainer.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step(self, state, metrics) -> None:
        if state.step == self.step:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_resume_is_exact(shakespeare, tmp_path) -> None:
    spec = RunSpec.model_validate(TINY_RUN)
    straight = run(spec, tmp_path / "a", shakespeare)
    with pytest.raises(KeyboardInterrupt):
        run(spec, tmp_path / "b", shakespeare, [StopAt(17)])
    assert rundir.latest_checkpoint(tmp_path / "b").name == "step_00000010"
    resumed = run(spec, tmp_path / "b", shakespeare)
    assert resumed["train/loss"] == straight["train/loss"]
    assert resumed["heldout/loss"] == straight["heldout/loss"]
    # The metrics of the resumed run are those of the uninterrupted one, each step once.
    assert [m["loss"] for m in metrics(tmp_path / "b")] == [m["loss"] for m in metrics(tmp_path / "a")]


@pytest.mark.slow
def test_checkpoints_are_complete_and_pruned(shakespeare, tmp_path) -> None:
    spec = RunSpec.model_validate(TINY_RUN)
    run(spec, tmp_path, shakespeare)
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["LATEST", "step_00000020", "step_00000030"]
    assert (tmp_path / "checkpoints" / "LATEST").read_text() == "step_00000030"
    assert not list((tmp_path / "checkpoints").glob(".*tmp"))


def test_non_finite_loss_fails_the_run_with_step_and_reason(shakespeare, tmp_path) -> None:
    spec = RunSpec.model_validate(TINY_RUN)
    with pytest.raises(trainer.TrainingFailed) as err:
        run(spec, tmp_path, shakespeare, [Poison()])
    assert err.value.step == 0 and "non-finite loss" in err.value.reason


def _cli_train(spec_file, out, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pdsweep.cli", "train", str(spec_file), "--out", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.mark.slow
def test_sigkill_then_rerun_equals_an_uninterrupted_run(shakespeare, tmp_path) -> None:
    spec = dict(
        TINY_RUN, data={**TINY_RUN["data"], "tokens": 64 * 16 * 60}, train={**TINY_RUN["train"], "checkpoint_every": 15}
    )
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(spec))

    straight = _cli_train(spec_file, tmp_path / "a")
    assert straight.wait(timeout=300) == 0, straight.stderr.read()

    victim = _cli_train(spec_file, tmp_path / "b")
    deadline = time.time() + 240
    while time.time() < deadline:  # kill it after its first checkpoint, mid-way to the second
        done = metrics(tmp_path / "b") if (tmp_path / "b" / "metrics.jsonl").exists() else []
        if done and done[-1]["step"] >= 20:
            break
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    status = json.loads((tmp_path / "b" / "status.json").read_text())
    assert status["status"] == "running"  # a killed run leaves its resumable state
    assert rundir.latest_checkpoint(tmp_path / "b").name == "step_00000015"

    again = _cli_train(spec_file, tmp_path / "b")
    assert again.wait(timeout=300) == 0, again.stderr.read()
    a = json.loads((tmp_path / "a" / "result.json").read_text())
    b = json.loads((tmp_path / "b" / "result.json").read_text())
    assert b["train/loss"] == a["train/loss"] and b["heldout/loss"] == a["heldout/loss"]
    assert json.loads((tmp_path / "b" / "status.json").read_text())["status"] == "done"


@pytest.mark.slow
def test_held_out_loss_falls_well_below_the_unigram_entropy(shakespeare, tmp_path) -> None:
    """A model that learned only token frequencies would sit at the unigram entropy; context must
    take a real language model well below it on held-out text."""
    spec = RunSpec.model_validate(
        TINY_RUN
        | {
            "student": "tiny-s",
            "data": {**TINY_RUN["data"], "tokens": 64 * 16 * 250},
            "train": {**TINY_RUN["train"], "checkpoint_every": 1000},
        }
    )
    result = run(spec, tmp_path, shakespeare)
    assert result["heldout/loss"] < result["unigram_entropy_nats"] - 0.5, result


class HeldoutCheck(trainer.Callback):
    """Recomputes each evaluation's held-out loss on a given number of tokens with the run's weights."""

    def __init__(self, tokens, spec: RunSpec):
        self.tokens, self.spec, self.seen = tokens, spec, []

    def on_start(self, state, net) -> None:
        self.net = net

    def on_eval(self, state, metrics) -> None:
        from pdsweep.eval import heldout

        ev = self.spec.eval
        args = (self.net, torch.device("cpu"), self.tokens, self.spec.data.seq_len, self.spec.train.micro_batch)
        curve = heldout.heldout(*args, ev.tokens_during())["heldout/loss"]
        self.seen.append((state.step, "curve", metrics["curve/heldout/loss"], curve))
        if "eval/heldout/loss" in metrics:
            final = heldout.heldout(*args, ev.heldout_tokens)["heldout/loss"]
            self.seen.append((state.step, "eval", metrics["eval/heldout/loss"], final))


@pytest.mark.slow
def test_evaluations_during_training_score_a_quarter_of_the_final_tokens(shakespeare, tmp_path) -> None:
    """Every point of the curve (`curve/…`), the last one included, is scored on the first quarter of
    the held-out tokens; the final evaluation (`eval/…`, what reports compare) on all of them."""
    spec = RunSpec.model_validate({**TINY_RUN, "eval": {"interval": 10, "heldout_tokens": 4096}})
    assert spec.eval.tokens_during() == 1024 and spec.evaluations() == 3
    check = HeldoutCheck(shakespeare, spec)
    result = run(spec, tmp_path, shakespeare, [check])
    assert [(s, kind) for s, kind, _, _ in check.seen] == [(10, "curve"), (20, "curve"), (30, "curve"), (30, "eval")]
    for _, _, logged, expect in check.seen:
        assert logged == pytest.approx(expect, rel=1e-6)
    assert result["heldout/loss"] == check.seen[-1][2]
    assert check.seen[-1][2] != pytest.approx(check.seen[-2][2], rel=1e-4)  # two evaluation sets, not mixed
    # The estimate `pdsweep plan` prints: 2 × 1,024 + 4,096 tokens evaluated on 30 steps of 16 × 64
    assert spec.eval_share() == pytest.approx((2 * 1024 + 4096) / (3 * 30 * 16 * 64))
    explicit = RunSpec.model_validate(
        {**TINY_RUN, "eval": {"interval": 10, "heldout_tokens": 4096, "interval_tokens": 4096}}
    )
    assert explicit.eval.tokens_during() == 4096
    more = RunSpec.model_validate({**TINY_RUN, "eval": {"heldout_tokens": 4096, "interval_tokens": 9999}})
    assert more.eval.tokens_during() == 4096  # never more than the final evaluation scores
