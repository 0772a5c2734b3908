"""The design space of pre-training distillation, as Pydantic models.

A `RunSpec` describes one training run completely: the student, the teacher, the data, how the
teacher's logits are processed, the loss and its α schedule, the optimiser and LR schedule, the
training setup and the evaluation. A sweep file describes many runs (sweep.py).

Every model forbids unknown keys and is frozen; every field has a docstring, which is the
documentation (`pdsweep explain logits.top_p`). Defaults marked [D] are pdsweep's decisions where
the paper is silent (see docs and PAPER.md). Variants are tagged unions on a `kind` field; a bare
string (or, for α, a bare number) is accepted as shorthand: `alpha: 0.9`, `lr_schedule: wsd`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from pdsweep.spec.base import SHORTHANDS as _SHORTHANDS
from pdsweep.spec.base import SpecModel, shorthand_kind
from pdsweep.spec.pd import (
    BUILTIN_TEACHERS,
    ConstantAlpha,
    DecayShape,
    LinearDecAlpha,
    LinearIncAlpha,
    LogitsSpec,
    LossSpec,
    PeriodAlpha,
    TeacherSpec,
    WsdAlpha,
    WsdBeta,
    parse_teacher,
)
from pdsweep.spec.sizes import ModelSpec
from pdsweep.spec.suites import SUITES

"""Bumped when the meaning of an existing field changes (it is part of every run_id)."""
"""RunSpec paths that accept a one-word (or one-number) value, and the mapping it stands for."""


SHORTHANDS = {**_SHORTHANDS, "teacher": parse_teacher}
"""Every bare-value shorthand of a RunSpec, by dotted path (sweep overrides compare like with like)."""


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

BUILTIN_CORPORA = ("shakespeare", "debian-docs")


class BpeTokenizer(SpecModel):
    """A byte-level BPE trained by pdsweep on the corpus's training split with `tokenizers`."""

    kind: Literal["bpe"] = "bpe"
    vocab_size: int = Field(default=8192, ge=260, le=1_000_000)
    """Vocabulary size, including the 256 byte symbols and the special tokens."""


class TeacherTokenizer(SpecModel):
    """The teacher's own Hugging Face tokenizer (required when the teacher is `hf:` or `builtin:`)."""

    kind: Literal["teacher"] = "teacher"


class FileTokenizer(SpecModel):
    """A `tokenizer.json` file that `tokenizers.Tokenizer.from_file` loads."""

    kind: Literal["file"] = "file"
    path: str
    """Path to the tokenizer.json."""


TokenizerSpec = Annotated[BpeTokenizer | TeacherTokenizer | FileTokenizer, Field(discriminator="kind")]


class DataSpec(SpecModel):
    """The corpus, its tokenizer and how much of it a run reads."""

    corpus: str = "shakespeare"
    """`shakespeare` (the embedded default: Shakespeare + Milton), `debian-docs` (~50M tokens of
    Debian documentation and public-domain books), or a local path / glob of .txt, .jsonl or
    .parquet files."""
    text_field: str = "text"
    """Field holding the text in .jsonl and .parquet files."""
    tokenizer: TokenizerSpec = Field(default_factory=BpeTokenizer)
    """How text becomes tokens: `bpe` (trained on the corpus), `teacher`, or `file`."""
    seq_len: int = Field(default=256, ge=8, le=1_048_576)
    """Tokens per training sequence."""
    tokens: int = Field(default=2_000_000, ge=1)
    """Training token budget. Steps = tokens / (global_batch · seq_len); more than the corpus holds
    means more than one epoch."""
    heldout_fraction: float = Field(default=0.02, ge=0.0, lt=1.0)
    """Fraction of documents held out (chosen by a hash of the document, so stable across runs)."""

    @field_validator("tokenizer", mode="before")
    @classmethod
    def _tok_shorthand(cls, v: Any) -> Any:
        return shorthand_kind(v)

    @field_validator("corpus")
    @classmethod
    def _check_corpus(cls, v: str) -> str:
        if v in BUILTIN_CORPORA:
            return v
        if not re.search(r"\.(txt|jsonl|parquet)$", v) and not v.endswith(("/", "*")):
            raise ValueError(
                f"must be {' or '.join(BUILTIN_CORPORA)}, or a path/glob of .txt, .jsonl or .parquet files, got {v!r}"
            )
        return v


