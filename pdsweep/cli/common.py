"""What every command shares: its options (declared once, as Annotated types), how bad input is
shown (one line per problem, exit code 2, no traceback), Ctrl-C, and a
command group with a default sub-command (`pdsweep tune SWEEP` is `pdsweep tune run SWEEP`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

SweepFile = Annotated[Path, typer.Argument(help="A sweep YAML file.", show_default=False)]
RunFile = Annotated[Path, typer.Argument(help="A run YAML file (a RunSpec; dotted keys allowed).", show_default=False)]
StoreDir = Annotated[Path, typer.Argument(help="A logits store directory.", show_default=False)]
TrackingUri = Annotated[
    str | None,
    typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///WORKDIR/mlflow.db)."),
]
Track = Annotated[bool, typer.Option("--track/--no-track", help="Log to MLflow.")]
Storage = Annotated[
    str | None, typer.Option(help="Optuna storage: an SQLAlchemy URL (default: sqlite:///WORKDIR/optuna.db).")
]
Hostfile = Annotated[Path | None, typer.Option(help="DeepSpeed hostfile: train on several machines.")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON).")]
Executor = Annotated[
    str, typer.Option(help="Where tasks run: local (processes on this machine) or slurm (a batch job each).")
]
ClusterFile = Annotated[
    Path | None, typer.Option("--cluster", help="Slurm cluster profile (YAML; default: the sweep's cluster: section).")
]


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Bad input: one line per problem on stderr, exit code 2, no traceback."""
    from pdsweep.errors import UserError

    try:
        yield
    except UserError as e:
        for line in e.problems:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2) from None


@contextlib.contextmanager
def exit_on_interrupt() -> Iterator[None]:
    """Ctrl-C: exit 130 once what was running has stopped, without a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def console(min_width: int = 100) -> Any:
    """A rich Console as wide as the terminal (at least `min_width`; 160 when piped)."""
    import shutil

    from rich.console import Console

    return Console(width=max(min_width, shutil.get_terminal_size((160, 40)).columns))


class DefaultGroup(TyperGroup):
    """A group whose first sub-command is the default: arguments that do not start with a
    sub-command's name go to it."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [next(iter(self.commands)), *args]
        return super().parse_args(ctx, args)
