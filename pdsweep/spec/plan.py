"""The plan of a sweep: which teacher logits passes its students need (one per teacher × data ×
largest p and k, covering every window any of them visits) and the rows `pdsweep plan` shows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from pdsweep.spec import expand
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
                *([s.teacher.run_id] if s.teacher.run_id else []),  # a retrained teacher is a new pass
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
    return passes


def plan_rows(runs: list[PlannedRun]) -> tuple[list[dict[str, Any]], dict[str, TeacherPass]]:
    """The table `pdsweep plan` prints: a row per run with its derived numbers."""
    passes = teacher_passes(runs)
    varied = sorted({p for r in runs if r.role == "student" for p in flatten_overrides(r.axes)})
    pass_by_run = {rid: p.pass_id for p in passes.values() for rid in p.runs}
    rows = []
    for r in runs:
        s = r.spec
        vocab = s.vocab_size()
        rows.append(
            {
                "run_id": r.run_id,
                "role": r.role,
                "label": r.label,
                "seed": r.seed,
                "axes": {p: expand.lookup(s, p) for p in varied},
                "params": s.student.num_params(vocab) if vocab else None,
                "vocab_size": vocab,
                "tokens": s.data.tokens,
                "steps": s.steps(),
                "evaluations": s.evaluations(),
                "eval_share": round(s.eval_share(), 4),
                "teacher": s.teacher.source if s.teacher and s.uses_teacher else None,
                "teacher_pass": pass_by_run.get(r.run_id),
            }
        )
    return rows, passes
