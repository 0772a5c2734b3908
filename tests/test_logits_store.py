"""Truncation, sampled targets and the logits store: properties, exactness, failures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pdsweep.errors import UserError
from pdsweep.logits import codec, truncation
from pdsweep.logits import store as logits_store
from tests.conftest import pdsweep


@st.composite
def logit_batches(draw):
    n = draw(st.integers(1, 6))
    v = draw(st.integers(2, 300))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0, 20.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    return torch.randn(n, v, generator=torch.Generator().manual_seed(seed)) * scale


@settings(max_examples=60, deadline=None)
@given(logit_batches(), st.floats(0.01, 1.0), st.one_of(st.none(), st.integers(1, 400)))
def test_top_p_k_properties(logits, p, k) -> None:
    s = truncation.top_p_k(logits, p, k)
    probs = torch.softmax(logits, -1)
    kept = s.logprobs.exp().sum(-1)
    kk = logits.shape[1] if k is None else min(k, logits.shape[1])
    for i in range(logits.shape[0]):
        n = int(s.count[i])
        assert 1 <= n <= kk
        assert kept[i] >= p - 1e-5 or n == kk  # kept mass reaches p, or the cap was hit
        if n > 1:  # minimal: without the last entry the mass would not reach p
            assert kept[i] - s.logprobs[i, n - 1].exp() < p + 1e-5
        lp = s.logprobs[i, :n]
        assert torch.all(lp[:-1] >= lp[1:])  # sorted, most probable first
        assert int(s.ids[i, 0]) == int(torch.argmax(logits[i]))
        assert torch.allclose(lp.exp(), probs[i, s.ids[i, :n]], atol=1e-6)
        assert torch.isinf(s.logprobs[i, n:]).all()


@given(logit_batches())
def test_p1_and_k_vocab_keep_everything(logits) -> None:
    s = truncation.top_p_k(logits, 1.0, logits.shape[1])
    assert torch.all(s.count == logits.shape[1])
    assert torch.allclose(s.logprobs.exp().sum(-1), torch.ones(logits.shape[0]), atol=1e-5)


def test_sampled_targets_are_unbiased() -> None:
    logits = torch.randn(3, 20, generator=torch.Generator().manual_seed(0)) * 2
    probs = torch.softmax(logits, -1)
    gen = torch.Generator().manual_seed(1)
    total = torch.zeros_like(probs)
    rounds = 2000
    for _ in range(rounds):
        ids, counts, n = truncation.sample_targets(logits, draws=16, generator=gen)
        mask = torch.arange(16)[None] < n[:, None]
        assert torch.all(counts.sum(-1) == 16) and torch.all(counts[mask] > 0) and torch.all(counts[~mask] == 0)
        total.scatter_add_(1, ids, (counts * mask).float() / 16)
    estimate = total / rounds
    assert (estimate - probs).abs().max() < 0.01  # standard error ≈ sqrt(p/(16·2000)) ≤ 0.006


def test_read_targets_at_smaller_p_k_equals_truncating_directly() -> None:
    logits = torch.randn(50, 200, generator=torch.Generator().manual_seed(3)) * 3
    stored = truncation.top_p_k(logits, 0.95, 100)
    for p, k, tau in [(0.5, 100, 1.0), (0.95, 10, 1.0), (0.8, 3, 2.0), (0.95, 100, 0.1), (0.9, 50, 10.0)]:
        ids, probs, mask, _ = truncation.read_targets(stored.ids, stored.logprobs, stored.count, p, k, tau)
        direct = truncation.top_p_k(logits, p, k)
        assert torch.equal(mask.sum(-1), direct.count)
        expect = torch.softmax(direct.logprobs / tau, -1)  # Eq. 4: truncate, then τ, then renormalise
        assert torch.equal(ids[mask], direct.ids[:, : ids.shape[1]][mask])
        assert torch.allclose(probs[mask], expect[:, : probs.shape[1]][mask], atol=1e-6)


def test_residual_bucket_keeps_the_true_probabilities() -> None:
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(4))
    s = truncation.top_p_k(logits, 0.6, 30)
    ids, probs, mask, residual = truncation.read_targets(s.ids, s.logprobs, s.count, 0.6, 30, 1.0, renormalize=False)
    true = torch.softmax(logits, -1).gather(1, ids)
    assert torch.allclose(probs[mask], true[mask], atol=1e-6)
    assert torch.allclose(probs.sum(-1) + residual, torch.ones(4), atol=1e-6)


def sparse_numpy(logits: torch.Tensor, p: float, k: int):
    s = truncation.top_p_k(logits, p, k)
    return s.ids.numpy(), s.logprobs.numpy(), s.count.numpy(), s.lse.numpy()


@pytest.mark.parametrize("gamma", [codec.GAMMA, 0.5, 0.75])
def test_shard_round_trip_within_1e_3(gamma) -> None:
    """Any γ the shard records decodes within 1e-3 (older shards used 0.5)."""
    logits = torch.randn(500, 3000, generator=torch.Generator().manual_seed(5)) * 4
    ids, lp, count, lse = sparse_numpy(logits, 0.95, 64)
    data = codec.encode_shard(np.arange(100, 600), ids, lp, count, lse, gamma=gamma)
    sh = codec.decode_shard(data)
    assert np.array_equal(sh.positions, np.arange(100, 600)) and np.array_equal(sh.count, count)
    assert np.array_equal(sh.ids[:, 0], ids[:, 0])  # the argmax survives exactly
    mask = np.arange(64)[None] < count[:, None]
    for i in range(500):  # the same (id, probability) pairs, within 1e-3
        mine = dict(zip(sh.ids[i, : count[i]].tolist(), np.exp(sh.logprobs[i, : count[i]]).tolist(), strict=True))
        theirs = dict(zip(ids[i, : count[i]].tolist(), np.exp(lp[i, : count[i]]).tolist(), strict=True))
        assert mine.keys() == theirs.keys()
        assert max(abs(mine[t] - theirs[t]) for t in theirs) <= 1e-3
    assert np.all(np.diff(np.where(mask, sh.logprobs, -1e9), axis=1)[mask[:, 1:]] <= 0)  # sorted again
    assert np.allclose(sh.lse, lse, rtol=1e-3)


def test_a_shard_of_tied_values_and_a_large_vocabulary_round_trips() -> None:
    """Format 5 on the hard cases: many entries tie on the value grid (kept in their ids' rank order,
    the argmax first), ranks beyond the symbol bytes' range (stored whole), the exact top-p counts,
    and an empty shard."""
    gen = torch.Generator().manual_seed(11)
    logits = (torch.randn(400, 100_000, generator=gen) * 2).round() / 2  # few distinct values: ties
    logits[:, 7] += 0.25  # an argmax inside the top value's neighbours on the grid
    s = truncation.top_p_k(logits, 0.95, 250)
    ids, lp, count, lse = s.ids.numpy(), s.logprobs.numpy(), s.count.numpy(), s.lse.numpy()
    grid = truncation.grid_below(0.95)
    data = codec.encode_shard(np.arange(400), ids, lp, count, lse, s.cuts.numpy(), grid)
    sh = codec.decode_shard(data)
    header = json.loads(data[10 : 10 + int.from_bytes(data[6:10], "little")])
    assert {c["name"]: c["n"] for c in header["columns"]}["lead_escapes"] > 0  # ranks past 32,640
    assert np.array_equal(sh.count, count) and np.array_equal(sh.cuts, s.cuts.numpy())
    assert np.array_equal(sh.ids[:, 0], ids[:, 0])  # the argmax first, even where it ties
    q_in, q_out = codec.quantize(lp), codec.quantize(sh.logprobs)
    tied = 0
    for i in range(400):
        n = count[i]
        assert dict(zip(ids[i, :n].tolist(), q_in[i, :n].tolist(), strict=True)) == dict(
            zip(sh.ids[i, :n].tolist(), q_out[i, :n].tolist(), strict=True)
        )
        assert np.all(np.diff(q_out[i, :n]) <= 0)  # probability order, up to ties on the grid
        tied += not np.array_equal(sh.ids[i, :n], ids[i, :n])
    assert tied > 100  # ties are common here: the test exercises their order
    empty = codec.decode_shard(codec.encode_shard(np.arange(0), ids[:0], lp[:0], count[:0], lse[:0]))
    assert len(empty.positions) == 0 and len(empty.flat_ids) == 0


INFO = logits_store.StoreInfo("teacher-fp", "tok-fp", "corpus-fp", 3000, 0.95, 64)


def make_store(path, shards=3, per=200):
    writer = logits_store.StoreWriter(path, INFO)
    gen = torch.Generator().manual_seed(7)
    all_logits = []
    for i in range(shards):
        logits = torch.randn(per, 3000, generator=gen) * 4
        all_logits.append(logits)
        writer.add(np.arange(i * per, (i + 1) * per), truncation.top_p_k(logits, 0.95, 64))
    return torch.cat(all_logits)


def test_store_reads_any_positions_in_any_order(tmp_path) -> None:
    logits = make_store(tmp_path / "store")
    reader = logits_store.StoreReader(tmp_path / "store", expect=INFO)
    positions = np.array([[599, 0, 250], [17, 402, 199]])
    ids, probs, mask, _ = reader.targets(positions, 0.9, 20, 2.0)
    direct = truncation.top_p_k(logits[positions.reshape(-1)], 0.9, 20)
    assert torch.equal(ids[:, 0], direct.ids[:, 0])
    assert torch.allclose(probs.sum(-1), torch.ones(6), atol=1e-5)
    assert reader.verify() == {
        "shards": 3,
        "positions": 600,
        "entries": int(sum(reader.shard(i).count.sum() for i in range(3))),
        "bytes": sum(s["bytes"] for s in reader.manifest["shards"]),
    }


def test_a_later_recording_of_a_position_wins(tmp_path) -> None:
    writer = logits_store.StoreWriter(tmp_path, INFO)
    first = torch.zeros(3, 3000)
    first[:, 5] = 10.0
    later = torch.zeros(2, 3000)
    later[:, 9] = 10.0
    writer.add(np.array([10, 11, 12]), truncation.top_p_k(first, 0.95, 64))
    writer.add(np.array([12, 40]), truncation.top_p_k(later, 0.95, 64))  # online: any set of positions
    e = logits_store.StoreReader(tmp_path).entries(np.array([10, 12, 40]))
    assert e.ids[:, 0].tolist() == [5, 9, 9]


def test_covers_tells_which_positions_a_store_holds(tmp_path) -> None:
    make_store(tmp_path / "whole")  # contiguous shards: positions 0..599
    sparse = logits_store.StoreWriter(tmp_path / "sparse", INFO)  # windows a run visits, with gaps
    rng = torch.Generator().manual_seed(0)
    for start in (0, 300, 320):
        sparse.add(np.arange(start, start + 10), truncation.top_p_k(torch.randn(10, 3000, generator=rng), 0.95, 64))
    asked = np.array([[0, 9, 10, 299], [300, 325, 329, 330], [599, 600, -1, 5]])
    for store in ("whole", "sparse"):
        reader = logits_store.StoreReader(tmp_path / store)
        expect = np.isin(asked, reader.positions())
        assert reader.covers(asked).tolist() == expect.tolist(), store
        assert reader.covers(asked).tolist() == expect.tolist(), store  # again, from the cached index
    assert logits_store.StoreReader(tmp_path / "sparse").covers(asked).sum() == 6  # 0, 9, 300, 325, 329, 5


def test_store_errors_name_the_problem(tmp_path) -> None:
    make_store(tmp_path / "s", shards=2)
    with pytest.raises(UserError, match="no teacher logits for position 400"):
        logits_store.StoreReader(tmp_path / "s").targets(np.array([3, 400]), 0.95, 64, 1.0)
    other = logits_store.StoreInfo("another-teacher", "tok-fp", "corpus-fp", 3000, 0.95, 64)
    with pytest.raises(
        UserError, match=r"made for another teacher \(teacher_fingerprint teacher-fp; this run's: another-teac"
    ):
        logits_store.StoreReader(tmp_path / "s", expect=other)
    with pytest.raises(UserError, match="cannot serve top-0.99-64"):
        logits_store.StoreReader(tmp_path / "s").targets(np.array([3]), 0.99, 64, 1.0)
    shard = tmp_path / "s" / "shard_000001.pdl"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match="shard_000001.pdl: checksum mismatch"):
        logits_store.StoreReader(tmp_path / "s").verify()
    with pytest.raises(UserError, match="an existing store was made differently"):
        logits_store.StoreWriter(tmp_path / "s", other)


def test_an_edited_manifest_is_refused(tmp_path) -> None:
    """The manifest's own fields (what the store was made from, its p and k) are sealed by a checksum:
    an edit is refused by every reader, `pdsweep logits verify` included."""
    make_store(tmp_path / "s", shards=2)
    logits_store.StoreReader(tmp_path / "s").verify()
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    manifest["top_k"] = 128  # claims more than it holds
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"manifest.json: checksum mismatch \(the manifest was edited or damaged\)"):
        logits_store.StoreReader(tmp_path / "s")
    with pytest.raises(UserError, match="checksum mismatch"):
        logits_store.StoreWriter(tmp_path / "s", INFO)
    out = pdsweep("logits", "verify", tmp_path / "s")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "checksum mismatch" in out.stderr
    (tmp_path / "s" / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="manifest.json: not a logits store manifest"):
        logits_store.StoreReader(tmp_path / "s")
    with pytest.raises(UserError, match="not a logits store"):
        logits_store.StoreReader(tmp_path / "nothing")


def test_stats_grid(tmp_path) -> None:
    make_store(tmp_path / "s")
    rows = logits_store.stats(logits_store.StoreReader(tmp_path / "s"), [0.5, 0.95], [1, 10, 64])
    by = {(r["top_p"], r["top_k"]): r for r in rows}
    assert by[(0.95, 1)]["entries_per_token"] == 1.0
    assert by[(0.5, 64)]["entries_per_token"] <= by[(0.95, 64)]["entries_per_token"]
    assert by[(0.95, 10)]["bytes_per_token"] < by[(0.95, 64)]["bytes_per_token"]


def test_prefetch_decodes_the_next_batch_in_the_background(tmp_path) -> None:
    make_store(tmp_path / "s")
    reader = logits_store.StoreReader(tmp_path / "s")
    reader.prefetch(np.array([[450, 10], [599, 0]]))  # shards 0 and 2
    assert set(reader._loading) == {0, 2} and not reader._cache
    prefetched = reader.entries(np.array([450, 10, 599, 0]))
    assert not reader._loading and set(reader._cache) == {0, 2}
    cold = logits_store.StoreReader(tmp_path / "s").entries(np.array([450, 10, 599, 0]))
    assert np.array_equal(prefetched.ids, cold.ids) and np.array_equal(prefetched.logprobs, cold.logprobs)
    reader.prefetch(np.array([10_000]))  # not in the store: left to the read to refuse
    with pytest.raises(UserError, match="no teacher logits for position 10000"):
        reader.entries(np.array([10_000]))


def test_a_read_at_the_stores_own_p_skips_the_grid_counts(tmp_path) -> None:
    make_store(tmp_path / "s")
    reader = logits_store.StoreReader(tmp_path / "s")
    reader.truncated(np.arange(200), 0.95, 64)
    assert all(s._cuts is None for s in reader._cache.values())  # never computed
    reader.truncated(np.arange(200), 0.5, 64)
    assert reader.shard(0)._cuts is not None
