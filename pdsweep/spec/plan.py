"""The plan of a sweep: which teacher logits passes its students need (one per teacher × data ×
largest p and k, covering every window any of them visits), the rows `pdsweep plan` shows, and the
name of every place a sweep puts things — the only code that names sweep, run and pass directories
and logits stores:

    <workdir>/runs/<sweep>/<run_id>/              a run (run directory: rundir.py)
    <workdir>/runs/<sweep>/logits/<pass_id>/      a teacher pass of the sweep (its store)
    <run dir>/logits/<name>/                      a store a run records online (train.record_logits)
    <workdir>/runs/single/<run_id>/               `pdsweep train` of one run spec
    <workdir>/logits/<teacher>-<corpus>-<logits>  the default store of a single run's teacher
    <workdir>/runs/<sweep>/tune/                  a study's worker task files and logs
    <workdir>/reports/<sweep>/                    `pdsweep report`'s default output
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdsweep import settings
from pdsweep import spec as S
from pdsweep.spec import costs, expand, labels
from pdsweep.spec.expand import PlannedRun, flatten_overrides

# ----------------------------------------------------------------------------------------------
# Plan: teacher passes and derived sizes
# ----------------------------------------------------------------------------------------------


@dataclass
class TeacherPass:
    """One forward pass of a teacher over a tokenized corpus, serving every run that needs it."""

    pass_id: str
    teacher: str
    mode: str
    corpus: str
    tokenizer: str
    top_p: float = 0.0
    top_k: int | None = 0
    sampling_draws: int = 0
    tokens: int = 0
    vocab_size: int | None = None
    runs: list[str] = field(default_factory=list)
    orders: set[int] = field(default_factory=set)
    """The data orders of its runs: each visits its own windows, and the pass covers them all."""
    heldout_tokens: int = 0
    seq_len: int = 0
    cost: costs.PassCost | None = None
    """Set by `plan_rows`: positions, expected store size and compute."""

    def store_bytes_upper_bound(self) -> int | None:
        """Uncompressed upper bound: every position keeps k_max entries (id + fp16 value) plus a
        4-byte log-sum-exp and a 2-byte count. The real store is smaller (see `logits stats`)."""
        entries = self.sampling_draws or self.top_k or self.vocab_size
        if entries is None or self.vocab_size is None:
            return None
        id_bytes = 2 if self.vocab_size <= 65536 else 4
        return self.tokens * (entries * (id_bytes + 2) + 6)


def teacher_passes(runs: list[PlannedRun]) -> dict[str, TeacherPass]:
    """Group student runs by (teacher, corpus, tokenizer, mode): one pass each, at the largest p and
    k any of its runs needs (smaller p, k and any τ are applied when reading the store)."""
    passes: dict[str, TeacherPass] = {}
    for run in runs:
        s = run.spec
        if not s.uses_teacher or s.teacher is None:
            continue
        tok = s.data.tokenizer.model_dump_json()
        key_src = json.dumps(
            [
                s.teacher.source,
                *(
                    [s.teacher.run_id] if isinstance(s.teacher, S.RunTeacher) and s.teacher.run_id else []
                ),  # a retrained teacher is a new pass
                s.data.corpus,
                s.data.text_field,
                s.data.heldout_fraction,
                tok,
                s.logits.mode,
                s.logits.online_window if s.logits.mode == "online" else None,
                s.logits.sampling.draws if s.logits.sampling is not None else None,  # a pass per number of draws
            ]
        )
        pid = hashlib.sha256(key_src.encode()).hexdigest()[:8]
        tp = passes.setdefault(
            pid,
            TeacherPass(
                pid,
                s.teacher.source,
                s.logits.mode,
                s.data.corpus,
                s.data.tokenizer.kind,
                vocab_size=s.vocab_size(),
            ),
        )
        tp.top_p = max(tp.top_p, s.logits.top_p)
        tp.top_k = None if (tp.top_k is None or s.logits.top_k is None) else max(tp.top_k, s.logits.top_k)
        if s.logits.sampling is not None:
            tp.sampling_draws = max(tp.sampling_draws, s.logits.sampling.draws)
        tp.tokens = max(tp.tokens, s.data.tokens)
        tp.runs.append(run.run_id)
        tp.orders.add(s.train.order_seed)
        tp.heldout_tokens = max(tp.heldout_tokens, s.eval.heldout_tokens)
        tp.seq_len = max(tp.seq_len, s.data.seq_len)
    return passes


def load(
    *, sweep_file: Path, gpu: str = costs.GPU, mfu: float = costs.MFU
) -> tuple[Any, list[dict[str, Any]], dict[str, TeacherPass], list[PlannedRun]]:
    """A sweep file's plan: (the Sweep, a row per run, its teacher passes, its planned runs)."""
    sweep = expand.load_sweep(sweep_file)
    runs = expand.expand(sweep, str(sweep_file))
    rows, passes = plan_rows(runs, gpu, mfu)
    return sweep, rows, passes, runs


