"""`pdsweep report` and `ui`: a sweep's table with its intervals, and the MLflow UI on its store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pdsweep.cli.common import SweepFile, TrackingUri, console, user_errors


def report(
    file: SweepFile,
    out: Annotated[Path | None, typer.Option(help="Directory for the report (default: WORKDIR/reports/SWEEP).")] = None,
    tracking_uri: TrackingUri = None,
    metric: Annotated[
        list[str] | None, typer.Option("--metric", help="A column (repeatable; default: the sweep's report.metrics).")
    ] = None,
    primary: Annotated[str | None, typer.Option(help="The column Δ% is taken on (default: report.primary).")] = None,
    fmt: Annotated[
        list[str] | None, typer.Option("--format", help="md, csv, tex, html (repeatable; default: all).")
    ] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Draw the figures (PNG + SVG).")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the table as JSON records; write nothing.")] = False,
) -> None:
    """The sweep's table — mean ± CI over seeds, Δ% vs LM-only, noise floor — from its MLflow runs;
    writes Markdown, CSV, LaTeX and an HTML page with the figures."""
    from pdsweep.report import build, formats

    with user_errors():
        r = build.report(
            sweep_file=file,
            out=out,
            tracking_uri=tracking_uri,
            metrics=metric,
            primary=primary,
            kinds=fmt,
            plots=plots,
            write_files=not json_out,
        )
    if json_out:
        typer.echo(formats.to_frame(r.table).to_json(orient="records", indent=1))
        return
    c = console()
    c.print(formats.to_rich(r.table))
    for note in formats.footnotes(r.table):
        c.print(f"• {note}", highlight=False)
    if r.data.missing:
        c.print(f"[yellow]{len(r.data.missing)} run(s) not done; the table has the done ones.[/yellow]")
    typer.echo(f"report: {r.main} ({len(r.written)} files in {r.directory})")


def ui(
    file: Annotated[
        Path | None, typer.Argument(help="A sweep YAML file: open its experiment.", show_default=False)
    ] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1.")] = 5000,
    tracking_uri: TrackingUri = None,
) -> None:
    """Start the MLflow UI on the sweep's store, on 127.0.0.1, and print its URL (Ctrl-C stops it)."""
    from pdsweep.run import tracking

    with user_errors():
        uri, suffix = tracking.ui_target(sweep_file=file, tracking_uri=tracking_uri)
    if uri.startswith(("http://", "https://")):
        typer.echo(f"{uri.rstrip('/')}{suffix}")  # a server already serves its UI
        return
    with user_errors():
        server = tracking.start_ui(uri, port)
    try:
        typer.echo(f"MLflow UI: http://127.0.0.1:{port}{suffix}  (Ctrl-C to stop)")
        code = server.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        tracking.stop_ui(server)  # whatever ends this command ends the server
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command()(report)
    app.command()(ui)
