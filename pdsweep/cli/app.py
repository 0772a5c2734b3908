"""The `pdsweep` command line: one Typer app whose commands live in a module per group — specs.py
(validate, plan, explain), inputs.py (data, teacher, logits), runs.py (train, run, status, eval),
reports.py (report, ui), tune.py (tune run, tune status). Every command parses, calls one function
and renders; options are declared once (common.py). Heavy modules (pydantic models, torch,
mlflow, ...) are imported inside the commands, so `pdsweep --help` starts fast and never imports torch.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pdsweep import __version__
from pdsweep.cli import inputs, reports, runs, specs, tune

app = typer.Typer(
    name="pdsweep",
    help="Pre-training distillation sweeps: a YAML design space → training runs → MLflow → paper-style tables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pdsweep {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """pdsweep: pre-training distillation sweeps you can trust."""


for group in (specs, inputs, runs, reports, tune):
    group.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
