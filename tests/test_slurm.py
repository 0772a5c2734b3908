"""`pdsweep run --executor slurm` against a real single-node Slurm (scripts/slurm-cluster: munge,
MariaDB + slurmdbd, slurmctld, slurmd): every task a batch job with afterok dependencies, the same runs
and numbers as the local executor, a second run submits nothing, `--detach` and `pdsweep cancel`,
a 2-task `srun` run on gloo, a job warned with SIGUSR1 that checkpoints, requeues and ends where an
uninterrupted run ends, and a killed job whose reason reaches status.json and MLflow.

The profile checks and the job script are tested in-process without Slurm."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pdsweep.errors import UserError
from pdsweep.run import worker
from pdsweep.run.executors import Job, JobState, slurm
from pdsweep.spec import cluster
from tests.conftest import ROOT, lm_sweep, pd_sweep, pdsweep

SCRIPT = ROOT / "scripts" / "slurm-cluster"


# ----------------------------------------------------------------------------------------------
# Without Slurm: the profile, the job script, the rank environment
# ----------------------------------------------------------------------------------------------


def test_a_profile_merges_each_kind_over_the_defaults_and_bad_profiles_get_one_line(tmp_path) -> None:
    good = tmp_path / "gpu.yaml"
    good.write_text(
        "partition: gpu\naccount: lab\ntime: '2-00:00:00'\ngpus_per_node: 8\nmem: 500G\n"
        "setup: ['source ~/venv/bin/activate']\nlogits: {gpus_per_node: 1, time: '12:00:00'}\nbaseline: {nodes: 2}\n"
    )
    profile = cluster.load(good)
    assert profile.resources("logits").gpus_per_node == 1 and profile.resources("logits").partition == "gpu"
    assert profile.resources("baseline").nodes == 2 and profile.resources("baseline").gpus_per_node == 8
    assert profile.resources("student").time == "2-00:00:00"
    for text, field in [
        ("time: two days\n", "time"),
        ("gpus_per_node: -1\n", "gpus_per_node"),
        ("partiton: gpu\n", "partiton"),
        ("sbatch: ['exclusive']\n", "sbatch"),
        ("student: {mem: lots}\n", "student.mem"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(UserError) as e:
            cluster.load(bad)
        assert len(e.value.problems) == 1 and f"bad.yaml: {field}" in e.value.problems[0], e.value.problems


def test_bad_profile_or_detach_without_slurm_exit_2_before_anything_is_submitted(tmp_path, workdir) -> None:
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({**lm_sweep("slurm-bad", seeds=1), "cluster": {"time": "forever"}}))
    out = pdsweep("run", sweep, "--executor", "slurm")
    assert out.returncode == 2 and "cluster.time: must be a Slurm time limit" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not (workdir / "runs" / "slurm-bad").exists()
    sweep.write_text(yaml.safe_dump(lm_sweep("slurm-bad", seeds=1)))
    out = pdsweep("run", sweep, "--detach")
    assert out.returncode == 2 and "--detach: needs --executor slurm" in out.stderr, out.stderr
    out = pdsweep("run", sweep, "--executor", "pbs")
    assert out.returncode == 2 and "'pbs' is not an executor (local, slurm)" in out.stderr


def test_a_gpu_job_script_starts_one_process_per_gpu_on_every_node(tmp_path) -> None:
    profile = cluster.ClusterSpec.model_validate(
        {"partition": "gpu", "qos": "high", "gpus_per_node": 8, "nodes": 2, "cpus_per_task": 12, "time": "48:00:00",
         "sbatch": ["--exclusive"], "setup": ["module load cuda/12.4"], "logits": {"nodes": 1, "gpus_per_node": 1}}
    )  # fmt: skip
    ex = slurm.SlurmExecutor(profile, "paper")
    job = Job("abc", tmp_path / "task.json", tmp_path, tmp_path / "train.log", name="α = 0.9", kind="student")
    script = ex.script(job)
    for line in ["--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=12", "--time=48:00:00",
                 "--partition=gpu", "--qos=high", "--exclusive", "--signal=USR1@120", "--requeue",
                 f"--output={tmp_path / 'train.log'}", "--job-name=pdsweep:paper:__=_0.9"]:  # fmt: skip
        assert f"#SBATCH {line}\n" in script, (line, script)
    assert script.index("module load cuda/12.4") < script.index("srun --kill-on-bad-exit=1")
    assert f"-m pdsweep.run.worker {tmp_path / 'task.json'}" in script and 'scontrol requeue "$SLURM_JOB_ID"' in script
    one = ex.script(Job("p", tmp_path / "t.json", tmp_path, tmp_path / "g.log", kind="logits"))
    assert "#SBATCH --nodes=1\n" in one and "#SBATCH --gpus-per-node=1\n" in one and "--ntasks-per-node=1\n" in one
    # Every rank of a multi-process step takes its place in torch.distributed from Slurm's variables.
    env = {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "16", "SLURM_PROCID": "11", "SLURM_LOCALID": "3",
           "SLURM_NODEID": "1", "SLURM_STEP_TASKS_PER_NODE": "8(x2)", "SLURM_JOB_ID": "4242",
           "MASTER_ADDR": "node17"}  # fmt: skip
    ranks = worker.slurm_ranks(env)
    assert ranks == {
        "RANK": "11",
        "WORLD_SIZE": "16",
        "LOCAL_RANK": "3",
        "LOCAL_WORLD_SIZE": "8",
        "MASTER_PORT": "24242",
    }
    assert (
        worker.slurm_ranks({**env, "RANK": "0"}) == {}
        and worker.slurm_ranks({**env, "SLURM_STEP_NUM_TASKS": "1"}) == {}
    )


def test_a_jobs_end_is_explained_in_slurms_words() -> None:
    def ended(state: str, rc: int = 0, reason: str = "None") -> str:
        return slurm.explain(JobState("17", state, False, "gpu3", "1:00", rc, reason))

    assert ended("TIMEOUT") == "Slurm ended the job at its time limit (job 17 on gpu3)"
    assert ended("OUT_OF_MEMORY") == "Slurm killed the job: out of memory (job 17 on gpu3)"
    assert ended("FAILED", 137) == "the job failed with exit code 137 (job 17 on gpu3)"
    assert ended("CANCELLED", reason="DependencyNeverSatisfied").startswith("cancelled by Slurm: a task it depends")


# ----------------------------------------------------------------------------------------------
# Against a real Slurm
# ----------------------------------------------------------------------------------------------


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


@pytest.fixture(scope="module")
def slurm_cluster() -> object:
    """The test cluster (scripts/slurm-cluster up: installs and starts it, or finds it running); stopped
    at the end only if this fixture started it."""
    required = bool(os.environ.get("PDSWEEP_REQUIRE_SLURM"))
    if os.geteuid() != 0 or not shutil.which("apt-get") and not shutil.which("slurmctld"):
        if required:
            pytest.fail("a Slurm test cluster is required: run scripts/slurm-cluster up as root")
        pytest.skip("needs root (and Debian's Slurm packages) to start a test Slurm cluster")
    where = Path(os.environ.get("PDSWEEP_SLURM_DIR", "/tmp/pdsweep-slurm"))
    started = not _alive(where / "slurmctld.pid")
    up = subprocess.run([str(SCRIPT), "up", str(where)], capture_output=True, text=True, timeout=600)
    if up.returncode != 0:
        if required:
            pytest.fail(f"scripts/slurm-cluster up failed: {up.stderr[-2000:]}")
        pytest.skip(f"cannot start a test Slurm cluster: {up.stderr.strip()[-300:]}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(where / "etc" / "slurm.conf"))
        yield where
    if started:
        subprocess.run([str(SCRIPT), "down", str(where)], capture_output=True, timeout=120)


def _our_jobs(sweep: str) -> list[str]:
    """The sweep's jobs Slurm still has queued or running."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%j"], capture_output=True, text=True).stdout
    return [line.split("|")[0] for line in out.splitlines() if f":{sweep}:" in line]


