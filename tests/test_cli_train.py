"""`pdsweep train` and `pdsweep data` as users run them, including bad input."""

from __future__ import annotations

import json

import pytest
import yaml

from pdsweep import files
from tests.conftest import TINY_RUN, pdsweep


@pytest.mark.slow
def test_train_a_run_file(tmp_path, shakespeare) -> None:
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(TINY_RUN))
    out = pdsweep("train", spec_file, "--out", tmp_path / "run")
    assert out.returncode == 0, out.stderr
    assert "done:" in out.stdout and "held-out loss" in out.stdout
    run = tmp_path / "run"
    # Done, with the fingerprint of the code that trained it (a run another sweep reuses must match it).
    assert json.loads((run / "status.json").read_text()) == {"status": "done", "code": files.code_fingerprint()}
    assert yaml.safe_load((run / "spec.yaml").read_text())["student"]["preset"] == "tiny-xs"
    assert json.loads((run / "result.json").read_text())["step"] == 30
    # Running it again finds it finished and changes nothing.
    again = pdsweep("train", spec_file, "--out", run)
    assert again.returncode == 0
    assert len([ln for ln in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in ln]) == 30


def test_a_run_dir_holds_one_run(tmp_path, shakespeare) -> None:
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(TINY_RUN))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "spec.yaml").write_text("run_id: 000000000000\n")
    out = pdsweep("train", spec_file, "--out", tmp_path / "run")
    assert out.returncode == 2 and "holds a different run" in out.stderr


BAD = {
    "missing corpus": (
        {"data": {"corpus": "/no/such/corpus.txt"}},
        "data.corpus: file /no/such/corpus.txt does not exist",
    ),
    "empty corpus": ({"data": {"corpus": "{tmp}/empty.txt"}}, "contains no text"),
    "non-utf8 corpus": ({"data": {"corpus": "{tmp}/latin1.txt"}}, "is not UTF-8 text"),
    "vocabulary too small": (
        {"data": {"tokenizer": {"kind": "bpe", "vocab_size": 100}}},
        "data.tokenizer.vocab_size: must be ≥ 260, got 100",
    ),
    "sequence longer than the data": (
        {"data": {"corpus": "{tmp}/short.txt", "seq_len": 4096}},
        "data.seq_len: 4096 is longer than the training data",
    ),
    "unknown key": ({"trian": {"seed": 1}}, "trian.seed: unknown RunSpec path (did you mean train.seed"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2(case: str, tmp_path, monkeypatch) -> None:
    (tmp_path / "empty.txt").write_text("\n\n   \n")
    (tmp_path / "latin1.txt").write_bytes("Ophélie et Hamlet\n".encode("latin-1"))
    (tmp_path / "short.txt").write_text("A short play in one act.\n\nThe end.\n")
    overrides, expected = BAD[case]
    spec = json.loads(
        json.dumps({"student": "tiny-xs", "loss": {"alpha": 0}} | overrides).replace("{tmp}", str(tmp_path))
    )
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    env_work = tmp_path / "work"
    monkeypatch.setenv("PDSWEEP_WORKDIR", str(env_work))  # the session's stays untouched
    out = pdsweep("train", spec_file, "--out", tmp_path / "run")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], out.stderr[-2000:]
    assert not (tmp_path / "run").exists()  # a rejected run leaves no run directory
    tokens = env_work / "tokens"  # nothing half-written: no temporaries, every token directory complete
    entries = list(tokens.iterdir()) if tokens.exists() else []
    assert all(not p.name.startswith(".") and (p / "manifest.json").exists() for p in entries), entries


def test_a_bad_place_or_name_is_one_line_and_writes_nothing(tmp_path) -> None:
    """Where things would be written is checked first: a work directory that is a file or cannot be
    made, an MLflow experiment name that is a path, a run directory that is a file, a model folder
    that is not one; report and ui of a sweep that never ran create no tracking store."""
    from tests.conftest import ROOT

    run_file = ROOT / "docs" / "examples" / "tiny-lm.yaml"
    sweep_file = ROOT / "docs" / "examples" / "tiny-lr-sweep.yaml"
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "no-config").mkdir()
    hf_run = tmp_path / "hf.yaml"
    hf_run.write_text(yaml.safe_dump({"student": "tiny-xs", "teacher": f"hf:{tmp_path / 'no-config'}"}))
    fresh = tmp_path / "fresh-work"
    cases = [
        (
            {"PDSWEEP_WORKDIR": str(tmp_path / "a-file")},
            ["run", sweep_file],
            "(PDSWEEP_WORKDIR): is a file, not a directory",
        ),
        ({"PDSWEEP_WORKDIR": "/proc/pdsweep-work"}, ["train", run_file], "(PDSWEEP_WORKDIR): cannot write there"),
        ({}, ["train", run_file, "--sweep", "../../x"], "--sweep: must be a sweep name"),
        ({}, ["train", run_file, "--out", tmp_path / "a-file"], "a-file: is a file, not a run directory"),
        ({}, ["logits", "generate", hf_run], "no-config has no config.json (not a Hugging Face model directory)"),
        ({"PDSWEEP_WORKDIR": str(fresh)}, ["report", sweep_file], "no MLflow store at sqlite:///"),
        ({"PDSWEEP_WORKDIR": str(fresh)}, ["ui", sweep_file], "no MLflow store at sqlite:///"),
    ]
    for env, args, expected in cases:
        out = pdsweep(*args, env={**env, "MLFLOW_TRACKING_URI": ""})
        assert out.returncode == 2 and out.stderr.count("\n") == 1, (args, out.stderr[-2000:])
        assert out.stderr.startswith("error: ") and expected in out.stderr, (args, out.stderr)
    assert not (fresh / "mlflow.db").exists() and not list(tmp_path.glob("**/runs"))
