"""Sweep expansion: a pure function, checked table by table."""

from __future__ import annotations

import pytest

from pdsweep import spec as S
from pdsweep.errors import UserError
from pdsweep.spec import expand
from pdsweep.spec.sweep import Sweep
from tests.conftest import ROOT

BASE = {"student": "tiny-xs", "teacher": "hf:/models/teacher", "loss": {"alpha": 1.0}}


def sweep(**kw) -> Sweep:
    return Sweep.model_validate({"name": "t", "base": BASE} | kw)


def students(runs: list[expand.PlannedRun]) -> list[expand.PlannedRun]:
    return [r for r in runs if r.role == "student"]


@pytest.mark.parametrize(
    ("axes", "n_configs"),
    [
        ({}, 1),
        ({"grid": {"logits.top_p": [0.5, 0.9]}}, 2),
        ({"grid": {"logits.top_p": [0.5, 0.9], "logits.top_k": [10, 50, 100]}}, 6),
        ({"zip": {"logits.top_p": [0.5, 0.9, 0.95], "logits.top_k": [10, 50, 100]}}, 3),
        (
            {
                "grid": {"loss.kd": ["nll", "kld"]},
                "zip": {"logits.top_p": [0.5, 0.9], "logits.top_k": [10, 50]},
            },
            4,
        ),
        ({"runs": [{"loss.kd": "kld"}, {"loss.kd": "mse"}, {"logits.temperature": 2.0}]}, 3),
        (
            {
                "grid": {"logits.temperature": [1.0, 2.0]},
                "runs": [{"loss.kd": "kld"}, {"loss.kd": "mse"}],
            },
            4,
        ),
    ],
)
@pytest.mark.parametrize("seeds", [1, 3])
def test_counts(axes: dict, n_configs: int, seeds: int) -> None:
    runs = expand.expand(sweep(seeds=seeds, **axes))
    assert len(students(runs)) == n_configs * seeds
    assert sum(r.role == "baseline" for r in runs) == seeds
    assert len({r.run_id for r in runs}) == len(runs)
    assert sorted({r.seed for r in runs}) == list(range(seeds))


def test_grid_is_cartesian_and_zip_is_parallel() -> None:
    g = students(expand.expand(sweep(grid={"logits.top_p": [0.5, 0.9], "logits.top_k": [10, 50]})))
    assert {(r.spec.logits.top_p, r.spec.logits.top_k) for r in g} == {
        (0.5, 10),
        (0.5, 50),
        (0.9, 10),
        (0.9, 50),
    }
    z = students(expand.expand(sweep(zip={"logits.top_p": [0.5, 0.9], "logits.top_k": [10, 50]})))
    assert [(r.spec.logits.top_p, r.spec.logits.top_k) for r in z] == [(0.5, 10), (0.9, 50)]


def test_baseline_is_lm_only_and_ignores_pd_settings() -> None:
    runs = expand.expand(sweep(grid={"logits.temperature": [0.5, 2.0]}))
    (baseline,) = [r for r in runs if r.role == "baseline"]
    assert not baseline.spec.uses_teacher and baseline.spec.teacher is None
    assert baseline.label == "LM-only"
    # Changing PD-only settings of the base does not change the baseline's identity.
    other = expand.expand(
        Sweep.model_validate(
            {
                "name": "t",
                "base": BASE | {"logits": {"top_p": 0.5}, "loss": {"alpha": 0.3, "kd": "mse"}},
            }
        )
    )
    assert [r.run_id for r in other if r.role == "baseline"] == [baseline.run_id]
    assert all(r.baseline == baseline.config_id for r in students(runs))


def test_baseline_overrides_apply_and_null_disables_it() -> None:
    runs = expand.expand(sweep(baseline={"optim.lr": 0.01}))
    (b,) = [r for r in runs if r.role == "baseline"]
    assert b.spec.optim.lr == 0.01 and b.spec.loss.alpha == S.ConstantAlpha(value=0.0)
    assert not [r for r in expand.expand(sweep(baseline=None)) if r.role == "baseline"]


