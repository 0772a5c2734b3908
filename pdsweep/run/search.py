"""`pdsweep tune`: an Optuna study over a sweep's `search:` space whose trials are runs.

A trial asks the study for parameters (dotted RunSpec paths), sets them on the sweep's `base`, and
runs the result through the same scheduler as `pdsweep run` — teacher runs and the teacher logits
pass first (shared by every trial), then the trial's own run directory under runs/<sweep>/, its
MLflow run tagged `pdsweep.study` and `pdsweep.trial`. While it trains, each evaluation of the
objective is reported to the study, so a pruner (median, Hyperband) can stop it early; at the end the
final value is told. A failure budget (`search.max_failures`) stops a study that keeps failing.

Storage: `sqlite:///WORKDIR/optuna.db` by default, or any SQLAlchemy URL (PostgreSQL for workers on
many machines). The study is created once before any worker starts. Workers claim trials under a lock
(a file lock for sqlite, an advisory lock on PostgreSQL), so a study runs exactly `search.trials`
trials however many workers share it. Every running trial sends heartbeats; when a worker dies, its
trial is failed once the grace period has passed and re-queued with the same parameters (same run
id: it resumes from the run's last checkpoint).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdsweep import files, proc, rundir, settings
from pdsweep.errors import UserError
from pdsweep.run import scheduler
from pdsweep.spec import expand, plan
from pdsweep.spec.sweep import ExplicitRun, SearchParam, SearchSpec, Sweep

HEARTBEAT_S = int(os.environ.get("PDSWEEP_TUNE_HEARTBEAT_S", "10"))
"""Seconds between a running trial's heartbeats."""
GRACE_S = int(os.environ.get("PDSWEEP_TUNE_GRACE_S", "60"))
"""A running trial with no heartbeat for this long belongs to a dead worker (failed and re-queued)."""
STUDY_TAG, TRIAL_TAG = "pdsweep.study", "pdsweep.trial"


def storage_url(given: str | None = None) -> str:
    return given or os.environ.get("PDSWEEP_OPTUNA_STORAGE") or f"sqlite:///{settings.workdir() / 'optuna.db'}"


def _search(sweep: Sweep, source: str) -> SearchSpec:
    if sweep.search is None:
        raise UserError(f"{source}: search: the sweep has no search space (add search: {{params: ...}})")
    return sweep.search


def open_storage(url: str, create: bool = False) -> Any:
    """The study storage; `create` makes a sqlite file's directory (the work directory by default)."""
    import optuna

    scheme = url.split(":", 1)[0]
    if scheme.startswith("postgresql"):  # SQLAlchemy's default driver is psycopg (3)
        proc.require("psycopg2" if scheme.endswith("+psycopg2") else "psycopg", "postgres", "a PostgreSQL --storage")
    file = settings.sqlite_file(url)
    if file is not None and create:
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--storage: cannot create {file.parent} ({e.strerror})") from None

    retry = (
        getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    )
    try:
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=retry(max_retry=1),
        )
    except Exception as e:  # noqa: BLE001 - any failure means the storage is unusable
        raise UserError(f"--storage: cannot open the Optuna storage {url} ({proc.first_line(e, 200)})") from None


def sampler(search: SearchSpec, seed: int) -> Any:
    import optuna

    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if search.sampler == "grid":
        return optuna.samplers.GridSampler(grid_space(search), seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)


def grid_space(search: SearchSpec) -> dict[str, list[Any]]:
    """The grid of `sampler: grid`: categorical choices, or low..high by step."""
    space: dict[str, list[Any]] = {}
    for path, p in search.params.items():
        if p.type == "categorical":
            space[path] = list(p.choices or [])
        elif p.step is None:
            raise UserError(f"search.params.{path}: sampler grid needs a step (or a categorical list)")
        else:
            assert p.low is not None and p.high is not None
            n = int(math.floor((p.high - p.low) / p.step + 1e-9)) + 1
            values = [p.low + i * p.step for i in range(n)]
            space[path] = [int(v) for v in values] if p.type == "int" else [round(v, 12) for v in values]
    return space


def pruner(search: SearchSpec, max_steps: int, interval: int) -> Any:
    import optuna

    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=interval, max_resource=max_steps)
    return optuna.pruners.NopPruner()