def plan_rows(
    runs: list[PlannedRun], gpu: str = costs.GPU, mfu: float = costs.MFU
) -> tuple[list[dict[str, Any]], dict[str, TeacherPass]]:
    """The table `pdsweep plan` prints: a row per run with its derived numbers and compute (FLOPs,
    and GPU-hours on `gpu` at `mfu`); each teacher pass with its cost (`TeacherPass.cost`)."""
    passes = teacher_passes(runs)
    shapes = {r.name: r.spec.student for r in runs if r.role == "teacher" and r.name}
    by_id = {r.run_id: r for r in runs}
    for tp in passes.values():
        example = by_id[tp.runs[0]].spec
        assert example.teacher is not None
        # Every data order visits its own windows (up to the corpus, unknown here: an upper bound).
        positions = tp.tokens * max(1, len(tp.orders)) + tp.heldout_tokens
        tp.cost = costs.pass_cost(
            positions,
            tp.top_p,
            tp.top_k,
            tp.sampling_draws,
            tp.vocab_size,
            costs.teacher_shape(example.teacher, shapes),
            example.teacher.params,
            tp.seq_len,
            gpu,
            mfu,
        )
    varied = sorted({p for r in runs if r.role == "student" for p in flatten_overrides(r.axes)})
    pass_by_run = {rid: p.pass_id for p in passes.values() for rid in p.runs}
    rows = []
    for r in runs:
        s = r.spec
        vocab = s.vocab_size()
        flops = s.student.flops_per_token(vocab, s.data.seq_len) * s.data.tokens if vocab else None
        rows.append(
            {
                "run_id": r.run_id,
                "role": r.role,
                "label": r.label,
                "seed": r.seed,
                "axes": {p: labels.lookup(s, p) for p in varied},
                "params": s.student.num_params(vocab) if vocab else None,
                "vocab_size": vocab,
                "tokens": s.data.tokens,
                "steps": s.steps(),
                "evaluations": s.evaluations(),
                "eval_share": round(s.eval_share(), 4),
                "teacher": s.teacher.source if s.teacher and s.uses_teacher else None,
                "teacher_pass": pass_by_run.get(r.run_id),
                "flops": flops,
                "gpu_hours": costs.gpu_hours(flops, gpu, mfu) if flops else None,
            }
        )
    return rows, passes


# ----------------------------------------------------------------------------------------------
# Names and places
# ----------------------------------------------------------------------------------------------


def sweep_dir(sweep: str) -> Path:
    return settings.workdir() / "runs" / sweep


def run_dir(sweep: str, run_id: str) -> Path:
    return sweep_dir(sweep) / run_id


def run_dirs(run_id: str) -> list[Path]:
    """Every directory of the work directory holding a run with this run_id, in any sweep."""
    return sorted(p for p in (settings.workdir() / "runs").glob(f"*/{run_id}") if p.is_dir())


def single_run_dir(run_id: str) -> Path:
    """Where `pdsweep train` puts a run of a single run spec."""
    return sweep_dir("single") / run_id


def pass_dir(sweep: str, pass_id: str) -> Path:
    """A sweep's teacher pass: its task directory is its store."""
    return sweep_dir(sweep) / "logits" / pass_id


RECORDED_STORES = "logits"
"""The directory of a run directory that holds the stores the run recorded (`recorded_store`)."""


def recorded_store(run_dir: Path, name: str) -> Path:
    """The store a run records its own logits into (`train.record_logits[].name`)."""
    return run_dir / RECORDED_STORES / name


def store_name(
    teacher_fingerprint: str, corpus_fingerprint: str, logits: S.LogitsSpec, first: int | None = None
) -> str:
    """A single run's teacher store: the teacher, the corpus, what it keeps (and `first` positions)."""
    name = f"{teacher_fingerprint[:8]}-{corpus_fingerprint[:8]}-{logits.store_label}"
    return name + (f"-first{first}" if first else "")


def default_store(
    teacher_fingerprint: str, corpus_fingerprint: str, logits: S.LogitsSpec, first: int | None = None
) -> Path:
    return settings.workdir() / "logits" / store_name(teacher_fingerprint, corpus_fingerprint, logits, first)


def tune_dir(sweep: str) -> Path:
    """A study's worker task files and logs (`pdsweep tune --workers N`)."""
    return sweep_dir(sweep) / "tune"


def report_dir(sweep: str) -> Path:
    return settings.workdir() / "reports" / sweep


@dataclass(frozen=True)
class StoreOfRun:
    """Where a student of a sweep reads its teacher's logits, and what must be done first: the
    sweep's pass `pass_id` (offline) or the teacher run `teacher_run_id` recording them (online)."""

    path: Path
    pass_id: str | None = None
    teacher_run_id: str | None = None


def stores(sweep: str, runs: list[PlannedRun], passes: dict[str, TeacherPass] | None = None) -> dict[str, StoreOfRun]:
    """The store every student of the sweep reads, by run id (runs without a teacher are absent)."""
    passes = teacher_passes(runs) if passes is None else passes
    teachers = {r.name: r for r in runs if r.role == "teacher"}
    out: dict[str, StoreOfRun] = {}
    for p in passes.values():
        for rid in p.runs:
            if p.mode != "online":
                out[rid] = StoreOfRun(pass_dir(sweep, p.pass_id), pass_id=p.pass_id)
    online = {rid: p for p in passes.values() if p.mode == "online" for rid in p.runs}
    for r in runs:
        pass_ = online.get(r.run_id)
        if pass_ is None or r.role == "teacher":
            continue
        rec = teachers[pass_.teacher.removeprefix("run:")]
        window = tuple(r.spec.logits.online_window)
        spec_rec = next(x for x in rec.spec.train.record_logits if tuple(x.window) == window)
        out[r.run_id] = StoreOfRun(recorded_store(run_dir(sweep, rec.run_id), spec_rec.name), teacher_run_id=rec.run_id)
    return out