def test_each_student_size_gets_its_own_baseline() -> None:
    runs = expand.expand(sweep(grid={"student.preset": ["tiny-xs", "tiny-s"], "loss.kd": ["nll", "kld"]}, seeds=2))
    baselines = {r.config_id: r for r in runs if r.role == "baseline"}
    assert len(baselines) == 2 and sum(r.role == "baseline" for r in runs) == 4
    for r in students(runs):
        assert baselines[r.baseline].spec.student == r.spec.student
    assert {b.label for b in baselines.values()} == {"LM-only (tiny-xs)", "LM-only (tiny-s)"}


def test_identical_runs_merge() -> None:
    # α = 0 in the grid is the baseline itself (the paper's Table 10 row "α = 0" equals LLM-LM).
    runs = expand.expand(sweep(grid={"loss.alpha": [0.0, 0.5]}))
    assert len(runs) == 2
    assert {r.role for r in runs} == {"baseline", "student"}
    # Two explicit runs that resolve to the same spec are one run.
    runs = expand.expand(sweep(runs=[{"loss.kd": "kld"}, {"loss": {"kd": "kld"}}]))
    assert len(students(runs)) == 1


def test_run_id_is_a_function_of_the_resolved_spec() -> None:
    a = expand.expand(sweep(grid={"logits.top_k": [50]}))
    b = expand.expand(Sweep.model_validate({"name": "other-name", "base": BASE | {"logits": {"top_k": 50}}}))
    assert {r.run_id for r in a} == {r.run_id for r in b}
    c = expand.expand(sweep(grid={"logits.top_k": [51]}))
    assert students(a)[0].run_id != students(c)[0].run_id
    # Seeds change run_id but not config_id.
    s = students(expand.expand(sweep(seeds=2)))
    assert s[0].run_id != s[1].run_id and s[0].config_id == s[1].config_id


@pytest.mark.parametrize(
    ("axes", "expected"),
    [
        ({"zip": {"logits.top_p": [0.95], "logits.top_k": [50]}}, "top-0.95-50"),
        ({"grid": {"logits.temperature": [2.0]}}, "τ = 2.0"),
        ({"grid": {"loss.alpha": [0.9]}}, "α = 0.9"),
        ({"grid": {"loss.kd": ["kld"]}}, "KLD"),
        ({"grid": {"logits.adaptive": ["adakd_h"]}}, "AdaKD-H"),
        (
            {"runs": [{"loss.alpha": {"kind": "wsd_alpha"}, "optim.lr_schedule": "wsd"}]},
            "WSD-α + WSD-LR",
        ),
        ({"runs": [{"loss.alpha": "linear_dec"}]}, "Linear Dec"),
        ({"grid": {"student.preset": ["1.9b"]}}, "1.9B"),
        ({"grid": {"optim.lr": [0.01]}}, "optim.lr=0.01"),
        ({"runs": [{"label": "PD*", "loss.kd": "kld"}]}, "PD*"),
        (
            {"grid": {"student.preset": ["tiny-s"]}, "runs": [{"label": "PD*", "loss.kd": "kld"}]},
            "PD* + tiny-s",
        ),
    ],
)
def test_labels_follow_the_paper(axes: dict, expected: str) -> None:
    (run,) = students(expand.expand(sweep(**axes)))
    assert run.label == expected


def test_nested_and_dotted_overrides_are_the_same() -> None:
    a = expand.expand(sweep(runs=[{"logits": {"top_p": 0.9, "temperature": 2.0}}]))
    b = expand.expand(sweep(runs=[{"logits.top_p": 0.9, "logits.temperature": 2.0}]))
    assert [r.run_id for r in a] == [r.run_id for r in b]


def test_overrides_through_shorthands() -> None:
    # base says `student: tiny-xs`; an axis may still set student.num_layers.
    (run,) = students(expand.expand(sweep(grid={"student.num_layers": [3]})))
    assert (run.spec.student.preset, run.spec.student.num_layers) == ("tiny-xs", 3)
    # base says `alpha: 1.0`; an axis switches the schedule kind without leftover fields.
    (run,) = students(expand.expand(sweep(grid={"loss.alpha": [{"kind": "wsd_alpha", "max": 0.8}]})))
    assert run.spec.loss.alpha == S.WsdAlpha(max=0.8)


