"""A study as `pdsweep tune` sees it: create it once, work on it with one or several worker
processes, and read it back — its trials, the parameter importances and the best trial as a RunSpec.
The trial-level work (sampling, pruning, running a trial through the scheduler) is search.py's."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdsweep import files, settings
from pdsweep.errors import UserError
from pdsweep.run import executors, search, worker
from pdsweep.run.executors import Executor, Job
from pdsweep.spec import cluster as cluster_spec
from pdsweep.spec import expand, plan
from pdsweep.spec.sweep import Sweep


@dataclass
class StudyStatus:
    """A study's trials and what they say."""

    sweep: Sweep
    storage: str
    trials: int
    """The trials the study runs (`--trials`, else search.trials)."""
    counted: int
    failed: int
    completed: int
    frame: Any
    """pandas DataFrame: a row per trial (trial, state, value, parameters, run_id, reason)."""
    importances: dict[str, float]
    best: str
    """The best trial as a RunSpec YAML; empty before any trial completed."""

    @property
    def title(self) -> str:
        return f"{self.sweep.name}: {self.counted} of {self.trials} trials, {self.failed} failed"


def tune(
    *,
    sweep_file: Path,
    trials: int | None = None,
    workers: int = 1,
    storage: str | None = None,
    tracking_uri: str | None = None,
    track: bool = True,
    on_trial: Callable[[search.Outcome], None] = lambda o: None,
    on_line: Callable[[str], None] = print,
    executor: str = "local",
    cluster: Path | None = None,
) -> tuple[StudyStatus, list[int]]:
    """Create the sweep's study (once) and work on it with `workers` processes (this one when 1 and
    local; with `executor` slurm, `workers` batch jobs with the cluster profile's student resources):
    the study's status afterwards and the workers' exit codes. UserError for bad input."""
    if not sweep_file.exists():
        raise UserError(f"{sweep_file}: no such sweep file")
    sweep = expand.load_sweep(sweep_file)
    if sweep.search is None:
        raise UserError(f"{sweep_file}: search: the sweep has no search space")
    settings.check_workdir()
    profile = cluster_spec.chosen(sweep.cluster, cluster)
    if executor != "slurm" and cluster is not None:
        raise UserError("--cluster: needs --executor slurm")
    ex = executors.make(executor, profile, sweep.name)
    url = search.storage_url(storage)
    search.create(sweep, str(sweep_file), url)  # once, before any worker
    if workers == 1 and executor == "local":
        search.work(sweep_file, url, 0, tracking_uri, track, on_trial=on_trial, trials=trials)
        codes = [0]
    else:
        codes = run_workers(
            sweep=sweep,
            sweep_file=sweep_file,
            storage=url,
            workers=workers,
            trials=trials,
            tracking_uri=tracking_uri,
            track=track,
            on_line=on_line,
            executor=ex,
        )
    return status(sweep_file=sweep_file, storage=url, trials=trials), codes