def suggest(trial: Any, params: dict[str, SearchParam]) -> dict[str, Any]:
    """The trial's values for the search space; a parameter with `when:` is drawn only when the
    values drawn before it match (a field that exists only for one kind of a tagged union)."""
    out: dict[str, Any] = {}
    for path, p in params.items():
        if any(out.get(k) != v for k, v in p.when.items()):
            continue
        if p.type == "categorical":
            out[path] = trial.suggest_categorical(path, list(p.choices or []))
        elif p.type == "int":
            out[path] = trial.suggest_int(path, int(p.low or 0), int(p.high or 0), step=int(p.step or 1), log=p.log)
        else:
            out[path] = trial.suggest_float(path, float(p.low or 0), float(p.high or 0), step=p.step, log=p.log)
    return out


def trial_runs(sweep: Sweep, params: dict[str, Any], number: int, source: str) -> list[expand.PlannedRun]:
    """The runs a trial needs: the sweep's teacher runs and the trial's run (its first seed)."""
    trial = sweep.model_copy(
        update={
            "grid": {},
            "zip": {},
            "runs": [ExplicitRun(label=f"trial {number}", set=params)],  # dotted paths, as in runs:
            "seeds": [sweep.seeds[0]],
            "baseline": None,
        }
    )
    return expand.expand(trial, f"{source}: trial {number}")


def create(sweep: Sweep, source: str, url: str) -> Any:
    """Create the study (or load it): once, before workers start."""
    import optuna

    search = _search(sweep, source)
    with quiet():
        return optuna.create_study(
            study_name=sweep.name,
            storage=open_storage(url, create=True),
            sampler=optuna.samplers.RandomSampler(),  # each worker sets its own (seeded per worker)
            direction=search.direction,
            load_if_exists=True,
        )


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Optuna without its per-trial INFO lines and its warnings about the features used on purpose
    here: heartbeats with ask/tell (pdsweep records them itself), grouped multivariate TPE."""
    import warnings

    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        try:
            yield
        finally:
            optuna.logging.set_verbosity(level)


@contextlib.contextmanager
def claim_lock(url: str, study: str) -> Iterator[None]:
    """Serialise 'count the trials, then ask for one' across every worker of a study."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///") + ".pdsweep-lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield
        return
    if url.startswith("postgresql"):
        from sqlalchemy import create_engine, text

        engine = create_engine(url)
        key = int.from_bytes(files.sha256_bytes(study.encode()).encode()[:8], "big") & 0x7FFFFFFFFFFFFFFF
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        engine.dispose()
        return
    yield  # other databases: no cross-worker lock (one worker is exact; many may overshoot by one each)


