"""Relational KD (Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019): distance- and angle-wise.

The student mimics *relations between samples* of a batch, not the teacher's outputs themselves, so the two
embeddings may have different widths. Conventions follow the authors' classification code and RepDistiller: Huber
(smooth-L1, δ = 1) averaged over all B² (distance) or B³ (angle) entries, diagonal/degenerate entries included (they
are 0 on both sides). Published CIFAR-100 weights: 25 (distance) and 50 (angle) — the defaults of both the authors'
``run_distill_classification.py`` and RepDistiller's ``RKDLoss(w_d=25, w_a=50)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdkit.errors import ShapeError


def _flat_pair(name: str, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    if s.shape[0] != t.shape[0]:
        raise ShapeError(f"{name}: batch sizes differ, student {tuple(s.shape)} vs teacher {tuple(t.shape)}")
    if s.shape[0] < 2:
        raise ShapeError(f"{name}: needs a batch of at least 2 samples to form relations, got {tuple(s.shape)}")
    return s.float().flatten(1), t.detach().float().flatten(1)


def pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances between rows, (B, D) -> (B, B), exact zeros on the diagonal.

    Computed from squared norms and clamped at ``eps`` before the square root so the gradient stays finite for
    coincident points (the same formulation as the RKD reference).
    """
    sq = e.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (e @ e.t())).clamp(min=eps)
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return d2.sqrt().masked_fill(eye, 0.0)


def _normalised_distances(e: Tensor) -> Tensor:
    d = pairwise_distances(e)
    positive = d[d > 0]
    # μ = mean distance over distinct pairs; a batch of identical points has no scale (distances stay 0).
    mu = positive.mean() if positive.numel() else d.new_tensor(1.0)
    return d / mu


def rkd_distance(s_emb: Tensor, t_emb: Tensor) -> Tensor:
    """Distance-wise RKD: ``L = mean_{i,j} huber(ψ_s(i,j), ψ_t(i,j))``, ``ψ(i,j) = ‖e_i − e_j‖₂ / μ``.

    μ is the mean distance over pairs with non-zero distance in the same batch, so ψ is invariant to scaling an
    embedding (the paper's motivation: only the relative structure is transferred). The paper sums Huber over pairs;
    the references average over the B×B matrix (diagonal included), which is what the weight 25 was tuned with.

    Args:
        s_emb: (B, ...) student embeddings (flattened to (B, D_s)).
        t_emb: (B, ...) teacher embeddings (B, D_t); no gradient flows into them.

    Returns:
        Scalar, 0 when the student's embedding equals the teacher's up to scale (and any isometry).
    """
    s, t = _flat_pair("rkd_distance", s_emb, t_emb)
    with torch.no_grad():
        t_d = _normalised_distances(t)
    return F.smooth_l1_loss(_normalised_distances(s), t_d)


def _angles(e: Tensor) -> Tensor:
    # diff[i, j] = e_j − e_i; cos[i, j, k] = <unit(e_j − e_i), unit(e_k − e_i)>: the angle at vertex i.
    diff = e[None, :, :] - e[:, None, :]
    unit = F.normalize(diff, p=2, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2))


def rkd_angle(s_emb: Tensor, t_emb: Tensor) -> Tensor:
    """Angle-wise RKD: ``L = mean_{i,j,k} huber(cos∠_s(j,i,k), cos∠_t(j,i,k))``.

    ``cos∠(j,i,k) = ⟨(e_j − e_i)/‖·‖, (e_k − e_i)/‖·‖⟩`` over all B³ ordered triplets (degenerate ones, where a
    difference is 0, give 0 on both sides), as in the references. Invariant to scaling, translating and rotating
    either embedding. Memory: a (B, B, D) tensor — fine for the usual B = 64, D ≤ 2048.

    Args:
        s_emb: (B, ...) student embeddings.
        t_emb: (B, ...) teacher embeddings; no gradient flows into them.

    Returns:
        Scalar, 0 when the embeddings are similar figures.
    """
    s, t = _flat_pair("rkd_angle", s_emb, t_emb)
    with torch.no_grad():
        t_a = _angles(t)
    return F.smooth_l1_loss(_angles(s), t_a)


# ----------------------------------------------------------------------------------------------------------------------
# Issue 17: probabilistic knowledge transfer (PKT) and correlation congruence (CC). Both compare (B, B) relation
# matrices of a batch, so student and teacher embeddings may have different widths.


