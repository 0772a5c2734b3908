"""A cluster profile: the Slurm resources of each kind of task a sweep runs, given by
`pdsweep run --cluster FILE` or a sweep's `cluster:` section.

    cluster:
      partition: gpu
      account: my-lab
      time: "2-00:00:00"
      gpus_per_node: 8
      setup: ["source ~/venvs/pdsweep/bin/activate"]
      logits: {gpus_per_node: 1, time: "12:00:00"}      # a kind's own values over the defaults
      baseline: {nodes: 2}

The top-level fields are every task's defaults; `teacher`, `logits`, `baseline` and `student` override
them field by field for that kind of task. Like every spec model, unknown keys are errors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from pdsweep.spec import SpecModel

_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")
_MEM = re.compile(r"^\d+[KMGT]?$")
Kind = Literal["teacher", "logits", "baseline", "student"]


class Resources(SpecModel):
    """What one task's job asks Slurm for; unset fields take the cluster's defaults (or Slurm's)."""

    partition: str | None = None
    """`--partition`: the queue the job waits in."""
    account: str | None = None
    """`--account` charged for the job."""
    qos: str | None = None
    """`--qos`: quality of service."""
    time: str | None = None
    """`--time`: the job's time limit (`MM`, `HH:MM:SS`, `D-HH:MM:SS`); it checkpoints `signal_s` before."""
    nodes: int | None = Field(default=None, ge=1)
    """`--nodes`: machines per run (one process per GPU on each)."""
    gpus_per_node: int | None = Field(default=None, ge=0)
    """`--gpus-per-node`; a run starts one process per GPU (0: CPU)."""
    tasks_per_node: int | None = Field(default=None, ge=1)
    """`--ntasks-per-node`: processes per machine (default: one per GPU, or one on CPU)."""
    cpus_per_task: int | None = Field(default=None, ge=1)
    """`--cpus-per-task`: CPU cores per process (its torch threads)."""
    mem: str | None = None
    """`--mem`: memory per machine (`64G`, `500000M`; `0` = all of it)."""
    array: int | None = Field(default=None, ge=1)
    """A teacher pass (`logits:`) as a job array of this many jobs, each its own nodes and ranks, each
    writing its own shards: Slurm starts them as resources free up, and a failed one is redone alone
    (`pdsweep run` again). Ignored for training runs."""
    sbatch: list[str] | None = None
    """Extra sbatch options, one per item, as on the command line (`--constraint=a100`, `--exclusive`)."""
    setup: list[str] | None = None
    """Shell lines the job runs before pdsweep (`module load cuda/12.4`, `source ~/venv/bin/activate`)."""

    @field_validator("time")
    @classmethod
    def _time(cls, v: str | None) -> str | None:
        if v is not None and not _TIME.match(v):
            raise ValueError(f"must be a Slurm time limit (MM, HH:MM:SS or D-HH:MM:SS), got {v!r}")
        return v

    @field_validator("mem", mode="before")
    @classmethod
    def _mem_number(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v  # `mem: 0` (all of it)

    @field_validator("mem")
    @classmethod
    def _mem(cls, v: str | None) -> str | None:
        if v is not None and not _MEM.match(v):
            raise ValueError(f"must be a Slurm memory size (a number with K, M, G or T), got {v!r}")
        return v

    @field_validator("sbatch")
    @classmethod
    def _options(cls, v: list[str] | None) -> list[str] | None:
        for item in v or []:
            if not item.startswith("-") or "\n" in item:
                raise ValueError(f"each item is one sbatch option starting with '-', got {item!r}")
        return v

    @field_validator("setup")
    @classmethod
    def _lines(cls, v: list[str] | None) -> list[str] | None:
        for item in v or []:
            if "\n" in item:
                raise ValueError(f"each item is one shell line, got {item!r}")
        return v

    @field_validator("partition", "account", "qos")
    @classmethod
    def _word(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[A-Za-z0-9_.,-]+$", v):
            raise ValueError(f"must be a Slurm name (letters, digits, _ . , -), got {v!r}")
        return v


class ClusterSpec(Resources):
    """A Slurm cluster profile: every task's defaults, and per kind of task its own values."""

    executor: Literal["slurm"] = "slurm"
    """The batch system (Slurm)."""
    teacher: Resources = Field(default_factory=Resources)
    """Teacher runs of the sweep (trained first)."""
    logits: Resources = Field(default_factory=Resources)
    """Teacher logits passes."""
    baseline: Resources = Field(default_factory=Resources)
    """LM-only baselines."""
    student: Resources = Field(default_factory=Resources)
    """PD students."""
    signal_s: int = Field(default=120, ge=10)
    """Seconds before the time limit (or a preemption) at which Slurm warns the job (`--signal=USR1@…`):
    the run writes a checkpoint at its next step, and its job requeues itself and resumes."""
    requeue: bool = True
    """Requeue a job that was warned (time limit, preemption) so that it resumes from its checkpoint."""
    python: str | None = None
    """The Python that runs pdsweep on the compute nodes (default: the one that submits, which must be
    on a file system the nodes share)."""
    job_name: str = "pdsweep"
    """Prefix of every job's name (`pdsweep:SWEEP:RUN`)."""

    def resources(self, kind: Kind) -> Resources:
        """The resources of one kind of task: its own values over the defaults."""
        mine = getattr(self, kind)
        merged = {f: getattr(self, f) for f in Resources.model_fields}
        merged.update({f: getattr(mine, f) for f in mine.model_fields_set})
        return Resources.model_validate(merged)


def load(path: Path) -> ClusterSpec:
    """A cluster profile file (`--cluster FILE`): the same one-line errors as a sweep file's."""
    from pdsweep.errors import UserError
    from pdsweep.spec.load import read_yaml, validate

    data: Any = read_yaml(path)
    if isinstance(data, dict) and set(data) == {"cluster"}:
        data = data["cluster"]  # a sweep-style file with only its cluster: section
    if not isinstance(data, dict):
        raise UserError(f"{path}: a cluster profile must be a mapping (partition:, time:, …)")
    return validate(ClusterSpec, data, prefix=f"{path}: ")  # type: ignore[no-any-return]


def chosen(section: ClusterSpec | None, given: Path | None) -> ClusterSpec | None:
    """The profile a command uses: the file given (`--cluster FILE`) over the sweep's `cluster:` section."""
    return load(given) if given is not None else section
