"""What pdsweep shows on a terminal: the plan's tables (runs, teacher passes), a sweep's tasks (a
table, live while `pdsweep run` works; one line per change when the output is not a terminal),
and one progress bar for everything a command waits on. rich is imported inside each function, so
importing this module costs nothing."""

from __future__ import annotations

import math
import shutil
from typing import Any


def human(n: float | None, unit: str = "") -> str:
    if n is None:
        return "?"
    for suffix, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}"


def flops(n: float | None) -> str:
    """FLOPs as a power of ten: 1.9e21."""
    return "?" if n is None else f"{n:.2g}".replace("e+", "e")


def gpu_hours(h: float | None) -> str:
    return "?" if h is None else f"{h:,.0f}" if h >= 100 else f"{h:.3g}"


PLAN_TABLE_MAX_RUNS = 200
"""Above this many runs, `plan` prints one row per configuration (seeds collapsed)."""


def runs_table(title: str, rows: list[dict], pd_only: tuple[str, ...]):  # noqa: ANN202 - a rich Table
    from rich.table import Table

    collapsed = len(rows) > PLAN_TABLE_MAX_RUNS
    if collapsed:  # one row per (role, label), listing its seeds
        groups: dict[tuple[str, str], list[dict]] = {}
        for r in rows:
            groups.setdefault((r["role"], r["label"]), []).append(r)
        rows = [
            {
                **g[0],
                "run_id": f"{g[0]['run_id']} +{len(g) - 1}" if len(g) > 1 else g[0]["run_id"],
                "seed": _seed_list([r["seed"] for r in g]),
            }
            for g in groups.values()
        ]
        title += " (one row per configuration; --json lists every run)"
    axes = list(rows[0]["axes"]) if rows else []
    table = Table(title=title, title_justify="left")
    for col in (
        "run_id",
        "role",
        "label",
        *axes,
        "seeds" if collapsed else "seed",
        "params",
        "tokens",
        "steps",
        "FLOPs",
        "GPU-h",
        "teacher pass",
    ):
        numeric = col in ("seed", "params", "tokens", "steps", "FLOPs", "GPU-h")
        table.add_column(col, justify="right" if numeric else "left", no_wrap=col in ("run_id", "label"))
    for r in rows:
        # Teacher and baseline rows are LM-only: PD axes (logits.*, loss.*, teacher) do not apply.
        cells = [_cell(r["axes"][a]) if r["role"] == "student" or not a.startswith(pd_only) else "-" for a in axes]
        table.add_row(
            r["run_id"],
            r["role"],
            r["label"],
            *cells,
            str(r["seed"]),
            human(r["params"]),
            human(r["tokens"]),
            str(r["steps"]),
            flops(r.get("flops")),
            gpu_hours(r.get("gpu_hours")),
            r["teacher_pass"] or "-",
        )
    return table


def _seed_list(seeds: list[int]) -> str:
    seeds = sorted(seeds)
    if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}–{seeds[-1]}"
    return ",".join(map(str, seeds))


def passes_table(passes: dict, gpu: str, mfu: float):  # noqa: ANN202 - a rich Table
    from rich.table import Table

    table = Table(
        title="teacher passes",
        caption="one pass per teacher × corpus, at the largest p and k; smaller p, k and any τ are applied when "
        f"reading. Store: positions × measured entries/position × bytes/entry; GPU-h on {gpu} at {mfu:.0%} MFU",
        title_justify="left",
        caption_justify="left",
    )
    for col in ("pass", "teacher", "mode", "p_max", "k_max", "tokens", "runs", "positions", "entries/pos", "store",
                "FLOPs", "GPU-h"):  # fmt: skip
        table.add_column(
            col, justify="right" if col in ("positions", "entries/pos", "store", "FLOPs", "GPU-h") else "left"
        )
    for p in passes.values():
        k = "inf" if p.top_k is None else str(p.top_k)
        c = p.cost
        table.add_row(
            p.pass_id,
            p.teacher,
            p.mode,
            f"{p.top_p:g}",
            k if not p.sampling_draws else f"{p.sampling_draws} draws",
            human(p.tokens),
            str(len(p.runs)),
            ("≤ " if len(p.orders) > 1 else "") + human(c.positions if c else None),
            f"{c.entries_per_token:.1f}" if c and c.entries_per_token is not None else "?",
            human(c.store_bytes if c else None, "B"),
            flops(c.flops if c else None),
            gpu_hours(c.gpu_hours if c else None),
        )
    return table


def store_arithmetic(p) -> list[str]:  # noqa: ANN001 - a plan.TeacherPass
    """A pass's store beside full float32 logits, and the paper's own arithmetic for those."""
    from pdsweep.spec import costs

    c = p.cost
    if c is None or not c.vocab_size or c.full_bytes is None:
        return []
    paper = costs.paper_full_logits(c.vocab_size, c.positions)
    per_token = c.vocab_size * costs.FULL_VALUE_BYTES
    full = f"{paper['pb']:.1f} PB ({paper['pib']:.1f} PiB)" if paper["pb"] >= 1 else human(c.full_bytes, "B")
    line = (
        f"pass {p.pass_id}: full float32 logits would be {c.vocab_size:,} × {costs.FULL_VALUE_BYTES} B = "
        f"{human(per_token, 'B')}/position × {human(c.positions)} = {full}"
    )
    if paper["pb"] >= 1:
        line += (
            f"; the paper's arithmetic ({paper['rounded_vocab']:,} × 4 B = {paper['paper_kb_per_token']:.1f} KiB/token,"
            f" 10¹² KiB read as a PB) gives {paper['paper_pb']:.1f} PB"
        )
    lines = [line]
    if c.store_bytes is not None and c.entries_per_token is not None:
        lines.append(
            f"pass {p.pass_id}: pdsweep's store {c.entries_per_token:.1f} entries/position × {costs.BYTES_PER_ENTRY} "
            f"B/entry = {c.entries_per_token * costs.BYTES_PER_ENTRY:.0f} B/position → {human(c.store_bytes, 'B')}, "
            f"{c.full_bytes / c.store_bytes:,.0f}× smaller than full logits (the paper: ~150 B/token, ~4,000×)"
        )
    return lines