def run_workers(
    *,
    sweep: Sweep,
    sweep_file: Path,
    storage: str,
    workers: int,
    trials: int | None = None,
    tracking_uri: str | None = None,
    track: bool = True,
    on_line: Callable[[str], None] = print,
    executor: Executor | None = None,
) -> list[int]:
    """`workers` worker processes (or batch jobs) on one study (`python -m pdsweep.run.worker` with a
    tune task each, in `tune/<sweep>/worker-<i>/`), their output passed to `on_line` as it comes,
    prefixed with the worker's index; their exit codes. Ctrl-C cancels them (each running trial
    checkpoints and is re-queued by the study)."""
    executor = executor or executors.make("local")
    where = plan.tune_dir(sweep.name)
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, settings.cores() // workers)))
    jobs = []
    for i in range(workers):
        task = worker.TuneTask(
            sweep_file=sweep_file.resolve(),
            storage=storage,
            index=i,
            trials=trials,
            tracking_uri=tracking_uri,
            track=track,
        )
        home = where / f"worker-{i}"
        log = home / "worker.log"
        if not executor.submits_graph:
            log.unlink(missing_ok=True)
        env = {} if executor.submits_graph else {"OMP_NUM_THREADS": threads}
        name = f"tune-worker-{i}"
        job = Job(f"tune:{i}", worker.write(home / "task.json", task), home, log, env, name=name, kind="student")
        executor.submit(job)
        jobs.append(job)
    read = [0] * workers
    codes: dict[int, int] = {}

    def echo(i: int) -> None:
        log = executor.log(jobs[i])
        if log.exists():
            with open(log, "rb") as f:
                f.seek(read[i])
                chunk = f.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            read[i] += len(complete)
            for line in complete.decode("utf-8", "replace").splitlines():
                on_line(f"[worker {i}] {line}" if workers > 1 else line)

    try:
        while len(codes) < workers:
            for i, job in enumerate(jobs):
                if i not in codes and (rc := executor.poll(job)) is not None:
                    codes[i] = rc
                echo(i)
            time.sleep(0.2)
    except KeyboardInterrupt:
        for i, job in enumerate(jobs):
            if i not in codes:
                executor.cancel(job)
        deadline = time.monotonic() + 30
        for i, job in enumerate(jobs):
            while i not in codes and (rc := executor.poll(job)) is None:
                if time.monotonic() > deadline:
                    executor.kill(job)
                time.sleep(0.1)
        raise
    for i in range(workers):
        echo(i)
    return [codes[i] for i in range(workers)]


def status(*, sweep_file: Path, storage: str | None = None, trials: int | None = None) -> StudyStatus:
    """The study of a sweep, read back; creates nothing (a study that does not exist is one UserError)."""
    import optuna

    url = search.storage_url(storage)
    sweep = expand.load_sweep(sweep_file)
    spec = sweep.search
    if spec is None:
        raise UserError(f"{sweep_file}: search: the sweep has no search space")
    no_study = f"tune status: no study {sweep.name!r} yet in {url} (run pdsweep tune {sweep_file} first)"
    file = settings.sqlite_file(url)
    if file is not None and not file.exists():
        raise UserError(no_study)  # nothing is created by looking
    try:
        with search.quiet():
            study = optuna.load_study(study_name=sweep.name, storage=search.open_storage(url))
    except KeyError:
        raise UserError(no_study) from None
    n, failed = search.counted(study)
    try:
        best = search.best_spec_yaml(sweep, str(sweep_file), study)
    except ValueError:
        best = ""
    completed = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    return StudyStatus(
        sweep,
        url,
        trials or spec.trials,
        n,
        failed,
        completed,
        search.trials_frame(study),
        search.importances(study),
        best,
    )


def write_report(s: StudyStatus, out: Path) -> Path:
    """The study as report.md (with the best trial's RunSpec) and trials.csv in `out`."""
    spec = s.sweep.search
    assert spec is not None
    md = [f"# {s.sweep.name} (Optuna study)", ""]
    md += [f"- {' '.join(s.sweep.description.split())}"] if s.sweep.description else []
    md += [f"- {s.title}; sampler {spec.sampler}, pruner {spec.pruner}, objective {spec.objective} ({spec.direction})"]
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md += [f"- machine: {settings.machine()}", f"- date: {when}", f"- storage: {settings.shown_uri(s.storage)}", ""]
    md += [s.frame.to_markdown(index=False, floatfmt=".6g"), ""]
    if s.importances:
        md += ["Parameter importances (fANOVA): " + ", ".join(f"`{k}` {v:.2f}" for k, v in s.importances.items()), ""]
    best = settings.shown_paths(s.best.rstrip())  # a teacher run's checkpoint, without this machine's path
    md += ["Best trial, as a RunSpec:", "", "```yaml", best, "```", ""] if s.best else []
    files.write_text(out / "report.md", "\n".join(md))
    files.write_text(out / "trials.csv", s.frame.to_csv(index=False, float_format="%.6g"))
    return out / "report.md"
