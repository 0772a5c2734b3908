"""LR and α schedules: properties that must hold for every schedule and every length."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pdsweep import spec as S
from pdsweep.nn.schedules import alpha_at, decay_shape, lr_at

fraction = st.floats(min_value=0.0, max_value=1.0)
totals = st.integers(min_value=2, max_value=5000)
shapes = st.sampled_from(["linear", "cosine", "exp", "sqrt"])


@st.composite
def lr_schedules(draw):
    if draw(st.booleans()):
        return S.CosineLR(warmup=draw(st.floats(0, 0.5)), min_lr_ratio=draw(fraction))
    w = draw(st.floats(0, 0.5))
    return S.WsdLR(
        warmup=w,
        decay=draw(st.floats(0, 1 - w)),
        decay_shape=draw(shapes),
        min_lr_ratio=draw(fraction),
    )


@st.composite
def alpha_schedules(draw):
    kind = draw(st.sampled_from(["constant", "linear_inc", "linear_dec", "period", "wsd_alpha", "wsd_beta"]))
    a, b = sorted((draw(fraction), draw(fraction)))
    if kind == "constant":
        return S.ConstantAlpha(value=a)
    if kind == "linear_inc":
        return S.LinearIncAlpha(start=a, end=b)
    if kind == "linear_dec":
        return S.LinearDecAlpha(start=b, end=a)
    if kind == "period":
        return S.PeriodAlpha(min=a, max=b, period=draw(st.floats(0.01, 1)))
    w = draw(st.floats(0, 0.5))
    d = draw(st.floats(0, 1 - w))
    cls = S.WsdAlpha if kind == "wsd_alpha" else S.WsdBeta
    return cls(min=a, max=b, warmup=w, decay=d, decay_shape=draw(shapes))


@given(lr_schedules(), totals, st.data())
def test_lr_is_in_range_and_ends_at_its_floor(schedule, total, data) -> None:
    step = data.draw(st.integers(0, total - 1))
    lr = lr_at(step, total, schedule)
    assert 0 < lr <= 1.0 + 1e-12 or (lr == 0 and schedule.min_lr_ratio == 0)
    if step >= round(schedule.warmup * total):  # after warmup, never below the floor
        assert lr >= schedule.min_lr_ratio - 1e-12
    decays = schedule.kind == "cosine" or round(schedule.decay * total) > 0
    if decays and total - 1 >= round(schedule.warmup * total):
        assert lr_at(total - 1, total, schedule) == pytest.approx(schedule.min_lr_ratio)


@given(lr_schedules(), totals)
def test_lr_warms_up_linearly_then_never_increases(schedule, total) -> None:
    values = [lr_at(s, total, schedule) for s in range(total)]
    warmup = round(schedule.warmup * total)
    assert all(values[i] < values[i + 1] for i in range(warmup - 1))
    if warmup:
        assert values[warmup - 1] == pytest.approx(1.0)
    after = values[warmup:]
    assert all(after[i] >= after[i + 1] - 1e-12 for i in range(len(after) - 1))


@given(totals)
def test_wsd_lr_has_three_phases(total) -> None:
    schedule = S.WsdLR(warmup=0.1, decay=0.2)
    warmup, decay = round(0.1 * total), round(0.2 * total)
    stable = [lr_at(s, total, schedule) for s in range(warmup, total - decay)]
    assert all(v == 1.0 for v in stable)


@given(alpha_schedules(), totals, st.data())
def test_alpha_is_in_unit_interval(schedule, total, data) -> None:
    step = data.draw(st.integers(0, total - 1))
    assert 0.0 <= alpha_at(step, total, schedule) <= 1.0


@given(fraction, fraction, totals)
def test_linear_schedules_hit_their_endpoints_and_are_monotone(a, b, total) -> None:
    lo, hi = sorted((a, b))
    inc, dec = S.LinearIncAlpha(start=lo, end=hi), S.LinearDecAlpha(start=hi, end=lo)
    assert alpha_at(0, total, inc) == pytest.approx(lo) and alpha_at(total - 1, total, inc) == pytest.approx(hi)
    assert alpha_at(0, total, dec) == pytest.approx(hi) and alpha_at(total - 1, total, dec) == pytest.approx(lo)
    inc_values = [alpha_at(s, total, inc) for s in range(0, total, max(1, total // 50))]
    assert inc_values == sorted(inc_values)


@given(st.floats(0.05, 0.4), st.floats(0.05, 0.4), fraction, shapes)
def test_wsd_alpha_phases(warmup, decay, top, shape) -> None:
    total = 1001
    schedule = S.WsdAlpha(max=top, min=0.0, warmup=warmup, decay=decay, decay_shape=shape)
    assert alpha_at(0, total, schedule) == pytest.approx(0.0)
    assert alpha_at(total - 1, total, schedule) == pytest.approx(0.0, abs=1e-9)
    middle = int(total * (warmup + (1 - decay)) / 2)  # inside the stable phase
    assert alpha_at(middle, total, schedule) == pytest.approx(top)
    beta = S.WsdBeta(max=top, min=0.0, warmup=warmup, decay=decay, decay_shape=shape)
    assert alpha_at(middle, total, beta) == pytest.approx(1 - top)
    assert alpha_at(0, total, beta) == pytest.approx(1.0)


def test_wsd_alpha_phases_default_to_the_lr_schedule() -> None:
    total = 1000
    alpha = S.WsdAlpha(max=0.9)  # warmup/decay unset
    lr = S.WsdLR(warmup=0.05, decay=0.3)
    # 70% of the way in, the WSD LR is decaying and so is α; with a cosine LR, α's decay is 10%.
    assert alpha_at(750, total, alpha, lr) < 0.9
    assert alpha_at(750, total, alpha, S.CosineLR(warmup=0.05)) == pytest.approx(0.9)
    assert alpha_at(10, total, alpha, lr) < 0.9  # inside the 5% warmup


def test_period_cycles() -> None:
    schedule = S.PeriodAlpha(min=0.2, max=0.8, period=0.5)
    total = 101
    assert alpha_at(0, total, schedule) == pytest.approx(0.8)
    assert alpha_at(25, total, schedule) == pytest.approx(0.2)  # half a period
    assert alpha_at(50, total, schedule) == pytest.approx(0.8)  # one full period


@pytest.mark.parametrize("shape", ["linear", "cosine", "exp", "sqrt"])
def test_decay_shapes(shape) -> None:
    xs = [i / 100 for i in range(101)]
    ys = [decay_shape(x, shape) for x in xs]
    assert ys[0] == pytest.approx(1.0) and ys[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(ys[i] >= ys[i + 1] for i in range(100))
    assert not any(math.isnan(y) for y in ys)


def test_bad_steps_are_refused() -> None:
    with pytest.raises(ValueError):
        lr_at(10, 10, S.CosineLR())
    with pytest.raises(ValueError):
        alpha_at(-1, 10, S.ConstantAlpha())
