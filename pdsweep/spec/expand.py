"""Sweep → RunSpecs: a pure function, plus the plan of what those runs need.

`expand(sweep)` turns a sweep file into the list of runs it stands for:

    teachers (LM-only runs named in `teachers:`)
    + baseline (base + `baseline:` overrides, α = 0)
    + configurations (base × grid (cartesian) × zip (parallel) × runs (explicit))
    each configuration × seeds

Every run is validated; problems from all runs are reported together. Each run is identified by
`run_id`, a short hash of its resolved RunSpec's canonical JSON, so identical runs merge and a
re-run of the sweep finds what it already did. LM-only runs are normalised first (teacher, logits
and KD settings cannot change an α ≡ 0 run, so they do not change its run_id either).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from pdsweep import spec as S
from pdsweep.errors import UserError
from pdsweep.spec.labels import human, label
from pdsweep.spec.load import models_in, read_yaml, validate
from pdsweep.spec.sweep import Sweep

# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file (UserError with one line per problem)."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: a sweep file must be a mapping (name:, base:, grid:, ...), got {type(data).__name__}")
    return validate(Sweep, data, prefix=f"{path}: ")


def load_any(path: Path) -> tuple[Sweep | S.RunSpec, list[PlannedRun] | None]:
    """A sweep file (it has any sweep key: `name:`, `base:`, `grid:`, ...) with its runs, or a
    single-run file (runs None)."""
    data = read_yaml(path)
    if not isinstance(data, dict) or set(data) & (set(Sweep.model_fields) - set(S.RunSpec.model_fields)):
        loaded = load_sweep(path)
        return loaded, expand(loaded, str(path))
    return load_run(path), None


def load_run(path: str | Path) -> S.RunSpec:
    """Read and validate a single RunSpec file (for `pdsweep train`); dotted keys are allowed."""
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a run file must be a mapping, got {type(data).__name__}")
    raw = apply_overrides({}, data, where=f"{path}: ")
    return validate(S.RunSpec, raw, prefix=f"{path}: ")


# ----------------------------------------------------------------------------------------------
# Dotted paths
# ----------------------------------------------------------------------------------------------


def _collect_paths(model: type[BaseModel], prefix: str, out: dict[str, type[BaseModel] | None]) -> None:
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        members = models_in(info.annotation)
        out[path] = None if not members else model
        for m in members:
            _collect_paths(m, f"{path}.", out)


_PATHS: dict[str, Any] = {}


def valid_paths() -> list[str]:
    """Every dotted path into a RunSpec, union members' fields included (`loss.alpha.max`)."""
    if not _PATHS:
        _collect_paths(S.RunSpec, "", _PATHS)
    return list(_PATHS)


def check_path(path: str, where: str) -> None:
    """UserError naming the closest valid paths when `path` is not a RunSpec path."""
    if not _PATHS:
        valid_paths()
    if path in _PATHS:
        return
    close = difflib.get_close_matches(path, valid_paths(), n=3, cutoff=0.6)
    if not close:  # try the last component alone: `top_pp` → logits.top_p
        leaf = path.rsplit(".", 1)[-1]
        close = [p for p in valid_paths() if difflib.get_close_matches(leaf, [p.rsplit(".", 1)[-1]], cutoff=0.75)][:3]
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UserError(f"{where}{path}: unknown RunSpec path{hint}")