def _results(root: Path) -> dict[str, dict]:
    return {d.name: json.loads((d / "result.json").read_text()) for d in root.iterdir() if (d / "result.json").exists()}


@pytest.mark.slow
def test_a_pd_sweep_through_slurm_equals_the_local_one_and_a_second_run_submits_nothing(
    tmp_path, workdir, shakespeare, slurm_cluster
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    paths = {}
    for where in ("local", "slurm"):
        paths[where] = tmp_path / f"{where}.yaml"
        sweep = pd_sweep(f"pd-{where}", 8, 8, seeds=2)
        if where == "slurm":  # the teacher pass as a job array of two ranks
            sweep["cluster"] = {"logits": {"array": 2}}
        paths[where].write_text(yaml.safe_dump(sweep))
    local = pdsweep("run", paths["local"], "--tracking-uri", uri, "--workers", "2", timeout=900)
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    through = pdsweep(
        "run", paths["slurm"], "--executor", "slurm", "--tracking-uri", uri, "--no-reuse", timeout=900
    )  # trains them itself
    assert through.returncode == 0, through.stdout[-3000:] + through.stderr[-3000:]
    a, b = _results(workdir / "runs" / "pd-local"), _results(workdir / "runs" / "pd-slurm")
    assert len(a) == 4 and a.keys() == b.keys()  # the same run ids: a teacher, a baseline and 2 students
    assert "4 of 4 runs done" in through.stdout
    for rid in a:  # and the same numbers, to the last bit
        assert {k: a[rid][k] for k in ("train/loss", "heldout/loss")} == {
            k: b[rid][k] for k in ("train/loss", "heldout/loss")
        }
    # Every task ran as a Slurm job, students after (afterok) their teacher's pass.
    jobs = {
        d.name: json.loads((d / "job.json").read_text())
        for d in (workdir / "runs" / "pd-slurm").rglob("*")
        if (d / "job.json").exists()
    }
    assert len(jobs) == 5  # the runs and the teacher's logits pass
    script = next(Path(j["script"]).read_text() for j in jobs.values())
    assert "srun" in script
    (store,) = [d for d in (workdir / "runs" / "pd-slurm" / "logits").iterdir() if d.is_dir()]
    assert "#SBATCH --array=0-1" in (store / "job.sbatch").read_text()
    log = (store / "generate.log").read_text()
    assert "rank 0 of 2" in log and "rank 1 of 2" in log, log[-2000:]
    reports = {w: pdsweep("report", paths[w], "--tracking-uri", uri) for w in paths}
    for out in reports.values():
        assert out.returncode == 0, out.stderr

    def table(text: str) -> list[str]:
        return [line for line in text.splitlines() if "±" in line]

    assert table(reports["local"].stdout) == table(reports["slurm"].stdout) and table(reports["slurm"].stdout)
    # Slurm's view beside pdsweep's.
    status = pdsweep("status", paths["slurm"], "--json")
    rows = json.loads(status.stdout)
    assert all(r["status"] == "done" and r["job"]["state"] == "COMPLETED" for r in rows), rows
    # Again: nothing is submitted.
    again = pdsweep("run", paths["slurm"], "--executor", "slurm", "--tracking-uri", uri, timeout=300)
    assert again.returncode == 0 and "4 of 4 runs done" in again.stdout
    after = {
        d.name: json.loads((d / "job.json").read_text())
        for d in (workdir / "runs" / "pd-slurm").rglob("*")
        if (d / "job.json").exists()
    }
    assert after == jobs


@pytest.mark.slow
def test_detach_adopt_cancel_then_resume(tmp_path, workdir, shakespeare, slurm_cluster) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(lm_sweep("slurm-detach", steps=400, lrs=(0.003,), seeds=2, checkpoint_every=20)))
    first = pdsweep("run", path, "--executor", "slurm", "--detach", "--no-track", "--no-reuse")
    assert first.returncode == 0 and "2 job(s) submitted, 0 already queued or running" in first.stdout, (
        first.stdout + first.stderr
    )
    jobs = sorted(_our_jobs("slurm-detach"))
    assert len(jobs) == 2
    second = pdsweep(
        "run", path, "--executor", "slurm", "--detach", "--no-track", "--no-reuse"
    )  # while they are queued or running
    assert second.returncode == 0 and "0 job(s) submitted, 2 already queued or running" in second.stdout, second.stdout
    assert sorted(_our_jobs("slurm-detach")) == jobs
    root = workdir / "runs" / "slurm-detach"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(root.glob("*/checkpoints/LATEST")):
        time.sleep(0.5)
    status = json.loads(pdsweep("status", path, "--json").stdout)
    assert {r["job"]["id"] for r in status} == set(jobs) and any(r["status"] == "running" for r in status), status
    cancelled = pdsweep("cancel", path)
    assert cancelled.returncode == 0 and "cancelled 2 job(s)" in cancelled.stdout, cancelled.stdout + cancelled.stderr
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _our_jobs("slurm-detach"):
        time.sleep(0.5)
    assert _our_jobs("slurm-detach") == []  # no job left behind
    states = [
        json.loads((d / "status.json").read_text())["status"] for d in root.iterdir() if (d / "status.json").exists()
    ]
    assert "interrupted" in states and "running" not in states, states
    resumed = pdsweep("run", path, "--executor", "slurm", "--no-track", "--no-reuse", timeout=900)
    assert resumed.returncode == 0 and "2 of 2 runs done" in resumed.stdout, (
        resumed.stdout[-3000:] + resumed.stderr[-2000:]
    )
    assert any(r["resumed_from"] > 0 for r in _results(root).values())


