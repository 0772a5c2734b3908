"""`pdsweep data`, `teacher` and `logits`: what runs read — corpora and their tokens, pretrained
teachers, and teacher logits stores (generate, inspect, verify)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from pdsweep import settings
from pdsweep.cli import views
from pdsweep.cli.common import Json, StoreDir, user_errors

data_app = typer.Typer(help="Fetch corpora and tokenize them.", no_args_is_help=True)
logits_app = typer.Typer(help="Teacher logits stores: generate, inspect, verify.", no_args_is_help=True)
teacher_app = typer.Typer(help="Pretrained teachers.", no_args_is_help=True)


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="shakespeare, debian-docs or benchmarks.", show_default=False)],
) -> None:
    """Download a builtin corpus, or the benchmark files, into the cache (once)."""
    from pdsweep.data import corpora

    bar, hook = views.progress_bar()
    with user_errors(), bar:
        if name == "benchmarks":
            from pdsweep.eval import tasks

            path = tasks.fetch_benchmarks(hook)
        else:
            path = corpora.fetch(name, hook)
    typer.echo(f"{name}: {path}")


@data_app.command("prepare")
def data_prepare(file: Annotated[Path, typer.Argument(help="A run or sweep YAML file.", show_default=False)]) -> None:
    """Tokenize the corpus of a run (or of every run of a sweep), training its tokenizer if needed."""
    from pdsweep.run import launch
    from pdsweep.spec import expand

    bar, hook = views.progress_bar()
    with user_errors():
        spec_or_sweep, runs = expand.load_any(file)
        settings.check_workdir()
        with bar:
            prepared = launch.prepare_corpora(
                specs=[spec_or_sweep] if runs is None else [r.spec for r in runs],  # type: ignore[list-item]
                progress=hook,
            )
    for tokens in prepared:
        m = tokens.manifest
        typer.echo(
            f"{tokens.path}: {m['splits']['train']['tokens']:,} train + {m['splits']['heldout']['tokens']:,} held-out "
            f"tokens, vocabulary {m['vocab_size']:,}, unigram entropy {m['unigram_entropy_nats']:.3f} nats"
        )


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
    ranks: Annotated[
        int,
        typer.Option(
            min=1,
            help="Processes on this machine, each writing its own shards (one per GPU). Under torchrun or srun "
            "the ranks come from the launcher.",
        ),
    ] = 1,
    encoders: Annotated[
        int, typer.Option(min=0, help="Processes per rank that encode shards (0: one thread beside the teacher).")
    ] = 0,
    shard_positions: Annotated[
        int, typer.Option(min=1, help="Positions per shard (whole windows): the unit a rank writes and a rerun redoes.")
    ] = 16384,
) -> None:
    """Run the teacher over the run's tokenized corpus and store its top-p-k logits (resumable: a rerun
    writes only the shards not written yet)."""
    from pdsweep import rundir
    from pdsweep.run import worker
    from pdsweep.spec import expand

    bar, hook = views.progress_bar()
    with user_errors():
        spec = expand.load_run(file)
        settings.check_workdir()
        with bar:
            if ranks > 1 and "RANK" not in os.environ:  # this process only starts the ranks: no torch here
                if out is None:
                    from pdsweep.run import launch

                    out = launch.pass_store(spec, limit, hook, str(file))
                store = out
                task = worker.LogitsTask(
                    store=store,
                    spec=spec.model_dump(mode="json"),
                    limit=limit,
                    batch_size=batch_size,
                    ranks=ranks,
                    encoders=encoders,
                    shard_positions=shard_positions,
                )
                task_file = worker.write(rundir.task_file(store), task)
                result = worker.spawn_pass(task_file, store, ranks, hook)
            else:
                from pdsweep.logits import teacher_pass
                from pdsweep.run import launch

                result = launch.generate_pass(
                    spec=spec,
                    store=out,
                    limit=limit,
                    batch_size=batch_size,
                    progress=hook,
                    source=str(file),
                    encoders=encoders,
                    shard_positions=shard_positions,
                    rank=teacher_pass.pass_rank(),
                )
    if result.get("failed"):
        typer.echo(
            f"error: {result['store']}: " + "; ".join(result["failed"]) + " — run again: it redoes only their shards",
            err=True,
        )
        raise typer.Exit(1)
    rate = f", {result['tokens_per_s']:,.0f} tokens/s" if result.get("tokens_per_s") else ""
    took = f" in {result['seconds']:.1f} s" if result.get("seconds") is not None else ""
    generated = f" ({result['generated']:,} generated now{took}{rate})" if result.get("generated") is not None else ""
    left = f"; {result['pending']} shards still to write by other ranks" if result["pending"] else ""
    typer.echo(f"{result['store']}: {result['positions']:,} positions{generated}{left}")


@logits_app.command("stats")
def logits_stats(
    store: StoreDir,
    top_p: Annotated[list[float] | None, typer.Option("--top-p", help="p values (repeatable).")] = None,
    top_k: Annotated[list[int] | None, typer.Option("--top-k", help="k values (repeatable).")] = None,
    as_json: Json = False,
) -> None:
    """Mean kept entries and bytes per token for each (p, k), from one store (the paper's Figs 2–3)."""
    from pdsweep.logits import store as logits_store

    with user_errors():
        ps, ks, rows, totals = logits_store.summary(store, top_p, top_k)
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
def logits_verify(store: StoreDir) -> None:
    """Check every shard's checksum and contents against the manifest."""
    from pdsweep.logits import store as logits_store

    with user_errors():
        totals = logits_store.StoreReader(store).verify()
    typer.echo(
        f"ok  {store}: {totals['shards']} shards, {totals['positions']:,} positions, {totals['entries']:,} entries, "
        f"{totals['bytes'] / max(1, totals['entries']):.3f} bytes/entry"
    )


@teacher_app.command("fetch")
def teacher_fetch(name: Annotated[str, typer.Argument(help="smollm2-135m", show_default=False)]) -> None:
    """Download a builtin pretrained teacher and convert it once to safetensors + tokenizer.json."""
    from pdsweep.logits import teacher

    bar, hook = views.progress_bar()
    with user_errors(), bar:
        path = teacher.builtin_dir(name, hook)
    typer.echo(f"{name}: {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
    app.add_typer(logits_app, name="logits")
    app.add_typer(teacher_app, name="teacher")
