"""Logit losses added with issue 17: logit standardisation (Sun et al., CVPR 2024) and DIST (Huang et al., NeurIPS
2022). Pure functions of tensors; no modules, no state. Same conventions as :mod:`kdkit.losses.logits`: the teacher
is a constant (detached), computations run in float32 (or float64 when given float64), and temperature-softened
terms are multiplied by T².
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kdkit.errors import ShapeError

STANDARDIZE_EPS = 1e-7  # the reference's epsilon added to the standard deviation


def _float(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def standardize_logits(logits: Tensor, eps: float = STANDARDIZE_EPS) -> Tensor:
    """Z-score each sample's logits: ``Z(z)_i = (z_i − mean_i) / (std_i + eps)`` over the K classes.

    Logit standardisation (Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge Distillation", CVPR 2024,
    eq. 8 and Algorithm 1): teacher and student each get their own per-sample temperature, their logits' standard
    deviation, so the student matches the teacher's logit *relations* rather than their range. The temperature T a
    term applies afterwards is the paper's base temperature τ (softmax(Z(z)/τ)).

    Convention: ``std`` is the sample standard deviation with Bessel's correction (divides by K − 1, ``torch.std``'s
    default), as in the authors' code; the paper writes σ without saying which. ``eps = 1e-7`` keeps constant logits
    finite (they map to 0). The result is invariant to adding a per-sample constant to the logits and to scaling them
    by a positive per-sample factor (up to eps).

    Args:
        logits: (B, K) logits (any leading shape works; the last dimension is the classes), K >= 2.
        eps: added to the standard deviation.

    Returns:
        (B, K) standardised logits: mean 0 and standard deviation 1 in each row (0 for constant rows); the gradient
        flows through mean and std.
    """
    if logits.shape[-1] < 2:
        raise ShapeError(f"standardize_logits needs at least 2 classes in the last dimension, got "
                         f"{tuple(logits.shape)}")
    z = _float(logits)
    std, mean = torch.std_mean(z, dim=-1, keepdim=True)
    return (z - mean) / (std + eps)


def pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``: (N, M), (N, M) -> (N,).

    ``ρ(u, v) = ⟨u − ū, v − v̄⟩ / (‖u − ū‖·‖v − v̄‖ + eps)``; ``eps`` (DIST's 1e-8) makes a constant row give 0.
    """
    ac = a - a.mean(dim=1, keepdim=True)
    bc = b - b.mean(dim=1, keepdim=True)
    return (ac * bc).sum(1) / (ac.norm(dim=1) * bc.norm(dim=1) + eps)


def dist_terms(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> tuple[Tensor, Tensor]:
    """DIST's two parts, ``(inter, intra)``, each already multiplied by T² (see :func:`dist_loss`)."""
    if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
        raise ShapeError(f"dist: student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must both be (B, K)")
    if not temperature > 0:
        raise ValueError(f"dist: temperature must be > 0, got {temperature}")
    t2 = temperature * temperature
    y_s = torch.softmax(_float(student_logits) / temperature, dim=1)
    y_t = torch.softmax(_float(teacher_logits.detach()) / temperature, dim=1)
    inter = 1.0 - pearson_rows(y_s, y_t).mean()
    intra = 1.0 - pearson_rows(y_s.t(), y_t.t()).mean()
    return t2 * inter, t2 * intra


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, beta: float = 2.0, gamma: float = 2.0,
              temperature: float = 4.0) -> Tensor:
    """DIST: knowledge distillation from a stronger teacher by matching correlations, not values (Huang, You, Wang,
    Qian & Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022, eqs. 5-8).

    With ``Y_s = softmax(s/T)`` and ``Y_t = softmax(t/T)`` (each (B, K), rows over classes):

    * inter-class relation: ``L_inter = 1 − (1/B) Σ_i ρ(Y_s[i, :], Y_t[i, :])`` — each sample's ranking of classes;
    * intra-class relation: ``L_intra = 1 − (1/K) Σ_k ρ(Y_s[:, k], Y_t[:, k])`` — each class's ranking of samples;
    * ``L = T² · (β·L_inter + γ·L_intra)``, ρ the Pearson correlation (:func:`pearson_rows`, eps 1e-8).

    Pearson correlation is invariant to a positive affine map of either side, so the student need not match the
    teacher's confidence, only its relations. The T² factor is the authors' code (the paper's eq. 8 omits it; their
    CIFAR-100 settings β = γ = 2, T = 4 with CE weight 1 assume it).

    Args:
        student_logits: (B, K), B >= 2 (the intra-class relation correlates over the batch).
        teacher_logits: (B, K); no gradient flows into it.
        beta: weight β of the inter-class relation.
        gamma: weight γ of the intra-class relation.
        temperature: T > 0.

    Returns:
        Scalar in [0, 2·T²·(β + γ)]; 0 when the logits are equal.
    """
    inter, intra = dist_terms(student_logits, teacher_logits, temperature)
    return beta * inter + gamma * intra


