"""Experiment tracking: a small Tracker protocol, MLflow behind it, and a null object.

A run is one MLflow run in the experiment of its sweep (`single` for `pdsweep train`), with the
flattened RunSpec as params (`logits.top_p`, ...), step metrics (training: `loss`, `lr`, ...;
evaluation: `eval/heldout/loss`, ...), tags `pdsweep.run_id`, `pdsweep.sweep`, `pdsweep.label`,
`pdsweep.status`, `pdsweep.reason`, and the resolved spec as an artifact. The MLflow run id is kept
in the run directory, so a resumed run continues its own MLflow run instead of starting another.

The default tracking URI is `sqlite:///<workdir>/mlflow.db` (the embedded default); a server is
given with `--tracking-uri` or MLFLOW_TRACKING_URI. An unreachable store is one clear error before
any training starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pdsweep import files, proc, rundir, settings
from pdsweep.errors import UserError
from pdsweep.spec import RunSpec

EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
"""Training runs, not GenAI traces: the MLflow UI opens a sweep's experiment on its runs table."""


def default_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{settings.workdir() / 'mlflow.db'}"


def check_exists(uri: str, sweep: str | None = None) -> None:
    """A reader (report, ui) of a sqlite store that does not exist says so instead of creating it."""
    file = settings.sqlite_file(uri)
    if file is not None and not file.exists():
        what = f"nothing of {sweep!r} was tracked" if sweep else "nothing was tracked"
        raise UserError(f"tracking: no MLflow store at {uri} yet: {what} (run the sweep first)")


def _fail_fast() -> None:
    """An unreachable MLflow server answers in seconds, not after MLflow's retries with backoff."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"logits": {"top_p": 0.95}} → {"logits.top_p": 0.95} (lists stay values)."""
    if not isinstance(data, dict):
        return {prefix.rstrip("."): data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


class Tracker(Protocol):
    def start_sweep(self, sweep: str, sweep_dir: Path, sweep_file: Path | None, runs: int) -> str | None: ...
    def start(self, spec: RunSpec, run_dir: Path, run_id: str, label: str, sweep: str) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: Path) -> None: ...
    def finish(self, status: str, reason: str = "") -> None: ...
    def copy_run(
        self, src_dir: Path, dst_dir: Path, *, sweep: str, label: str, seed: int, reused_from: str, parent: str | None
    ) -> None: ...


def make(uri: str | None, track: bool = True) -> Tracker:
    """The tracker of `--tracking-uri` (MlflowTracker, which fails here on an unreachable store), or a
    NullTracker for `--no-track`: callers never branch on whether they track."""
    return MlflowTracker(uri) if track else NullTracker()


class NullTracker:
    """Tracks nothing (`--no-track`)."""

    def start_sweep(self, sweep: str, sweep_dir: Path, sweep_file: Path | None, runs: int) -> str | None:
        return None

    def start(self, spec: RunSpec, run_dir: Path, run_id: str, label: str, sweep: str) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: Path) -> None:
        pass

    def finish(self, status: str, reason: str = "") -> None:
        pass

    def copy_run(
        self, src_dir: Path, dst_dir: Path, *, sweep: str, label: str, seed: int, reused_from: str, parent: str | None
    ) -> None:
        pass