@pytest.mark.slow
def test_a_warned_job_checkpoints_requeues_and_ends_like_an_uninterrupted_run(
    tmp_path, workdir, shakespeare, slurm_cluster
) -> None:
    sweep = lm_sweep("slurm-warned", steps=120, lrs=(0.003,), seeds=1, checkpoint_every=1000)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    ref_path = tmp_path / "ref.yaml"
    ref_path.write_text(yaml.safe_dump({**sweep, "name": "slurm-uninterrupted"}))
    ref = pdsweep("run", ref_path, "--no-track", timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = pdsweep("run", path, "--executor", "slurm", "--detach", "--no-track", "--no-reuse")  # not the reference's
    assert out.returncode == 0, out.stdout + out.stderr
    (job_id,) = _our_jobs("slurm-warned")
    run_dir = next(d for d in (workdir / "runs" / "slurm-warned").iterdir() if d.is_dir())
    deadline = time.monotonic() + 300
    while (
        time.monotonic() < deadline
        and len((run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else [])
        < 10
    ):
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True)  # Slurm's warning before a time limit
    waited = pdsweep(
        "run", path, "--executor", "slurm", "--no-track", "--no-reuse", timeout=900
    )  # adopts the job and waits
    assert waited.returncode == 0 and "1 of 1 runs done" in waited.stdout, waited.stdout[-3000:] + waited.stderr[-2000:]
    log = (run_dir / "train.log").read_text()
    assert "requeueing job" in log and "attempt 2" in log, log[-3000:]
    assert _our_jobs("slurm-warned") == [] and json.loads((run_dir / "job.json").read_text())["job_id"] == job_id
    (result,) = _results(workdir / "runs" / "slurm-warned").values()
    (reference,) = _results(workdir / "runs" / "slurm-uninterrupted").values()
    assert 0 < result["resumed_from"] < 120  # the checkpoint written on the warning
    assert result["train/loss"] == reference["train/loss"] and result["heldout/loss"] == reference["heldout/loss"]


@pytest.mark.slow
def test_a_two_task_cpu_run_under_srun_trains_with_gloo(tmp_path, workdir, shakespeare, slurm_cluster) -> None:
    sweep = lm_sweep("slurm-srun", steps=6, lrs=(0.003,), seeds=1, backend="deepspeed", zero_stage=3, micro_batch=8)
    sweep["baseline"] = None
    sweep["cluster"] = {"tasks_per_node": 2}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    out = pdsweep("run", path, "--executor", "slurm", "--no-track", timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (result,) = _results(workdir / "runs" / "slurm-srun").values()
    assert result["world_size"] == 2 and result["backend"] == "deepspeed" and result["step"] == 6


@pytest.mark.slow
def test_a_killed_job_fails_with_slurms_reason_in_status_and_mlflow(
    tmp_path, workdir, shakespeare, slurm_cluster
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(lm_sweep("slurm-killed", steps=2000, lrs=(0.003,), seeds=1)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = subprocess.Popen(
        [*pdsweep_cmd(), "run", str(path), "--executor", "slurm", "--tracking-uri", uri, "--no-reuse"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    root = workdir / "runs" / "slurm-killed"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(root.glob("*/metrics.jsonl")):
        time.sleep(0.2)
    (job_id,) = _our_jobs("slurm-killed")
    run_dir = next(d for d in root.iterdir() if (d / "metrics.jsonl").exists())
    os.kill(json.loads((run_dir / "status.json").read_text())["pid"], signal.SIGKILL)  # as the OOM killer would
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 1, stdout[-2000:] + stderr[-2000:]
    state = json.loads((run_dir / "status.json").read_text())
    assert state["status"] == "failed" and f"(job {job_id} on " in state["reason"], state
    tracked = json.loads((run_dir / "tracking.json").read_text())
    mlflow_run = MlflowClient(tracking_uri=uri).get_run(tracked["mlflow_run_id"])
    assert mlflow_run.info.status == "FAILED" and mlflow_run.data.tags["pdsweep.reason"] == state["reason"]
    status = pdsweep("status", path)
    assert "failed" in status.stdout and job_id in status.stdout


def pdsweep_cmd() -> list[str]:
    import sys

    return [sys.executable, "-m", "pdsweep.cli"]


@pytest.mark.slow
def test_tune_with_two_slurm_workers_runs_each_trial_once(tmp_path, workdir, shakespeare, slurm_cluster) -> None:
    import optuna

    from pdsweep.run import search

    sweep = lm_sweep("slurm-tune", steps=10, seeds=1, checkpoint_every=5)
    sweep["baseline"] = None
    sweep["grid"] = {}
    sweep["search"] = {"params": {"optim.lr": {"type": "float", "low": 0.001, "high": 0.03, "log": True}}, "trials": 3,
                       "sampler": "random"}  # fmt: skip
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    out = pdsweep("tune", path, "--storage", url, "--workers", "2", "--executor", "slurm", "--no-track", timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    with search.quiet():
        trials = optuna.load_study(study_name="slurm-tune", storage=url).get_trials()
    assert len(trials) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), trials
    homes = sorted((workdir / "runs" / "slurm-tune" / "tune").glob("worker-*/job.json"))
    assert len(homes) == 2 and len({json.loads(h.read_text())["job_id"] for h in homes}) == 2
    assert "[worker 1]" in out.stdout


@pytest.mark.slow
def test_a_job_that_fails_before_pdsweep_starts_says_so(tmp_path, workdir, slurm_cluster) -> None:
    sweep = {**lm_sweep("slurm-setup", steps=4, lrs=(0.003,), seeds=1), "baseline": None}
    sweep["cluster"] = {"setup": ["echo 'no such module: cuda/99' >&2", "exit 3"]}  # a broken environment line
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    out = pdsweep("run", path, "--executor", "slurm", "--no-track", "--no-reuse", timeout=300)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    (run_dir,) = [d for d in (workdir / "runs" / "slurm-setup").iterdir() if d.is_dir()]
    state = json.loads((run_dir / "status.json").read_text())
    assert state["status"] == "failed" and state["reason"].startswith("the job failed with exit code 3 (job "), state
    assert "no such module: cuda/99" in (run_dir / "train.log").read_text()


def test_a_job_array_is_one_job_and_a_pass_rank_comes_from_its_launcher(tmp_path) -> None:
    from pdsweep.logits import teacher_pass

    sl = slurm

    rows = [
        JobState("7_0", "COMPLETED", False, "n1"),
        JobState("7_1", "RUNNING", True, "n2", "0:10"),
        JobState("7_[2-3]", "PENDING", True, reason="Resources"),
        JobState("8", "FAILED", False, "n1", exit_code=3),
    ]
    got = sl._gather(rows, ["7", "8", "9"])
    assert set(got) == {"7", "8"}
    assert got["7"].live and got["7"].state == "RUNNING" and got["7"].node == "n1,n2"
    assert got["8"].state == "FAILED" and got["8"].exit_code == 3 and got["8"].job_id == "8"
    done = sl._gather([JobState("7_0", "COMPLETED", False), JobState("7_1", "FAILED", False, exit_code=1)], ["7"])
    assert not done["7"].live and done["7"].state == "FAILED" and done["7"].exit_code == 1

    assert teacher_pass.pass_rank({}) == (0, 1)
    assert teacher_pass.pass_rank({"RANK": "3", "WORLD_SIZE": "8"}) == (3, 8)
    assert teacher_pass.pass_rank({"SLURM_STEP_ID": "0", "SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "4"}) == (2, 4)
    array = {"RANK": "1", "WORLD_SIZE": "2", "SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert teacher_pass.pass_rank(array) == (7, 8)  # array task 3 of 4, rank 1 of its 2
    ex = sl.SlurmExecutor(cluster.ClusterSpec.model_validate({"logits": {"array": 4}}), "s")
    job = {
        kind: Job("p", tmp_path / "t.json", tmp_path, tmp_path / "g.log", kind=kind) for kind in ("logits", "student")
    }
    assert "#SBATCH --array=0-3" in ex.script(job["logits"]) and "--array" not in ex.script(job["student"])
