"""The `pdsweep` command line: thin commands that parse, call one function and render.

Heavy modules (pydantic models, torch, mlflow, ...) are imported inside the commands, so
`pdsweep --help` starts fast and never imports torch.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from pdsweep import __version__
from pdsweep.cli import views

app = typer.Typer(
    name="pdsweep",
    help="Pre-training distillation sweeps: a YAML design space → training runs → MLflow → paper-style tables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SweepFile = Annotated[Path, typer.Argument(help="A sweep YAML file.", show_default=False)]


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Bad input: one line per problem on stderr, exit code 2, no traceback."""
    from pdsweep.errors import UserError

    try:
        yield
    except UserError as e:
        for line in e.problems:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2) from None


@contextlib.contextmanager
def _exit_on_interrupt() -> Iterator[None]:
    """Ctrl-C: exit 130 once what was running has stopped, without a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


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


def _load_any(path: Path):  # noqa: ANN202 - returns a Sweep or a RunSpec
    """A sweep file (it has any sweep key: `name:`, `base:`, `grid:`, ...) or a single-run file."""
    from pdsweep import spec
    from pdsweep.spec import expand, sweep
    from pdsweep.spec.load import read_yaml

    data = read_yaml(path)
    if not isinstance(data, dict) or set(data) & (set(sweep.Sweep.model_fields) - set(spec.RunSpec.model_fields)):
        loaded = expand.load_sweep(path)
        return loaded, expand.expand(loaded, str(path))
    return expand.load_run(path), None


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Sweep or run YAML files.", show_default=False)],
) -> None:
    """Check sweep (or run) files: every field, every axis path, every expanded run."""
    from pdsweep.errors import UserError

    failed = False
    for path in files:
        try:
            _, runs = _load_any(path)
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


@app.command()
def plan(
    file: SweepFile,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON instead of a table.")] = False,
) -> None:
    """Show every run a sweep stands for, with derived sizes, before spending any compute."""
    from pdsweep.spec import expand, plan

    with _user_errors():
        sweep = expand.load_sweep(file)
        runs = expand.expand(sweep, str(file))
        rows, passes = plan.plan_rows(runs)
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


@app.command()
def explain(
    path: Annotated[
        str,
        typer.Argument(
            help="A dotted RunSpec path such as logits.top_p, or a sweep key such as zip.",
            show_default=False,
        ),
    ] = "",
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Every field as a Markdown reference (docs/spec-reference.md).")
    ] = False,
) -> None:
    """Print a field's documentation, type, default and constraints."""
    from pdsweep import spec
    from pdsweep.errors import UserError
    from pdsweep.spec import expand, sweep
    from pdsweep.spec.load import describe_field

    with _user_errors():
        if markdown:
            typer.echo(_reference(path), nl=False)
            return
        if not path:
            typer.echo("RunSpec sections (pdsweep explain SECTION.FIELD for details):")
            for name, info in spec.RunSpec.model_fields.items():
                typer.echo(f"  {name:9s} {' '.join((info.description or '').split())}")
            typer.echo("Sweep keys: " + ", ".join(sweep.Sweep.model_fields))
            return
        entries = describe_field(spec.RunSpec, path) or describe_field(sweep.Sweep, path)
        if entries is None:
            expand.check_path(path, "")  # raises with the closest valid paths
            raise UserError(f"{path}: not a field")
        for e in entries:
            typer.echo(f"{e['path']}  ({e['in']})")
            typer.echo(f"  type:        {e['type']}")
            typer.echo(f"  default:     {e['default']}")
            if e["constraints"]:
                typer.echo(f"  constraints: {e['constraints']}")
            typer.echo(f"  {e['doc']}")
            for v in e["variants"]:
                typer.echo(f"    - {v}")