class MlflowTracker:
    """Logs to an MLflow tracking store (a sqlite file or a server) through MlflowClient."""

    def __init__(self, uri: str | None = None):
        self.uri = uri or default_uri()
        _fail_fast()
        from mlflow.tracking import MlflowClient

        with contextlib.ExitStack() as stack:
            if self.uri.startswith("sqlite:///"):
                # Processes opening a brand-new sqlite store at once race creating its tables: one at a time.
                import fcntl

                db = Path(self.uri.removeprefix("sqlite:///"))
                db.parent.mkdir(parents=True, exist_ok=True)
                lock = stack.enter_context(open(db.with_name(db.name + ".lock"), "a+"))
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self.client = MlflowClient(tracking_uri=self.uri)
                self.client.search_experiments(max_results=1)
            except Exception as e:  # noqa: BLE001 - any failure here means the store is unusable
                raise UserError(
                    f"tracking: cannot reach the MLflow store {self.uri} ({proc.first_line(e, 200)})"
                ) from None
        self.run: str | None = None
        self.logged: dict[str, int] = {}  # a continued run: the last step each metric has a point at

    def start(self, spec: RunSpec, run_dir: Path, run_id: str, label: str, sweep: str) -> None:
        state_file = rundir.tracking_file(run_dir)
        known = files.read_json(state_file) if state_file.exists() else {}
        if known.get("uri") == self.uri and known.get("mlflow_run_id"):
            self.run = known["mlflow_run_id"]  # a resumed run continues its own MLflow run
            self.client.set_tag(self.run, "pdsweep.status", "running")
            # Steps the killed attempt logged after its checkpoint (or before any) come again, with the
            # same values (resume is exact): each metric's points are logged once.
            for key in self.client.get_run(self.run).data.metrics:
                self.logged[key] = max((m.step for m in self.client.get_metric_history(self.run, key)), default=-1)
            return
        exp_id = self.experiment(sweep)
        tags = {"pdsweep.run_id": run_id, "pdsweep.sweep": sweep, "pdsweep.label": label, "pdsweep.status": "running"}
        tags.update(json.loads(os.environ.get("PDSWEEP_MLFLOW_TAGS") or "{}"))  # e.g. a tune trial's study/number
        parent = os.environ.get("PDSWEEP_MLFLOW_PARENT_RUN")
        if parent:
            tags["mlflow.parentRunId"] = parent  # nested under the sweep's run in the MLflow UI
        run = self.client.create_run(exp_id, run_name=run_name(label, sweep, spec.train.seed), tags=tags)
        self.run = run.info.run_id
        from mlflow.entities import Param

        params = [
            Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v))
            for k, v in flatten(spec.model_dump(mode="json")).items()
        ]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run, params=params[i : i + 100])
        if rundir.spec_file(run_dir).exists():
            self.client.log_artifact(self.run, str(rundir.spec_file(run_dir)))
        files.write_json(state_file, {"uri": self.uri, "mlflow_run_id": self.run, "experiment": sweep})

    def experiment(self, sweep: str) -> str:
        """The id of the sweep's experiment, created on first use."""
        exp = self.client.get_experiment_by_name(sweep)
        if exp is not None:
            if exp.tags.get(EXPERIMENT_KIND[0]) is None:
                self.client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
            return str(exp.experiment_id)
        # Artifacts beside a sqlite store, not in ./mlruns of whatever directory we run in.
        where = (
            Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts" / sweep
            if self.uri.startswith("sqlite:///")
            else None
        )
        try:
            return str(
                self.client.create_experiment(
                    sweep, artifact_location=where.as_uri() if where else None, tags=dict([EXPERIMENT_KIND])
                )
            )
        except Exception:  # noqa: BLE001 - created concurrently by another run of the sweep
            exp = self.client.get_experiment_by_name(sweep)
            if exp is None:
                raise
            return str(exp.experiment_id)

    def start_sweep(self, sweep: str, sweep_dir: Path, sweep_file: Path | None, runs: int) -> str:
        """The sweep's parent run (one per sweep and store, continued when the sweep runs again)."""
        import fcntl

        sweep_dir.mkdir(parents=True, exist_ok=True)
        with open(sweep_dir / ".tracking.lock", "a+") as lock:  # two `pdsweep run` of a sweep: one parent
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._start_sweep(sweep, sweep_dir, sweep_file, runs)

    def _start_sweep(self, sweep: str, sweep_dir: Path, sweep_file: Path | None, runs: int) -> str:
        state_file = sweep_dir / "tracking.json"
        known = files.read_json(state_file) if state_file.exists() else {}
        if known.get("uri") == self.uri and known.get("mlflow_run_id"):
            self.run = known["mlflow_run_id"]
            self.client.update_run(self.run, status="RUNNING")
            self.client.set_tag(self.run, "pdsweep.status", "running")
            return self.run
        exp_id = self.experiment(sweep)
        tags = {"pdsweep.sweep": sweep, "pdsweep.kind": "sweep", "pdsweep.status": "running"}
        self.run = self.client.create_run(exp_id, run_name=sweep, tags=tags).info.run_id
        self.client.log_param(self.run, "runs", runs)
        if sweep_file is not None and sweep_file.exists():
            self.client.log_artifact(self.run, str(sweep_file))
        files.write_json(state_file, {"uri": self.uri, "mlflow_run_id": self.run, "experiment": sweep})
        return self.run

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and step > self.logged.get(k, -1)
        ]
        if self.run is not None and batch:
            self.client.log_batch(self.run, metrics=batch)

    def log_artifact(self, path: Path) -> None:
        if self.run is not None:
            self.client.log_artifact(self.run, str(path))

    def finish(self, status: str, reason: str = "") -> None:
        if self.run is None:
            return
        self.client.set_tag(self.run, "pdsweep.status", status)
        if reason:
            self.client.set_tag(self.run, "pdsweep.reason", reason[:5000])
        self.client.set_terminated(self.run, status={"done": "FINISHED", "failed": "FAILED"}.get(status, "KILLED"))

    def copy_run(
        self, src_dir: Path, dst_dir: Path, *, sweep: str, label: str, seed: int, reused_from: str, parent: str | None
    ) -> None:
        """Track a run directory copied from another sweep (run/reuse.py) in `sweep`'s experiment: a new
        MLflow run with the source run's params, every point of every metric, its artifacts and its tags
        (its sweep and label this sweep's, `pdsweep.reused_from` added), nested under the sweep's run
        `parent`, ended as the source ended.
        UserError when the source run cannot be read."""
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # not over the live view
        from mlflow.artifacts import download_artifacts
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        known = files.read_json(rundir.tracking_file(src_dir)) if rundir.tracking_file(src_dir).exists() else {}
        if not known.get("mlflow_run_id"):
            raise UserError(f"{src_dir}: the run was not tracked (no {rundir.TRACKING})")
        try:
            source = MlflowClient(tracking_uri=known["uri"])
            src = source.get_run(known["mlflow_run_id"])
        except Exception as e:  # noqa: BLE001 - any failure here means the source cannot be copied
            raise UserError(f"{src_dir}: cannot read its MLflow run ({proc.first_line(e, 200)})") from None
        keep = {k: v for k, v in src.data.tags.items() if not k.startswith("mlflow.")}
        tags = {"pdsweep.sweep": sweep, "pdsweep.label": label, "pdsweep.reused_from": reused_from}
        tags.update(json.loads(os.environ.get("PDSWEEP_MLFLOW_TAGS") or "{}"))  # as `start` does: a tune trial's
        run = self.client.create_run(
            self.experiment(sweep),
            run_name=run_name(label, sweep, seed),
            start_time=src.info.start_time,
            tags={**keep, **tags, **({"mlflow.parentRunId": parent} if parent else {})},
        )
        import tempfile

        try:
            params = [Param(k, v) for k, v in src.data.params.items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(run.info.run_id, params=params[i : i + 100])
            for key in src.data.metrics:
                history = source.get_metric_history(src.info.run_id, key)
                points = [Metric(key, m.value, m.timestamp, m.step) for m in history]
                for i in range(0, len(points), 1000):
                    self.client.log_batch(run.info.run_id, metrics=points[i : i + 1000])
            with tempfile.TemporaryDirectory() as tmp:
                if source.list_artifacts(src.info.run_id):
                    local = download_artifacts(run_id=src.info.run_id, tracking_uri=known["uri"], dst_path=tmp)
                    self.client.log_artifacts(run.info.run_id, local)
            self.client.set_terminated(run.info.run_id, status=src.info.status, end_time=src.info.end_time)
        except Exception as e:  # noqa: BLE001 - no half copy is left behind: the run trains instead
            with contextlib.suppress(Exception):
                self.client.delete_run(run.info.run_id)
            raise UserError(f"{src_dir}: cannot copy its MLflow run ({proc.first_line(e, 200)})") from None
        files.write_json(
            rundir.tracking_file(dst_dir), {"uri": self.uri, "mlflow_run_id": run.info.run_id, "experiment": sweep}
        )


def end_run(run_dir: Path, status: str, reason: str) -> None:
    """End the MLflow run a run directory logs to (tracking.json) as `status` with `reason` — for a run
    whose process could not say how it ended (a cluster job killed for memory or time)."""
    state_file = rundir.tracking_file(run_dir)
    known = files.read_json(state_file) if state_file.exists() else {}
    if not known.get("mlflow_run_id"):
        return
    tracker = MlflowTracker(known["uri"])
    tracker.run = known["mlflow_run_id"]
    tracker.finish(status, reason)


@dataclass(frozen=True)
class TrackedRun:
    """One pdsweep run as its MLflow store has it."""

    run_id: str
    """pdsweep's run id (the `pdsweep.run_id` tag)."""
    mlflow_run_id: str
    status: str
    """pdsweep.status: done, failed, running, interrupted."""
    metrics: dict[str, float]
    """The latest value of every metric."""


def sweep_runs(uri: str, sweep: str) -> list[TrackedRun]:
    """The runs of `sweep`'s experiment in the store `uri` (UserError when it has none). When a run
    was tracked twice (a store reused across workdirs), the latest MLflow run wins."""
    from mlflow.tracking import MlflowClient

    check_exists(uri, sweep)
    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(sweep)
    except Exception as e:  # noqa: BLE001 - any failure here means the store is unusable
        raise UserError(f"tracking: cannot read the MLflow store {uri} ({proc.first_line(e, 200)})") from None
    if exp is None:
        raise UserError(f"tracking: the MLflow store {uri} has no experiment {sweep!r} (run the sweep first)")
    found: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs(
            [exp.experiment_id],
            "tags.`pdsweep.run_id` != ''",
            max_results=1000,
            page_token=token,
            order_by=["attributes.start_time ASC"],
        )
        for r in page:
            found[r.data.tags["pdsweep.run_id"]] = r
        token = page.token
        if not token:
            break
    return [
        TrackedRun(rid, r.info.run_id, r.data.tags.get("pdsweep.status", "unknown"), dict(r.data.metrics))
        for rid, r in found.items()
    ]


def metric_history(uri: str, mlflow_run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of one metric of one run, by step."""
    from mlflow.tracking import MlflowClient

    hist = MlflowClient(tracking_uri=uri).get_metric_history(mlflow_run_id, key)
    return sorted((m.step, m.value) for m in hist)


def ui_target(*, sweep_file: Path | None = None, tracking_uri: str | None = None) -> tuple[str, str]:
    """The store `pdsweep ui` opens and the URL path of the sweep's runs table in it ("" without a
    sweep): the UI would otherwise open on its GenAI overview. UserError when the store or the
    sweep's experiment does not exist yet."""
    from pdsweep.spec import expand

    name = expand.load_sweep(sweep_file).name if sweep_file is not None else None
    check_exists(tracking_uri or default_uri(), name)
    tracker = MlflowTracker(tracking_uri)
    exp = tracker.client.get_experiment_by_name(name) if name else None
    if name and exp is None:
        raise UserError(f"{sweep_file}: the sweep {name!r} has no experiment in {tracker.uri} yet (pdsweep run it)")
    suffix = f"/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" if exp is not None else ""
    return tracker.uri, suffix


def start_ui(uri: str, port: int, timeout_s: float = 180.0) -> subprocess.Popen[bytes]:
    """`mlflow server` for the store `uri` on 127.0.0.1:`port`, in its own process group; returns
    once it answers (one worker and no job execution: it starts in seconds, not a minute)."""
    check_exists(uri)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = settings.workdir() / "mlflow-ui.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:  # the server's own chatter goes to a log, not the user's terminal
        proc = subprocess.Popen(  # noqa: S603
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_terminate_with_parent,  # noqa: PLW1509 - a killed `pdsweep ui` leaves no server behind
        )
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise UserError(
                    f"--port: the MLflow UI exited with code {proc.returncode} (is port {port} in use? see {log})"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=2):  # noqa: S310
                    return proc
            except OSError:
                time.sleep(0.5)
        raise UserError(f"tracking: the MLflow UI did not answer on port {port} within {timeout_s:.0f} s")
    except BaseException:  # Ctrl-C while it starts included
        stop_ui(proc)
        raise


def _terminate_with_parent() -> None:
    """Linux: SIGTERM this process when its parent exits (PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def stop_ui(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server's whole process group (its gunicorn/uvicorn workers included)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_name(label: str, sweep: str, seed: int) -> str:
    """An MLflow run's name: its label, and its seed in a sweep (the seeds of a row share a label)."""
    return label if sweep == "single" else f"{label} · seed {seed}"


def readable(run_dir: Path) -> bool:
    """Can the MLflow run a run directory logged to be read now (its store reachable, the run there)?"""
    _fail_fast()
    known = files.read_json(rundir.tracking_file(run_dir)) if rundir.tracking_file(run_dir).exists() else {}
    db = settings.sqlite_file(known.get("uri", ""))
    if not known.get("mlflow_run_id") or (db is not None and not db.is_file()):  # never create a store here
        return False
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=known["uri"]).get_run(known["mlflow_run_id"])
    except Exception:  # noqa: BLE001 - any failure means it cannot be copied
        return False
    return True
