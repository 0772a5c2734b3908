"""`pdsweep tune`: an Optuna study over a sweep's `search:` space whose trials are runs —
`pdsweep tune SWEEP` (short for `tune run`) works on it, `pdsweep tune status SWEEP` shows it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pdsweep.cli.common import (
    ClusterFile,
    DefaultGroup,
    Executor,
    Storage,
    SweepFile,
    Track,
    TrackingUri,
    console,
    exit_on_interrupt,
    user_errors,
)

tune_app = typer.Typer(
    cls=DefaultGroup,
    help="Optuna studies over a sweep's search: space (`pdsweep tune SWEEP` runs one; `tune status SWEEP` shows it).",
    no_args_is_help=True,
)

Trials = Annotated[int | None, typer.Option(min=1, help="Trials in the study (default: search.trials).")]


@tune_app.command("run")
def tune_run(
    file: SweepFile,
    trials: Trials = None,
    workers: Annotated[int, typer.Option(min=1, help="Trials at a time (processes, or Slurm jobs).")] = 1,
    storage: Storage = None,
    tracking_uri: TrackingUri = None,
    track: Track = True,
    executor: Executor = "local",
    cluster: ClusterFile = None,
) -> None:
    """Run the sweep's study: trials are runs, pruned on their intermediate evaluations."""
    from pdsweep.run import study

    def show(o: Any) -> None:  # a search.Outcome
        value = f"{o.value:.6g}" if o.value is not None else o.reason or "-"
        typer.echo(f"trial {o.number}: {o.state} {value}  {o.params}")

    with user_errors(), exit_on_interrupt():
        s, codes = study.tune(
            sweep_file=file,
            trials=trials,
            workers=workers,
            storage=storage,
            tracking_uri=tracking_uri,
            track=track,
            on_trial=show,
            on_line=typer.echo,
            executor=executor,
            cluster=cluster,
        )
    if any(codes):
        raise typer.Exit(max(codes))
    _show(s)
    if s.completed == 0 and s.failed:
        typer.echo(f"error: every trial of the study failed ({s.failed}); their reasons are above", err=True)
        raise typer.Exit(1)


@tune_app.command("status")
def tune_status(
    file: SweepFile,
    trials: Trials = None,
    storage: Storage = None,
    out: Annotated[Path | None, typer.Option(help="Also write report.md and trials.csv to this directory.")] = None,
) -> None:
    """Show a sweep's study: its trials, parameter importances and the best trial as a RunSpec."""
    from pdsweep.run import study

    with user_errors():
        s = study.status(sweep_file=file, storage=storage, trials=trials)
        written = study.write_report(s, out) if out is not None else None
    _show(s)
    if written is not None:
        typer.echo(f"report: {written}")


def _show(s: Any) -> None:  # a study.StudyStatus
    from rich.table import Table

    table = Table(title=f"{s.title} ({s.storage})", title_justify="left")
    for col in s.frame.columns:
        table.add_column(str(col), justify="right" if col in ("trial", "value") else "left")
    for row in s.frame.itertuples(index=False):
        table.add_row(
            *(
                "" if v is None or (isinstance(v, float) and v != v) else f"{v:.6g}" if isinstance(v, float) else str(v)
                for v in row
            )
        )
    c = console()
    c.print(table)
    if s.importances:
        c.print(
            "parameter importances (fANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in s.importances.items()),
            highlight=False,
        )
    typer.echo("best trial, as a RunSpec:\n" + s.best if s.best else "no completed trial yet")


def register(app: typer.Typer) -> None:
    app.add_typer(tune_app, name="tune")
