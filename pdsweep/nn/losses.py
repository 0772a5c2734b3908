"""Loss functions: pure tensor functions with their shapes in the docstrings.

The pre-training distillation objective (the paper's Eq. 1):

    L = (1 − α)·L_lm + α·L_kd,      L_kd = mean over tokens of D(F(teacher), student)

The teacher side arrives sparse from the logits store: for each token N, K kept ids with their
log-probabilities under the full vocabulary (τ = 1) and a mask. F (Eq. 4) applies the temperature
to the kept logits and renormalises — or keeps the untruncated mass as a residual bucket. The
student side is a full-vocabulary log-softmax, computed in chunks of tokens with the gradient taken
chunk by chunk in the forward pass (`pd_loss`), so no dense B×T×V teacher tensor and no extra
B×T×V student tensor is ever kept.

KD losses D (q = teacher target over the kept ids, p = student):
    nll  −Σ q log p                          (soft cross-entropy; the paper's default)
    kld  Σ q (log q − log p)                 (forward KL; same gradient as nll for a fixed teacher)
    mse  mean over kept entries of (a_p − a_q)², a = log-prob | prob | centred logit (loss.mse_space)
    rkl  Σ p̃ (log p̃ − log q)                 (reverse KL on the kept support, p̃ = p renormalised there)
    jsd  ½ KL(q‖m) + ½ KL(p̃‖m), m = (q+p̃)/2   (on the kept support)
With the residual bucket, the mass outside the kept ids is one more outcome on both sides.

Temperatures (τ): static τ on the teacher only (the paper), or `temperature_on: both` (Hinton:
the student at τ too, loss × τ²). Adaptive, per token (PAPER.md; formulas in docs/design-space.md):
    normkd    τ_T = c·std(teacher's kept logits), τ_S = c·std(student logits); loss × τ_T²
    wttm      q ∝ p_T^γ on the kept ids, student at τ = 1, each token weighted by β·Σ p_T^γ
    adakd_sd  τ = clip(τ_0 · s/s̄, tau_min, tau_max): s = std of the token's kept teacher logits,
              s̄ its mean over the batch (our reading)
    adakd_h   τ = tau_min + (tau_max − tau_min)·(1 − H/log n): H = entropy of the token's kept
              teacher distribution, n its size (our reading)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

from pdsweep.spec import WTTM, AdaKDH, AdaKDSD, AdaptiveSpec, NoAdaptive, NormKD

if TYPE_CHECKING:
    from pdsweep.spec import RunSpec

KDKind = Literal["nll", "kld", "mse", "rkl", "jsd"]

NEG = -1e30  # a finite "minus infinity": keeps gradients free of NaN where entries are masked


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross-entropy over non-ignored tokens.

    Args:
        logits: (B, T, V) student logits (any float dtype; computed in float32).
        targets: (B, T) int64 next-token ids; `ignore_index` marks padding.
    Returns:
        A scalar tensor.
    """
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=ignore_index)


@dataclass(frozen=True)
class KDConfig:
    """The loss-relevant part of a RunSpec (spec.LogitsSpec and spec.LossSpec), with the adaptive
    temperature as the spec's own tagged union: the loss matches on its kind."""

    kind: KDKind = "nll"
    temperature: float = 1.0
    temperature_on: Literal["teacher", "both"] = "teacher"
    adaptive: AdaptiveSpec = field(default_factory=NoAdaptive)
    renormalize: bool = True
    mse_space: Literal["logprob", "prob", "logit"] = "logprob"

    @classmethod
    def from_spec(cls, spec: RunSpec) -> KDConfig:
        return cls(
            spec.loss.kd,
            spec.logits.temperature,
            spec.logits.temperature_on,
            spec.logits.adaptive,
            spec.logits.renormalize,
            spec.loss.mse_space,
        )


