"""hf.py: our checkpoints load in transformers' LlamaForCausalLM and give the same logits."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from pdsweep.nn import hf, model
from pdsweep.spec import ModelSpec


@pytest.mark.parametrize(
    "spec",
    [ModelSpec(preset="tiny-s"), ModelSpec(preset="tiny-xs", tie_embeddings=False, num_kv_groups=2)],
    ids=["tied-gqa", "untied-mha"],
)
def test_transformers_gives_the_same_logits(spec: ModelSpec, tmp_path) -> None:
    net = model.build(spec, vocab_size=512, max_seq_len=128, seed=3).eval()
    with torch.no_grad():  # perturb the norms so a swapped or missing weight cannot hide
        for name, p in net.named_parameters():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                p.add_(0.1 * torch.randn_like(p))
    out = hf.export(net.state_dict(), net.cfg, tmp_path / "hf")
    theirs = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    x = torch.randint(0, 512, (2, 96))
    with torch.no_grad():
        ours_logits = net(x)
        their_logits = theirs(x).logits
    assert (ours_logits - their_logits).abs().max().item() <= 1e-4


def test_round_trip(tmp_path) -> None:
    net = model.build(ModelSpec(preset="tiny-xs"), 300, 64, seed=1).eval()
    out = hf.export(net.state_dict(), net.cfg, tmp_path / "hf")
    back, cfg = hf.load(out)
    assert cfg == net.cfg
    x = torch.randint(0, 300, (1, 20))
    with torch.no_grad():
        assert torch.equal(back.eval()(x), net(x))
