"""Export to and import from Hugging Face `LlamaForCausalLM` checkpoints (safetensors + config.json).

model.py uses Llama's own parameter names and conventions, so the mapping is a name prefix:
`layers.0.self_attn.q_proj.weight` ↔ `model.layers.0.self_attn.q_proj.weight`, and `lm_head.weight`
stays as it is (left out of the file when tied to the embeddings, as transformers does).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from pdsweep import files
from pdsweep.errors import UserError
from pdsweep.nn.model import ModelConfig, Transformer


def llama_config(cfg: ModelConfig, eos_token_id: int | None = None) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_groups,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
    }


def export(
    state_dict: dict[str, torch.Tensor],
    cfg: ModelConfig,
    out: Path,
    tokenizer_json: Path | None = None,
    eos_token: str | None = None,
    eos_token_id: int | None = None,
) -> Path:
    """Write a Hugging Face checkpoint directory atomically: config.json, model.safetensors and,
    when given, the tokenizer (tokenizer.json + tokenizer_config.json)."""
    from safetensors.torch import save_file

    tensors = {}
    for name, t in state_dict.items():
        if name == "lm_head.weight":
            if cfg.tie_embeddings:
                continue
            tensors[name] = t.detach().contiguous().cpu()
        else:
            tensors[f"model.{name}"] = t.detach().contiguous().cpu()
    with files.atomic_dir(out, replace=True) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", "producer": "pdsweep"})
        files.write_json(tmp / "config.json", llama_config(cfg, eos_token_id))
        if tokenizer_json is not None:
            shutil.copyfile(tokenizer_json, tmp / "tokenizer.json")
            files.write_json(
                tmp / "tokenizer_config.json",
                {
                    "tokenizer_class": "PreTrainedTokenizerFast",
                    "eos_token": eos_token,
                    "bos_token": eos_token,
                    "model_max_length": cfg.max_seq_len,
                    "clean_up_tokenization_spaces": False,
                },
            )
    return out


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """torch.nn.init's initialisers as no-ops for a block (as transformers' `no_init_weights`): a model
    built on the meta device and then given its checkpoint's tensors needs no random values (and on
    the meta device they would cost seconds)."""
    names = ("normal_", "uniform_", "kaiming_uniform_", "trunc_normal_", "zeros_", "ones_")
    saved = {n: getattr(torch.nn.init, n) for n in names}
    for n in names:
        setattr(torch.nn.init, n, lambda tensor, *a, **k: tensor)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


def load(path: Path) -> tuple[Transformer, ModelConfig]:
    """A Transformer with the weights of a local Hugging Face Llama checkpoint directory."""
    from safetensors.torch import load_file

    try:
        hf = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: no readable config.json ({e})") from None
    if hf.get("model_type") != "llama":
        raise UserError(f"{path}: model_type {hf.get('model_type')!r} is not llama")
    rope = hf.get("rope_parameters") or {}  # transformers ≥ 5; older configs say rope_theta/rope_scaling
    if hf.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        raise UserError(f"{path}: RoPE scaling ({hf.get('rope_scaling') or rope}) is not supported")
    rope_theta = float(rope.get("rope_theta") or hf.get("rope_theta") or 10000.0)
    heads = hf["num_attention_heads"]
    if hf.get("head_dim", hf["hidden_size"] // heads) != hf["hidden_size"] // heads:
        raise UserError(f"{path}: head_dim {hf['head_dim']} differs from hidden_size / heads")
    cfg = ModelConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        ffn_hidden_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_groups=hf.get("num_key_value_heads", heads),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        rope_theta=rope_theta,
        norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
        max_seq_len=int(hf.get("max_position_embeddings", 4096)),
    )
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise UserError(f"{path}: no .safetensors weights")
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        tensors.update(load_file(str(shard)))
    state = {name.removeprefix("model."): t for name, t in tensors.items()}
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
        state["lm_head.weight"] = state["embed_tokens.weight"]
    with torch.device("meta"), _no_init():  # no random initialisation of weights about to be replaced
        net = Transformer(cfg)
    missing, unexpected = net.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_embeddings:
        net.lm_head.weight = net.embed_tokens.weight
    missing = [m for m in missing if not m.endswith("rotary_emb.inv_freq")]
    unexpected = [u for u in unexpected if not u.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise UserError(
            f"{path}: weights do not match a Llama model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return net, cfg