def _reference(prefix: str = "") -> str:
    """The spec reference in Markdown, generated from the models' field docstrings."""
    from pdsweep import spec
    from pdsweep.spec import expand, sweep
    from pdsweep.spec.load import describe_field

    def section(title: str, root: Any, paths: list[str]) -> list[str]:
        lines = [f"## {title}", ""]
        for path in paths:
            for e in describe_field(root, path) or []:
                where = f" ({e['in']})" if e["in"].startswith("kind") else ""
                lines.append(f"### `{path}`{where}")
                lines.append("")
                lines.append(e["doc"] or "(undocumented)")
                lines.append("")
                lines.append(f"- type: `{e['type']}`")
                lines.append(f"- default: `{e['default']}`")
                if e["constraints"]:
                    lines.append(f"- constraints: {e['constraints']}")
                lines += [f"- `{v.split(':', 1)[0]}`:{v.split(':', 1)[1]}" for v in e["variants"]]
                lines.append("")
        return lines

    def sweep_paths(model: Any, at: str = "") -> list[str]:
        out = []
        for name, info in model.model_fields.items():
            out.append(at + name)
            subs = [m for m in getattr(info.annotation, "__args__", (info.annotation,)) if isinstance(m, type)]
            out += [
                p for m in subs if m in (sweep.ReportSpec, sweep.SearchSpec) for p in sweep_paths(m, f"{at}{name}.")
            ]
        return out

    run_paths = [p for p in expand.valid_paths() if p.startswith(prefix)]
    lines = [
        "# Spec reference",
        "",
        "Generated from the field docstrings by `pdsweep explain --markdown` (tests/test_readme.py checks it",
        "is current). A run file is a RunSpec; a sweep file has the keys under *Sweep* and a `base:` RunSpec.",
        "Decisions where the paper is silent are marked [D]; `pdsweep explain FIELD` prints one field.",
        "",
        *section("RunSpec", spec.RunSpec, run_paths),
        *section("Sweep", sweep.Sweep, [p for p in sweep_paths(sweep.Sweep) if p.startswith(prefix)]),
    ]
    return "\n".join(lines).rstrip() + "\n"


data_app = typer.Typer(help="Fetch corpora and tokenize them.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="shakespeare, debian-docs or benchmarks.", show_default=False)],
) -> None:
    """Download a builtin corpus, or the benchmark files, into the cache (once)."""
    from pdsweep.data import corpora

    bar, hook = views.progress_bar()
    with _user_errors(), bar:
        if name == "benchmarks":
            from pdsweep.eval import tasks

            path = tasks.fetch_benchmarks(hook)
        else:
            path = corpora.fetch(name, hook)
    typer.echo(f"{name}: {path}")


@data_app.command("prepare")
def data_prepare(file: Annotated[Path, typer.Argument(help="A run or sweep YAML file.", show_default=False)]) -> None:
    """Tokenize the corpus of a run (or of every run of a sweep), training its tokenizer if needed."""
    from pdsweep.data import tokenized
    from pdsweep.run import launch

    bar, hook = views.progress_bar()
    with _user_errors():
        spec_or_sweep, runs = _load_any(file)
        _writable_workdir()
        specs = [spec_or_sweep] if runs is None else [r.spec for r in runs]
        done = set()
        with bar:
            for spec in specs:
                key = spec.data.model_dump_json(exclude={"seq_len", "tokens"})
                if key in done:
                    continue
                done.add(key)
                launch.ensure_builtin_teacher(spec, hook)
                tokens = tokenized.prepare(spec, progress=hook)
                tokenized.verify(tokens)
                m = tokens.manifest
                typer.echo(
                    f"{tokens.path}: {m['splits']['train']['tokens']:,} train + {m['splits']['heldout']['tokens']:,} held-out "
                    f"tokens, vocabulary {m['vocab_size']:,}, unigram entropy {m['unigram_entropy_nats']:.3f} nats"
                )


logits_app = typer.Typer(help="Teacher logits stores: generate, inspect, verify.", no_args_is_help=True)
app.add_typer(logits_app, name="logits")


