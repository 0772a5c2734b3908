"""A decoder-only transformer in the Llama style, readable top to bottom.

    tokens (B, T) → embedding (B, T, C) → N × Block → RMSNorm → output head → logits (B, T, V)
    Block: x + Attention(RMSNorm(x)) → x + SwiGLU(RMSNorm(x))
    Attention: grouped-query (n_kv ≤ n_head key/value heads), rotary positions (RoPE), causal SDPA.

The layout (weight names, RoPE's rotate-half convention, RMSNorm in float32) matches Hugging Face
`LlamaForCausalLM`, so hf.py can export and import checkpoints without reshaping anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pdsweep.spec import ModelSpec


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    ffn_hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_groups: int
    tie_embeddings: bool
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    max_seq_len: int = 4096

    @classmethod
    def from_spec(cls, spec: ModelSpec, vocab_size: int, max_seq_len: int) -> ModelConfig:
        return cls(
            vocab_size,
            spec.hidden_size,
            spec.ffn_hidden_size,
            spec.num_layers,
            spec.num_heads,
            spec.num_kv_groups,
            spec.tie_embeddings,
            spec.rope_theta,
            spec.norm_eps,
            max_seq_len,
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_tables(cfg: ModelConfig, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, head_dim) for rotate-half RoPE."""
    inv_freq = 1.0 / (
        cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, device=device, dtype=torch.float32) / cfg.head_dim)
    )
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)  # (T, hd/2)
    emb = torch.cat((angles, angles), dim=-1)  # (T, hd)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, hd). Rotates the two halves of each head's channels."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv, self.hd = cfg.num_heads, cfg.num_kv_groups, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_head * self.hd, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.hd, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.hd, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, KV, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.n_kv != self.n_head:  # grouped-query attention: each KV head serves H/KV query heads
            k = k.repeat_interleave(self.n_head // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.ffn_hidden_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.ffn_hidden_size, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) weights; residual output projections scaled by 1/sqrt(2·layers) (GPT-2)."""
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue
            scale = (
                1.0 / math.sqrt(2 * self.cfg.num_layers)
                if name.endswith(("o_proj.weight", "down_proj.weight"))
                else 1.0
            )
            nn.init.normal_(p, mean=0.0, std=std * scale)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final normalised hidden states (B, T, C): what the output head reads."""
        T = tokens.shape[1]
        cos, sin = rope_tables(self.cfg, T, tokens.device)
        x = self.embed_tokens(tokens)
        for block in self.layers:
            x = block(x, cos.to(x.dtype), sin.to(x.dtype))
        return self.norm(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) int64 → logits (B, T, V)."""
        return self.lm_head(self.hidden(tokens))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once


def build(spec: ModelSpec, vocab_size: int, max_seq_len: int, seed: int) -> Transformer:
    """The model a spec describes, initialised reproducibly from `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Transformer(ModelConfig.from_spec(spec, vocab_size, max_seq_len))
