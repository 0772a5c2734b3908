"""Fault injection for the tests, from outside pdsweep: a test that puts this directory on PYTHONPATH
and sets PDSWEEP_TEST_NAN="<run dir name prefix>@<step>" makes the training process of that run
compute a NaN loss at that (0-based) optimiser step — the real failure path, with no hook in pdsweep."""

import os
import sys
from pathlib import Path

_target = os.environ.get("PDSWEEP_TEST_NAN", "")
if _target and "train" in sys.argv and "--out" in sys.argv:
    _prefix, _, _step = _target.partition("@")
    if Path(sys.argv[sys.argv.index("--out") + 1]).name.startswith(_prefix):
        from pdsweep.nn import losses

        _real, _calls = losses.pd_loss, [0]

        def _poisoned(*args, **kwargs):  # one call per step at one micro-batch per step
            loss, parts = _real(*args, **kwargs)
            _calls[0] += 1
            return (loss * float("nan"), parts) if _calls[0] == int(_step) + 1 else (loss, parts)

        losses.pd_loss = _poisoned
