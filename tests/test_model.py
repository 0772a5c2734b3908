"""model.py: the Llama-style transformer."""

from __future__ import annotations

import pytest
import torch

from pdsweep.nn import model
from pdsweep.spec import ModelSpec


@pytest.mark.parametrize("preset", ["tiny-xs", "tiny-s", "tiny-m"])
def test_parameter_count_matches_the_spec(preset: str) -> None:
    spec = ModelSpec(preset=preset)
    net = model.build(spec, vocab_size=1000, max_seq_len=64, seed=0)
    assert net.num_params() == spec.num_params(1000)


def test_untied_count() -> None:
    spec = ModelSpec(preset="tiny-xs", tie_embeddings=False)
    assert model.build(spec, 500, 32, 0).num_params() == spec.num_params(500)


def test_causal_and_shapes() -> None:
    net = model.build(ModelSpec(preset="tiny-xs"), 100, 32, seed=0).eval()
    x = torch.randint(0, 100, (2, 16))
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % 100  # change the future
    with torch.no_grad():
        a, b = net(x), net(y)
    assert a.shape == (2, 16, 100)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6) and not torch.allclose(a[:, 10:], b[:, 10:])


def test_initialisation_is_reproducible() -> None:
    spec = ModelSpec(preset="tiny-xs")
    a, b, c = (model.build(spec, 100, 32, seed=s) for s in (1, 1, 2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.embed_tokens.weight, c.embed_tokens.weight)


def test_tied_embeddings_share_storage() -> None:
    net = model.build(ModelSpec(preset="tiny-xs"), 100, 32, 0)
    assert net.lm_head.weight.data_ptr() == net.embed_tokens.weight.data_ptr()
