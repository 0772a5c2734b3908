"""A sweep logged to a real `mlflow server` on 127.0.0.1, read back with mlflow.search_runs and
looked at where users compare runs: the MLflow UI, in headless Chromium (Debian's chromium and
chromium-driver, driven by selenium); and `pdsweep ui` starting the UI for the embedded store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from tests.conftest import free_port, lm_sweep, pdsweep, start_mlflow_server, stop_mlflow_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    where = tmp_path_factory.mktemp("mlflow-server")
    proc, url = start_mlflow_server(where / "mlflow.db", where / "server.log")
    yield url
    stop_mlflow_server(proc)


def _wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    """Poll `predicate` until truthy. The UI is a React app: an element read while the table re-renders
    is stale, which means "not yet", not failure."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_sweep_logged_to_a_server_is_in_its_ui_with_runs_and_params(
    tmp_path, server, browser, shakespeare, monkeypatch
) -> None:
    import mlflow
    from selenium.webdriver.common.by import By

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(lm_sweep("server-sweep", steps=8, lrs=(0.003, 0.01), seeds=2)))
    out = pdsweep("run", path, "--tracking-uri", server, "--workers", "2", timeout=600)
    assert out.returncode == 0 and "4 of 4 runs done" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)  # not mlflow.set_tracking_uri: it outlives the test
    df = mlflow.search_runs(experiment_names=["server-sweep"])
    children = df[df["tags.pdsweep.run_id"].notna()]
    parent = df[df["tags.pdsweep.kind"] == "sweep"]
    assert len(df) == 5 and len(children) == 4 and len(parent) == 1
    assert set(children["tags.mlflow.parentRunId"]) == {parent["run_id"].iloc[0]}
    assert sorted(children["params.optim.lr"]) == ["0.003", "0.003", "0.01", "0.01"]
    assert set(children["tags.pdsweep.status"]) == {"done"} and (children["status"] == "FINISHED").all()
    assert children["metrics.loss"].notna().all() and children["metrics.eval/heldout/loss"].notna().all()
    assert (children["params.data.seq_len"] == "64").all() and (children["params.loss.alpha.value"] == "0.0").all()

    # The URL `pdsweep ui` prints for a server: the sweep's runs table.
    ui = pdsweep("ui", path, "--tracking-uri", server)
    assert ui.returncode == 0, ui.stderr
    url = ui.stdout.strip()
    exp_id = parent["experiment_id"].iloc[0]
    assert url == f"{server}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    browser.get(url)

    def rows() -> list[str]:
        return [r.text for r in browser.find_elements(By.CSS_SELECTOR, '[role="row"]')]

    _wait_for(lambda: any("server-sweep" in r for r in rows()), what="the sweep's parent run in the runs table")

    def expand_parent() -> bool:  # the sweep's runs are nested under its parent run
        for b in browser.find_elements(By.CSS_SELECTOR, '[role="row"] button'):
            if "runnamecellrenderer" in (b.get_attribute("data-component-id") or ""):
                b.click()
                return True
        return False

    _wait_for(expand_parent, what="the parent run's expand button")
    names = set(children["tags.mlflow.runName"])
    assert len(names) == 4  # seeds are told apart: "LM-only (optim.lr=0.01) · seed 1"
    _wait_for(lambda: all(any(n in r for r in rows()) for n in names), what="every run of the sweep")

    # A run's page lists its parameters (the flattened spec); its table filters by name.
    run = children[children["params.optim.lr"] == "0.01"].iloc[0]
    browser.get(f"{server}/#/experiments/{exp_id}/runs/{run['run_id']}?workflowType=machine_learning")
    _wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, 'input[placeholder="Search parameters"]'),
        what="the run page's parameters",
    )

    def search_params() -> bool:
        box = browser.find_elements(By.CSS_SELECTOR, 'input[placeholder="Search parameters"]')[0]
        browser.execute_script("arguments[0].scrollIntoView()", box)
        box.clear()
        box.send_keys("optim.lr")
        return True

    _wait_for(search_params, what="the parameter search box")

    def param_rows() -> list[str]:
        return [r.text for r in browser.find_elements(By.CSS_SELECTOR, '[role="row"]') if "optim.lr" in r.text]

    shown = _wait_for(param_rows, what="the optim.lr parameter")
    assert any("0.01" in r for r in shown), shown
    assert run["tags.mlflow.runName"] in browser.find_element(By.TAG_NAME, "body").text


@pytest.mark.slow
def test_pdsweep_ui_serves_the_embedded_store_on_localhost(tmp_path, workdir, shakespeare) -> None:
    """`pdsweep ui` on the default sqlite store: the UI answers on 127.0.0.1 at the printed URL with
    the sweep's runs, and Ctrl-C stops it and its workers."""

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(lm_sweep("ui-sweep", steps=4, lrs=(0.003,), seeds=1)))
    out = pdsweep("run", path, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pdsweep.cli", "ui", str(path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        line = proc.stdout.readline()  # printed once the UI answers
        assert line.startswith("MLflow UI: "), line
        url = line.split()[2]
        assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/")
        assert url.endswith("/runs?workflowType=machine_learning")
        exp_id = url.split("/experiments/")[1].split("/")[0]
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search",
            data=json.dumps({"experiment_ids": [exp_id]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            runs = json.loads(r.read())["runs"]
        assert len(runs) == 2  # the sweep's parent run and its one run
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=60)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=5)

    # Killed outright, `pdsweep ui` leaves no server behind either.
    proc = subprocess.Popen(
        [sys.executable, "-m", "pdsweep.cli", "ui", str(path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout.readline().startswith("MLflow UI: ")
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=2)
        except OSError:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the MLflow UI outlived `pdsweep ui`")