def test_teacher_runs_are_lm_only_and_referenced() -> None:
    runs = expand.expand(
        Sweep.model_validate(
            {
                "name": "t",
                "base": BASE | {"teacher": "run:big"},
                "teachers": {"big": {"student": "tiny-m"}},
                "seeds": 2,
            }
        )
    )
    (teacher,) = [r for r in runs if r.role == "teacher"]
    assert teacher.name == "big" and teacher.spec.student.preset == "tiny-m" and not teacher.spec.uses_teacher
    assert all(r.spec.teacher.source == "run:big" for r in students(runs))


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        (
            {"grid": {"logits.top_pp": [0.5]}},
            "logits.top_pp: unknown RunSpec path (did you mean logits.top_p",
        ),
        ({"grid": {"temperature": [0.5]}}, "did you mean logits.temperature"),
        ({"grid": {"logits.top_p": []}}, "grid: logits.top_p: must not be empty"),
        ({"grid": {"logits.top_p": 0.5}}, "grid: logits.top_p: must be a list of values"),
        (
            {"zip": {"logits.top_p": [0.5, 0.9], "logits.top_k": [10]}},
            "zip: lists must have equal length: logits.top_p has 2, logits.top_k has 1",
        ),
        (
            {"grid": {"logits.top_p": [0.5, 1.5]}},
            "logits.top_p=1.5: logits.top_p: must be ≤ 1, got 1.5",
        ),
        (
            {"base": BASE | {"teacher": "run:nope"}},
            "teacher: run:nope is not in teachers: (none defined)",
        ),
        ({"seeds": [1, 1]}, "seeds: seeds must be distinct"),
        ({"seeds": 0}, "seeds: must be ≥ 1, got 0"),
        ({"grid": {"loss.alpha.value.x": [1]}}, "unknown RunSpec path"),
        ({"name": "x" * 101}, "name: string should have at most 100 characters"),
        (
            {"grid": {"loss.alpha": [0.1]}, "zip": {"loss.alpha": [0.2]}},
            "loss.alpha: is an axis of both grid: and zip:",
        ),
        ({"base": BASE | {"loss.alpha": 0.5}}, "base: loss.alpha: given twice"),
        ({"base": BASE | {"optim.weight_decay": float("inf")}}, "optim.weight_decay: input should be a finite number"),
        ({"grid": {"logits.temperature": [float("inf")]}}, "logits.temperature: input should be a finite number"),
        ({"search": {"params": {}}}, "search.params: must have at least 1 item(s), got {}"),
        (
            {"search": {"params": {"optim.lrr": {"type": "float", "low": 0.001, "high": 0.01}}}},
            "search.params: optim.lrr: unknown RunSpec path (did you mean optim.lr",
        ),
        (
            {"search": {"params": {"loss.alpha": {"type": "float", "low": 0.1, "high": 1.5}}}},
            "search.params.loss.alpha: 1.5: loss.alpha.value: must be ≤ 1, got 1.5",
        ),
        (
            {"search": {"params": {"optim.lr": {"type": "float", "low": 0.001, "high": 0.01, "step": 0}}}},
            "search.params.optim.lr: step must be > 0, got 0",
        ),
        (
            {"search": {"params": {"optim.lr": {"type": "float", "low": 0.001, "high": 0.01, "step": -1}}}},
            "step must be > 0, got -1",
        ),
        (
            {
                "search": {
                    "params": {"optim.lr": {"type": "float", "low": 0.001, "high": 0.01, "step": 0.001, "log": True}}
                }
            },
            "step and log cannot both be set",
        ),
        (
            {"search": {"params": {"loss.alpha.max": {"type": "float", "low": 0.1, "high": 0.9, "when": {"x": 1}}}}},
            "search.params.loss.alpha.max: when: x is not a parameter listed before loss.alpha.max",
        ),
    ],
)
def test_bad_sweeps_name_file_and_field(kw: dict, expected: str, write_yaml) -> None:
    import yaml

    path = write_yaml(yaml.safe_dump({"name": "t", "base": BASE} | kw, allow_unicode=True, sort_keys=False))
    with pytest.raises(UserError) as err:
        expand.expand(expand.load_sweep(path), str(path))
    assert any(expected in p for p in err.value.problems), err.value.problems
    assert all(p.startswith(f"{path}: ") for p in err.value.problems)


