"""`pdsweep train`, `run`, `status` and `eval`: training one run, running a whole sweep, what its
run directories say, and scoring a run or a model on the benchmarks."""

from __future__ import annotations

import collections
import contextlib
import json
import os
from pathlib import Path
from typing import Annotated

import typer

from pdsweep.cli import views
from pdsweep.cli.common import (
    ClusterFile,
    Executor,
    Hostfile,
    Json,
    RunFile,
    SweepFile,
    Track,
    TrackingUri,
    user_errors,
)


def train(
    file: RunFile,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: WORKDIR/runs/single/RUN_ID).")] = None,
    nproc: Annotated[int, typer.Option(min=1, help="Processes per machine (GPUs, or CPU workers).")] = 1,
    launcher: Annotated[
        str, typer.Option(help="torchrun or deepspeed (one machine; --hostfile always uses deepspeed).")
    ] = "torchrun",
    hostfile: Hostfile = None,
    logits: Annotated[
        Path | None, typer.Option(help="Teacher logits store (default: generated from the run's teacher).")
    ] = None,
    tracking_uri: TrackingUri = None,
    track: Track = True,
    sweep: Annotated[
        str, typer.Option(help="MLflow experiment of the run (a sweep name: letters, digits, _ . -).")
    ] = "single",
    label: Annotated[
        str | None, typer.Option(help="Name of the run in MLflow (default: the run directory's name).")
    ] = None,
) -> None:
    """Train one run, resuming from its last checkpoint if it was interrupted."""
    from pdsweep.run import launch, worker

    bar, hook = views.progress_bar()
    quiet = int(os.environ.get("RANK", "0")) != 0  # one bar, on rank 0
    with user_errors(), contextlib.nullcontext() if quiet else bar:
        outcome = launch.train(
            spec_file=file,
            out=out,
            logits=logits,
            nproc=nproc,
            launcher=launcher,
            hostfile=hostfile,
            tracking_uri=tracking_uri,
            track=track,
            sweep=sweep,
            label=label,
            progress=hook,
            callbacks=(views.train_bar(bar),),
        )
    raise typer.Exit(outcome if isinstance(outcome, int) else worker.report(outcome))


def run(
    file: SweepFile,
    workers: Annotated[int, typer.Option(min=1, help="Runs at a time (each in its own process).")] = 1,
    devices: Annotated[str, typer.Option(help="cpu, cuda:0,1,… (split evenly among the workers) or auto.")] = "cpu",
    hostfile: Annotated[
        Path | None, typer.Option(help="DeepSpeed hostfile: every run trains on these machines.")
    ] = None,
    executor: Executor = "local",
    cluster: ClusterFile = None,
    detach: Annotated[
        bool, typer.Option("--detach", help="Slurm: submit the sweep's jobs and return (pdsweep status follows them).")
    ] = False,
    tracking_uri: TrackingUri = None,
    track: Track = True,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run failed runs again.")] = False,
    reuse: Annotated[
        bool,
        typer.Option(
            help="Reuse runs another sweep of the work directory finished with the same spec and the same pdsweep code."
        ),
    ] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would run, in order, and exit.")] = False,
    with_report: Annotated[
        bool, typer.Option("--report", help="Then print the sweep's table and write its report (pdsweep report).")
    ] = False,
) -> None:
    """Run a whole sweep — teacher runs, their logits, baselines and students — in dependency
    order, WORKERS at a time; resumable (done runs are skipped, killed ones resume)."""
    from pdsweep.run import sweeps

    view = views.LiveTasks("")

    def started(sweep: str, runs: int, slots: int) -> None:
        view.title = f"{sweep}: {runs} runs, " + ("Slurm jobs" if executor == "slurm" else f"{slots} worker(s)")
        if not detach:
            view.__enter__()

    if executor == "slurm" and track and not dry_run:
        from pdsweep import settings
        from pdsweep.run import tracking

        uri = tracking_uri or tracking.default_uri()
        if settings.sqlite_file(uri) is not None:
            typer.echo(
                f"note: jobs track to the SQLite file {settings.shown_uri(uri)}: safe on a local disk of one node;"
                " for jobs on several nodes use an MLflow server (--tracking-uri http://…, docs/gpu-cluster.md)",
                err=True,
            )
    try:
        with user_errors():
            outcome = sweeps.run(
                sweep_file=file,
                workers=workers,
                devices=devices,
                hostfile=hostfile,
                tracking_uri=tracking_uri,
                track=track,
                retry_failed=retry_failed,
                reuse=reuse,
                dry_run=dry_run,
                executor=executor,
                cluster=cluster,
                detach=detach,
                on_start=started,
                on_change=view.update,
            )
    finally:
        view.__exit__(None, None, None)
    if outcome.dry_run:
        views.print_tasks(
            outcome.tasks, title=f"{outcome.sweep}: {len(outcome.tasks)} tasks on {outcome.slots} worker(s), dry run"
        )
        raise typer.Exit(0)
    if outcome.detached:
        jobs = [t for t in outcome.tasks if t.job is not None]
        new = [t for t in jobs if not t.job.adopted]  # type: ignore[union-attr]
        views.print_tasks(
            outcome.tasks,
            title=f"{outcome.sweep}: {len(new)} job(s) submitted, {len(jobs) - len(new)} already queued or running",
        )
        typer.echo(f"{outcome.sweep}: follow it with pdsweep status {file}; stop it with pdsweep cancel {file}")
        raise typer.Exit(0)
    if outcome.interrupted:
        views.print_tasks(outcome.tasks, title=f"{outcome.sweep}: interrupted")
        typer.echo("interrupted: run the same command again to resume", err=True)
        raise typer.Exit(130)
    if outcome.error is not None:
        typer.echo(
            f"error: pdsweep run stopped ({outcome.error}); the running tasks were interrupted"
            " and keep their checkpoints: run the same command again to resume",
            err=True,
        )
        raise typer.Exit(1)
    done, trained = outcome.done, len(outcome.trained)
    views.print_tasks(outcome.tasks, title=f"{outcome.sweep}: {done} of {trained} runs done")
    typer.echo(f"{outcome.sweep}: {done} of {trained} runs done; runs in {outcome.directory}")
    if with_report and track and done:
        from pdsweep.cli import reports

        reports.report(file, tracking_uri=tracking_uri)
    raise typer.Exit(0 if outcome.ok else 1)


