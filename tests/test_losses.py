"""KD losses: exact against dense torch references, chunked = unchunked, properties, temperatures."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pdsweep.logits import truncation
from pdsweep.nn import losses
from pdsweep.nn.losses import KDConfig
from pdsweep.spec import WTTM, AdaKDH, AdaKDSD, NoAdaptive, NormKD

V = 37


def dense_teacher(t_logits: torch.Tensor):
    """All V entries kept (p = 1, k = V), as the store hands them over."""
    s = truncation.top_p_k(t_logits, 1.0, V)
    return s.ids, s.logprobs, torch.isfinite(s.logprobs)


def pair(seed: int = 0, n: int = 6, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, V, generator=g) * scale).requires_grad_(True), torch.randn(n, V, generator=g) * scale


def check(ours: torch.Tensor, ref: torch.Tensor, leaf: torch.Tensor) -> None:
    (g1,) = torch.autograd.grad(ours, leaf, retain_graph=True)
    (g2,) = torch.autograd.grad(ref, leaf)
    assert torch.allclose(ours, ref, atol=1e-5), (float(ours), float(ref))
    assert torch.allclose(g1, g2, atol=1e-5)


@pytest.mark.parametrize("tau", [1.0, 2.0, 0.5])
def test_nll_and_kld_equal_dense_references(tau) -> None:
    s, t = pair()
    ids, lp, mask = dense_teacher(t)
    q = torch.softmax(t / tau, -1)
    nll, _ = losses.kd_loss(s, ids, lp, mask, KDConfig("nll", temperature=tau))
    check(nll, F.cross_entropy(s, q), s)
    kld, _ = losses.kd_loss(s, ids, lp, mask, KDConfig("kld", temperature=tau))
    check(kld, F.kl_div(F.log_softmax(s, -1), q, reduction="batchmean"), s)


@pytest.mark.parametrize("space", ["logprob", "prob", "logit"])
def test_mse_equals_dense_reference(space) -> None:
    s, t = pair(1)
    ids, lp, mask = dense_teacher(t)
    ours, _ = losses.kd_loss(s, ids, lp, mask, KDConfig("mse", mse_space=space))
    if space == "logprob":
        ref = F.mse_loss(F.log_softmax(s, -1), F.log_softmax(t, -1))
    elif space == "prob":
        ref = F.mse_loss(F.softmax(s, -1), F.softmax(t, -1))
    else:
        ref = F.mse_loss(s - s.mean(-1, keepdim=True), t - t.mean(-1, keepdim=True))
    check(ours, ref, s)


def test_reverse_kl_and_jsd_equal_dense_references() -> None:
    s, t = pair(2)
    ids, lp, mask = dense_teacher(t)
    logp, logq = F.log_softmax(s, -1), F.log_softmax(t, -1)
    rkl, _ = losses.kd_loss(s, ids, lp, mask, KDConfig("rkl"))
    check(rkl, F.kl_div(logq, logp, reduction="batchmean", log_target=True), s)
    logp = F.log_softmax(s, -1)  # a fresh graph for the second reference
    m = 0.5 * (logp.exp() + logq.exp())
    jsd_ref = 0.5 * F.kl_div(m.log(), logq, reduction="batchmean", log_target=True) + 0.5 * F.kl_div(
        m.log(), logp, reduction="batchmean", log_target=True
    )
    jsd, _ = losses.kd_loss(s, ids, lp, mask, KDConfig("jsd"))
    check(jsd, jsd_ref, s)


def test_hinton_mode_scales_by_tau_squared() -> None:
    s, t = pair(3)
    ids, lp, mask = dense_teacher(t)
    tau = 2.5
    ours, _ = losses.kd_loss(s, ids, lp, mask, KDConfig("kld", temperature=tau, temperature_on="both"))
    ref = tau**2 * F.kl_div(F.log_softmax(s / tau, -1), F.softmax(t / tau, -1), reduction="batchmean")
    check(ours, ref, s)


def test_residual_bucket() -> None:
    s, t = pair(4)
    kept = truncation.top_p_k(t, 0.7, V)
    mask = torch.isfinite(kept.logprobs)
    ours, _ = losses.kd_loss(s, kept.ids, kept.logprobs, mask, KDConfig("kld", renormalize=False))
    # Reference: the teacher's true probabilities on the kept ids + one bucket for the rest, same for the student.
    p_t, p_s = torch.softmax(t, -1), torch.softmax(s, -1)
    rows = []
    for i in range(s.shape[0]):
        k = kept.ids[i][mask[i]]
        qt = torch.cat([p_t[i, k], 1 - p_t[i, k].sum()[None]])
        qs = torch.cat([p_s[i, k], 1 - p_s[i, k].sum()[None]])
        rows.append((qt * (qt.log() - qs.log())).sum())
    check(ours, torch.stack(rows).mean(), s)


def test_chunked_equals_unchunked() -> None:
    s, t = pair(5, n=50)
    kept = truncation.top_p_k(t, 0.9, 8)
    mask = torch.isfinite(kept.logprobs)
    for kind in ("nll", "kld", "mse", "rkl", "jsd"):
        a, _ = losses.kd_loss(s, kept.ids, kept.logprobs, mask, KDConfig(kind), chunk_tokens=7)
        b, _ = losses.kd_loss(s, kept.ids, kept.logprobs, mask, KDConfig(kind), chunk_tokens=1000)
        check(a, b, s)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 10_000),
    st.sampled_from([0.05, 1.0, 10.0]),
    st.sampled_from([0.3, 0.9, 1.0]),
    st.sampled_from([1, 5, V]),
)
def test_kl_is_nonnegative_and_zero_on_itself(seed, tau, p, k) -> None:
    s, t = pair(seed)
    kept = truncation.top_p_k(t, p, k)
    mask = torch.isfinite(kept.logprobs)
    kl, _ = losses.kd_loss(s, kept.ids, kept.logprobs, mask, KDConfig("kld", temperature=tau))
    assert kl >= -1e-6
    same, _ = losses.kd_loss(t.clone(), *dense_teacher(t), KDConfig("kld"))  # KL(p‖p) = 0
    assert abs(float(same)) < 1e-5


@pytest.mark.parametrize("kind", ["nll", "kld", "mse", "rkl", "jsd"])
@pytest.mark.parametrize("tau", [0.05, 10.0])
@pytest.mark.parametrize("adaptive", ["none", "normkd", "wttm", "adakd_sd", "adakd_h"])
def test_gradients_are_finite_for_extreme_logits(kind, tau, adaptive) -> None:
    g = torch.Generator().manual_seed(0)
    s = (torch.randn(4, V, generator=g).sign() * 1e4).requires_grad_(True)
    t = torch.randn(4, V, generator=g).sign() * 1e4
    kept = truncation.top_p_k(t, 0.95, 10)
    mask = torch.isfinite(kept.logprobs)
    params = {
        "none": NoAdaptive(),
        "normkd": NormKD(c=1.5),
        "wttm": WTTM(gamma=0.5, beta=1.0),
        "adakd_sd": AdaKDSD(tau_min=0.5, tau_max=4.0),
        "adakd_h": AdaKDH(tau_min=0.5, tau_max=4.0),
    }[adaptive]
    loss, _ = losses.kd_loss(s, kept.ids, kept.logprobs, mask, KDConfig(kind, temperature=tau, adaptive=params))
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def one_token(values: list[float]):
    lp = torch.log_softmax(torch.tensor([values]), -1)
    return lp, torch.ones_like(lp, dtype=torch.bool)


def test_normkd_temperature_by_hand() -> None:
    lp, mask = one_token([2.0, 0.0, -2.0])  # std of the kept logits (population) = sqrt(8/3)
    cfg = KDConfig(adaptive=NormKD(c=1.5))
    _, _, tau, _ = losses.teacher_targets(lp, mask, cfg)
    assert float(tau) == pytest.approx(1.5 * math.sqrt(8 / 3), rel=1e-5)


def test_wttm_target_and_weight_by_hand() -> None:
    lp, mask = one_token([math.log(0.5), math.log(0.3), math.log(0.2)])
    cfg = KDConfig(adaptive=WTTM(gamma=0.5, beta=1.0))
    q, _, _, weight = losses.teacher_targets(lp, mask, cfg)
    powered = torch.tensor([0.5, 0.3, 0.2]) ** 0.5
    assert torch.allclose(q[0], powered / powered.sum(), atol=1e-6)
    assert float(weight) == pytest.approx(float(powered.sum()), rel=1e-5)


def test_adakd_h_temperature_by_hand() -> None:
    cfg = KDConfig(adaptive=AdaKDH(tau_min=0.5, tau_max=4.0))
    lp, mask = one_token([0.0, 0.0, 0.0, 0.0])  # uniform: H = log n → τ_min
    assert float(losses.teacher_targets(lp, mask, cfg)[2]) == pytest.approx(0.5)
    lp, mask = one_token([math.log(0.7), math.log(0.2), math.log(0.1)])
    H = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert float(losses.teacher_targets(lp, mask, cfg)[2]) == pytest.approx(0.5 + 3.5 * (1 - H / math.log(3)), rel=1e-5)


def test_adakd_sd_temperature_by_hand() -> None:
    lp = torch.log_softmax(torch.tensor([[2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]), -1)
    mask = torch.ones_like(lp, dtype=torch.bool)
    cfg = KDConfig(temperature=1.0, adaptive=AdaKDSD(tau_min=0.1, tau_max=10.0))
    tau = losses.teacher_targets(lp, mask, cfg)[2]
    assert tau.tolist() == pytest.approx([4 / 3, 2 / 3], rel=1e-5)  # s/s̄ with s = (2, 1)·sqrt(2/3)


def test_pd_loss_mixes_lm_and_kd() -> None:
    s, t = pair(6)
    targets = torch.randint(0, V, (6,), generator=torch.Generator().manual_seed(0))
    ids, lp, mask = dense_teacher(t)
    cfg = KDConfig("kld")
    mixed, m = losses.pd_loss(s[None], targets[None], 0.3, ids, lp, mask, cfg)
    kd, _ = losses.kd_loss(s, ids, lp, mask, cfg)
    assert float(mixed.detach()) == pytest.approx(0.7 * m["lm_loss"] + 0.3 * float(kd.detach()), rel=1e-6)
    lm_only, m0 = losses.pd_loss(s[None], targets[None], 0.0, ids, lp, mask, cfg)
    assert "kd_loss" not in m0 and float(lm_only.detach()) == pytest.approx(m0["lm_loss"])


@pytest.mark.parametrize("kind", ["nll", "kld", "mse", "rkl", "jsd"])
@pytest.mark.parametrize("adaptive", ["none", "normkd", "wttm"])
def test_fused_pd_loss_equals_its_parts_values_and_gradients(kind, adaptive) -> None:
    s, t = pair(7, n=40)
    targets = torch.randint(0, V, (40,), generator=torch.Generator().manual_seed(1))
    kept = truncation.top_p_k(t, 0.9, 12)
    mask = torch.isfinite(kept.logprobs)
    params = {"none": NoAdaptive(), "normkd": NormKD(c=1.5), "wttm": WTTM(gamma=0.5, beta=1.0)}[adaptive]
    cfg = KDConfig(kind, temperature=2.0, adaptive=params)
    fused, parts = losses.pd_loss(
        s.view(1, 40, V), targets.view(1, 40), 0.7, kept.ids, kept.logprobs, mask, cfg, chunk_tokens=9
    )
    kd, _ = losses.kd_loss(s, kept.ids, kept.logprobs, mask, cfg)
    ref = 0.3 * F.cross_entropy(s, targets) + 0.7 * kd
    check(fused, ref, s)
    assert parts["kd_loss"] == pytest.approx(float(kd.detach()), rel=1e-5)