def counted(study: Any) -> tuple[int, int]:
    """(trials that count toward `search.trials`, failed ones): a failed trial re-queued by the
    heartbeat check does not count, its retry does."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    live = [t for t in trials if not (t.state == optuna.trial.TrialState.FAIL and t.number in retried)]
    return len(live), sum(t.state == optuna.trial.TrialState.FAIL for t in live)


@dataclass
class Outcome:
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    run_id: str
    reason: str = ""


def work(
    sweep_path: Path,
    url: str,
    worker: int = 0,
    tracking_uri: str | None = None,
    track: bool = True,
    on_trial: Any = None,
    trials: int | None = None,
) -> list[Outcome]:
    """One worker: claim trials until the study has `search.trials` of them (or its failure budget
    is spent), run each, tell the result."""
    import optuna

    sweep = expand.load_sweep(sweep_path)
    source = str(sweep_path)
    search = _search(sweep, source)
    outcomes: list[Outcome] = []
    with quiet():
        storage = open_storage(url)
        study = optuna.load_study(study_name=sweep.name, storage=storage)
        # Workers draw different streams (two workers with one seed would propose the same trials).
        study.sampler = sampler(search, seed=(os.getpid() * 1_000_003 + 1000 * worker + sweep.seeds[0]) % 2**31)
        while True:
            with claim_lock(url, sweep.name):
                optuna.storages.fail_stale_trials(study)  # trials of dead workers: failed and re-queued
                n, failed = counted(study)
                if n >= (trials or search.trials) or failed > search.max_failures:
                    break
                trial = study.ask()
            params = suggest(trial, search.params)
            outcome = _run_trial(sweep, source, study, storage, trial, params, search, tracking_uri, track)
            outcomes.append(outcome)
            if on_trial is not None:
                on_trial(outcome)
    return outcomes


def _run_trial(
    sweep: Sweep,
    source: str,
    study: Any,
    storage: Any,
    trial: Any,
    params: dict[str, Any],
    search: SearchSpec,
    tracking_uri: str | None,
    track: bool,
) -> Outcome:
    import optuna

    try:
        runs = trial_runs(sweep, params, trial.number, source)
    except UserError as e:  # the space allows a spec the model refuses: the trial fails, clearly
        reason = "; ".join(e.problems)
        trial.set_user_attr("reason", reason)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return Outcome(trial.number, "FAIL", None, params, "", reason)
    run = runs[-1]
    trial.set_user_attr("run_id", run.run_id)
    tasks = scheduler.build(sweep.name, runs)
    task = next(t for t in tasks if t.key == run.run_id)
    key = search.objective.removeprefix("eval/")
    curve_key = f"curve/{key}"  # the evaluations during training, which pruning compares
    prune_model = pruner(search, run.spec.steps(), run.spec.eval.interval)
    study.pruner = prune_model
    reported: set[int] = set()
    pruned = False
    last_beat = 0.0
    sched: scheduler.Scheduler

    def watch(_tasks: list[scheduler.Task]) -> None:
        nonlocal pruned, last_beat
        now = time.monotonic()
        if now - last_beat >= HEARTBEAT_S:
            storage.record_heartbeat(trial._trial_id)
            last_beat = now
        if task.job is None or pruned:
            return
        for step, value in _evaluations(task.dir, curve_key):
            if step in reported or step >= run.spec.steps():
                continue
            reported.add(step)
            trial.report(value, step)
            if trial.should_prune():
                pruned = True
                sched.stop()
                return

    os.environ["PDSWEEP_MLFLOW_TAGS"] = json.dumps({STUDY_TAG: sweep.name, TRIAL_TAG: str(trial.number)})
    try:
        sched = scheduler.Scheduler(sweep.name, tasks, 1, "cpu", tracking_uri, track, on_change=watch)
        sched.run()
    finally:
        os.environ.pop("PDSWEEP_MLFLOW_TAGS", None)
    if pruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return Outcome(trial.number, "PRUNED", None, params, run.run_id)
    value = None
    if task.status == "done":
        value = (rundir.read_result(task.dir) or {}).get(key)
    if value is None or not math.isfinite(float(value)):
        reason = task.reason or (
            f"no {search.objective} in the run's final evaluation" if task.status == "done" else task.status
        )
        trial.set_user_attr("reason", reason)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return Outcome(trial.number, "FAIL", None, params, run.run_id, reason)
    study.tell(trial, float(value))
    return Outcome(trial.number, "COMPLETE", float(value), params, run.run_id)


def _evaluations(run_dir: Path, key: str) -> list[tuple[int, float]]:
    return [(int(row["step"]), float(row[key])) for row in rundir.metrics(run_dir, "eval") if key in row]


def best_spec_yaml(sweep: Sweep, source: str, study: Any) -> str:
    """The best trial as a RunSpec YAML to paste into a run file (a sweep teacher is given by its
    checkpoint directory)."""
    import yaml

    best = study.best_trial
    run = trial_runs(sweep, dict(best.params), best.number, source)[-1]
    spec = run.spec.model_dump(mode="json")
    teacher = spec.get("teacher") or {}
    if str(teacher.get("source", "")).startswith("run:"):
        path = plan.sweep_dir(sweep.name) / teacher.pop("run_id")  # that teacher run's directory
        with contextlib.suppress(ValueError):  # relative to where pdsweep runs, when inside it
            path = path.relative_to(Path.cwd())
        teacher["source"] = f"ckpt:{path}"
    header = f"# {sweep.name}: trial {best.number}, {_search(sweep, source).objective} = {best.value:.6g}\n"
    return header + yaml.safe_dump(spec, sort_keys=False)


def importances(study: Any) -> dict[str, float]:
    """Parameter importances (Optuna's fANOVA) over the completed trials; {} with too few."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 3 or len({json.dumps(t.params, sort_keys=True) for t in done}) < 2:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError):
        return {}


def trials_frame(study: Any) -> Any:
    """One row per trial: number, state, value, parameters, run id, failure reason."""
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "value": t.value,
                **{k: v for k, v in t.params.items()},
                "run_id": t.user_attrs.get("run_id", ""),
                "reason": t.user_attrs.get("reason", ""),
            }
        )
    return pd.DataFrame.from_records(rows)