def _cell(value: object) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items() if v is not None)
    return str(value)


def progress_bar():  # noqa: ANN202 - (rich Progress, progress hook)
    """One rich Progress for everything a command waits on (downloads, tokenizing, teacher logits,
    training steps), and the `progress(what, done, total)` hook that feeds it."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=True,
    )
    tasks: dict[str, int] = {}

    def hook(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = bar.add_task(what, total=total, info="")
        bar.update(tasks[what], completed=done, total=total)

    return bar, hook


def task_table(tasks, title: str):  # noqa: ANN001, ANN202 - scheduler Tasks → a rich Table
    from rich.table import Table

    colors = {"done": "green", "failed": "red", "running": "cyan", "interrupted": "yellow", "waiting": "magenta",
              "queued": "blue"}  # fmt: skip
    jobs = any(t.job_id for t in tasks)  # cluster jobs: the batch system's view beside pdsweep's
    table = Table(title=title, title_justify="left")
    cols = ["run", "label", "role", "status", "step", "loss", "ETA"]
    cols += ["job", "Slurm state", "node", "elapsed"] if jobs else []
    for col in [*cols, "note"]:
        table.add_column(
            col, justify="right" if col in ("step", "loss", "ETA", "elapsed") else "left", no_wrap=col != "note"
        )
    for t in tasks:
        c = colors.get(t.status, "white")
        heldout = t.result.get("heldout/loss")
        note = f"held-out loss {heldout:.4f}" if heldout is not None else t.reason
        row = [
            t.key[:12] if t.kind == "train" else t.key,
            t.label,
            t.role,
            f"[{c}]{t.status}[/{c}]",
            f"{t.step}/{t.total_steps}" if t.kind == "train" else "",
            f"{t.loss:.4f}" if t.loss is not None else "",
            fmt_eta(t.eta_s),
        ]
        row += [t.job_id, t.job_state, t.node, t.elapsed] if jobs else []
        table.add_row(*row, note)
    return table


def print_tasks(tasks, title: str) -> None:  # noqa: ANN001
    from rich.console import Console

    Console(width=max(120, shutil.get_terminal_size().columns)).print(task_table(tasks, title))


class LiveTasks:
    """A live table on a terminal; elsewhere (logs, CI) one line whenever a task changes state."""

    def __init__(self, title: str):
        from rich.console import Console

        self.title, self.console = title, Console()
        self.live: Any = None
        self.seen: dict[str, str] = {}

    def __enter__(self) -> LiveTasks:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(console=self.console, refresh_per_second=2, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def update(self, tasks) -> None:  # noqa: ANN001
        if self.live is not None:
            self.live.update(task_table(tasks, self.title))
            return
        for t in tasks:
            if self.seen.get(t.key, "pending") != t.status:
                extra = f"  {t.reason}" if t.reason and t.status != "running" else ""
                print(f"{t.status:11s} {t.key[:12] if t.kind == 'train' else t.key}  {t.label}{extra}", flush=True)
            self.seen[t.key] = t.status


def train_bar(bar):  # noqa: ANN001, ANN202 - a rich Progress → a trainer Callback
    """Training steps on the command's progress bar: step, loss, tokens/s, ETA."""
    from pdsweep.train.trainer import Callback

    class TrainBar(Callback):
        task: Any = None

        def on_start(self, state, net) -> None:  # noqa: ANN001
            if state.rank == 0:
                self.task = bar.add_task("train", total=state.total_steps, completed=state.step, info="")

        def on_step(self, state, metrics) -> None:  # noqa: ANN001
            if self.task is not None:
                info = f"loss {metrics['loss']:.3f}  {metrics['tokens_per_s']:,.0f} tok/s"
                bar.update(self.task, completed=state.step, info=info)

    return TrainBar()


def matched_budget(p: Any, students: list[dict[str, Any]], budgets: list[int]) -> str | None:
    """What a student of pass `p` costs against an LM-only run, and the LM-only budget a report's
    compute-matched Δ needs (`baseline_tokens`)."""
    cost = p.cost
    trained = [r for r in students if r.get("flops") and r.get("tokens")]
    if cost is None or not cost.flops or not cost.positions or not trained:
        return None
    per_position = cost.flops / cost.positions
    ratio = max(1 + per_position * r["tokens"] / r["flops"] for r in trained)  # the share of the pass per token
    need = max(r["tokens"] for r in trained) * ratio
    have = f"it has {', '.join(human(b) for b in budgets)}" if budgets else "it has none"
    return (
        f"pass {p.pass_id}: a student costs up to {ratio:.2g}x an LM-only run of its tokens with its share of "
        f"the pass; a compute-matched Δ needs LM-only up to {human(need)} tokens (baseline_tokens: {have})"
    )


def fmt_eta(seconds: float | None) -> str:
    """A task's time to go as h:mm:ss or m:ss ("" when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
