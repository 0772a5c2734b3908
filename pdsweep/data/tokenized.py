"""The tokenized corpus: documents → tokenizer → token shards, with fingerprints.

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
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pdsweep import files, settings
from pdsweep.errors import UserError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from pdsweep.spec import DataSpec, RunSpec
from pdsweep.data.corpora import Progress, corpus_files, corpus_fingerprint, is_heldout, iter_documents, no_progress

FORMAT_VERSION = 1
EOS = "<|endoftext|>"
"""Plain-text files are cut into documents of about this many characters, at paragraph breaks,
so that the held-out split (by document) is fine-grained even for a corpus of a few long works."""
"""progress(what, done, total): a hook for progress bars."""


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
    raise UserError("data.tokenizer: the tokenizer has no end-of-text token (<|endoftext|>, </s>, <eos>)")


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
            raise UserError(f"data.tokenizer.path: {path} does not exist")
        return "file", path
    if isinstance(tok, TeacherTokenizer):
        assert spec.teacher is not None  # the spec requires an hf:/builtin: teacher for this
        if spec.teacher.kind == "hf":
            path = Path(spec.teacher.ref) / "tokenizer.json"
            if not path.is_file():
                raise UserError(f"data.tokenizer: the teacher directory {spec.teacher.ref} has no tokenizer.json")
            return "file", path
        # builtin: the teacher's cached directory (teacher.builtin_dir fetches it; callers run that first)
        path = settings.cache_dir() / "teachers" / spec.teacher.ref / "tokenizer.json"
        if not path.is_file():
            raise UserError(
                f"data.tokenizer: {spec.teacher.source} is not fetched yet (pdsweep teacher fetch {spec.teacher.ref})"
            )
        return "file", path
    raise AssertionError(tok)


def prepare(spec: RunSpec, workdir: Path | None = None, progress: Progress = no_progress) -> TokenData:
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
        raise UserError(f"data.corpus: {data.corpus} contains no text")
    split = [is_heldout(d.doc_id, data.heldout_fraction) for d in docs]
    train_docs = [d for d, h in zip(docs, split, strict=True) if not h]
    heldout_docs = [d for d, h in zip(docs, split, strict=True) if h]
    if not train_docs:
        raise UserError(f"data.heldout_fraction: {data.heldout_fraction} leaves no training documents")
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
        raise UserError(f"{path}: unreadable token manifest ({e})") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise UserError(
            f"{path}: token format {manifest.get('format')} is not {FORMAT_VERSION}; delete it to re-tokenize"
        )
    arrays = {}
    for name in ("train", "heldout"):
        file = path / f"{name}.bin"
        n = manifest["splits"][name]["tokens"]
        if not file.exists() or file.stat().st_size != n * np.dtype(manifest["dtype"]).itemsize:
            raise UserError(f"{file}: missing or not {n} tokens long (corrupted? delete {path} to re-tokenize)")
        arrays[name] = (
            np.memmap(file, dtype=manifest["dtype"], mode="r", shape=(n,)) if n else np.zeros(0, manifest["dtype"])
        )
    return TokenData(path, manifest, arrays["train"], arrays["heldout"])


def verify(tokens: TokenData) -> None:
    """Recompute the shards' checksums (UserError naming the shard on a mismatch)."""
    for name in ("train", "heldout"):
        file = tokens.path / f"{name}.bin"
        if files.sha256_file(file) != tokens.manifest["splits"][name]["sha256"]:
            raise UserError(f"{file}: checksum mismatch (corrupted; delete {tokens.path} to re-tokenize)")
