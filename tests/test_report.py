"""`pdsweep report` on a real sweep: a tiny teacher, its logits pass, LM-only and PD students over
two seeds, tracked in a real MLflow store — read back into the table, every format, the figures,
and the HTML page opened in headless Chromium."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pdsweep.report import build, figures, formats, stats
from tests.conftest import pd_sweep, pdsweep

STEPS = 10
TOKENS = 64 * 16 * STEPS
ROWS = ["LM-only", "LM-only (20.48k tokens)", "α = 0.5", "α = 0.9"]


@pytest.fixture(scope="module")
def done_sweep(tmp_path_factory, workdir, shakespeare):
    """The sweep file, its tracking URI and the report directory, after `pdsweep run --report`."""
    where = tmp_path_factory.mktemp("report")
    sweep = pd_sweep(
        "report-test",
        STEPS,
        20,
        description="LM-only vs PD (α = 0.5, 0.9), two seeds each.",
        eval={"suites": ["heldout", "teacher_agreement"], "interval": 5, "heldout_tokens": 2048},
        grid={"loss.alpha": [0.5, 0.9]},
        baseline_tokens=[TOKENS * 2],  # the LM-only curve the compute-matched Δ reads
    )
    path = where / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    uri = f"sqlite:///{where / 'mlflow.db'}"
    out = pdsweep("run", path, "--tracking-uri", uri, "--workers", "2", timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "9 of 9 runs done" in out.stdout
    rep = pdsweep("report", path, "--tracking-uri", uri, "--out", where / "out", timeout=300)
    assert rep.returncode == 0, rep.stdout[-3000:] + rep.stderr[-3000:]
    return path, uri, where / "out", rep.stdout


def _mlflow_values(uri: str, key: str) -> dict[str, list[float]]:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("report-test")
    out: dict[str, list[float]] = {}
    for r in client.search_runs([exp.experiment_id]):
        label = r.data.tags.get("pdsweep.label")
        if label and not label.startswith("teacher") and key in r.data.metrics:
            out.setdefault(label, []).append(r.data.metrics[key])
    return out


@pytest.mark.slow
def test_the_table_is_the_mlflow_numbers_aggregated_over_seeds(done_sweep) -> None:
    path, uri, out, stdout = done_sweep
    table = pd.read_csv(out / "report.csv").set_index("label")
    assert list(table.index) == ROWS  # baselines first, then the sweep's order
    assert (table["n_seeds"] == 2).all()
    losses = _mlflow_values(uri, "eval/heldout/loss")
    for label, values in losses.items():
        assert len(values) == 2
        assert table.loc[label, "heldout/loss"] == pytest.approx(np.mean(values), rel=1e-5)
        half = stats.t_half(values, 0.95)  # t(0.975, 1) = 12.706 for two seeds
        assert half == pytest.approx(12.706 * np.std(values, ddof=1) / math.sqrt(2), rel=1e-3)
        assert table.loc[label, "heldout/loss_ci"] == pytest.approx(half, rel=1e-4)
    base = np.mean(losses["LM-only"])
    for label in ("α = 0.5", "α = 0.9"):
        assert table.loc[label, "delta_pct"] == pytest.approx((np.mean(losses[label]) / base - 1) * 100, rel=1e-4)
        lo, hi = table.loc[label, "delta_pct_lo"], table.loc[label, "delta_pct_hi"]
        assert lo <= hi and math.isfinite(lo)
    assert math.isnan(table.loc["LM-only", "delta_pct"])
    # Held-out loss is the primary column (no benchmark scores); teacher agreement only where a store is read.
    assert math.isnan(table.loc["LM-only", "teacher_agreement/top1"])
    assert 0 < table.loc["α = 0.9", "teacher_agreement/top1"] <= 100
    # The terminal shows the same table and its notes.
    assert "LM-only" in stdout and "Noise floor" in stdout and "report.html" in stdout


@pytest.mark.slow
def test_every_format_is_written_with_machine_date_and_fingerprint(done_sweep) -> None:
    _, _, out, _ = done_sweep
    md = (out / "report.md").read_text()
    assert md.startswith("# report-test") and "- machine:" in md and "- date:" in md and "- data sha256:" in md
    assert "- tracking: sqlite:///…/mlflow.db" in md and "/tmp" not in md  # no path of this machine
    assert "| LM-only |" in md and "Δ% held-out loss (lower is better)" in md and "Noise floor:" in md
    assert md.count("**") >= 2  # the best cell of each column is bold
    assert "paired t, 2 seeds" in md  # the effect line: same seeds, so paired
    tex = (out / "report.tex").read_text()
    assert r"\begin{tabular}" in tex and r"$\alpha$ = 0.5" in tex and r"\toprule" in tex
    runs = pd.read_csv(out / "runs.csv")
    assert set(runs["role"]) == {"baseline", "student"} and "loss.alpha" in runs.columns
    assert len(runs["run_id"].unique()) == 8
    for stem in ("delta_vs_loss_alpha", "metric_vs_tokens", "training_curves", "metric_vs_compute"):
        assert (out / f"{stem}.png").stat().st_size > 5000, stem
        assert (out / f"{stem}.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.slow
def test_the_html_report_opens_in_chromium(done_sweep, browser) -> None:
    from selenium.webdriver.common.by import By

    _, _, out, _ = done_sweep
    browser.get((out / "report.html").as_uri())
    rows = browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")
    assert [r.find_element(By.TAG_NAME, "th").text for r in rows] == ROWS
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) >= 3
    for img in images:  # every figure is inlined and decodes
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 100", img)
    shot = out / "report-screenshot.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


@pytest.mark.slow
def test_report_json_and_bad_input(done_sweep, tmp_path) -> None:
    path, uri, _, _ = done_sweep
    js = pdsweep("report", path, "--tracking-uri", uri, "--json", "--primary", "heldout/bits_per_byte")
    assert js.returncode == 0, js.stderr
    rows = json.loads(js.stdout)
    assert [r["label"] for r in rows] == ROWS and rows[2]["delta_pct"] is not None
    bad = pdsweep("report", path, "--tracking-uri", uri, "--metric", "piqa/acc")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: report.metrics: no run has piqa/acc")
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    fmt = pdsweep("report", path, "--tracking-uri", uri, "--format", "docx")
    assert fmt.returncode == 2 and "--format" in fmt.stderr
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "name": "never-run"}))
    none = pdsweep("report", other, "--tracking-uri", uri, "--out", tmp_path / "nothing")
    assert none.returncode == 2 and "no experiment 'never-run'" in none.stderr
    assert not (tmp_path / "nothing").exists()  # nothing half-written


@pytest.mark.slow
def test_the_teacher_pass_stores_only_the_windows_its_students_visit(done_sweep, workdir) -> None:
    from pdsweep.data import batches, tokenized
    from pdsweep.logits import store as logits_store
    from pdsweep.spec.expand import expand, load_sweep

    path, _, _, _ = done_sweep
    store = next((workdir / "runs" / "report-test" / "logits").iterdir())
    stored = logits_store.StoreReader(store).positions()
    planned = [r for r in expand(load_sweep(path)) if r.role == "student"]
    tokens = tokenized.prepare(planned[0].spec)
    seq = planned[0].spec.data.seq_len
    visited = np.unique(
        np.concatenate(
            [
                batches.visited_windows(len(tokens.train), seq, 16, r.spec.train.order_seed, r.spec.steps())
                for r in planned
            ]
        )
    )
    train = stored[stored < len(tokens.train)]
    assert len(visited) < batches.num_windows(len(tokens.train), seq)  # the students see part of the corpus
    assert len({r.spec.train.order_seed for r in planned}) == 1  # every seed reads the same batches: one set
    assert np.array_equal(np.unique(train // seq), visited)
    assert len(stored) - len(train) == min(2048, len(tokens.heldout))  # what eval.heldout_tokens reads


@pytest.mark.slow
def test_every_run_records_its_compute_and_the_report_shows_it(done_sweep, workdir) -> None:
    from pdsweep.logits import store as logits_store
    from pdsweep.report import compute
    from pdsweep.spec.expand import expand, load_sweep

    path, uri, out, _ = done_sweep
    planned = expand(load_sweep(path))
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("report-test")
    found = client.search_runs([exp.experiment_id])
    metrics = {r.data.tags["pdsweep.run_id"]: r.data.metrics for r in found if "pdsweep.run_id" in r.data.tags}
    sweep_run = next(r.data.metrics for r in found if r.data.tags.get("pdsweep.kind") == "sweep")
    V, T = 2048, 64
    m = planned[0].spec.student  # tiny-xs, for teacher and students alike
    h, L, f, kv = m.hidden_size, m.num_layers, m.ffn_hidden_size, m.num_kv_groups * m.head_dim
    by_hand = 6 * (L * (2 * h * h + 2 * h * kv + 3 * h * f) + V * h) + 12 * L * h * T  # norms left out
    per_token = m.flops_per_token(V, T)
    assert per_token == pytest.approx(by_hand, rel=2e-3)
    store = next((workdir / "runs" / "report-test" / "logits").iterdir())
    status = json.loads((store / "status.json").read_text())
    assert status["status"] == "done" and status["flops_per_position"] == pytest.approx(per_token / 3)
    assert status["flops"] == pytest.approx(per_token / 3 * status["positions"])
    assert status["bytes"] == logits_store.store_bytes(store) and status["device_hours"] > 0
    for key in ("positions", "bytes", "flops", "device_hours"):  # and on the sweep's MLflow run
        assert sweep_run[f"teacher_pass/{store.name}/{key}"] == pytest.approx(status[key])
    teacher = next(r for r in planned if r.role == "teacher")
    for r in planned:
        got = metrics[r.run_id]
        assert got["compute/flops"] == pytest.approx(per_token * r.spec.data.tokens), r.label
        assert got["compute/seconds"] > 0 and got["compute/device_hours"] == pytest.approx(
            got["compute/seconds"] / 3600
        )
        if r.role == "student":  # α = 0.5 throughout: the teacher's targets at every position it trains on
            assert got["compute/teacher_pass_flops"] == pytest.approx(per_token / 3 * r.spec.data.tokens)
        else:
            assert "compute/teacher_pass_flops" not in got
        assert json.loads((workdir / "runs" / "report-test" / r.run_id / "result.json").read_text())[
            "compute/flops"
        ] == pytest.approx(got["compute/flops"])

    table = pd.read_csv(out / "report.csv").set_index("label")
    loss = {lab: {} for lab in ROWS}
    for r in planned:
        if r.role != "teacher":
            loss[r.label][r.seed] = metrics[r.run_id]["eval/heldout/loss"]
    for lab in ("α = 0.5", "α = 0.9"):
        row = table.loc[lab]
        csv = {"rel": 1e-5}  # report.csv keeps 6 significant digits
        assert row["flops"] == pytest.approx(per_token * TOKENS, **csv)
        assert row["pass_flops"] == pytest.approx(per_token / 3 * TOKENS, **csv)
        assert row["total_flops"] == pytest.approx(row["flops"] + row["pass_flops"], **csv)
        assert row["teacher_flops"] == pytest.approx(metrics[teacher.run_id]["compute/flops"], **csv)
        # LM-only at the row's compute (4/3 of its own): between its 1x and 2x budgets, by hand.
        lm = {
            s: loss["LM-only"][s] + (loss[ROWS[1]][s] - loss["LM-only"][s]) * math.log(4 / 3) / math.log(2)
            for s in (0, 1)
        }
        want = (np.mean(list(loss[lab].values())) / np.mean(list(lm.values())) - 1) * 100
        assert row["matched_delta_pct"] == pytest.approx(want, rel=1e-4)
        assert compute.read([(1.0, loss["LM-only"][0]), (2.0, loss[ROWS[1]][0])], 4 / 3) == pytest.approx(lm[0])
    assert math.isnan(table.loc["LM-only", "matched_delta_pct"])
    md = (out / "report.md").read_text()
    header = next(x for x in md.splitlines() if x.startswith("| | held-out loss")).split("|")
    delta_col = next(i for i, h in enumerate(header) if h.strip().startswith("Δ% held-out loss"))
    for lab in ROWS[2:]:
        line = next(x for x in md.splitlines() if x.startswith(f"| {lab} |"))
        resolved = table.loc[lab, "effect_halfwidths"] >= 2
        assert bool(table.loc[lab, "resolved"]) == resolved
        assert ("(not resolved)" in line.split("|")[delta_col]) != resolved  # the Δ% cell says so
    assert "| student FLOPs | + teacher pass | + teacher training |" in md and "Δ% at equal compute" in md


def _frame(values: dict[str, list[float]], seeds: dict[str, list[int]] | None = None) -> pd.DataFrame:
    recs = []
    for label, vals in values.items():
        for seed, v in zip((seeds or {}).get(label, range(len(vals))), vals, strict=True):
            role = "baseline" if label == "LM" else "student"
            recs.append(
                {"label": label, "role": role, "seed": seed, "baseline": "LM", "metric": "heldout/loss", "value": v}
            )
    return pd.DataFrame.from_records(recs)


def test_delta_intervals_t_by_default_bootstrap_on_request() -> None:
    rng = np.random.default_rng(0)
    # Few seeds, paired: the t-interval on per-seed ratios, wide enough to include zero here.
    few = build.build_table(_frame({"LM": [6.0, 6.1, 5.9], "PD": [5.9, 6.05, 5.92]}))
    pd_row = few.rows[1]
    ratios = [(5.9 / 6.0 - 1) * 100, (6.05 / 6.1 - 1) * 100, (5.92 / 5.9 - 1) * 100]
    half = 4.303 * np.std(ratios, ddof=1) / math.sqrt(3)
    assert pd_row.delta_method == "t" and pd_row.delta_hi - pd_row.delta_lo == pytest.approx(2 * half, rel=1e-3)
    assert pd_row.delta_lo < 0 < pd_row.delta_hi
    assert pd_row.effect is not None and pd_row.effect.paired and pd_row.effect.halfwidths < 3
    # Many seeds, a real effect: still the t-interval; a BCa bootstrap when asked for. Both exclude zero
    # and sit around the truth (−2%).
    base = 6.0 + rng.normal(0, 0.02, 12)
    frame = _frame({"LM": list(base), "PD": list(base * 0.98 + rng.normal(0, 0.005, 12))})
    many = build.build_table(frame)
    row = many.rows[1]
    assert row.delta_method == "t" and row.delta_lo < row.delta < row.delta_hi < 0 and abs(row.delta + 2) < 0.2
    boot = build.build_table(frame, delta_interval="bootstrap").rows[1]
    assert boot.delta_method == "bootstrap" and boot.delta_lo < boot.delta < boot.delta_hi < 0
    assert (boot.delta_lo, boot.delta_hi) != (row.delta_lo, row.delta_hi)
    assert row.effect.halfwidths > 10
    # Different seeds on each side: not paired (Welch), and the interval says so.
    unpaired = build.build_table(_frame({"LM": [6.0, 6.1, 5.9], "PD": [5.8, 5.85]}, {"PD": [7, 8]}))
    assert not unpaired.rows[1].effect.paired and unpaired.rows[1].delta_lo < unpaired.rows[1].delta_hi


def test_noise_floor_and_single_seed_tables() -> None:
    t = build.build_table(_frame({"LM": [6.0, 6.12], "PD": [5.9, 6.0]}))
    assert "span 1.98% of its held-out loss" in t.noise_floor
    one = build.build_table(_frame({"LM": [6.0], "PD": [5.9]}))
    assert "Noise floor unknown" in one.noise_floor and math.isnan(one.rows[1].delta_lo)
    md = formats.to_markdown(one)
    assert "| PD | **5.900** |" in md and "↓ 1.7%" in md  # lower loss is better: PD's cell is bold


@pytest.mark.slow
def test_bytes_per_token_come_from_the_sweeps_own_store(done_sweep, workdir) -> None:
    """The truncation figures' second axis: logits bytes per token at each row's (p, k), read from
    the teacher pass the sweep stored (as `pdsweep logits stats` reports them)."""
    from pdsweep.logits import store as logits_store

    path, uri, _, _ = done_sweep
    data = build.load(path, uri)
    got = figures._bytes_per_token(data, ["α = 0.5", "α = 0.9"], "logits.top_p", "logits.top_k")
    store = next((workdir / "runs" / "report-test" / "logits").iterdir())
    want = logits_store.stats(logits_store.StoreReader(store), [0.95], [20])[0]["bytes_per_token"]
    assert got == {"α = 0.5": pytest.approx(want), "α = 0.9": pytest.approx(want)}
    assert 1 < want < 20 * 8  # at most k entries of a few bytes each


@pytest.mark.parametrize("paired", [True, False])
def test_the_default_delta_interval_holds_its_level_at_a_few_seeds(paired) -> None:
    """Coverage by simulation: seeds drawn around a known Δ% (baseline 6.0 ± 0.05 per seed, a row
    2% lower; paired seeds share most of their noise). The default interval must cover the true Δ%
    in ≥ 93% of 2,000 sweeps at a nominal 95% (binomial standard error 0.5%) at every seed count;
    a percentile bootstrap at 8 seeds covers ~0.90 on the same draws, so the check can tell."""
    rng = np.random.default_rng(1)
    truth = -2.0
    for n in (3, 5, 8, 12):
        covered = percentile = 0
        for _ in range(2000):
            shared = rng.normal(0, 0.05, n)
            base = 6.0 + shared + rng.normal(0, 0.01, n)
            row = 6.0 * 0.98 + (shared if paired else rng.normal(0, 0.05, n)) + rng.normal(0, 0.01, n)
            a = {s: v for s, v in enumerate(row)} if paired else {100 + s: v for s, v in enumerate(row)}
            b = dict(enumerate(base))
            lo, hi = stats.t_delta(a, b, 0.95)
            covered += lo <= truth <= hi
            if n == 8 and paired:
                idx = rng.integers(0, n, (400, n))
                d = (row[idx].mean(1) / base[idx].mean(1) - 1) * 100
                plo, phi = np.percentile(d, [2.5, 97.5])
                percentile += plo <= truth <= phi
        assert covered / 2000 >= 0.93, (n, covered / 2000)
        if n == 8 and paired:
            assert percentile / 2000 < 0.93, percentile / 2000  # what the old default did


def test_delta_vs_size_draws_a_line_per_configuration_and_per_teacher() -> None:
    """Figure 1 (vanilla PD and PD* at two sizes) gets a line per configuration, Figure 4 (two teachers
    at two sizes) a line per teacher; each line runs over the student sizes in order."""
    pd_star = pd.DataFrame(
        {
            "label": ["vanilla PD + tiny-xs", "PD* + tiny-xs", "vanilla PD + tiny-s", "PD* + tiny-s"],
            "teacher": ["run:teacher"] * 4,
            "params": [360_768, 360_768, 1_311_872, 1_311_872],
            "student.preset": ["tiny-xs", "tiny-xs", "tiny-s", "tiny-s"],
            "logits.temperature": [1.0, 2.0, 1.0, 2.0],
            "loss.kd": ["nll", "kld", "nll", "kld"],
        }
    )
    per_teacher, lines = figures.size_lines(pd_star)
    assert not per_teacher
    assert {name: list(g["label"]) for name, g in lines} == {
        "vanilla PD": ["vanilla PD + tiny-xs", "vanilla PD + tiny-s"],
        "PD*": ["PD* + tiny-xs", "PD* + tiny-s"],
    }
    sizes = pd.DataFrame(
        {
            "label": ["tiny-s + teacher-s", "tiny-xs + teacher-s", "tiny-xs + teacher-m", "tiny-s + teacher-m"],
            "teacher": ["run:teacher-s", "run:teacher-s", "run:teacher-m", "run:teacher-m"],
            "params": [1_311_872, 360_768, 360_768, 1_311_872],
            "student.preset": ["tiny-s", "tiny-xs", "tiny-xs", "tiny-s"],
        }
    )
    per_teacher, lines = figures.size_lines(sizes)
    assert per_teacher
    assert {name: list(g["params"]) for name, g in lines} == {
        "teacher-m": [360_768, 1_311_872],
        "teacher-s": [360_768, 1_311_872],
    }
