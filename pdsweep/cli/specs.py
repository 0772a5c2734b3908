"""`pdsweep validate`, `plan` and `explain`: what a sweep file says, before any compute is spent."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from pdsweep.cli import views
from pdsweep.cli.common import Json, SweepFile, user_errors
from pdsweep.errors import UserError


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


def plan(
    file: SweepFile,
    as_json: Json = False,
    gpu: Annotated[
        str, typer.Option(help="The GPU that GPU-hours are stated for: a100, h100, h200, b200, mi300x.")
    ] = "h100",
    mfu: Annotated[
        float, typer.Option(min=0.01, max=1.0, help="Model FLOPs utilisation that GPU-hours are stated at.")
    ] = 0.4,
) -> None:
    """Show every run a sweep stands for, with derived sizes and costs, before spending any compute:
    each run's FLOPs and GPU-hours, each teacher pass's positions, store size and compute."""
    from pdsweep.spec import costs, expand
    from pdsweep.spec import plan as planning

    with user_errors():
        if gpu not in costs.GPUS:
            raise UserError(f"--gpu: one of {', '.join(costs.GPUS)}, got {gpu!r}")
        sweep, rows, passes, runs = planning.load(sweep_file=file, gpu=gpu, mfu=mfu)
    if as_json:
        out = {
            "sweep": sweep.name,
            "gpu": gpu,
            "mfu": mfu,
            "runs": rows,
            "teacher_passes": [
                {
                    **{k: v for k, v in vars(p).items() if k not in ("runs", "orders", "cost")},
                    "runs": len(p.runs),
                    "data_orders": len(p.orders),
                    "store_bytes_upper_bound": p.store_bytes_upper_bound(),
                    **(vars(p.cost) if p.cost else {}),
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
    flops = sum(r["flops"] or 0 for r in rows)
    unknown = sum(r["flops"] is None for r in rows)
    pass_flops = sum(p.cost.flops or 0 for p in passes.values() if p.cost)
    console.print(
        f"compute: {views.flops(flops)} FLOPs of training = {views.gpu_hours(costs.gpu_hours(flops, gpu, mfu))} GPU-hours"
        + (
            f" and {views.flops(pass_flops)} FLOPs of teacher passes = {views.gpu_hours(costs.gpu_hours(pass_flops, gpu, mfu))} GPU-hours"
            if pass_flops
            else ""
        )
        + f" on {gpu} at {mfu:.0%} MFU (--gpu, --mfu)"
        + (f"; {unknown} runs of unknown vocabulary not counted" if unknown else "")
    )
    if passes:
        console.print(views.passes_table(passes, gpu, mfu))
        for p in passes.values():
            for line in views.store_arithmetic(p):
                console.print(line)
        by_id = {r["run_id"]: r for r in rows}
        for p in passes.values():
            if budget := views.matched_budget(p, [by_id[i] for i in p.runs if i in by_id], sweep.baseline_tokens):
                console.print(budget)


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
