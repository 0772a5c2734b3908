"""Optional back-ends are extras: without one, the command that needs it says which to install."""

from __future__ import annotations

import sys

import pytest

from pdsweep.errors import UserError
from pdsweep.run import launch, search
from pdsweep.spec import RunSpec
from pdsweep.train import backends


def test_a_missing_extra_is_one_line_naming_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if pdsweep[postgres] were not installed
    with pytest.raises(UserError, match=r"a PostgreSQL --storage needs psycopg, .*pip install 'pdsweep\[postgres\]'"):
        search.open_storage("postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    spec = RunSpec.model_validate({"student": "tiny-xs", "loss": {"alpha": 0}, "train": {"backend": "deepspeed"}})
    with pytest.raises(UserError, match=r"train.backend deepspeed .*pip install 'pdsweep\[deepspeed\]'"):
        backends.make(spec)
    with pytest.raises(UserError, match=r"the deepspeed launcher needs deepspeed"):
        launch.launcher_command(["pdsweep.run.worker", "task.json"], 2, "deepspeed", None, {})
