"""The design-space models: presets, shorthands, constraints and cross-field rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pdsweep import spec as S
from pdsweep.errors import UserError
from pdsweep.spec.load import validate
from pdsweep.spec.sweep import Sweep

# The paper's Table 7 and the sizes its names promise (with GLM-4's 151,552-token vocabulary).
TABLE_7 = {
    "330m": (1024, 4096, 12, 16, 2, True, 330e6),
    "670m": (1024, 4096, 24, 16, 2, False, 670e6),
    "1.9b": (2048, 6912, 24, 16, 2, False, 1.9e9),
    "3.8b": (3072, 8192, 28, 24, 8, False, 3.8e9),
    "6.8b": (4096, 12800, 28, 32, 8, False, 6.8e9),
}


@pytest.mark.parametrize("preset", list(TABLE_7))
def test_paper_presets_match_table_7(preset: str) -> None:
    h, f, layers, heads, groups, tie, size = TABLE_7[preset]
    m = S.ModelSpec(preset=preset)
    assert (
        m.hidden_size,
        m.ffn_hidden_size,
        m.num_layers,
        m.num_heads,
        m.num_kv_groups,
        m.tie_embeddings,
    ) == (h, f, layers, heads, groups, tie)
    assert m.num_params(151_552) == pytest.approx(size, rel=0.03)


def test_tiny_l_is_about_20m_parameters() -> None:
    assert S.ModelSpec(preset="tiny-l").num_params(8192) == pytest.approx(20e6, rel=0.2)


def test_explicit_dimensions_override_the_preset() -> None:
    m = S.ModelSpec(preset="tiny-s", num_layers=7)
    assert (m.num_layers, m.hidden_size) == (7, 128)


def test_custom_preset_needs_dimensions() -> None:
    with pytest.raises(UserError, match="custom' needs"):
        validate(S.ModelSpec, {"preset": "custom", "hidden_size": 64})


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"student": {"hidden_size": 96, "num_heads": 5}},
            "num_heads (5) must divide hidden_size (96)",
        ),
        (
            {"student": {"num_heads": 4, "num_kv_groups": 3}},
            "num_kv_groups (3) must divide num_heads (4)",
        ),
        ({"logits": {"top_p": 1.5}}, "logits.top_p: must be ≤ 1, got 1.5"),
        ({"logits": {"top_p": 0}}, "logits.top_p: must be > 0, got 0"),
        ({"logits": {"top_k": 0}}, "logits.top_k: must be ≥ 1, got 0"),
        ({"logits": {"temperature": 0}}, "logits.temperature: must be > 0, got 0"),
        ({"loss": {"alpha": 1.2}, "teacher": "hf:/t"}, "loss.alpha.value: must be ≤ 1, got 1.2"),
        (
            {
                "loss": {"alpha": {"kind": "wsd_alpha", "warmup": 0.6, "decay": 0.6}},
                "teacher": "hf:/t",
            },
            "warmup + decay = 1.2 must be ≤ 1",
        ),
        (
            {"optim": {"lr_schedule": {"kind": "wsd", "warmup": 1.5}}},
            "optim.lr_schedule.warmup: must be ≤ 1, got 1.5",
        ),
        (
            {"train": {"global_batch": 10, "micro_batch": 4}},
            "micro_batch (4) must divide global_batch (10)",
        ),
        ({"loss": {"alpha": 0.5}}, "teacher is required"),
        (
            {"teacher": "http://x", "loss": {"alpha": 0.5}},
            "teacher: must look like run:NAME",
        ),
        ({"teacher": "builtin:gpt5"}, "unknown builtin teacher 'gpt5'"),
        (
            {"data": {"tokenizer": "teacher"}, "loss": {"alpha": 0}},
            "data.tokenizer 'teacher' needs an hf: or builtin: teacher",
        ),
        (
            {"logits": {"mode": "online"}, "teacher": "hf:/t", "loss": {"alpha": 1.0}},
            "logits.mode online needs a teacher run",
        ),
        ({"logits": {"online_window": [0.5, 0.2]}}, "logits.online_window: must be [start, end]"),
        (
            {
                "loss": {"alpha": {"kind": "linear_inc", "start": 0.8, "end": 0.2}},
                "teacher": "hf:/t",
            },
            "end (0.2) must be ≥ start (0.8)",
        ),
        ({"logits": {"top_pp": 0.9}}, "logits.top_pp: unknown key (did you mean top_p"),
        ({"loss": {"alpha": {"kind": "cosine"}}}, "loss.alpha: kind must be one of"),
        ({"student": "7b"}, "student.preset: must be one of"),
        ({"data": {"corpus": "wikipedia"}}, "data.corpus: must be shakespeare or debian-docs"),
        ({"optim": {"betas": [0.9, 1.0]}}, "both betas must be in [0, 1)"),
    ],
)
def test_invalid_runspecs_name_the_field(data: dict, expected: str) -> None:
    data = {"loss": {"alpha": 0.0}} | data
    with pytest.raises(UserError) as err:
        validate(S.RunSpec, data, prefix="run.yaml: ")
    assert any(expected in p for p in err.value.problems), err.value.problems
    assert all(p.startswith("run.yaml: ") for p in err.value.problems)


def test_unknown_preset_is_one_problem_not_many() -> None:
    with pytest.raises(UserError) as err:
        validate(S.RunSpec, {"student": {"preset": "7b"}, "loss": {"alpha": 0}})
    assert len(err.value.problems) == 1


def test_shorthands_mean_their_mappings() -> None:
    short = S.RunSpec(
        student="tiny-m",
        teacher="hf:/t",
        loss={"alpha": 0.9},
        optim={"lr_schedule": "wsd"},
        logits={"adaptive": "normkd"},
    )
    long = S.RunSpec(
        student={"preset": "tiny-m"},
        teacher={"source": "hf:/t"},
        loss={"alpha": {"kind": "constant", "value": 0.9}},
        optim={"lr_schedule": {"kind": "wsd"}},
        logits={"adaptive": {"kind": "normkd"}},
    )
    assert short == long


def test_specs_are_frozen() -> None:
    spec = S.RunSpec(loss={"alpha": 0})
    with pytest.raises(Exception, match="frozen"):
        spec.train.seed = 3  # type: ignore[misc]


def test_every_field_has_a_docstring() -> None:
    undocumented = []

    def walk(model: type, prefix: str) -> None:
        for name, info in model.model_fields.items():
            if name != "kind" and not info.description:
                undocumented.append(f"{prefix}{name}")
            for sub in _models(info.annotation):
                walk(sub, f"{prefix}{name}.")

    from pdsweep.spec.load import models_in as _models

    walk(Sweep, "sweep.")
    walk(S.RunSpec, "")
    assert not undocumented


@given(st.floats(min_value=0, max_value=1), st.floats(min_value=0, max_value=1))
def test_uses_teacher_is_false_exactly_when_alpha_is_identically_zero(a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    inc = S.RunSpec(teacher="hf:/t", loss={"alpha": {"kind": "linear_inc", "start": lo, "end": hi}})
    assert inc.uses_teacher == (hi > 0)
    const = S.RunSpec(teacher="hf:/t", loss={"alpha": a}) if a > 0 else S.RunSpec(loss={"alpha": a})
    assert const.uses_teacher == (a > 0)


def test_steps_derive_from_the_token_budget() -> None:
    spec = S.RunSpec(
        loss={"alpha": 0},
        data={"tokens": 1_000_000, "seq_len": 128},
        train={"global_batch": 16, "micro_batch": 8},
    )
    assert spec.steps() == 1_000_000 // (16 * 128)


def test_labels_of_truncation() -> None:
    assert S.LogitsSpec(top_p=0.95, top_k=50).label == "top-0.95-50"
    assert S.LogitsSpec(top_p=0.9, top_k=None).label == "top-0.9-inf"
    assert S.LogitsSpec(top_p=1.0, top_k=20).label == "top-1.0-20"