@logits_app.command("generate")
def logits_generate(
    file: Annotated[
        Path, typer.Argument(help="A run YAML file: its teacher, data and logits.top_p/top_k.", show_default=False)
    ],
    out: Annotated[
        Path | None, typer.Option(help="Store directory (default: WORKDIR/logits/<teacher>-<corpus>-top-P-K).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the first N training positions (a quick look).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Windows per teacher forward (default: teacher.batch_size).")
    ] = None,
) -> None:
    """Run the teacher over the run's tokenized corpus and store its top-p-k logits (resumable)."""
    from pdsweep.run import launch
    from pdsweep.spec import expand

    bar, hook = views.progress_bar()
    with _user_errors():
        spec = expand.load_run(file)
        if spec.teacher is None:
            raise _spec_error(f"{file}: teacher: the run has no teacher")
        _writable_workdir()
        with bar:
            result = launch.generate_pass(spec=spec, store=out, limit=limit, batch_size=batch_size, progress=hook)
    rate = f", {result['tokens_per_s']:,.0f} tokens/s" if result["tokens_per_s"] else ""
    typer.echo(f"{result['store']}: {result['positions']:,} positions ({result['generated']:,} generated now{rate})")


@logits_app.command("stats")
def logits_stats(
    store: Annotated[Path, typer.Argument(help="A logits store directory.", show_default=False)],
    top_p: Annotated[list[float] | None, typer.Option("--top-p", help="p values (repeatable).")] = None,
    top_k: Annotated[list[int] | None, typer.Option("--top-k", help="k values (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Mean kept entries and bytes per token for each (p, k), from one store (the paper's Figs 2–3)."""
    from pdsweep.logits import store as logits_store

    with _user_errors():
        reader = logits_store.StoreReader(store)
        ps = top_p or [p for p in (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95) if p <= reader.top_p + 1e-9]
        ks = top_k or [k for k in (1, 3, 5, 10, 20, 50, 100) if reader.top_k is None or k <= reader.top_k]
        rows = logits_store.stats(reader, ps, ks)
        totals = reader.verify()
    if as_json:
        sys.stdout.write(json.dumps({"store": str(store), **totals, "rows": rows}, indent=1) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{store}: {totals['positions']:,} positions, {totals['entries'] / max(1, totals['positions']):.1f} entries/token, "
        f"{totals['bytes'] / max(1, totals['entries']):.3f} bytes/entry",
        title_justify="left",
    )
    table.add_column("p \\ k", justify="right")
    for k in ks:
        table.add_column(str(k), justify="right")
    for p in ps:
        cells = [next(r for r in rows if r["top_p"] == p and r["top_k"] == k) for k in ks]
        table.add_row(f"{p:g}", *(f"{c['entries_per_token']:.1f} · {c['bytes_per_token']:.0f} B" for c in cells))
    Console(width=200).print(table)
    typer.echo("cells: mean kept entries per token · bytes per token")


@logits_app.command("verify")
def logits_verify(store: Annotated[Path, typer.Argument(help="A logits store directory.", show_default=False)]) -> None:
    """Check every shard's checksum and contents against the manifest."""
    from pdsweep.logits import store as logits_store

    with _user_errors():
        totals = logits_store.StoreReader(store).verify()
    typer.echo(
        f"ok  {store}: {totals['shards']} shards, {totals['positions']:,} positions, {totals['entries']:,} entries, "
        f"{totals['bytes'] / max(1, totals['entries']):.3f} bytes/entry"
    )


teacher_app = typer.Typer(help="Pretrained teachers.", no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")


@teacher_app.command("fetch")
def teacher_fetch(name: Annotated[str, typer.Argument(help="smollm2-135m", show_default=False)]) -> None:
    """Download a builtin pretrained teacher and convert it once to safetensors + tokenizer.json."""
    from pdsweep.logits import teacher

    bar, hook = views.progress_bar()
    with _user_errors(), bar:
        path = teacher.builtin_dir(name, hook)
    typer.echo(f"{name}: {path}")


@app.command()
def train(
    file: Annotated[Path, typer.Argument(help="A run YAML file (a RunSpec; dotted keys allowed).", show_default=False)],
    out: Annotated[Path | None, typer.Option(help="Run directory (default: WORKDIR/runs/single/RUN_ID).")] = None,
    nproc: Annotated[int, typer.Option(min=1, help="Processes per machine (GPUs, or CPU workers).")] = 1,
    launcher: Annotated[
        str, typer.Option(help="torchrun or deepspeed (one machine; --hostfile always uses deepspeed).")
    ] = "torchrun",
    hostfile: Annotated[Path | None, typer.Option(help="DeepSpeed hostfile: train on several machines.")] = None,
    logits: Annotated[
        Path | None, typer.Option(help="Teacher logits store (default: generated from the run's teacher).")
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///WORKDIR/mlflow.db)."),
    ] = None,
    track: Annotated[bool, typer.Option("--track/--no-track", help="Log the run to MLflow.")] = True,
    sweep: Annotated[
        str, typer.Option(help="MLflow experiment of the run (a sweep name: letters, digits, _ . -).")
    ] = "single",
    label: Annotated[
        str | None, typer.Option(help="Name of the run in MLflow (default: the run directory's name).")
    ] = None,
) -> None:
    """Train one run, resuming from its last checkpoint if it was interrupted."""
    from pdsweep.spec import expand, plan

    with _user_errors():
        spec = expand.load_run(file)
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", sweep):
            raise _spec_error(
                f"--sweep: must be a sweep name (letters, digits, _ . -; at most 100), got {sweep[:60]!r}"
            )
        _writable_workdir()
        run_dir = out or plan.single_run_dir(expand.run_id(spec))
        if launcher not in ("torchrun", "deepspeed"):
            raise _spec_error(f"--launcher: must be torchrun or deepspeed, got {launcher!r}")
        if hostfile is not None and not hostfile.is_file():
            raise _spec_error(f"--hostfile: {hostfile} does not exist")
        if hostfile is not None:
            from pdsweep.run import launch

            launch.hostfile_hosts(hostfile)
    if (nproc > 1 or hostfile is not None) and "RANK" not in os.environ:
        from pdsweep.run import launch

        args = [
            "train",
            str(file),
            "--out",
            str(run_dir),
            *(["--logits", str(logits)] if logits else []),
            *(["--tracking-uri", tracking_uri] if tracking_uri else []),
            *([] if track else ["--no-track"]),
            *["--sweep", sweep, "--label", label or run_dir.name],
        ]
        with _user_errors():
            rc = launch.relaunch(["pdsweep.cli", *args], nproc, "deepspeed" if hostfile else launcher, hostfile)
        raise typer.Exit(rc)
    raise typer.Exit(_train_one(spec, run_dir, logits, tracking_uri, track, sweep, label or run_dir.name))


@app.command()
def run(
    file: SweepFile,
    workers: Annotated[int, typer.Option(min=1, help="Runs at a time (each in its own process).")] = 1,
    devices: Annotated[str, typer.Option(help="cpu, cuda:0,1,… (split evenly among the workers) or auto.")] = "cpu",
    hostfile: Annotated[
        Path | None, typer.Option(help="DeepSpeed hostfile: every run trains on these machines.")
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///WORKDIR/mlflow.db)."),
    ] = None,
    track: Annotated[bool, typer.Option("--track/--no-track", help="Log the runs to MLflow.")] = True,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run failed runs again.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would run, in order, and exit.")] = False,
    with_report: Annotated[
        bool, typer.Option("--report", help="Then print the sweep's table and write its report (pdsweep report).")
    ] = False,
) -> None:
    """Run a whole sweep — teacher runs, their logits, baselines and students — in dependency
    order, WORKERS at a time; resumable (done runs are skipped, killed ones resume)."""
    from pdsweep.run import launch, scheduler
    from pdsweep.spec import expand, plan

    with _user_errors():
        sweep = expand.load_sweep(file)
        runs = expand.expand(sweep, str(file))
        if not dry_run:
            _writable_workdir()
        tasks = scheduler.build(sweep.name, runs)
        if hostfile is not None and not hostfile.is_file():
            raise _spec_error(f"--hostfile: {hostfile} does not exist")
        if hostfile is not None:
            launch.hostfile_hosts(hostfile)
        slots = scheduler.device_slots(devices, workers)
        if dry_run:
            sched = scheduler.Scheduler(sweep.name, tasks, workers, devices, retry_failed=retry_failed)
            views.print_tasks(sched.tasks, title=f"{sweep.name}: {len(tasks)} tasks on {len(slots)} worker(s), dry run")
            raise typer.Exit(0)
        parent = None
        if track:
            from pdsweep.run import tracking

            tracker = tracking.MlflowTracker(tracking_uri)  # an unreachable store fails here, before any run
            parent = tracker.start_sweep(sweep.name, plan.sweep_dir(sweep.name), file, len(runs))
        sched = scheduler.Scheduler(
            sweep.name,
            tasks,
            workers,
            devices,
            tracking_uri,
            track,
            retry_failed,
            hostfile,
            parent_run=parent,
        )
    view = views.LiveTasks(f"{sweep.name}: {len(runs)} runs, {len(slots)} worker(s)")
    sched.on_change = view.update
    try:
        with view:
            sched.run()
    except KeyboardInterrupt:
        if track:
            tracker.finish("interrupted", "interrupted (Ctrl-C)")
        views.print_tasks(sched.tasks, title=f"{sweep.name}: interrupted")
        typer.echo("interrupted: run the same command again to resume", err=True)
        raise typer.Exit(130) from None
    except Exception as e:  # noqa: BLE001 - the scheduler's own failure: its tasks were stopped, resumable
        from pdsweep import proc

        why = proc.describe(e)
        if track:
            with contextlib.suppress(Exception):
                tracker.finish("failed", why)
        typer.echo(
            f"error: pdsweep run stopped ({why}); the running tasks were interrupted"
            " and keep their checkpoints: run the same command again to resume",
            err=True,
        )
        raise typer.Exit(1) from None
    trained = [t for t in sched.tasks if t.kind == "train"]
    done = sum(t.status == "done" for t in trained)
    if track:
        tracker.log_metrics({"runs_done": done, "runs_failed": len(trained) - done}, 0)
        tracker.finish("done" if done == len(trained) else "failed")
    views.print_tasks(sched.tasks, title=f"{sweep.name}: {done} of {len(trained)} runs done")
    typer.echo(f"{sweep.name}: {done} of {len(trained)} runs done; runs in {plan.sweep_dir(sweep.name)}")
    if with_report and track and done:
        with _user_errors():
            _report(file, None, tracking_uri, None, None, None, True, False)
    raise typer.Exit(0 if done == len(trained) else 1)


@app.command()
def report(
    file: SweepFile,
    out: Annotated[Path | None, typer.Option(help="Directory for the report (default: WORKDIR/reports/SWEEP).")] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///WORKDIR/mlflow.db)."),
    ] = None,
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
    with _user_errors():
        _report(file, out, tracking_uri, metric, primary, fmt, plots, json_out)


def _report(file, out, tracking_uri, metric, primary, fmt, plots, json_out, quiet: bool = False) -> Path | None:  # noqa: ANN001
    from pdsweep.report import build, formats
    from pdsweep.spec import expand, plan

    kinds = fmt or ["md", "csv", "tex", "html"]
    bad = [f for f in kinds if f not in ("md", "csv", "tex", "html")]
    if bad:
        raise _spec_error(f"--format: unknown format {bad[0]!r} (md, csv, tex, html)")
    sweep = expand.load_sweep(file)
    data = build.load(file, tracking_uri)
    spec = sweep.report
    table = build.build_table(
        data.tidy,
        metric or spec.metrics,
        primary or spec.primary,
        spec.confidence,
        spec.bootstrap,
        title=sweep.name,
        delta_interval=spec.delta_interval,
    )
    if json_out:
        typer.echo(formats.to_frame(table).to_json(orient="records", indent=1))
        return None
    from rich.console import Console

    where = out or plan.report_dir(sweep.name)
    written = build.write(data, table, where, kinds, plots)
    console = Console(width=max(100, shutil.get_terminal_size((160, 40)).columns))
    console.print(formats.to_rich(table))
    for note in formats.footnotes(table):
        console.print(f"• {note}", highlight=False)
    if data.missing:
        console.print(f"[yellow]{len(data.missing)} run(s) not done; the table has the done ones.[/yellow]")
    main = next((p for p in written if p.suffix == ".html"), written[0])
    typer.echo(f"report: {main} ({len(written)} files in {where})")
    return main


@app.command()
def tune(
    target: Annotated[
        str, typer.Argument(help="A sweep YAML file with a search: section, or `status`.", show_default=False)
    ],
    sweep_file: Annotated[
        Path | None, typer.Argument(help="With `status`: the sweep file.", show_default=False)
    ] = None,
    trials: Annotated[int | None, typer.Option(min=1, help="Trials in the study (default: search.trials).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Trials at a time on this machine.")] = 1,
    storage: Annotated[
        str | None,
        typer.Option(help="Optuna storage: an SQLAlchemy URL (default: sqlite:///WORKDIR/optuna.db)."),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///WORKDIR/mlflow.db)."),
    ] = None,
    track: Annotated[bool, typer.Option("--track/--no-track", help="Log the trials' runs to MLflow.")] = True,
    out: Annotated[
        Path | None, typer.Option(help="With `status`: also write report.md and trials.csv to this directory.")
    ] = None,
) -> None:
    """Run an Optuna study over the sweep's search space (`pdsweep tune SWEEP`), or show one
    (`pdsweep tune status SWEEP`): trials are runs, pruned on their intermediate evaluations."""
    from pdsweep.run import search

    with _user_errors():
        if target == "status":
            if sweep_file is None:
                raise _spec_error("tune status: give the sweep file (pdsweep tune status SWEEP)")
            _tune_status(sweep_file, search.storage_url(storage), trials, out)
            return
        path = Path(target)
        if not path.exists():
            raise _spec_error(f"{target}: no such sweep file")
        from pdsweep.spec import expand

        sweep = expand.load_sweep(path)
        if sweep.search is None:
            raise _spec_error(f"{path}: search: the sweep has no search space")
        _writable_workdir()
        url = search.storage_url(storage)
        search.create(sweep, str(path), url)  # once, before any worker
    if workers == 1:
        with _user_errors():
            _tune_worker(path, url, 0, tracking_uri, track, trials)
    else:
        with _user_errors(), _exit_on_interrupt():
            codes = search.run_workers(
                sweep=sweep,
                sweep_file=path,
                storage=url,
                workers=workers,
                trials=trials,
                tracking_uri=tracking_uri,
                track=track,
                on_line=typer.echo,
            )
        if any(codes):
            raise typer.Exit(max(codes))
    with _user_errors():
        completed, failed = _tune_status(path, url, trials)
    if completed == 0 and failed:
        typer.echo(f"error: every trial of the study failed ({failed}); their reasons are above", err=True)
        raise typer.Exit(1)


def _tune_worker(path: Path, url: str, index: int, tracking_uri: str | None, track: bool, trials: int | None) -> None:
    from pdsweep.run import search

    def show(o) -> None:  # noqa: ANN001 - a search.Outcome
        value = f"{o.value:.6g}" if o.value is not None else o.reason or "-"
        typer.echo(f"trial {o.number}: {o.state} {value}  {o.params}")

    search.work(path, url, index, tracking_uri, track, on_trial=show, trials=trials)


def _tune_status(path: Path, url: str, trials: int | None = None, out: Path | None = None) -> tuple[int, int]:
    """Print (and with `out`, write) the study; return its (completed, failed) trial counts."""
    from rich.console import Console
    from rich.table import Table

    from pdsweep import settings
    from pdsweep.run import search
    from pdsweep.spec import expand

    sweep = expand.load_sweep(path)
    spec = sweep.search
    if spec is None:
        raise _spec_error(f"{path}: search: the sweep has no search space")
    import optuna

    no_study = f"tune status: no study {sweep.name!r} yet in {url} (run pdsweep tune {path} first)"
    file = settings.sqlite_file(url)
    if file is not None and not file.exists():
        raise _spec_error(no_study)  # nothing is created by looking
    try:
        with search._quiet():
            study = optuna.load_study(study_name=sweep.name, storage=search._storage(url))
    except KeyError:
        raise _spec_error(no_study) from None
    frame = search.trials_frame(study)
    n, failed = search.counted(study)
    table = Table(
        title=f"{sweep.name}: {n} of {trials or spec.trials} trials, {failed} failed ({url})", title_justify="left"
    )
    for col in frame.columns:
        table.add_column(str(col), justify="right" if col in ("trial", "value") else "left")
    for row in frame.itertuples(index=False):
        table.add_row(
            *(
                "" if v is None or (isinstance(v, float) and v != v) else f"{v:.6g}" if isinstance(v, float) else str(v)
                for v in row
            )
        )
    console = Console(width=max(100, shutil.get_terminal_size((160, 40)).columns))
    console.print(table)
    imp = search.importances(study)
    if imp:
        console.print(
            "parameter importances (fANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in imp.items()), highlight=False
        )
    try:
        best = search.best_spec_yaml(sweep, str(path), study)
    except ValueError:
        best = ""
    typer.echo("best trial, as a RunSpec:\n" + best if best else "no completed trial yet")
    if out is not None:
        from pdsweep import files

        title = f"{sweep.name}: {n} of {trials or spec.trials} trials, {failed} failed"
        md = [f"# {sweep.name} (Optuna study)", ""] + (
            [f"- {' '.join(sweep.description.split())}"] if sweep.description else []
        )
        md += [
            f"- {title}; sampler {spec.sampler}, pruner {spec.pruner}, objective {spec.objective} ({spec.direction})"
        ]
        import datetime as dt

        when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        md += [f"- machine: {settings.machine()}", f"- date: {when}", f"- storage: {settings.shown_uri(url)}", ""]
        md += [frame.to_markdown(index=False, floatfmt=".6g"), ""]
        if imp:
            md += ["Parameter importances (fANOVA): " + ", ".join(f"`{k}` {v:.2f}" for k, v in imp.items()), ""]
        md += ["Best trial, as a RunSpec:", "", "```yaml", best.rstrip(), "```", ""] if best else []
        files.write_text(out / "report.md", "\n".join(md))
        files.write_text(out / "trials.csv", frame.to_csv(index=False, float_format="%.6g"))
        typer.echo(f"report: {out / 'report.md'}")
    completed = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    return completed, failed


@app.command()
def status(
    file: SweepFile,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The state of every run of a sweep, from its run directories (no MLflow needed)."""
    from pdsweep import rundir
    from pdsweep.run import scheduler
    from pdsweep.spec import expand

    with _user_errors():
        sweep = expand.load_sweep(file)
        sched = scheduler.Scheduler(sweep.name, scheduler.build(sweep.name, expand.expand(sweep, str(file))))
    for t in sched.tasks:  # what is running right now, by whom
        if rundir.read_status(t.dir)["status"] == "running":
            t.status = "running" if rundir.is_locked(t.dir) else "interrupted"
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
                **({"result": t.result} if t.result else {}),
            }
            for t in sched.tasks
        ]
        typer.echo(json.dumps(rows, indent=1))
        return
    counts = collections.Counter(t.status for t in sched.tasks)
    views.print_tasks(sched.tasks, title=f"{sweep.name}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))


@app.command()
def ui(
    file: Annotated[
        Path | None, typer.Argument(help="A sweep YAML file: open its experiment.", show_default=False)
    ] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1.")] = 5000,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///WORKDIR/mlflow.db)."),
    ] = None,
) -> None:
    """Start the MLflow UI on the sweep's store, on 127.0.0.1, and print its URL (Ctrl-C stops it)."""
    from pdsweep.run import tracking
    from pdsweep.spec import expand

    with _user_errors():
        name = expand.load_sweep(file).name if file is not None else None
        tracking.check_exists(tracking_uri or tracking.default_uri(), name)
        tracker = tracking.MlflowTracker(tracking_uri)
        exp = tracker.client.get_experiment_by_name(name) if name else None
        if name and exp is None:
            raise _spec_error(f"{file}: the sweep {name!r} has no experiment in {tracker.uri} yet (pdsweep run it)")
    # The runs table of the sweep's experiment (the UI would otherwise open on its GenAI overview).
    suffix = f"/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" if exp is not None else ""
    if tracker.uri.startswith(("http://", "https://")):
        typer.echo(f"{tracker.uri.rstrip('/')}{suffix}")  # a server already serves its UI
        return
    with _user_errors():
        server = tracking.start_ui(tracker.uri, port)
    try:
        typer.echo(f"MLflow UI: http://127.0.0.1:{port}{suffix}  (Ctrl-C to stop)")
        code = server.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        tracking.stop_ui(server)  # whatever ends this command ends the server
    raise typer.Exit(code)


@app.command("eval")
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
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
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
    from pdsweep.eval import tasks
    from pdsweep.run import launch

    named = tuple(harness_task or ())
    harness = harness or bool(named)
    default = () if named else [b for b in tasks.BENCHMARKS if not (harness and b == "gsm8k")]
    suites = tuple(suite or default)
    bar, hook = views.progress_bar()
    with _user_errors(), bar:
        metrics, out = launch.evaluate_model(
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
        table.add_row(
            task,
            f"{m['items']:.0f}",
            *(f"{m[k]:.4f}" if k in m else "" for k in ("acc", "acc_norm", "ppl")),
        )
    Console(width=120).print(table)
    if out is not None:
        typer.echo(f"results: {out}")


def _writable_workdir() -> None:
    """The work directory (PDSWEEP_WORKDIR) is a directory this process can write: checked before
    a command that writes there does anything, so a wrong one is one line, not a traceback."""
    import tempfile

    from pdsweep import settings

    path = settings.workdir()
    where = f"work directory {path} (PDSWEEP_WORKDIR)"
    if path.exists() and not path.is_dir():
        raise _spec_error(f"{where}: is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check."):
            pass
    except OSError as e:
        raise _spec_error(f"{where}: cannot write there ({e.strerror or e})") from None


def _spec_error(line: str) -> Exception:
    from pdsweep.errors import UserError

    return UserError(line)


def _train_one(  # noqa: ANN001 - spec is a RunSpec
    spec,
    run_dir: Path,
    logits: Path | None = None,
    tracking_uri: str | None = None,
    track: bool = True,
    sweep: str = "single",
    label: str | None = None,
) -> int:
    """Train in run_dir with progress bars; 0 when done, 1 when the run failed, 2 on bad input."""
    from pdsweep.run import launch, worker

    bar, hook = views.progress_bar()
    quiet = int(os.environ.get("RANK", "0")) != 0  # one bar, on rank 0
    with _user_errors(), contextlib.nullcontext() if quiet else bar:
        outcome = launch.run_one(
            spec,
            run_dir,
            logits,
            progress=hook,
            callbacks=(views.train_bar(bar),),
            tracking_uri=tracking_uri,
            track=track,
            sweep=sweep,
            label=label,
        )
    return worker.report(outcome, run_dir)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