def _masked_std(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row std of the masked entries of x (N, K); 0 for a single entry."""
    n = mask.sum(-1).clamp(min=1)
    mean = (x * mask).sum(-1) / n
    var = (((x - mean[:, None]) * mask) ** 2).sum(-1) / n
    return var.sqrt()


def teacher_targets(
    t_logprobs: torch.Tensor, mask: torch.Tensor, cfg: KDConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """F(teacher): the target over the kept ids.

    Args:
        t_logprobs: (N, K) teacher log-probabilities under the full vocabulary (τ = 1).
        mask: (N, K) bool, kept entries.
    Returns:
        q (N, K) target probabilities (0 where masked), residual (N,) mass of the bucket (0 when
        renormalising), tau (N,) the teacher temperature used per token, weight (N,) per-token
        loss weight (WTTM; 1 otherwise).
    """
    N = t_logprobs.shape[0]
    z = torch.where(mask, t_logprobs, torch.zeros_like(t_logprobs))  # logits up to a per-row constant
    ones = torch.ones(N, dtype=t_logprobs.dtype, device=t_logprobs.device)
    weight = ones
    match cfg.adaptive:
        case NoAdaptive():
            tau = ones * cfg.temperature
        case NormKD(c=c):
            tau = (c * _masked_std(z, mask)).clamp(min=1e-2)
        case AdaKDSD(tau_min=lo, tau_max=hi):
            s = _masked_std(z, mask)
            tau = (cfg.temperature * s / s.mean().clamp(min=1e-6)).clamp(lo, hi)
        case AdaKDH(tau_min=lo, tau_max=hi):
            p = torch.softmax(torch.where(mask, z, NEG), -1)
            H = -(p * torch.log(p.clamp(min=1e-30))).sum(-1)
            n = mask.sum(-1).float()
            frac = torch.where(n > 1, H / torch.log(n.clamp(min=2)), torch.zeros_like(H))
            tau = lo + (hi - lo) * (1 - frac)
        case WTTM(gamma=gamma, beta=beta):
            tau = ones / gamma  # q ∝ p^γ = softmax(z/τ) with τ = 1/γ
            weight = beta * (torch.exp(gamma * t_logprobs) * mask).sum(-1)
    q = torch.softmax(torch.where(mask, z / tau[:, None], NEG), -1) * mask
    if cfg.renormalize:
        return q, torch.zeros_like(tau), tau, weight
    kept = (torch.exp(t_logprobs) * mask).sum(-1).clamp(max=1.0)
    return q * kept[:, None], (1.0 - kept).clamp(min=0.0), tau, weight


def _kd_rows(
    logits: torch.Tensor,
    t_ids: torch.Tensor,
    q: torch.Tensor,
    residual: torch.Tensor,
    mask: torch.Tensor,
    t_logprobs: torch.Tensor,
    s_tau: torch.Tensor,
    cfg: KDConfig,
) -> torch.Tensor:
    """Per-token KD loss (N,) for a chunk. logits (N, V) student; the rest as in kd_loss."""
    z = logits.float() / s_tau[:, None]
    logp_all = torch.log_softmax(z, dim=-1)  # (N, V): the only full-vocabulary tensor
    logp = logp_all.gather(1, t_ids)  # (N, K)
    logp = torch.where(mask, logp, torch.zeros_like(logp))
    p_kept = (logp.exp() * mask).sum(-1).clamp(max=1.0)
    use_bucket = not cfg.renormalize
    if cfg.kind in ("nll", "kld"):
        loss = -(q * logp).sum(-1)
        if cfg.kind == "kld":
            loss = loss + (q * torch.log(q.clamp(min=1e-30))).sum(-1)
        if use_bucket:
            log_out = torch.log1p(-p_kept.clamp(max=1 - 1e-6))
            loss = loss - residual * log_out
            if cfg.kind == "kld":
                loss = loss + residual * torch.log(residual.clamp(min=1e-30))
        return loss
    if cfg.kind == "mse":
        n = mask.sum(-1).clamp(min=1)
        if cfg.mse_space == "logprob":
            a, b = logp, torch.log(q.clamp(min=1e-30))
        elif cfg.mse_space == "prob":
            a, b = logp.exp(), q
        else:  # centred logits: both sides are only defined up to a per-token constant
            zs = z.gather(1, t_ids)
            zt = torch.where(mask, t_logprobs, torch.zeros_like(t_logprobs))
            a = zs - (zs * mask).sum(-1, keepdim=True) / n[:, None]
            b = zt - (zt * mask).sum(-1, keepdim=True) / n[:, None]
        return (((a - b) ** 2) * mask).sum(-1) / n
    # Reverse KL and JSD compare distributions on the kept support (plus the bucket if kept).
    if use_bucket:
        p_t = torch.cat([logp.exp() * mask, (1 - p_kept)[:, None]], dim=1)
        q_t = torch.cat([q, residual[:, None]], dim=1)
        m_t = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    else:
        p_t = torch.softmax(torch.where(mask, logp, NEG), -1) * mask
        q_t, m_t = q, mask
    log_p = torch.log(p_t.clamp(min=1e-30))
    log_q = torch.log(q_t.clamp(min=1e-30))
    if cfg.kind == "rkl":
        return (p_t * (log_p - log_q) * m_t).sum(-1)
    if cfg.kind == "jsd":
        m = 0.5 * (p_t + q_t)
        log_m = torch.log(m.clamp(min=1e-30))
        return 0.5 * ((q_t * (log_q - log_m)) * m_t).sum(-1) + 0.5 * ((p_t * (log_p - log_m)) * m_t).sum(-1)
    raise ValueError(f"unknown KD loss {cfg.kind!r}")


def _student_temperature(logits: torch.Tensor, tau: torch.Tensor, cfg: KDConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(student τ per token, loss scale per token): NormKD's own τ_S and τ_T²; Hinton's τ and τ²."""
    if isinstance(cfg.adaptive, NormKD):
        return (cfg.adaptive.c * logits.detach().float().std(dim=-1)).clamp(min=1e-2), tau**2
    if cfg.temperature_on == "both" and isinstance(cfg.adaptive, NoAdaptive):
        return tau, tau**2
    return torch.ones_like(tau), torch.ones_like(tau)


def kd_loss(
    logits: torch.Tensor,
    t_ids: torch.Tensor,
    t_logprobs: torch.Tensor,
    mask: torch.Tensor,
    cfg: KDConfig,
    chunk_tokens: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean KD loss over tokens, and the mean teacher temperature used (for evaluation, and the
    reference the fused training loss is tested against).

    Args:
        logits: (N, V) student logits (N = B·T tokens).
        t_ids: (N, K) int64 kept teacher ids; t_logprobs (N, K) their full-vocabulary log-probs at
            τ = 1; mask (N, K) bool.
    Returns:
        (loss, mean τ) scalars.
    """
    q, residual, tau, weight = teacher_targets(t_logprobs, mask, cfg)
    s_tau, scale = _student_temperature(logits, tau, cfg)
    chunks = [slice(s, s + chunk_tokens) for s in range(0, logits.shape[0], chunk_tokens)]
    rows = [_kd_rows(logits[c], t_ids[c], q[c], residual[c], mask[c], t_logprobs[c], s_tau[c], cfg) for c in chunks]
    return (torch.cat(rows) * scale * weight).mean(), tau.mean().detach()


class _FusedPD(torch.autograd.Function):
    """(1 − α)·LM + α·KD over (N, V) logits, chunk by chunk, with the gradient computed in the
    forward pass (as memory-efficient fused cross-entropy kernels do): only the logits and one
    (N, V) gradient buffer exist at full size, so distillation costs no more memory than the LM
    loss alone (which keeps its own (N, V) log-softmax for the backward pass)."""

    @staticmethod
    def forward(ctx, logits, targets, t_ids, t_logprobs, mask, alpha, cfg, chunk_tokens, parts):  # noqa: ANN001, ANN205
        N = logits.shape[0]
        q, residual, tau, weight = teacher_targets(t_logprobs, mask, cfg)
        grad = torch.empty_like(logits, dtype=torch.float32)
        total = lm_sum = kd_sum = 0.0
        # NLL/KLD with the student at τ = 1 and renormalised targets (the paper's setting and most
        # sweeps) have a closed-form gradient: softmax(z) − (1 − α)·onehot(target) − α·q.
        closed = (
            cfg.kind in ("nll", "kld")
            and cfg.renormalize
            and isinstance(cfg.adaptive, NoAdaptive | AdaKDSD | AdaKDH)
            and cfg.temperature_on == "teacher"
        )
        for s in range(0, N, chunk_tokens):
            c = slice(s, s + chunk_tokens)
            if closed:  # in place in the gradient buffer: log p, then p, then p − targets
                gc = grad[c]
                z = logits[c].detach()
                gc.copy_(z).sub_(torch.logsumexp(gc, dim=-1, keepdim=True))
                lm = -gc.gather(1, targets[c][:, None])[:, 0]
                kd = -(q[c] * gc.gather(1, t_ids[c])).sum(-1)
                if cfg.kind == "kld":
                    kd = kd + (q[c] * torch.log(q[c].clamp(min=1e-30))).sum(-1)
                gc.exp_()
                gc.scatter_add_(1, targets[c][:, None], torch.full_like(lm[:, None], -(1.0 - alpha)))
                gc.scatter_add_(1, t_ids[c], -alpha * q[c])
                total += float(((1.0 - alpha) * lm + alpha * kd).sum()) / N
                lm_sum += float(lm.sum())
                kd_sum += float(kd.sum())
                continue
            with torch.enable_grad():
                z = logits[c].detach().float().requires_grad_(True)
                lm = F.cross_entropy(z, targets[c], reduction="none")
                s_tau, scale = _student_temperature(z, tau[c], cfg)
                kd = _kd_rows(z, t_ids[c], q[c], residual[c], mask[c], t_logprobs[c], s_tau, cfg) * scale * weight[c]
                chunk = ((1.0 - alpha) * lm + alpha * kd).sum() / N
                (g,) = torch.autograd.grad(chunk, z)
            grad[c] = g * N  # the buffer holds per-token gradients; 1/N is applied in backward
            total += float(chunk)
            lm_sum += float(lm.sum())
            kd_sum += float(kd.sum())
        ctx.save_for_backward(grad)
        ctx.dtype = logits.dtype
        parts.update(lm_loss=lm_sum / N, kd_loss=kd_sum / N, tau=float(tau.mean()))
        return logits.new_tensor(total, dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad_output):  # noqa: ANN001, ANN205
        (grad,) = ctx.saved_tensors
        if getattr(ctx, "consumed", False):
            raise RuntimeError("pd_loss: backward through the same loss twice is not supported")
        ctx.consumed = True
        grad.mul_(grad_output / grad.shape[0])  # the buffer is ours: scale it in place
        return grad.to(ctx.dtype), None, None, None, None, None, None, None, None


def pd_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    t_ids: torch.Tensor | None,
    t_logprobs: torch.Tensor | None,
    mask: torch.Tensor | None,
    cfg: KDConfig,
    chunk_tokens: int = 256,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L = (1 − α)·L_lm + α·L_kd for a batch.

    Args:
        logits: (B, T, V) student logits; targets (B, T) next-token ids.
        t_ids, t_logprobs, mask: (B·T, K) teacher entries for the B·T input positions, or None for LM-only.
        chunk_tokens: tokens per chunk of the fused loss (bounds its temporary (chunk, V) tensors).
    Returns:
        The loss, and metrics {lm_loss, kd_loss, alpha, tau}.
    """
    if t_ids is None or alpha == 0.0:
        lm = lm_loss(logits, targets)
        return lm, {"lm_loss": float(lm.detach()), "alpha": alpha}
    assert t_logprobs is not None and mask is not None
    parts: dict[str, float] = {}
    loss = _FusedPD.apply(
        logits.flatten(0, 1), targets.flatten(), t_ids, t_logprobs, mask, alpha, cfg, chunk_tokens, parts
    )
    return loss, {**parts, "alpha": alpha}
