"""The lm-evaluation-harness bridge: pdsweep's local task files written as harness YAML tasks, and a
student (exported to Hugging Face format) scored by the harness itself, for everything pdsweep does
not score on its own and to check that it scores like the harness.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pdsweep import files, proc
from pdsweep.errors import UserError
from pdsweep.eval.tasks import items

# ----------------------------------------------------------------------------------------------
# The lm-evaluation-harness bridge
# ----------------------------------------------------------------------------------------------

_HARNESS_UTILS = '''"""Winogrande partial scoring for pdsweep's local task files (written by pdsweep)."""


def doc_to_text(doc):
    return int(doc["gold"])


def doc_to_choice(doc):
    return list(doc["contexts"])


def doc_to_target(doc):
    return doc["target"]
'''


def write_harness_tasks(out: Path, suites: Iterable[str], limit: int | None = None) -> list[str]:
    """lm-evaluation-harness task YAMLs (`pdsweep_<task>`, `dataset_path: json`) over exactly the
    items pdsweep's scorer sees — the same contexts and continuations — and their data files.
    Returns the task names."""
    out.mkdir(parents=True, exist_ok=True)
    files.write_text(out / "pdsweep_harness_utils.py", _HARNESS_UTILS)
    names = []
    for task in suites:
        its = items(task, limit)
        rows: list[dict[str, Any]]
        name = f"pdsweep_{task}"
        head = {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(out / f"{task}.jsonl")}},
            "test_split": "test",
            "target_delimiter": " ",
            "metadata": {"version": 1.0},
        }
        if task == "lambada":
            # A loglikelihood task's target is the whole continuation (no delimiter is added).
            rows = [{"query": it.requests[0][0], "target": it.requests[0][1]} for it in its]
            config = head | {
                "output_type": "loglikelihood",
                "doc_to_text": "{{query}}",
                "doc_to_target": "{{target}}",
                "metric_list": [
                    {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                    {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                ],
            }
        elif task == "winogrande":
            rows = [
                {"contexts": [c for c, _ in it.requests], "target": it.requests[0][1][1:], "gold": it.gold}
                for it in its
            ]
            config = head | {
                "output_type": "multiple_choice",
                "doc_to_text": "!function pdsweep_harness_utils.doc_to_text",
                "doc_to_choice": "!function pdsweep_harness_utils.doc_to_choice",
                "doc_to_target": "!function pdsweep_harness_utils.doc_to_target",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            }
        else:
            rows = [
                {"query": it.requests[0][0], "choices": [x[1:] for _, x in it.requests], "gold": it.gold} for it in its
            ]
            config = head | {
                "output_type": "multiple_choice",
                "doc_to_text": "{{query}}",
                "doc_to_choice": "{{choices}}",
                "doc_to_target": "{{gold}}",
                "metric_list": [
                    {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                    {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
                ],
            }
        files.write_text(out / f"{task}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        text = json.dumps(config, indent=1)
        # `!function` is a YAML tag, not a string: unquote it (JSON is YAML).
        text = re.sub(r'"(!function [\w.]+)"', r"\1", text)
        files.write_text(out / f"{name}.yaml", text)
        names.append(name)
    return names


def harness(
    model_dir: Path,
    suites: Iterable[str],
    limit: int | None,
    batch_size: int,
    tasks_dir: Path,
    named: Iterable[str] = (),
) -> dict[str, float]:
    """Run lm-evaluation-harness (`lm_eval.simple_evaluate`, its `hf` model) on pdsweep's local task
    files for `suites`, and on the harness's own `named` tasks (their datasets come from the Hugging
    Face Hub, or its local cache); `<task>/<metric>` like `benchmark_metrics`."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("--harness: needs lm-evaluation-harness: pip install 'pdsweep[eval]'") from None
    suites = list(suites)
    if "gsm8k" in suites:
        raise UserError("--harness: gsm8k (generation) is scored by pdsweep only; leave it out of --suite")
    names = write_harness_tasks(tasks_dir, suites, limit)
    named = list(named)
    import contextlib
    import sys

    manager = TaskManager(include_path=str(tasks_dir), include_defaults=bool(named))
    unknown = [t for t in named if t not in manager.all_tasks]
    if unknown:
        raise UserError(f"--harness-task: {', '.join(unknown)}: not an lm-evaluation-harness task")
    with contextlib.redirect_stdout(sys.stderr):  # the harness prints progress; stdout stays the caller's
        try:
            results = lm_eval.simple_evaluate(
                model="hf",
                model_args={"pretrained": str(model_dir), "dtype": "float32", "device": "cpu"},
                tasks=names + named,
                task_manager=manager,
                batch_size=batch_size,
                limit=limit if named else None,  # pdsweep's own task files hold `limit` items already
                log_samples=False,
            )
        except Exception as e:  # noqa: BLE001 - e.g. a named task's dataset is not reachable offline
            if not named:
                raise
            first = proc.first_line(e)
            raise UserError(f"--harness-task {', '.join(named)}: lm-evaluation-harness failed ({first})") from None
    out: dict[str, float] = {}
    for name in named:
        out[f"{name}/items"] = float(results["n-samples"][name]["effective"])
        for key, value in results["results"].get(name, {}).items():
            metric, _, filt = key.partition(",")
            if isinstance(value, (int, float)) and not metric.endswith("_stderr"):
                out[f"{name}/{metric}" + ("" if filt in ("none", "") else f"/{filt}")] = float(value)
    for task, name in zip(suites, names, strict=True):
        r = results["results"][name]
        out[f"{task}/items"] = float(results["n-samples"][name]["effective"])
        for metric in ("acc", "acc_norm", "perplexity"):
            if f"{metric},none" in r:
                out[f"{task}/{'ppl' if metric == 'perplexity' else metric}"] = float(r[f"{metric},none"])
    return out
