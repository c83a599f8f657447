"""Response-based (logit) losses. Pure functions of tensors; no modules, no state.

Conventions (see docs/methods.md): every distribution loss is averaged over the batch (``batchmean``), and
temperature-softened KL terms are multiplied by T² so that their gradient magnitude does not shrink as T grows
(Hinton et al., 2015, section 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cross_entropy(logits: Tensor, target: Tensor, label_smoothing: float = 0.0, ignore_index: int = -1) -> Tensor:
    """Hard-label cross-entropy, averaged over labelled samples.

    Args:
        logits: (B, K) student logits.
        target: (B,) int64 class indices; ``ignore_index`` (default -1) marks unlabelled samples.
        label_smoothing: ε in [0, 1): the target becomes (1-ε)·onehot + ε/K (Szegedy et al., 2016).

    Returns:
        Scalar ``-mean_i Σ_k y_ik log softmax(z_i)_k``; 0 when the batch has no labelled sample.
    """
    if target.ndim != 1:
        raise ValueError(f"cross_entropy expects (B,) class indices, got target of shape {tuple(target.shape)}")
    if bool((target == ignore_index).all()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing, ignore_index=ignore_index)


def kd_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Soft-target knowledge distillation loss (Hinton, Vinyals & Dean, 2015, "Distilling the Knowledge in a Neural
    Network", arXiv:1503.02531).

    ``L = T² · (1/B) Σ_i KL(p_i^T ‖ q_i^T)`` with ``p^T = softmax(t/T)`` (teacher), ``q^T = softmax(s/T)`` (student),
    ``KL(p‖q) = Σ_k p_k (log p_k − log q_k)``.

    The T² factor keeps the gradient scale independent of T: ∂L/∂s = T·(q^T − p^T)/B, which for large T tends to
    (s − t)/(K·B) after centring — the logit-matching limit of the paper.

    Args:
        student_logits: (B, K).
        teacher_logits: (B, K); treated as a constant (no gradient flows into it).
        temperature: T > 0.

    Returns:
        Scalar loss, 0 when the two logit tensors are equal.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"kd_kl: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ; student and teacher must predict the same classes"
        )
    t = temperature
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    kl = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    return kl * (t * t)


def softmax_t(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``softmax(z / T)`` along the last dimension, computed in float32."""
    return torch.softmax(logits.float() / temperature, dim=-1)
