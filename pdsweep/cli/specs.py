"""`pdsweep validate`, `plan` and `explain`: what a sweep file says, before any compute is spent."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from pdsweep.cli import views
from pdsweep.cli.common import Json, SweepFile, user_errors


def validate(
    files: Annotated[list[Path], typer.Argument(help="Sweep or run YAML files.", show_default=False)],
) -> None:
    """Check sweep (or run) files: every field, every axis path, every expanded run."""
    from pdsweep.errors import UserError
    from pdsweep.spec import expand

    failed = False
    for path in files:
        try:
            _, runs = expand.load_any(path)
        except UserError as e:
            failed = True
            for line in e.problems:
                typer.echo(f"error: {line}", err=True)
            continue
        if runs is None:
            typer.echo(f"ok  {path}: one run")
        else:
            counts = {role: sum(r.role == role for r in runs) for role in ("teacher", "baseline", "student")}
            typer.echo(
                f"ok  {path}: {len(runs)} runs ({counts['teacher']} teacher, {counts['baseline']} baseline, "
                f"{counts['student']} student)"
            )
    if failed:
        raise typer.Exit(2)


def plan(file: SweepFile, as_json: Json = False) -> None:
    """Show every run a sweep stands for, with derived sizes, before spending any compute."""
    from pdsweep.spec import expand
    from pdsweep.spec import plan as planning

    with user_errors():
        sweep, rows, passes, runs = planning.load(sweep_file=file)
    if as_json:
        out = {
            "sweep": sweep.name,
            "runs": rows,
            "teacher_passes": [
                {
                    **{k: v for k, v in vars(p).items() if k != "runs"},
                    "runs": len(p.runs),
                    "store_bytes_upper_bound": p.store_bytes_upper_bound(),
                }
                for p in passes.values()
            ],
        }
        sys.stdout.write(json.dumps(out, indent=1) + "\n")
        return

    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console = Console(width=240)
    console.print(views.runs_table(f"{sweep.name}: {len(rows)} runs", rows, expand.PD_ONLY))
    counts = {role: sum(r["role"] == role for r in rows) for role in ("teacher", "baseline", "student")}
    configs = len({r.config_id for r in runs if r.role != "teacher"})
    console.print(
        f"{len(rows)} runs: {counts['teacher']} teacher, {counts['baseline']} baseline, {counts['student']} student "
        f"({configs} configurations × {len({r['seed'] for r in rows if r['role'] != 'teacher'})} seeds); "
        f"{views.human(sum(r['tokens'] for r in rows))} training tokens in all"
    )
    students = [r for r in rows if r["role"] != "teacher"]
    if students:
        top = max(students, key=lambda r: r["eval_share"])
        ev = next(r.spec.eval for r in runs if r.run_id == top["run_id"])
        during = f"{top['evaluations'] - 1} × {views.human(ev.tokens_during())} held-out tokens during"
        console.print(
            f"evaluation: {during if top['evaluations'] > 1 else 'none during'} a run of {views.human(top['tokens'])} "
            f"tokens, {views.human(ev.heldout_tokens)} at its end: ~{100 * top['eval_share']:.0f}% of its training "
            "compute (the most of any run; eval.interval, eval.interval_tokens, eval.heldout_tokens)"
        )
    if passes:
        console.print(views.passes_table(passes))


def explain(
    path: Annotated[
        str,
        typer.Argument(
            help="A dotted RunSpec path such as logits.top_p, or a sweep key such as zip.", show_default=False
        ),
    ] = "",
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Every field as a Markdown reference (docs/spec-reference.md).")
    ] = False,
) -> None:
    """Print a field's documentation, type, default and constraints."""
    from pdsweep.spec import reference

    with user_errors():
        if markdown:
            typer.echo(reference.markdown(path), nl=False)
            return
        sections, sweep_keys, entries = reference.explain(path)
    if not path:
        typer.echo("RunSpec sections (pdsweep explain SECTION.FIELD for details):")
        for name, doc in sections:
            typer.echo(f"  {name:9s} {doc}")
        typer.echo("Sweep keys: " + ", ".join(sweep_keys))
        return
    for e in entries:
        typer.echo(f"{e['path']}  ({e['in']})")
        typer.echo(f"  type:        {e['type']}")
        typer.echo(f"  default:     {e['default']}")
        if e["constraints"]:
            typer.echo(f"  constraints: {e['constraints']}")
        typer.echo(f"  {e['doc']}")
        for v in e["variants"]:
            typer.echo(f"    - {v}")


def register(app: typer.Typer) -> None:
    app.command()(validate)
    app.command()(plan)
    app.command()(explain)
