"""Fault injection for the tests, from outside pdsweep: a test that puts this directory on PYTHONPATH
and sets PDSWEEP_TEST_NAN="<run dir name prefix>@<step>" makes the training process of that run
compute a NaN loss at that (0-based) optimiser step — the real failure path, with no hook in pdsweep.
The training process is `pdsweep train RUN --out DIR` or a worker of `pdsweep run` (its task file).
PDSWEEP_TEST_KILL_RANK="<rank>@<shards>" SIGKILLs rank <rank> of a teacher pass (RANK) right after it
wrote <shards> shards: a rank killed mid-pass, for real."""

import json
import os
import sys
from pathlib import Path


def _run_dir() -> str | None:
    if "train" in sys.argv and "--out" in sys.argv:
        return sys.argv[sys.argv.index("--out") + 1]
    task = next((a for a in sys.argv[1:] if a.endswith("task.json")), None)
    if task is not None:
        spec = json.loads(Path(task).read_text())
        return spec.get("run_dir") if spec.get("kind") == "train" else None
    return None


_target = os.environ.get("PDSWEEP_TEST_NAN", "")
if _target:
    # Decided at the first loss, not at start-up: a worker of `pdsweep run` is forked from a warm
    # process that started before it knew its task (its sys.argv is set to the task file then).
    from pdsweep.nn import losses

    _prefix, _, _step = _target.partition("@")
    _real, _calls, _armed = losses.pd_loss, [0], []

    def _poisoned(*args, **kwargs):  # one call per step at one micro-batch per step
        if not _armed:
            _dir = _run_dir()
            _armed.append(_dir is not None and Path(_dir).name.startswith(_prefix))
        loss, parts = _real(*args, **kwargs)
        _calls[0] += 1
        poison = _armed[0] and _calls[0] == int(_step) + 1
        return (loss * float("nan"), parts) if poison else (loss, parts)

    losses.pd_loss = _poisoned


_kill = os.environ.get("PDSWEEP_TEST_KILL_RANK", "")
if _kill and os.environ.get("RANK") == _kill.partition("@")[0]:
    import signal

    from pdsweep.logits import store as _store

    _write, _written = _store.StoreWriter.write_shard, [0]

    def _write_then_die(self, *args, **kwargs):
        entry = _write(self, *args, **kwargs)
        _written[0] += 1
        if _written[0] == int(_kill.partition("@")[2]):
            os.kill(os.getpid(), signal.SIGKILL)
        return entry

    _store.StoreWriter.write_shard = _write_then_die