# ----------------------------------------------------------------------------------------------
# Optimiser and LR schedule
# ----------------------------------------------------------------------------------------------


class CosineLR(SpecModel):
    """Linear warmup, then cosine decay to `min_lr_ratio`·lr."""

    kind: Literal["cosine"] = "cosine"
    warmup: float = Field(default=0.02, ge=0, le=1)
    """Warmup fraction of training."""
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    """Final LR as a fraction of the peak."""


class WsdLR(SpecModel):
    """Warmup–stable–decay: linear warmup, constant, then a short decay to `min_lr_ratio`·lr."""

    kind: Literal["wsd"] = "wsd"
    warmup: float = Field(default=0.02, ge=0, le=1)
    """Warmup fraction of training."""
    decay: float = Field(default=0.1, ge=0, le=1)
    """Decay fraction at the end of training."""
    decay_shape: DecayShape = "linear"
    """Shape of the decay: linear, cosine, exp or sqrt (1 − sqrt)."""
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    """Final LR as a fraction of the peak."""

    @model_validator(mode="after")
    def _phases_fit(self) -> WsdLR:
        if self.warmup + self.decay > 1:
            raise ValueError(f"warmup + decay = {self.warmup + self.decay:g} must be ≤ 1")
        return self


LRScheduleSpec = Annotated[CosineLR | WsdLR, Field(discriminator="kind")]