def _cosine_affinity(e: Tensor, eps: float) -> Tensor:
    """Rows of ``(1 + cos(e_i, e_j)) / 2`` normalised to sum 1: each sample's conditional distribution over the
    batch."""
    unit = e / (e.norm(dim=1, keepdim=True) + eps)
    k = (unit @ unit.t() + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


def pkt_loss(s_emb: Tensor, t_emb: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas, "Learning Deep Representations with Probabilistic
    Knowledge Transfer", ECCV 2018, eqs. 7-10, with the cosine kernel of eq. 13).

    For each side, ``K_ij = (1 + cos(e_i, e_j)) / 2`` and the conditional ``P_{j|i} = K_ij / Σ_j K_ij`` (rows sum to
    1; the diagonal, K_ii = 1, is kept). The student mimics the teacher's distributions:
    ``L = (1/B²) Σ_i Σ_j P^t_{j|i} · log((P^t_{j|i} + eps) / (P^s_{j|i} + eps))``.

    Convention: the authors' code (and RepDistiller's, whose published weight 30000 assumes it): the KL summed over
    j is *averaged* over all B² entries (the paper sums), the diagonal is included, eps = 1e-7 inside the log and in
    the norm. A zero embedding row has cosine 0 with everything.

    Args:
        s_emb: (B, ...) student embeddings, flattened to (B, D_s), B >= 2.
        t_emb: (B, ...) teacher embeddings (B, D_t); no gradient flows into them.
        eps: numerical guard.

    Returns:
        Scalar >= 0 up to eps; 0 when the two embeddings have equal cosine structure (e.g. the student's is the
        teacher's rotated or scaled).
    """
    s, t = _flat_pair("pkt_loss", s_emb, t_emb)
    p_s = _cosine_affinity(s, eps)
    with torch.no_grad():
        p_t = _cosine_affinity(t, eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def cc_correlation(e: Tensor, gamma: float = 0.4, order: int = 2) -> Tensor:
    """CC's correlation matrix: a P-order Taylor expansion of the Gaussian RBF kernel on L2-normalised embeddings.

    For unit vectors ``exp(−γ‖x − y‖²) = exp(−2γ) · exp(2γ⟨x, y⟩) ≈ Σ_{p=0}^{P} exp(−2γ) (2γ)^p / p! · ⟨x, y⟩^p``.
    (B, D) -> (B, B).
    """
    unit = F.normalize(e, p=2, dim=1)
    sim = unit @ unit.t()
    out = torch.zeros_like(sim)
    coef = math.exp(-2.0 * gamma)
    for p in range(order + 1):
        out = out + coef * (2.0 * gamma) ** p / math.factorial(p) * sim.pow(p)
    return out


def cc_loss(s_emb: Tensor, t_emb: Tensor, gamma: float = 0.4, order: int = 2) -> Tensor:
    """Correlation congruence (Peng, Jin, Liu, Li, Wu, Liu, Zhou & Zhang, "Correlation Congruence for Knowledge
    Distillation", ICCV 2019, eqs. 4-10).

    ``C = cc_correlation(e)`` for each side ((B, B), Gaussian RBF of the normalised embeddings by its P-order Taylor
    expansion, γ = 0.4, P = 2 — the paper's choice) and ``L = (1/B²) Σ_ij (C^s_ij − C^t_ij)²``.

    Convention: the paper's formula with the mean over the B² entries (its ``1/n²``); the embeddings are the
    penultimate features, L2-normalised, no extra head. RepDistiller's "CC" is a different expression (a product of
    absolute differences of consecutive samples' 128-d embeddings, weight 0.02) and is not followed here.

    Args:
        s_emb: (B, ...) student embeddings, flattened to (B, D_s), B >= 2.
        t_emb: (B, ...) teacher embeddings (B, D_t); no gradient flows into them.
        gamma: RBF scale γ > 0.
        order: Taylor order P >= 0.

    Returns:
        Scalar >= 0; 0 when the normalised embeddings have the same Gram matrix.
    """
    if gamma <= 0 or order < 0:
        raise ValueError(f"cc_loss: need gamma > 0 and order >= 0, got {gamma}, {order}")
    s, t = _flat_pair("cc_loss", s_emb, t_emb)
    with torch.no_grad():
        c_t = cc_correlation(t, gamma, order)
    return (cc_correlation(s, gamma, order) - c_t).pow(2).mean()
