"""Runs in MLflow: one run per training run, params, step metrics, tags, the spec as artifact,
no duplicate on resume, failures tagged with their reason, an unreachable store refused up front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pdsweep.errors import UserError
from pdsweep.run import launch
from pdsweep.spec import RunSpec
from pdsweep.train import trainer
from tests.conftest import TINY_RUN, Poison, pdsweep


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def runs_of(uri: str, experiment: str = "single"):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client, ([] if exp is None else client.search_runs([exp.experiment_id]))


@pytest.mark.slow
def test_a_trained_run_is_one_mlflow_run_even_when_run_again(tmp_path, shakespeare, store_uri) -> None:
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(TINY_RUN))
    for _ in range(2):  # the second time finds the run finished and continues the same MLflow run
        out = pdsweep("train", spec_file, "--out", tmp_path / "run", "--tracking-uri", store_uri)
        assert out.returncode == 0, out.stderr[-2000:]
    client, runs = runs_of(store_uri)
    (run,) = [r for r in runs if r.data.tags.get("pdsweep.label") == "run"]
    assert run.info.status == "FINISHED" and run.data.tags["pdsweep.status"] == "done"
    assert len(run.data.tags["pdsweep.run_id"]) == 12
    assert run.data.params["logits.top_p"] == "0.95" and run.data.params["student.preset"] == "tiny-xs"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == list(range(1, 31))
    assert client.get_metric_history(run.info.run_id, "eval/heldout/loss")
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == [
        "result.json",
        "spec.yaml",
    ]  # spec + final evaluation
    # Artifacts live beside the sqlite store, not in ./mlruns of the current directory.
    assert run.info.artifact_uri.startswith(Path(store_uri.removeprefix("sqlite:///")).parent.as_uri())


@pytest.mark.slow
def test_a_failed_run_is_tagged_with_its_reason(tmp_path, shakespeare, store_uri) -> None:
    spec = RunSpec.model_validate(TINY_RUN)
    outcome = launch.run_one(spec, tmp_path / "nan", callbacks=(Poison(),), tracking_uri=store_uri, label="nan-run")
    assert outcome.status == "failed" and "non-finite loss" in outcome.reason
    _, runs = runs_of(store_uri)
    (run,) = [r for r in runs if r.data.tags.get("pdsweep.label") == "nan-run"]
    assert run.info.status == "FAILED" and run.data.tags["pdsweep.status"] == "failed"
    assert "non-finite loss" in run.data.tags["pdsweep.reason"]


class StopAt(trainer.Callback):
    """Raise `error` after optimiser step `step`."""

    def __init__(self, step: int, error: BaseException):
        self.step, self.error = step, error

    def on_step(self, state, metrics) -> None:
        if state.step == self.step:
            raise self.error


@pytest.mark.slow
def test_a_run_interrupted_before_its_first_checkpoint_logs_each_step_once(tmp_path, shakespeare, store_uri) -> None:
    spec = RunSpec.model_validate(TINY_RUN)  # its first checkpoint is at step 10
    run_dir = tmp_path / "early"
    with pytest.raises(KeyboardInterrupt):
        launch.run_one(
            spec, run_dir, callbacks=(StopAt(5, KeyboardInterrupt()),), tracking_uri=store_uri, label="early"
        )
    assert launch.run_one(spec, run_dir, tracking_uri=store_uri, label="early").status == "done"
    client, runs = runs_of(store_uri)
    (run,) = [r for r in runs if r.data.tags.get("pdsweep.label") == "early"]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == list(range(1, 31))
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 31))


@pytest.mark.slow
def test_any_exception_fails_the_run_with_its_reason(tmp_path, shakespeare, store_uri) -> None:
    """Whatever ends a run — here a bug in a callback — ends it failed: the reason in status.json and
    on its MLflow run (FAILED), the traceback in error.log; never left `running`."""
    spec = RunSpec.model_validate(TINY_RUN)
    run_dir = tmp_path / "bug"
    bug = ZeroDivisionError("division by zero in a callback")
    outcome = launch.run_one(spec, run_dir, callbacks=(StopAt(3, bug),), tracking_uri=store_uri, label="bug")
    assert outcome.status == "failed"
    assert outcome.reason == f"ZeroDivisionError: division by zero in a callback (traceback in {run_dir / 'error.log'})"
    status = json.loads((run_dir / "status.json").read_text())
    assert status == {"status": "failed", "reason": outcome.reason}
    assert "ZeroDivisionError" in (run_dir / "error.log").read_text()
    _, runs = runs_of(store_uri)
    (run,) = [r for r in runs if r.data.tags.get("pdsweep.label") == "bug"]
    assert run.info.status == "FAILED" and run.data.tags["pdsweep.reason"] == outcome.reason


def test_an_unreachable_tracking_server_is_one_clear_error(tmp_path, shakespeare) -> None:
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(TINY_RUN))
    out = pdsweep("train", spec_file, "--out", tmp_path / "run", "--tracking-uri", "http://127.0.0.1:9")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "tracking: cannot reach the MLflow store http://127.0.0.1:9" in lines[0]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing trained
    with pytest.raises(UserError, match="cannot reach"):
        from pdsweep.run.tracking import MlflowTracker

        MlflowTracker("http://127.0.0.1:9")
