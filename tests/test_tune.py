"""`pdsweep tune`: Optuna studies whose trials are runs — on sqlite, on a real PostgreSQL server with
two concurrent workers, and resumed after a worker is killed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pdsweep.run import search
from pdsweep.spec import expand
from tests.conftest import free_port, pdsweep


def _tune_sweep(name: str, trials: int, steps: int = 10, interval: int = 3) -> dict:
    """LM-only tiny runs with a searched learning rate: seconds per trial."""
    return {
        "name": name,
        "base": {
            "student": "tiny-xs",
            "loss": {"alpha": 0},
            "data": {"tokenizer": {"kind": "bpe", "vocab_size": 2048}, "seq_len": 64, "tokens": 64 * 16 * steps},
            "train": {"global_batch": 16, "micro_batch": 16, "backend": "torch", "checkpoint_every": 2},
            "eval": {"interval": interval, "heldout_tokens": 2048},
        },
        "search": {
            "params": {"optim.lr": {"type": "float", "low": 0.001, "high": 0.03, "log": True}},
            "trials": trials,
            "sampler": "random",
        },
    }


def _write(tmp_path: Path, sweep: dict) -> Path:
    path = tmp_path / f"{sweep['name']}.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def _study(name: str, url: str) -> optuna.Study:
    with search.quiet():
        return optuna.load_study(study_name=name, storage=url)


def test_search_space_conditional_params_grid_and_trial_runs(tmp_path) -> None:
    sweep = expand.load_sweep(
        _write(
            tmp_path,
            {
                "name": "space",
                "base": {"student": "tiny-xs", "teacher": "run:t", "loss": {"kd": "kld"}},
                "teachers": {"t": {"student": "tiny-s"}},
                "search": {
                    "params": {
                        "loss.alpha.kind": {"type": "categorical", "choices": ["constant", "wsd_alpha"]},
                        "loss.alpha.value": {
                            "type": "float",
                            "low": 0.1,
                            "high": 1.0,
                            "when": {"loss.alpha.kind": "constant"},
                        },
                        "loss.alpha.max": {
                            "type": "float",
                            "low": 0.5,
                            "high": 1.0,
                            "step": 0.25,
                            "when": {"loss.alpha.kind": "wsd_alpha"},
                        },
                    },
                    "sampler": "grid",
                },
            },
        )
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        params = search.suggest(study.ask(), sweep.search.params)
        kind = params["loss.alpha.kind"]
        assert set(params) == {"loss.alpha.kind", "loss.alpha.value" if kind == "constant" else "loss.alpha.max"}
        seen.add(kind)
        runs = search.trial_runs(sweep, params, 7, "space.yaml")
        assert [r.role for r in runs] == ["teacher", "student"] and runs[-1].label == "trial 7"
        assert runs[-1].spec.loss.alpha.kind == kind
    assert seen == {"constant", "wsd_alpha"}
    with pytest.raises(Exception, match="sampler grid needs a step"):
        search.grid_space(sweep.search)
    grid = search.grid_space(
        sweep.search.model_copy(
            update={"params": {k: v for k, v in sweep.search.params.items() if k != "loss.alpha.value"}}
        )
    )
    assert grid == {"loss.alpha.kind": ["constant", "wsd_alpha"], "loss.alpha.max": [0.5, 0.75, 1.0]}


@pytest.mark.slow
def test_a_sqlite_study_two_workers_exact_count_tagged_runs_best_spec(tmp_path, workdir, shakespeare) -> None:
    path = _write(tmp_path, _tune_sweep("tune-sqlite", trials=4))
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = pdsweep("tune", path, "--workers", "2", "--storage", url, "--tracking-uri", mlflow_uri, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    study = _study("tune-sqlite", url)
    trials = study.get_trials()
    assert len(trials) == 4 and sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    # Each trial is one run of the sweep, in its run directory, tagged in MLflow with study and number.
    client = MlflowClient(tracking_uri=mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("tune-sqlite").experiment_id])
    tagged = sorted(
        int(r.data.tags["pdsweep.trial"]) for r in runs if r.data.tags.get("pdsweep.study") == "tune-sqlite"
    )
    assert tagged == [0, 1, 2, 3]
    for t in trials:
        assert (workdir / "runs" / "tune-sqlite" / t.user_attrs["run_id"] / "spec.yaml").exists()
    # The best trial, printed as a RunSpec that `pdsweep train` accepts.
    assert "best trial, as a RunSpec:" in out.stdout
    spec_text = out.stdout.split("best trial, as a RunSpec:\n", 1)[1]
    best = tmp_path / "best.yaml"
    best.write_text(spec_text)
    spec = expand.load_run(best)
    assert spec.optim.lr == pytest.approx(study.best_params["optim.lr"])
    # Running it again does nothing: the study has its trials.
    again = pdsweep("tune", path, "--storage", url, "--tracking-uri", mlflow_uri, timeout=300)
    assert again.returncode == 0 and len(_study("tune-sqlite", url).get_trials()) == 4
    status = pdsweep("tune", "status", path, "--storage", url, "--out", tmp_path / "report")
    assert status.returncode == 0 and "4 of 4 trials" in status.stdout
    md = (tmp_path / "report" / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("|"))
    assert [c.strip() for c in header.strip("|").split("|")][:3] == ["trial", "state", "value"]
    assert "- machine:" in md and "Best trial, as a RunSpec:" in md and "```yaml" in md
    assert "- storage: sqlite:///…/" in md and str(tmp_path) not in md  # no path of this machine
    assert len((tmp_path / "report" / "trials.csv").read_text().splitlines()) == 5


def test_tune_bad_input_is_one_line(tmp_path) -> None:
    sweep = _tune_sweep("tune-bad", trials=2)
    del sweep["search"]
    path = _write(tmp_path, sweep)
    out = pdsweep("tune", path)
    assert out.returncode == 2 and out.stderr.strip() == f"error: {path}: search: the sweep has no search space"
    good = _write(tmp_path, _tune_sweep("tune-bad2", trials=2))
    bad_url = pdsweep("tune", good, "--storage", "postgresql://nobody@127.0.0.1:1/none")
    assert bad_url.returncode == 2 and "cannot open the Optuna storage" in bad_url.stderr
    assert len(bad_url.stderr.strip().splitlines()) == 1
    none = pdsweep("tune", "status", good, "--storage", f"sqlite:///{tmp_path / 'empty.db'}")
    assert none.returncode == 2 and "no study 'tune-bad2' yet" in none.stderr
    assert not (tmp_path / "empty.db").exists()  # looking creates nothing


@pytest.mark.slow
def test_tune_in_an_empty_directory_and_a_study_whose_trials_all_fail(tmp_path, shakespeare) -> None:
    """The README's example from a fresh directory (no work directory, no study yet) runs; a study
    whose every trial fails says so and exits non-zero."""
    from tests.conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k not in ("PDSWEEP_WORKDIR", "PDSWEEP_OPTUNA_STORAGE")}
    env["COLUMNS"] = "200"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "pdsweep.cli", *args]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)

    status = run("tune", "status", str(ROOT / "docs/examples/tiny-tune.yaml"))
    assert status.returncode == 2 and "no study 'tiny-tune' yet" in status.stderr
    assert list(tmp_path.iterdir()) == []
    out = run("tune", str(ROOT / "docs/examples/tiny-tune.yaml"), "--trials", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "pdsweep-work" / "optuna.db").exists() and "2 of 2 trials, 0 failed" in out.stdout
    failing = _tune_sweep("tune-all-fail", trials=2)
    failing["search"]["params"] = {"data.corpus": {"type": "categorical", "choices": [str(tmp_path / "gone.txt")]}}
    failing["search"]["max_failures"] = 1
    bad = run("tune", str(_write(tmp_path, failing)))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "every trial of the study failed (2)" in bad.stderr and "gone.txt does not exist" in bad.stdout


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server on 127.0.0.1 (Debian's postgresql), with a database for the study."""
    bindir = next((Path(p).parent for p in [shutil.which("pg_ctl")] if p), None)
    if bindir is None:
        for cand in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
            bindir = cand
            break
    if bindir is None or not (bindir / "initdb").exists() and not shutil.which("initdb"):
        if os.environ.get("PDSWEEP_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is required (apt-get install postgresql)")
        pytest.skip("needs PostgreSQL (apt-get install postgresql)")
    initdb = shutil.which("initdb") or str(bindir / "initdb")
    pg_ctl = shutil.which("pg_ctl") or str(bindir / "pg_ctl")
    import tempfile

    where = Path(tempfile.mkdtemp(prefix="pdsweep-pg-"))  # not under pytest's 0700 tmp: the server's user reads it
    data = where / "data"
    user = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: use the postgres system user
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(where, pw.pw_uid, pw.pw_gid)
        user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*user, initdb, "-D", str(data), "-U", "pdsweep", "--auth", "trust"], check=True, capture_output=True
    )
    port = free_port()
    opts = f"-h 127.0.0.1 -p {port} -k {where}"
    subprocess.run(
        [*user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(where / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    url = f"postgresql://pdsweep@127.0.0.1:{port}/postgres"
    yield url
    subprocess.run([*user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(where, ignore_errors=True)


@pytest.mark.slow
def test_two_concurrent_workers_on_postgresql_run_each_trial_once(tmp_path, workdir, shakespeare, postgres) -> None:
    path = _write(tmp_path, _tune_sweep("tune-pg", trials=5))
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    created = pdsweep("tune", "status", path, "--storage", postgres)
    assert created.returncode == 2  # no study yet
    search.create(expand.load_sweep(path), str(path), postgres)  # what `pdsweep tune` does before its workers
    env = {**os.environ, "PDSWEEP_WORKDIR": str(workdir), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pdsweep.cli", "tune", str(path), "--storage", postgres, "--tracking-uri", mlflow_uri]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    study = _study("tune-pg", postgres)
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3, 4]  # exactly the study's count
    assert len({t.user_attrs["run_id"] for t in trials}) == 5  # each trial its own run (the workers draw differently)
    ran = [line for out, _ in outs for line in out.splitlines() if line.startswith("trial ")]
    assert sorted(int(line.split()[1].rstrip(":")) for line in ran) == [0, 1, 2, 3, 4]  # each ran once
    assert all(len([x for x in ran if x.startswith(f"trial {n}:")]) == 1 for n in range(5))
    client = MlflowClient(tracking_uri=mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("tune-pg").experiment_id])
    assert sorted(int(r.data.tags["pdsweep.trial"]) for r in runs if "pdsweep.trial" in r.data.tags) == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_a_killed_study_resumes_its_stale_trial(tmp_path, workdir, shakespeare) -> None:
    path = _write(tmp_path, _tune_sweep("tune-kill", trials=2, steps=40, interval=10))
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    env = {**os.environ, "PDSWEEP_WORKDIR": str(workdir), "PDSWEEP_TUNE_HEARTBEAT_S": "1", "PDSWEEP_TUNE_GRACE_S": "3"}
    cmd = [sys.executable, "-m", "pdsweep.cli", "tune", str(path), "--storage", url, "--no-track"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    run_dir = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run_dir is None:  # wait until trial 0 has checkpointed
        time.sleep(0.5)
        for d in (workdir / "runs" / "tune-kill").glob("*/checkpoints/*"):
            run_dir = d.parent.parent
    assert run_dir is not None, proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "no checkpoint"
    import json

    child = json.loads((run_dir / "status.json").read_text()).get("pid")
    os.killpg(proc.pid, signal.SIGKILL)  # the worker and its trial's training process: no goodbye
    if child:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    proc.wait()
    killed_at = int((run_dir / "checkpoints" / "LATEST").read_text().strip().removeprefix("step_"))
    assert killed_at > 0
    time.sleep(4)  # past the grace period: trial 0's heartbeat is stale
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    trials = _study("tune-kill", url).get_trials()
    states = {t.number: t.state.name for t in trials}
    assert states[0] == "FAIL"  # the killed trial ...
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == 0)
    assert retry.state.name in ("COMPLETE", "PRUNED")  # ... was run again, with its parameters,
    assert retry.params == trials[0].params and retry.user_attrs["run_id"] == run_dir.name  # in its run directory
    assert search.counted(_study("tune-kill", url)) == (2, 0)  # and the study still has exactly 2 trials
    assert json.loads((run_dir / "result.json").read_text())["resumed_from"] == killed_at  # from its checkpoint


def test_a_committed_report_shows_the_work_directory_as_a_placeholder(tmp_path, monkeypatch) -> None:
    from pdsweep import settings

    monkeypatch.setenv("PDSWEEP_WORKDIR", str(tmp_path / "work"))
    text = f"source: ckpt:{tmp_path / 'work'}/runs/tune-x/b0fa2a1c2904\nother: {tmp_path}/elsewhere"
    assert settings.shown_paths(text) == f"source: ckpt:<workdir>/runs/tune-x/b0fa2a1c2904\nother: {tmp_path}/elsewhere"
