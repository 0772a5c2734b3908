"""What `pdsweep plan` says a sweep will cost: FLOPs by hand, GPU-hours, a pass's store against the
paper's own arithmetic (58.6 PB of full logits for 100B tokens of a 151k vocabulary)."""

from __future__ import annotations

import json

import pytest

from pdsweep.spec import costs
from pdsweep.spec.sizes import ModelSpec
from tests.conftest import ROOT, pdsweep


def test_the_papers_full_logits_arithmetic_and_exact_units() -> None:
    paper = costs.paper_full_logits(151_552, 100_000_000_000)
    assert paper["rounded_vocab"] == 150_000 and round(paper["paper_kb_per_token"], 1) == 585.9
    assert round(paper["paper_pb"], 1) == 58.6  # the paper's 58.6 PB
    assert round(paper["pb"], 1) == 60.6 and round(paper["pib"], 1) == 53.8  # 151,552 × 4 B × 1e11, exactly


def test_flops_of_a_preset_by_hand() -> None:
    m = ModelSpec.model_validate({"preset": "1.9b"})
    V, T = 151_552, 4096
    h, L, f, kv = m.hidden_size, m.num_layers, m.ffn_hidden_size, m.num_kv_groups * m.head_dim
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * f  # q, o; k, v; gate, up, down
    head = V * h  # the output head is a matmul; the input embedding is a lookup
    assert m.flops_per_token(V, T) == pytest.approx(6 * (L * per_layer + head) + 12 * L * h * T, rel=1e-3)
    c = costs.pass_cost(1000, 0.95, 100, 0, V, m, None, T)
    assert c.flops == pytest.approx(1000 * m.flops_per_token(V, T) / 3)  # a pass is a forward
    assert c.gpu_hours == pytest.approx(c.flops / (989e12 * 0.4) / 3600)
    assert costs.pass_cost(1000, 0.95, 100, 0, V, None, 9.4e9, T).flops == pytest.approx(2 * 9.4e9 * 1000)


def test_entries_per_token_reads_the_measured_table() -> None:
    assert costs.entries_per_token(0.95, 100, 49152) == 80.27
    assert costs.entries_per_token(0.9, 1, 49152) == 1.0
    between = costs.entries_per_token(0.95, 70, 49152)
    assert 43.08 < between < 80.27
    assert costs.entries_per_token(0.88, 100, 49152) == 67.41  # the next measured p above
    assert costs.entries_per_token(1.0, None, 49152) == 49152  # no truncation: the whole vocabulary


def test_plan_prints_costs_and_the_papers_58_6_pb() -> None:
    out = pdsweep("plan", ROOT / "sweeps" / "paper" / "truncation.yaml")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "= 60.6 PB (53.8 PiB); the paper's arithmetic (150,000 × 4 B = 585.9 KiB/token" in text
    assert "gives 58.6 PB" in text
    assert "80.3 entries/position × 1.81 B/entry = 145 B/position → 14.5TB" in text
    assert "GPU-hours" in text and "on h100 at 40% MFU" in text
    out = pdsweep("plan", ROOT / "sweeps" / "paper" / "truncation.yaml", "--json", "--gpu", "a100", "--mfu", "0.5")
    plan = json.loads(out.stdout)
    (tp,) = plan["teacher_passes"]
    assert tp["positions"] == 100_000_000_000 + 65_536  # 100B training tokens and the held-out ones
    assert tp["flops"] == pytest.approx(2 * 9.4e9 * tp["positions"])
    assert tp["gpu_hours"] == pytest.approx(tp["flops"] / (312e12 * 0.5) / 3600)
    run = plan["runs"][0]
    assert run["gpu_hours"] == pytest.approx(run["flops"] / (312e12 * 0.5) / 3600) and run["flops"] > 1e21
    bad = pdsweep("plan", ROOT / "sweeps" / "paper" / "truncation.yaml", "--gpu", "tpu")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--gpu: one of a100" in bad.stderr