class OptimSpec(SpecModel):
    """AdamW and its learning-rate schedule."""

    lr: float = Field(default=1e-3, gt=0, le=1)
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW (β1, β2)."""
    eps: float = Field(default=1e-8, gt=0)
    """AdamW epsilon."""
    weight_decay: float = Field(default=0.1, ge=0)
    """Decoupled weight decay (not applied to norms and biases)."""
    grad_clip: float | None = Field(default=1.0, gt=0)
    """Clip the global gradient norm to this value; null = no clipping."""
    lr_schedule: LRScheduleSpec = Field(default_factory=CosineLR)
    """`cosine` or `wsd` (a bare word is shorthand)."""

    @field_validator("lr_schedule", mode="before")
    @classmethod
    def _lr_shorthand(cls, v: Any) -> Any:
        return shorthand_kind(v)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"both betas must be in [0, 1), got {list(v)}")
        return v


# ----------------------------------------------------------------------------------------------
# Training and evaluation
# ----------------------------------------------------------------------------------------------


class RecordLogitsSpec(SpecModel):
    """Online logits: this run records the logits of the batches it trains on (the paper's online mode)."""

    top_p: float = Field(default=0.95, gt=0, le=1)
    """Nucleus truncation of the recorded distributions."""
    top_k: int | None = Field(default=100, ge=1)
    """Cap on recorded entries per position (null = no cap)."""
    window: tuple[float, float] = (0.0, 1.0)
    """The part of training, as fractions [start, end), whose batches are recorded."""

    @field_validator("window")
    @classmethod
    def _window(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] < v[1] <= 1:
            raise ValueError(f"must be [start, end] with 0 ≤ start < end ≤ 1, got {list(v)}")
        return v

    @property
    def name(self) -> str:
        """The store's directory name inside the run directory."""
        k = "inf" if self.top_k is None else self.top_k
        return f"online-top-{self.top_p:g}-{k}-{self.window[0]:g}-{self.window[1]:g}"


class TrainSpec(SpecModel):
    """Batch, precision, backend and checkpointing."""

    global_batch: int = Field(default=16, ge=1)
    """Sequences per optimiser step, over all devices (the paper: 2048)."""
    micro_batch: int = Field(default=16, ge=1)
    """Sequences per device per forward pass; gradient accumulation = global / (micro · devices)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """`auto` = bf16 on GPU, fp32 on CPU (bf16 is 4–7× slower on CPUs without native support)."""
    backend: Literal["auto", "torch", "deepspeed"] = "auto"
    """`torch` (CPU or one GPU), `deepspeed` (ZeRO, one or many GPUs/nodes); `auto` picks deepspeed
    for more than one device, torch otherwise."""
    zero_stage: Literal[0, 1, 2, 3] = 3
    """DeepSpeed ZeRO stage (DeepSpeed backend only)."""
    checkpoint_every: int = Field(default=200, ge=1)
    """Optimiser steps between checkpoints (a checkpoint is always written at the end)."""
    seed: int = Field(default=0, ge=0)
    """Seed of initialisation (and of the batch order when `data_seed` is `seed`). Sweeps set it from
    `seeds:`."""
    data_seed: int | Literal["seed"] = 0
    """[D] Seed of the batch order: a number (every replicate of a sweep visits the same windows in the
    same order, so one teacher pass serves them all), or `seed` (each replicate its own order, from
    `train.seed`). Default 0: measured on the quickstart, varying the order as well as the
    initialisation changed neither PD's effect nor the spread of its paired differences beyond
    noise, and a shared order makes its teacher pass 5× smaller (docs/results.md, "Data order")."""

    @property
    def order_seed(self) -> int:
        """The seed batches are drawn with."""
        return self.seed if self.data_seed == "seed" else self.data_seed

    compile: bool = False
    """Wrap the model in torch.compile."""
    record_logits: tuple[RecordLogitsSpec, ...] = ()
    """Online logits stores this run writes while it trains (teacher runs of online sweeps); each
    store lands in `<run dir>/logits/<name>/`."""

    @model_validator(mode="after")
    def _micro_divides(self) -> TrainSpec:
        if self.global_batch % self.micro_batch:
            raise ValueError(f"micro_batch ({self.micro_batch}) must divide global_batch ({self.global_batch})")
        return self


EvalSuite = Literal[SUITES]  # type: ignore[valid-type] # the registry's names (suites.py)


class EvalSpec(SpecModel):
    """What is evaluated, and when."""

    suites: tuple[EvalSuite, ...] = ("heldout",)
    """Evaluation suites: heldout (loss, perplexity, bits/byte), teacher_agreement, and the offline
    benchmarks hellaswag, winogrande, piqa, mmlu, arc_easy, arc_challenge, lambada, gsm8k."""
    interval: int = Field(default=100, ge=1)
    """Optimiser steps between evaluations (always at the end too)."""
    heldout_tokens: int = Field(default=65536, ge=1)
    """Held-out tokens scored at the final evaluation (the numbers reports compare)."""
    interval_tokens: int | None = Field(default=None, ge=1)
    """[D] Held-out tokens scored at the evaluations during training (curves, pruning): the first
    this many of the final evaluation's tokens. null = a quarter of heldout_tokens, so that
    evaluating a tiny run costs a few percent of its training (`pdsweep plan` shows the share)."""
    limit: int | None = Field(default=None, ge=1)
    """At most this many items per benchmark (null = all)."""

    def tokens_during(self) -> int:
        """Held-out tokens scored at an evaluation before the end (never more than at the end)."""
        return min(self.heldout_tokens, self.interval_tokens or max(1, self.heldout_tokens // 4))


# ----------------------------------------------------------------------------------------------
# RunSpec
# ----------------------------------------------------------------------------------------------


class RunSpec(SpecModel):
    """One training run, completely described."""

    student: ModelSpec = Field(default_factory=ModelSpec)
    """The model being trained (a preset name is shorthand)."""
    teacher: TeacherSpec | None = None
    """Where the KD targets come from; null for LM-only runs (a bare string is shorthand)."""
    data: DataSpec = Field(default_factory=DataSpec)
    """Corpus, tokenizer, sequence length and token budget."""
    logits: LogitsSpec = Field(default_factory=LogitsSpec)
    """Truncation, temperature and the offline/online choice for the teacher's logits."""
    loss: LossSpec = Field(default_factory=LossSpec)
    """The KD loss and the α schedule."""
    optim: OptimSpec = Field(default_factory=OptimSpec)
    """AdamW and the LR schedule."""
    train: TrainSpec = Field(default_factory=TrainSpec)
    """Batching, precision, backend, checkpoints and the seed."""
    eval: EvalSpec = Field(default_factory=EvalSpec)
    """Evaluation suites and interval."""

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher_shorthand(cls, value: Any) -> Any:
        return parse_teacher(value)

    @model_validator(mode="after")
    def _coherent(self) -> RunSpec:
        if self.uses_teacher and self.teacher is None:
            raise ValueError("loss.alpha is not 0, so teacher is required (or set loss.alpha: 0 for LM-only)")
        if self.logits.mode == "online" and self.uses_teacher and self.teacher and self.teacher.kind != "run":
            raise ValueError("logits.mode online needs a teacher run of this sweep (teacher: run:NAME)")
        if isinstance(self.data.tokenizer, TeacherTokenizer) and (
            self.teacher is None or self.teacher.kind not in ("hf", "builtin")
        ):
            raise ValueError("data.tokenizer 'teacher' needs an hf: or builtin: teacher")
        if "teacher_agreement" in self.eval.suites and self.teacher is None:
            raise ValueError("eval.suites teacher_agreement needs a teacher")
        per_step = self.train.global_batch * self.data.seq_len
        if self.data.tokens < per_step:
            raise ValueError(
                f"data.tokens ({self.data.tokens:,}) is less than one optimiser step: train.global_batch "
                f"{self.train.global_batch} × data.seq_len {self.data.seq_len:,} = {per_step:,} tokens"
            )
        return self

    @property
    def uses_teacher(self) -> bool:
        """False exactly when α is identically 0 (LM-only)."""
        a = self.loss.alpha
        match a:
            case ConstantAlpha():
                return a.value > 0
            case LinearIncAlpha() | LinearDecAlpha():
                return max(a.start, a.end) > 0
            case PeriodAlpha():
                return a.max > 0
            case WsdAlpha():
                return a.max > 0 or a.min > 0
            case WsdBeta():  # α = 1 − β is identically 0 only when β ≡ 1
                return not (a.min == 1 and a.max == 1)
        raise AssertionError(a)

    def steps(self) -> int:
        """Optimiser steps: the token budget over tokens per step (at least 1)."""
        return max(1, self.data.tokens // (self.train.global_batch * self.data.seq_len))

    def evaluations(self) -> int:
        """Evaluations during the run: every `eval.interval` steps before the last, and at the end."""
        return (self.steps() - 1) // self.eval.interval + 1

    def eval_share(self) -> float:
        """Held-out evaluation compute as a share of training compute: the tokens evaluated (a
        forward pass each) over three times the tokens trained on (forward and backward), before
        any benchmark suite."""
        evaluated = (self.evaluations() - 1) * self.eval.tokens_during() + self.eval.heldout_tokens
        return evaluated / (3 * self.steps() * self.train.global_batch * self.data.seq_len)

    def vocab_size(self) -> int | None:
        """Vocabulary size when it is known without loading anything (bpe, builtin teacher)."""
        tok = self.data.tokenizer
        if isinstance(tok, BpeTokenizer):
            return tok.vocab_size
        if isinstance(tok, TeacherTokenizer) and self.teacher is not None:
            if self.teacher.kind == "builtin":
                return BUILTIN_TEACHERS[self.teacher.ref]
            if self.teacher.vocab_size is not None:
                return self.teacher.vocab_size
            if self.teacher.kind == "hf":
                from pdsweep.spec import costs

                return costs.hf_vocab(Path(self.teacher.ref))
        return None