def status(file: SweepFile, json_out: Json = False) -> None:
    """The state of every run of a sweep, from its run directories (no MLflow needed)."""
    from pdsweep.run import sweeps

    with user_errors():
        name, tasks = sweeps.status(sweep_file=file)
    if json_out:
        rows = [
            {
                "task": t.key,
                "kind": t.kind,
                "label": t.label,
                "role": t.role,
                "status": t.status,
                "step": t.step,
                "total_steps": t.total_steps,
                "loss": t.loss,
                "reason": t.reason,
                "dir": str(t.dir),
                **(
                    {"job": {"id": t.job_id, "state": t.job_state, "node": t.node, "elapsed": t.elapsed}}
                    if t.job_id
                    else {}
                ),
                **({"result": t.result} if t.result else {}),
            }
            for t in tasks
        ]
        typer.echo(json.dumps(rows, indent=1))
        return
    counts = collections.Counter(t.status for t in tasks)
    views.print_tasks(tasks, title=f"{name}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))


def cancel(file: SweepFile) -> None:
    """Cancel a sweep's Slurm jobs: queued ones are removed, running ones end as interrupted and keep
    their checkpoints (pdsweep run resumes them)."""
    from pdsweep.run import sweeps

    with user_errors():
        name, cancelled = sweeps.cancel(sweep_file=file)
    typer.echo(f"{name}: cancelled {len(cancelled)} job(s)" + (f" ({', '.join(cancelled)})" if cancelled else ""))


def eval_(
    target: Annotated[
        str,
        typer.Argument(
            help="A run directory, one of its checkpoints, or a model: hf:DIR, builtin:smollm2-135m.",
            show_default=False,
        ),
    ],
    suite: Annotated[
        list[str] | None, typer.Option("--suite", help="A benchmark (repeatable; default: all of them).")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most N items per benchmark.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Requests per forward pass.")] = 16,
    json_out: Json = False,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: the run's own).")] = None,
    track: Annotated[bool, typer.Option("--track/--no-track", help="Log to the run's MLflow run.")] = True,
    harness: Annotated[
        bool, typer.Option("--harness", help="Score with lm-evaluation-harness itself, on the same items.")
    ] = False,
    harness_task: Annotated[
        list[str] | None,
        typer.Option("--harness-task", help="Also an lm-evaluation-harness task by name (its data from the Hub)."),
    ] = None,
) -> None:
    """Score a trained run or a model on the offline benchmarks, the way lm-evaluation-harness does
    (or with the harness itself: --harness)."""
    from pdsweep.run import evaluate
    from pdsweep.spec.suites import BENCHMARKS

    named = tuple(harness_task or ())
    harness = harness or bool(named)
    default = () if named else [b.name for b in BENCHMARKS.values() if not (harness and b.generate)]
    suites = tuple(suite or default)
    bar, hook = views.progress_bar()
    with user_errors(), bar:
        metrics, out = evaluate.evaluate_model(
            target, suites, limit, batch_size, hook, tracking_uri, track, harness, named
        )
    if json_out:
        typer.echo(json.dumps(metrics, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{target}" + (f" (≤ {limit} items per task)" if limit else ""), title_justify="left")
    for col in ("task", "items", "acc", "acc_norm", "ppl"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for task in (*suites, *named):
        m = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith(task + "/")}
        table.add_row(task, f"{m['items']:.0f}", *(f"{m[k]:.4f}" if k in m else "" for k in ("acc", "acc_norm", "ppl")))
    Console(width=120).print(table)
    if out is not None:
        typer.echo(f"results: {out}")


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(run)
    app.command()(status)
    app.command()(cancel)
    app.command("eval")(eval_)
