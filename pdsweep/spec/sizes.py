"""The student's size: the paper's model presets (330m … 6.8b), tiny CPU presets, or explicit
dimensions — and what follows from them (parameters, FLOPs per token)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from pdsweep.spec.base import SHORTHANDS, SpecModel

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


"""Pretrained teachers pdsweep fetches from PyPI (name → vocabulary size). See DATA.md."""
