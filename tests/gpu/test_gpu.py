"""GPU checks (skipped without CUDA): bf16 DeepSpeed ZeRO-3 on one GPU for the paper's 330m student."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import pdsweep

pytestmark = pytest.mark.gpu


def test_330m_bf16_zero3_one_gpu_trains(tmp_path, shakespeare) -> None:
    spec = {
        "student": "330m",
        "loss": {"alpha": 0},
        "data": {"tokenizer": {"kind": "bpe", "vocab_size": 2048}, "seq_len": 512, "tokens": 512 * 16 * 6},
        "optim": {"lr": 0.0003},
        "train": {
            "global_batch": 16,
            "micro_batch": 8,
            "precision": "bf16",
            "backend": "deepspeed",
            "zero_stage": 3,
            "checkpoint_every": 3,
        },
        "eval": {"interval": 1000, "heldout_tokens": 8192},
    }
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    out = pdsweep("train", spec_file, "--out", tmp_path / "run")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert len(train) == 6 and train[-1]["loss"] < train[0]["loss"]
    assert all(0 < r["mfu"] < 1 for r in train[1:])