def flatten_overrides(overrides: dict[str, Any], prefix: str = "", where: str = "") -> dict[str, Any]:
    """Nested sections → dotted paths; a tagged-union value (a dict with `kind`) stays one value. A
    path given twice (`loss.alpha: 0.5` beside `loss: {alpha: 0.9}`) is an error, not a silent pick."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        nested = isinstance(value, dict) and "kind" not in value and value
        inner = flatten_overrides(value, f"{path}.", where) if nested else {path: value}
        for p, v in inner.items():
            if p in out:
                raise UserError(f"{where}{p}: given twice (as a dotted key and inside its section); keep one")
            out[p] = v
    return out


def _shorthand(path: str, value: Any, where: str) -> Any:
    if path not in S.SHORTHANDS:
        return value
    try:
        return S.SHORTHANDS[path](value)
    except ValueError as e:
        raise UserError(f"{where}{path}: {e}") from None


def _set(raw: dict[str, Any], path: str, value: Any, where: str) -> None:
    keys = path.split(".")
    node = raw
    for i, key in enumerate(keys[:-1]):
        nxt = node.get(key)
        if nxt is None:
            nxt = node[key] = {}
        elif not isinstance(nxt, dict):
            parent = ".".join(keys[: i + 1])
            nxt = _shorthand(parent, nxt, where)  # `student: tiny-s`
            if not isinstance(nxt, dict):
                raise UserError(
                    f"{where}{path}: {parent} is set to {nxt!r} here; write {parent} as a mapping to set {path}"
                )
            node[key] = nxt
        node = nxt
    leaf = keys[-1]
    old = node.get(leaf)
    if path in S.SHORTHANDS:  # compare like with like: `alpha: 0.9` is {kind: constant, value: 0.9}
        old, value = _shorthand(path, old, where), _shorthand(path, value, where)
    if isinstance(old, dict) and isinstance(value, dict) and value.get("kind", old.get("kind")) == old.get("kind"):
        node[leaf] = {**old, **value}  # same variant: merge parameters
    else:
        node[leaf] = copy.deepcopy(value)


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any], where: str = "") -> dict[str, Any]:
    """A copy of `raw` with `overrides` (dotted paths or nested sections) applied; paths are checked."""
    out = copy.deepcopy(raw)
    for path, value in flatten_overrides(overrides, where=where).items():
        check_path(path, where)
        _set(out, path, value, where)
    return out


# ----------------------------------------------------------------------------------------------
# Identity and labels
# ----------------------------------------------------------------------------------------------


def canonical_json(spec: S.RunSpec, drop_seed: bool = False) -> str:
    """The resolved spec as JSON, fields in schema order (every RunSpec field is a model, scalar or
    list, so the order is fixed by the schema), prefixed by the spec version.

    `train.data_seed` is written only where the batch order is not `train.seed`'s — the only order
    there was before the field — so a run whose batches did not change keeps its run id, and one
    whose did gets a new one. Without the seed (`drop_seed`: a configuration's id), it is written
    unless the order follows the seed."""
    tr = spec.train
    drop_order = tr.data_seed == "seed" if drop_seed else tr.order_seed == tr.seed
    train = {"seed"} if drop_seed else set()
    train |= {"data_seed"} if drop_order else set()
    body = spec.model_dump_json(exclude={"train": train} if train else None)
    return f'{{"spec_version":{S.SPEC_VERSION},"run":{body}}}'


def run_id(spec: S.RunSpec) -> str:
    """12 hex digits of SHA-256 over the resolved spec's canonical JSON."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:12]


def config_id(spec: S.RunSpec) -> str:
    """Like run_id but without the seed: the replicates of one configuration share it."""
    return hashlib.sha256(canonical_json(spec, drop_seed=True).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------
# Expansion
# ----------------------------------------------------------------------------------------------

Role = Literal["teacher", "baseline", "student"]

PD_ONLY = ("teacher", "logits", "loss")
"""Sections that cannot change an LM-only run: axes outside them get a baseline per value."""


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its resolved spec, identity and place in the sweep."""

    run_id: str
    config_id: str
    label: str
    role: Role
    spec: S.RunSpec
    seed: int
    axes: dict[str, Any] = field(default_factory=dict)
    """The dotted paths this run sets on top of `base`, with the values as written."""
    name: str | None = None
    """Teacher runs: their name in `teachers:`."""
    baseline: str | None = None
    """Students: config_id of the LM-only baseline their Δ is measured against."""


def lm_only(spec: S.RunSpec) -> S.RunSpec:
    """Normalise an α ≡ 0 run: drop settings that cannot affect it, so equal runs share a run_id."""
    if spec.uses_teacher:
        return spec
    keep_teacher = isinstance(spec.data.tokenizer, S.TeacherTokenizer) or "teacher_agreement" in spec.eval.suites
    return spec.model_copy(
        update={
            "teacher": spec.teacher if keep_teacher else None,
            "logits": S.LogitsSpec(),
            "loss": S.LossSpec(alpha=S.ConstantAlpha(value=0.0), chunk_tokens=spec.loss.chunk_tokens),
        }
    )


def _configurations(sweep: Sweep) -> list[tuple[dict[str, Any], str | None]]:
    """(overrides, explicit label) per configuration: grid × zip × runs, or just base."""
    grid_keys = list(sweep.grid)
    grid = [dict(zip(grid_keys, combo, strict=True)) for combo in itertools.product(*sweep.grid.values())]
    n_zip = len(next(iter(sweep.zip.values()))) if sweep.zip else 0
    zipped = [{k: v[i] for k, v in sweep.zip.items()} for i in range(n_zip)] or [{}]
    explicit: list[tuple[dict[str, Any], str | None]] = [(r.set, r.label) for r in sweep.runs] or [({}, None)]
    out = []
    for g in grid:
        for z in zipped:
            for overrides, lab in explicit:
                out.append(({**g, **z, **overrides}, lab))
    return out


def expand(sweep: Sweep, source: str = "") -> list[PlannedRun]:
    """All runs of `sweep`: teachers, baselines, then configurations × seeds (UserError on problems).

    Each configuration (and each baseline) is validated once; its replicates differ only in
    `train.seed`. Runs are ordered seed-major, so the first seed of every configuration comes first.
    """
    where = f"{source}: " if source else ""
    problems: list[str] = []

    def build(overrides: dict[str, Any], ctx: str, teacher_run: bool = False) -> S.RunSpec | None:
        try:
            raw = apply_overrides(base, overrides, where=f"{where}{ctx}")
            if teacher_run:  # a teacher run cannot be compared with itself
                suites = raw.get("eval", {}).get("suites")
                if isinstance(suites, list) and "teacher_agreement" in suites:
                    raw["eval"]["suites"] = [x for x in suites if x != "teacher_agreement"]
            return lm_only(validate(S.RunSpec, raw, prefix=f"{where}{ctx}"))
        except UserError as e:
            problems.extend(p for p in e.problems if p not in problems)
            return None

    base = apply_overrides({}, sweep.base, where=f"{where}base: ") if sweep.base else {}
    seeds = sweep.seeds
    base_train = base.get("train")
    if isinstance(base_train, dict) and base_train.get("seed") is not None:
        if "seeds" in sweep.model_fields_set:
            raise UserError(f"{where}base: train.seed: the sweep's seeds: sets it; remove one of the two")
        seeds = [base_train["seed"]]

    both = sorted(set(flatten_overrides(sweep.grid)) & set(flatten_overrides(sweep.zip)))
    if both:
        raise UserError(f"{where}{both[0]}: is an axis of both grid: and zip:; put it in one of them")
    configs = _configurations(sweep)
    varied = {p for overrides, _ in configs for p in flatten_overrides(overrides)}
    axis_paths = set(flatten_overrides(sweep.grid)) | set(flatten_overrides(sweep.zip))
    shared = sorted(p for p in axis_paths if not p.startswith(PD_ONLY))

    # Baselines: each configuration is compared with the LM-only run that shares its non-PD axis
    # values (student size, token budget, ...): one baseline per distinct combination.
    baselines: dict[str, tuple[S.RunSpec, str, dict[str, Any]] | None] = {}
    longer: list[tuple[S.RunSpec, str, dict[str, Any]]] = []  # `baseline_tokens`: the same at more budgets
    students: list[tuple[S.RunSpec, str, dict[str, Any], str | None]] = []
    for overrides, explicit_label in configs:
        flat = flatten_overrides(overrides)
        baseline_key = None
        if sweep.baseline is not None:
            key = {p: flat[p] for p in shared if p in flat}
            baseline_key = json.dumps(key, sort_keys=True, default=str)
            if baseline_key not in baselines:
                spec = build({**sweep.baseline, **key, "loss.alpha": 0.0}, "baseline: ")
                lab = "LM-only" + (f" ({label(spec, set(key))})" if spec and key else "")
                baselines[baseline_key] = (spec, lab, dict(sweep.baseline) | key) if spec else None
                for tokens in sweep.baseline_tokens:
                    if spec is None or tokens == spec.data.tokens:
                        continue
                    extra = build(
                        {**sweep.baseline, **key, "loss.alpha": 0.0, "data.tokens": tokens}, "baseline_tokens: "
                    )
                    if extra:
                        axes = dict(sweep.baseline) | key | {"data.tokens": tokens}
                        budget = f"{human(tokens)} tokens"
                        longer.append(
                            (extra, f"{lab.removesuffix(')')}, {budget})" if key else f"{lab} ({budget})", axes)
                        )
        spec = build(overrides, f"{_describe(overrides)}: " if overrides else "base: ")
        if spec is None:
            continue
        lab = label(spec, varied)
        if explicit_label:  # the run's own label, plus the grid/zip values it is combined with
            lab = " + ".join([explicit_label] + ([label(spec, axis_paths)] if axis_paths else []))
        students.append((spec, lab, dict(overrides), baseline_key))

    # Teacher runs: LM-only runs of base + their overrides; one seed (students share a teacher).
    # A teacher whose students read online logits records them while it trains: one store per
    # window, at the largest p and k its students need.
    records: dict[str, dict[tuple[float, float], tuple[float, int | None]]] = {}
    for spec, _, _, _ in students:
        t = spec.teacher
        if t is not None and t.kind == "run" and spec.uses_teacher and spec.logits.mode == "online":
            window = tuple(spec.logits.online_window)
            p, k = records.setdefault(t.ref, {}).get(window, (0.0, 1))  # type: ignore[arg-type]
            k_new = None if (k is None or spec.logits.top_k is None) else max(k, spec.logits.top_k)
            records[t.ref][window] = (max(p, spec.logits.top_p), k_new)  # type: ignore[index]
    teachers = []
    for name, overrides in sweep.teachers.items():
        record = [{"top_p": p, "top_k": k, "window": list(w)} for w, (p, k) in sorted(records.get(name, {}).items())]
        spec = build(
            {**overrides, "loss.alpha": 0.0, "teacher": None, **({"train.record_logits": record} if record else {})},
            f"teachers.{name}: ",
            teacher_run=True,
        )
        if spec:
            teachers.append(
                PlannedRun(
                    run_id(spec),
                    config_id(spec),
                    f"teacher:{name}",
                    "teacher",
                    spec,
                    spec.train.seed,
                    dict(overrides),
                    name,
                )
            )

    if sweep.search is not None:
        _check_search(sweep, build, problems, where)
    teacher_names = set(sweep.teachers)
    for spec, lab, _, _ in students:
        t = spec.teacher
        if t is not None and t.kind == "run" and t.ref not in teacher_names:
            known = ", ".join(sorted(teacher_names)) or "none defined"
            problems.append(f"{where}{lab}: teacher: run:{t.ref} is not in teachers: ({known})")
    if problems:
        raise UserError(list(dict.fromkeys(problems)))
    # A student's identity includes its teacher run's: a changed teacher makes new students.
    teacher_ids = {run.name: run.run_id for run in teachers if run.name}
    students = [(resolve_teacher(sp, teacher_ids), lab, ov, bk) for sp, lab, ov, bk in students]

    runs: dict[str, PlannedRun] = {}
    for run in teachers:
        runs.setdefault(run.run_id, run)
    for seed in seeds:
        baseline_ids: dict[str, str] = {}
        for bkey, entry in baselines.items():
            if entry is not None:
                spec, lab, axes = entry
                run = _planned(with_seed(spec, seed), lab, "baseline", seed, axes)
                runs.setdefault(run.run_id, run)  # identical runs merge; the first role wins
                baseline_ids[bkey] = run.config_id
        for spec, lab, axes in longer:
            run = _planned(with_seed(spec, seed), lab, "baseline", seed, axes)
            runs.setdefault(run.run_id, run)
        for spec, lab, axes, skey in students:
            run = _planned(with_seed(spec, seed), lab, "student", seed, axes, baseline_ids.get(skey) if skey else None)
            runs.setdefault(run.run_id, run)
    return _disambiguate(list(runs.values()))


def _check_search(sweep: Sweep, build: Any, problems: list[str], where: str) -> None:
    """Every searched path is a RunSpec path, every `when` names a parameter drawn before it, and
    the ends of every range (each choice) make a valid run — so `validate` catches what would
    otherwise fail as a trial."""
    assert sweep.search is not None
    earlier: list[str] = []
    for path, param in sweep.search.params.items():
        ctx = f"search.params.{path}: "
        try:
            check_path(path, f"{where}search.params: ")
        except UserError as e:
            problems.extend(e.problems)
            earlier.append(path)
            continue
        unknown = [k for k in param.when if k not in earlier]
        if unknown:
            problems.append(f"{where}{ctx}when: {unknown[0]} is not a parameter listed before {path}")
        conditions = {k: v for k, v in param.when.items() if k not in unknown}
        values = param.choices if param.type == "categorical" else [param.low, param.high]
        for value in values or []:
            if param.type == "int" and value is not None:
                value = int(value)
            build({**conditions, path: value}, f"{ctx}{value!r}: ")
        earlier.append(path)


def resolve_teacher(spec: S.RunSpec, teacher_ids: dict[str, str]) -> S.RunSpec:
    """`spec` with its `run:NAME` teacher pinned to that teacher run's id (`teacher.run_id`)."""
    t = spec.teacher
    if t is None or t.kind != "run" or not spec.uses_teacher:
        return spec
    return spec.model_copy(update={"teacher": t.model_copy(update={"run_id": teacher_ids[t.ref]})})


def with_seed(spec: S.RunSpec, seed: int) -> S.RunSpec:
    """The same run with another `train.seed` (seeds are validated by the Sweep model)."""
    return spec.model_copy(update={"train": spec.train.model_copy(update={"seed": seed})})


def _planned(
    spec: S.RunSpec, lab: str, role: Role, seed: int, axes: dict[str, Any], baseline: str | None = None
) -> PlannedRun:
    return PlannedRun(run_id(spec), config_id(spec), lab, role, spec, seed, axes, baseline=baseline)


def _describe(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in flatten_overrides(overrides).items())


def _disambiguate(runs: list[PlannedRun]) -> list[PlannedRun]:
    """Distinct configurations never share a label: append the config_id where they would."""
    by_label: dict[str, set[str]] = {}
    for r in runs:
        by_label.setdefault(r.label, set()).add(r.config_id)
    return [
        r if len(by_label[r.label]) == 1 or r.role == "baseline" else _relabel(r, f"{r.label} [{r.config_id[:6]}]")
        for r in runs
    ]


def _relabel(run: PlannedRun, new: str) -> PlannedRun:
    return dataclasses.replace(run, label=new)