def test_yaml_that_cannot_be_a_spec_is_one_quick_line(write_yaml) -> None:
    """An alias bomb (9⁹ leaves if expanded) is refused at once, each message cut while rendered; a
    mapping used as a key is a YAML error with its line."""
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(7)
    ]
    bomb = write_yaml("name: bomb\n" + "\n".join(levels) + "\nseeds: [" + ", ".join(["*h"] * 9) + "]\n")
    with pytest.raises(UserError) as err:  # rendering the first item in full never ended
        expand.load_sweep(bomb)
    seeds = [p for p in err.value.problems if ": seeds[" in p]
    assert seeds and all("input should be a valid integer, got [[[" in p for p in seeds)
    assert all(len(p.split(", got ", 1)[1]) <= 60 for p in seeds)  # the value, cut
    key = write_yaml("name: k\nbase:\n  {a: 1}: 2\n", "key.yaml")
    with pytest.raises(UserError, match=r"key.yaml:3:3: invalid YAML: a mapping cannot be a key"):
        expand.load_sweep(key)


def test_a_seed_in_base_is_the_sweeps_only_seed() -> None:
    runs = expand.expand(Sweep.model_validate({"name": "t", "base": BASE | {"train": {"seed": 7}}}))
    assert {r.seed for r in runs} == {7} and {r.spec.train.seed for r in runs} == {7}


def test_online_students_make_their_teacher_run_record_logits() -> None:
    runs = expand.expand(
        Sweep.model_validate(
            {
                "name": "t",
                "base": BASE | {"teacher": "run:big"},
                "teachers": {"big": {"student": "tiny-m"}},
                "runs": [
                    {"logits.mode": "online", "logits.online_window": [0.0, 0.2], "logits.top_k": 50},
                    {"logits.mode": "online", "logits.online_window": [0.8, 1.0], "logits.top_k": 20},
                    {
                        "logits.mode": "online",
                        "logits.online_window": [0.8, 1.0],
                        "logits.top_p": 0.5,
                        "logits.top_k": 80,
                    },
                    {"logits.top_k": 10},
                ],
            }
        )
    )
    (teacher,) = [r for r in runs if r.role == "teacher"]
    records = {(r.window, r.top_p, r.top_k) for r in teacher.spec.train.record_logits}
    # One store per window, at the largest p and k that window's students read; offline runs add none.
    assert records == {((0.0, 0.2), 0.95, 50), ((0.8, 1.0), 0.95, 80)}
    assert not teacher.spec.uses_teacher


def test_run_ids_stay_what_they_were(tmp_path) -> None:
    """A run id is the hash of the written spec: a refactor that changes how a spec is written would
    re-run every done run of every user's sweep. The teacher union is written as {source, batch_size,
    run_id}, as before it was a union."""
    # The quickstart as it was when these ids were pinned (1M-token teacher, 300k-token students).
    text = (ROOT / "sweeps" / "quickstart.yaml").read_text()
    text = text.replace("tokens: 200000}", "tokens: 300000}").replace("data.tokens: 600000", "data.tokens: 1000000")
    (tmp_path / "quickstart.yaml").write_text(text)
    sweep = expand.load_sweep(tmp_path / "quickstart.yaml")
    runs = expand.expand(sweep, "sweeps/quickstart.yaml")
    # Seed 0 runs keep their ids; seed 1's batch order is now train.data_seed's (0), not its seed's:
    # its batches changed, and so did its id — unless the order follows the seed, as it did before.
    assert [r.run_id for r in runs[:3]] == ["b0fa2a1c2904", "c97a2b34021c", "4afaaa1053d9"]
    assert runs[3].spec.train.seed == 1 and runs[3].run_id != "76691483e50e"
    follows = sweep.model_copy(update={"base": {**sweep.base, "train.data_seed": "seed"}})
    assert expand.expand(follows, "sweeps/quickstart.yaml")[3].run_id == "76691483e50e"
    student = next(r for r in runs if r.role == "student")
    assert student.spec.model_dump(mode="json")["teacher"] == {
        "source": "run:teacher",
        "batch_size": 8,
        "run_id": "b0fa2a1c2904",
    }