# ----------------------------------------------------------------------------------------------------------------------
# CTKD: curriculum temperature (Li, Li, Yang, Cheng & Yang, "Curriculum Temperature for Knowledge Distillation",
# AAAI 2023).


class _GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by −λ (Ganin & Lempitsky, ICML 2015)."""

    @staticmethod
    def forward(ctx, x: Tensor, lam: float) -> Tensor:  # type: ignore[override]
        ctx.lam = float(lam)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * (-ctx.lam), None


def gradient_reversal(x: Tensor, lam: float) -> Tensor:
    """``x`` unchanged in the forward pass; its gradient multiplied by ``−lam`` in the backward pass, so whatever
    produced ``x`` is trained to *increase* the loss (for lam > 0) while everything after it still decreases it."""
    return _GradientReversal.apply(x, lam)


def ctkd_lambda(progress: float, ramp_epochs: float = 10.0, lam_max: float = 1.0, lam_min: float = 0.0) -> float:
    """CTKD's curriculum on the adversarial strength (paper eq. 9): a cosine ramp from ``lam_min`` to ``lam_max``,

    ``λ(n) = λ_min + ½(λ_max − λ_min)(1 + cos(π·(1 + min(n, E)/E)))``, n the (fractional) epoch, E = ``ramp_epochs``,
    constant at ``lam_max`` afterwards; E <= 0 gives ``lam_max`` at once.
    """
    if ramp_epochs <= 0:
        return float(lam_max)
    r = min(max(progress, 0.0), ramp_epochs) / ramp_epochs
    return float(lam_min + 0.5 * (lam_max - lam_min) * (1.0 + math.cos(math.pi * (1.0 + r))))


def ctkd_temperature(theta: Tensor, t_start: float = 1.0, t_range: float = 20.0) -> Tensor:
    """The learnable global temperature, bounded: ``τ = t_start + t_range · sigmoid(θ)`` ∈ (t_start, t_start +
    t_range) (the authors' code: 1 + 20·σ(θ))."""
    return t_start + t_range * torch.sigmoid(theta)


def kd_kl_tensor_t(student_logits: Tensor, teacher_logits: Tensor, temperature: Tensor) -> Tensor:
    """Hinton KD, ``(1/B) Σ_i τ_i²·KL(softmax(t_i/τ_i) ‖ softmax(s_i/τ_i))``, with τ a *tensor* that receives a
    gradient through both the softmaxes and the τ² factor (CTKD trains it): one temperature for the batch (a
    one-element tensor: then the same value as :func:`kdkit.losses.logits.kd_kl` at ``float(τ)``) or one per sample
    ((B,), CTKD's instance-wise mode).

    Args:
        student_logits: (B, K).
        teacher_logits: (B, K); no gradient flows into it.
        temperature: τ > 0, one element or (B,) (may require grad).

    Returns:
        Scalar.
    """
    if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
        raise ShapeError(f"kd_kl_tensor_t: student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must both be (B, K)")
    if temperature.numel() == 1:
        tau = temperature.reshape(())
    elif temperature.shape == (student_logits.shape[0],):
        tau = temperature[:, None]  # (B, 1): row i divided by its own τ_i
    else:
        raise ShapeError(f"kd_kl_tensor_t: temperature must hold one value or one per sample ({student_logits.shape[0]}"
                         f",), got shape {tuple(temperature.shape)}")
    tau = tau.to(torch.float64) if student_logits.dtype == torch.float64 else tau.float()
    log_q = torch.log_softmax(_float(student_logits) / tau, dim=1)
    log_p = torch.log_softmax(_float(teacher_logits.detach()) / tau, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(1, keepdim=True)  # (B, 1)
    return (kl * tau * tau).mean()


def ctkd_loss(student_logits: Tensor, teacher_logits: Tensor, theta: Tensor, lam: float, t_start: float = 1.0,
              t_range: float = 20.0) -> Tensor:
    """CTKD's distillation loss (Li et al., AAAI 2023, eqs. 5-8, global temperature): Hinton KD at a learnable
    temperature ``τ = t_start + t_range·σ(θ)`` reached through a gradient-reversal layer of strength λ:

    ``L = τ²·KL(softmax(t/τ) ‖ softmax(s/τ))`` (batchmean); ∂/∂s as KD at τ, ∂/∂θ = −λ·∂L/∂θ — the student minimises
    the loss while the temperature maximises it (min over the student, max over τ), λ following the curriculum
    :func:`ctkd_lambda` so the task starts easy and gets harder.

    Args:
        student_logits: (B, K).
        teacher_logits: (B, K); no gradient flows into it.
        theta: (1,) the temperature parameter θ (the paper's global temperature), or (B,) one θ_i per sample (its
            instance-wise mode: θ_i predicted from the sample's logits by a small network, sec. 3.4).
        lam: the adversarial strength λ >= 0 now.
        t_start, t_range: τ's bounds.

    Returns:
        Scalar, the KD value at the current τ.
    """
    tau = ctkd_temperature(gradient_reversal(theta, lam), t_start, t_range)
    return kd_kl_tensor_t(student_logits, teacher_logits, tau)
