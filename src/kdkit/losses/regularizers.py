"""Regularisers that need no teacher: confidence penalty, label smoothing, teacher-free KD with a virtual teacher.

All are pure functions of the student's logits (and labels), averaged over the batch (``batchmean``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdkit.errors import ShapeError
from kdkit.losses.logits import cross_entropy


def _check_labels(name: str, logits: Tensor, target: Tensor) -> None:
    if logits.ndim != 2:
        raise ShapeError(f"{name}: logits must be (B, K), got {tuple(logits.shape)}")
    if target.ndim != 1 or target.shape[0] != logits.shape[0]:
        raise ShapeError(f"{name}: target must be (B,) class indices with B={logits.shape[0]}, "
                         f"got {tuple(target.shape)}")


def entropy(logits: Tensor) -> Tensor:
    """Per-sample entropy ``H(p) = −Σ_k p_k log p_k`` of ``p = softmax(logits)``, in nats. (B, K) -> (B,)."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def confidence_penalty(logits: Tensor, beta: float = 0.1) -> Tensor:
    """Confidence penalty (Pereyra, Tucker, Chorowski, Kaiser & Hinton, "Regularizing Neural Networks by Penalizing
    Confident Output Distributions", ICLR 2017 workshop).

    The paper's objective is ``L = CE − β·H(p)``. This function returns the term to *add* to the loss:
    ``−β · (1/B) Σ_i H(p_i)`` — negative, and smallest (most negative, ``−β·log K``) for a uniform prediction, so
    minimising it pushes towards higher-entropy outputs. The paper tunes β per task on validation data; it is the
    only hyperparameter (``beta`` here, keep the term's ``weight`` at 1, or set beta=1 and use the weight).

    Args:
        logits: (B, K) student logits.
        beta: β ≥ 0.

    Returns:
        Scalar ``−β · mean_i H(softmax(logits_i))``.
    """
    if beta < 0:
        raise ValueError(f"confidence_penalty: beta must be >= 0, got {beta}")
    return -beta * entropy(logits).mean()


def label_smoothing_ce(logits: Tensor, target: Tensor, eps: float = 0.1) -> Tensor:
    """Cross-entropy with label smoothing (Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016, §7).

    Target ``y' = (1 − ε)·onehot(y) + ε/K`` (the paper's ``u(k) = 1/K``; PyTorch's ``label_smoothing`` uses the same).
    Some code (e.g. the teacher-free KD repository) spreads ε over the K−1 *other* classes instead; for K = 100 and
    ε = 0.1 the two differ by 0.001 in the target probability. Published: ε = 0.1 (Inception-v3 on ImageNet).

    Args:
        logits: (B, K).
        target: (B,) int64; -1 marks an unlabelled sample (ignored).
        eps: ε in [0, 1).
    """
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"label_smoothing_ce: eps must be in [0, 1), got {eps}")
    _check_labels("label_smoothing_ce", logits, target)
    return cross_entropy(logits, target, label_smoothing=eps)


def virtual_teacher(target: Tensor, num_classes: int, a: float = 0.9) -> Tensor:
    """The teacher-free KD virtual teacher ``p_d``: ``a`` on the correct class, ``(1 − a)/(K − 1)`` elsewhere.

    Args:
        target: (B,) int64 labels.
        num_classes: K ≥ 2.
        a: probability of the correct class, in (0, 1) (the paper requires a ≥ 0.9 so the teacher is 'accurate').

    Returns:
        (B, K) float32 probabilities, each row sums to 1.
    """
    if num_classes < 2:
        raise ValueError(f"virtual_teacher: need at least 2 classes, got {num_classes}")
    if not 0.0 < a < 1.0:
        raise ValueError(f"virtual_teacher: a must be in (0, 1), got {a}")
    p = torch.full((target.shape[0], num_classes), (1.0 - a) / (num_classes - 1), device=target.device)
    return p.scatter(1, target[:, None], a)


def tf_kd_virtual(student_logits: Tensor, target: Tensor, a: float = 0.9, temperature: float = 4.0) -> Tensor:
    """Teacher-free KD with a manually designed virtual teacher, Tf-KD_reg (Yuan, Tay, Li, Wang & Feng, "Revisiting
    Knowledge Distillation via Label Smoothing Regularization", CVPR 2020, eq. 9).

    ``L = T² · (1/B) Σ_i KL(p_d^T ‖ q^T)`` with ``q^T = softmax(s/T)`` and ``p_d^T ∝ p_d^{1/T}``, i.e. the virtual
    teacher softened as if ``log p_d`` were its logits (:func:`virtual_teacher` gives ``p_d``). At T = 1 this is label
    smoothing with ε = (1 − a)·K/(K − 1), up to the constant entropy of ``p_d``.

    Convention (differs from the reference code, on purpose): the authors' code softens the virtual teacher with
    ``softmax(p_d / T)`` (probabilities treated as logits, which for T ≥ 1 is nearly uniform), does not temper the
    student, averages KL over *elements* (``nn.KLDivLoss()``'s old default) and multiplies by a tuned "multiplier";
    their published (a, T, multiplier) triples are tied to that form and do not transfer. We implement the paper's
    formula with KD's conventions (``batchmean``, × T²), like every other KL term in kdkit.

    Args:
        student_logits: (B, K).
        target: (B,) int64 labels; every sample needs one.
        a: probability of the correct class in the virtual teacher.
        temperature: T > 0.
    """
    _check_labels("tf_kd_virtual", student_logits, target)
    if temperature <= 0:
        raise ValueError(f"tf_kd_virtual: temperature must be > 0, got {temperature}")
    if not 0.0 < a < 1.0:
        raise ValueError(f"tf_kd_virtual: a must be in (0, 1), got {a}")
    if bool((target < 0).any()):
        raise ValueError("tf_kd_virtual needs a label for every sample (target -1 found)")
    k = student_logits.shape[-1]
    t = temperature
    # log p_d / T, then renormalise: the softened virtual teacher in log space.
    log_pd = torch.full((target.shape[0], k), math.log((1.0 - a) / (k - 1)), device=student_logits.device)
    log_pd = log_pd.scatter(1, target[:, None], math.log(a))
    log_p = F.log_softmax(log_pd / t, dim=-1)
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * (t * t)
