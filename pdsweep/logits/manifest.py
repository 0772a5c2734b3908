"""A logits store's records on disk: what it was made from (StoreInfo), its sealed manifest — read,
written, checked for format and identity — the lock under which ranks assemble it, and the sealed
record a pass writes beside each shard it completes. store.py reads and writes the shards."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdsweep import files, rundir
from pdsweep.errors import UserError
from pdsweep.logits.codec import FORMAT_VERSION


@dataclass(frozen=True)
class StoreInfo:
    """What a store was made from; a reader refuses a store whose fingerprints differ from the run's."""

    teacher_fingerprint: str
    tokenizer_fingerprint: str
    corpus_fingerprint: str
    vocab_size: int
    top_p: float
    top_k: int | None
    mode: str = "offline"
    sampling_draws: int | None = None
    """Set for a store of sampled targets (`sample_targets`): the draws per position."""
    teacher_run: str | None = None
    """The pdsweep run id of the teacher when it is a pdsweep run (`ckpt:`, a sweep's `run:NAME`, or
    a run recording its own logits): what a student of `run:NAME` checks the store against."""
    flops_per_position: float | None = None
    """The teacher's forward FLOPs per stored position (spec/costs.py): what a student's share of the
    pass costs. 0 for logits a run recorded while it trained (they cost no extra forward); None when
    the teacher's shape is unknown."""


IDENTITY = ("teacher_fingerprint", "tokenizer_fingerprint", "corpus_fingerprint", "vocab_size", "sampling_draws")
"""The StoreInfo fields a store must match to serve a run (p and k are checked per read)."""


def checksum(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return files.sha256_bytes(json.dumps(body, sort_keys=True, ensure_ascii=False).encode())


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest sealed with a checksum over every other field (an edit is refused on read)."""
    manifest["checksum"] = checksum(manifest)
    files.write_json(path / "manifest.json", manifest)


def read_manifest(path: Path) -> dict[str, Any]:
    """A store's manifest, checked: readable, this format, and not edited since pdsweep wrote it."""
    file = path / "manifest.json"
    if not path.is_dir():
        raise UserError(f"{path}: not a logits store (no such directory)")
    try:
        manifest = files.read_json(file)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{file}: not a logits store manifest ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{file}: not a logits store manifest (a JSON object expected)")
    check_format(path, manifest)
    if manifest.get("checksum") != checksum(manifest):
        raise UserError(f"{file}: checksum mismatch (the manifest was edited or damaged); generate the store again")
    return manifest


def check_identity(path: Path, manifest: dict[str, Any], expect: dict[str, Any]) -> None:
    """Refuse a store made from another teacher, tokenizer, corpus or sampling than `expect` says."""
    names = {
        "teacher_fingerprint": "teacher",
        "teacher_run": "teacher run",
        "tokenizer_fingerprint": "tokenizer",
        "corpus_fingerprint": "corpus",
        "vocab_size": "vocabulary size",
        "sampling_draws": "number of sampled draws",
    }
    for key, want in expect.items():
        have = manifest.get(key)
        if have != want:
            raise UserError(
                f"{path}: this logits store was made for another {names.get(key, key)} ({key} {str(have)[:12]};"
                f" this run's: {str(want)[:12]}); give the store of this run's own teacher and data"
            )


def check_format(path: Path, manifest: dict[str, Any]) -> None:
    if manifest.get("format") != FORMAT_VERSION:
        raise UserError(
            f"{path}: logits store format {manifest.get('format')} was written by another pdsweep (this one reads"
            f" format {FORMAT_VERSION}); delete the store and generate it again"
        )


MANIFEST_LOCK = ".manifest.lock"
"""Held while a process creates or assembles the manifest (ranks of a pass finish in any order); not
the directory's run lock, which a sweep's scheduler holds for the whole pass."""


def manifest_lock(path: Path) -> contextlib.AbstractContextManager[None]:
    return rundir.held(path, MANIFEST_LOCK)


def entry_file(path: Path, name: str) -> Path:
    """The record a pass writes beside each shard it completes (`shard-….json`): the shard's
    manifest entry, sealed by its own checksum."""
    return path / (name.removesuffix(".pdl") + ".json")


def read_entry(path: Path, name: str) -> dict[str, Any] | None:
    """A completed shard's entry, or None when the shard is not (completely) written."""
    file = entry_file(path, name)
    try:
        entry = files.read_json(file)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{file}: not a logits shard record ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(entry, dict) or entry.get("checksum") != checksum(entry):
        raise UserError(f"{file}: checksum mismatch (the shard record was edited or damaged); delete it and the shard")
    entry.pop("checksum")
    return entry


def written_entry(path: Path, name: str) -> dict[str, Any] | None:
    """The entry of a shard written completely (its record, and a shard file of the recorded size)."""
    entry = read_entry(path, name)
    if entry is None:
        return None
    shard = path / name
    return entry if shard.exists() and shard.stat().st_size == entry["bytes"] else None
