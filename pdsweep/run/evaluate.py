"""Evaluation after the fact (`pdsweep eval`): a run directory (its last checkpoint, with its
corpus's tokenizer), one of its checkpoints, or a model scored on the offline benchmarks — by
pdsweep's scorer or by lm-evaluation-harness on the same items — with the results written beside
the run and logged to its MLflow run."""

from __future__ import annotations

from pathlib import Path

from pdsweep import files, rundir
from pdsweep.data import tokenized
from pdsweep.errors import UserError
from pdsweep.logits import teacher
from pdsweep.run import tracking
from pdsweep.run.launch import Progress
from pdsweep.spec import teacher_spec


def evaluate_model(
    target: str,
    suites: tuple[str, ...],
    limit: int | None,
    batch_size: int = 16,
    progress: Progress = lambda *a: None,
    tracking_uri: str | None = None,
    track: bool = True,
    use_harness: bool = False,
    harness_tasks: tuple[str, ...] = (),
) -> tuple[dict[str, float], Path | None]:
    """Evaluate a run directory (its last checkpoint, with its corpus's tokenizer), one of its
    checkpoints, or a model (`hf:DIR`, `builtin:NAME`, `ckpt:RUN_DIR`) on the benchmark `suites` — with pdsweep's scorer, or
    with lm-evaluation-harness on the same items (`use_harness`; a run is exported to Hugging Face
    format in `<run dir>/hf/` first).

    For a run directory the results land in `<run dir>/eval.json` (`eval-harness.json`; for a
    checkpoint, in the checkpoint's directory, at its step) and, when
    the run is tracked, in its MLflow run as `eval/<task>/<metric>` (`eval/harness/...`) at its last
    step, plus the JSON as an artifact."""
    from pdsweep.eval import harness, scoring, tasks

    path = Path(target) if ":" not in target or Path(target).is_dir() else None
    checkpoint = path if path is not None and rundir.is_checkpoint(path) else None
    run_dir = rundir.run_dir_of(checkpoint) if checkpoint is not None else path
    source = f"ckpt:{path}" if path is not None else target
    if run_dir is not None and not rundir.is_run_dir(run_dir):
        raise UserError(f"{path}: not a pdsweep run directory or checkpoint (no spec.yaml)")
    unknown = [s for s in suites if s not in tasks.TASKS]
    if unknown:
        raise UserError(f"--suite: {', '.join(unknown)}: not a benchmark (one of {', '.join(tasks.TASKS)})")
    tasks.fetch_benchmarks(progress)
    t = teacher.load(teacher_spec(source))
    if run_dir is not None:
        spec = rundir.read_run_spec(run_dir, str(path))
        tokens = tokenized.prepare(spec)
        tok, max_len = tokens.tokenizer(), spec.data.seq_len
    else:
        if t.tokenizer_json is None:
            raise UserError(f"{target}: the model has no tokenizer.json")
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(t.tokenizer_json))
        config = getattr(t.module, "config", None) or getattr(t.module, "cfg", None)
        max_len = int(getattr(config, "max_position_embeddings", 0) or getattr(config, "max_seq_len", 0) or 2048)
    eos = tokenized.eos_id(tok)
    if use_harness:
        import tempfile

        if run_dir is not None:
            import dataclasses

            from pdsweep.nn import hf
            from pdsweep.nn.model import ModelConfig

            cfg: ModelConfig = t.module.cfg  # type: ignore[assignment]
            model_dir = hf.export(
                t.module.state_dict(),
                dataclasses.replace(cfg, max_seq_len=max_len),  # its trained context
                rundir.hf_export_dir(run_dir),
                tokenizer_json=tokens.tokenizer_path,
                eos_token=tok.id_to_token(eos),
                eos_token_id=eos,
            )
        else:
            model_dir = teacher.builtin_dir(target[8:]) if target.startswith("builtin:") else Path(target[3:])
        with tempfile.TemporaryDirectory() as tasks_dir:
            metrics = harness.harness(model_dir, suites, limit, batch_size, Path(tasks_dir), harness_tasks)
    else:
        device = next(t.module.parameters()).device
        scorer = scoring.ScoringModel(t.logits, tok, max_len, device, eos)
        metrics = scoring.benchmark_metrics(scorer, suites, limit, progress)
    if run_dir is None:
        return metrics, None
    # A checkpoint's results stay with the checkpoint, at its step; a run's go beside its result.
    where = checkpoint if checkpoint is not None else run_dir
    out = rundir.eval_file(where, use_harness)
    previous = files.read_json(out) if out.exists() else {}
    files.write_json(out, {**previous, **metrics})
    state = rundir.tracking_file(run_dir)
    if track and state.exists():
        known = files.read_json(state)
        uri = tracking_uri or known.get("uri")
        tracker = tracking.MlflowTracker(uri)
        step = int(rundir.checkpoint_state(checkpoint)["step"]) if checkpoint is not None else 0
        if checkpoint is None:
            step = int((rundir.read_result(run_dir) or {}).get("step", 0))
        tracker.run = known["mlflow_run_id"]
        prefix = "eval/harness/" if use_harness else "eval/"
        tracker.log_metrics({f"{prefix}{k}": v for k, v in metrics.items()}, step)
        tracker.log_artifact(out)
    return metrics, out
