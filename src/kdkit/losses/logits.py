"""Response-based (logit) losses. Pure functions of tensors; no modules, no state.

Conventions (see docs/methods.md): every distribution loss is averaged over the batch (``batchmean``), and
temperature-softened KL terms are multiplied by T² so that their gradient magnitude does not shrink as T grows
(Hinton et al., 2015, section 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdkit.errors import ShapeError


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
    # Sum over the labelled samples divided by their count (at least 1): the mean F.cross_entropy takes, without the
    # host-device sync that testing "no labelled sample" with an `if` would cost every step on a GPU.
    total = F.cross_entropy(logits, target, label_smoothing=label_smoothing, ignore_index=ignore_index,
                            reduction="sum")
    return total / (target != ignore_index).sum().clamp_min(1)


def mixed_cross_entropy(logits: Tensor, target_a: Tensor, target_b: Tensor, lam: Tensor,
                        label_smoothing: float = 0.0, ignore_index: int = -1) -> Tensor:
    """Cross-entropy against mixed labels (mixup, Zhang et al. ICLR 2018; CutMix, Yun et al. ICCV 2019).

    ``L = (1/M) Σ_i [λ_i CE(z_i, a_i) + (1 − λ_i) CE(z_i, b_i)]`` over the M samples whose two labels are both known;
    equal to the cross-entropy with the soft target ``λ_i onehot(a_i) + (1 − λ_i) onehot(b_i)`` (CE is linear in the
    target), which is how the reference implementations compute it.

    Args:
        logits: (B, K) student logits.
        target_a: (B,) int64 labels of the samples; target_b: (B,) int64 labels of their partners (-1 = unlabelled).
        lam: (B,) float weight of ``target_a`` (for CutMix the share of pixels kept from the sample).
        label_smoothing: ε applied to each one-hot before mixing.

    Returns:
        Scalar loss; 0 when no sample has both labels.
    """
    if target_a.ndim != 1 or target_b.shape != target_a.shape or lam.shape != target_a.shape:
        raise ValueError(f"mixed_cross_entropy expects (B,) labels and weights, got {tuple(target_a.shape)}, "
                         f"{tuple(target_b.shape)}, {tuple(lam.shape)}")
    keep = (target_a != ignore_index) & (target_b != ignore_index)
    ce_a = F.cross_entropy(logits, target_a, label_smoothing=label_smoothing, ignore_index=ignore_index,
                           reduction="none")
    ce_b = F.cross_entropy(logits, target_b, label_smoothing=label_smoothing, ignore_index=ignore_index,
                           reduction="none")
    lam = lam.to(ce_a.dtype)
    per = torch.where(keep, lam * ce_a + (1.0 - lam) * ce_b, torch.zeros_like(ce_a))
    return per.sum() / keep.sum().clamp_min(1)


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


# ----------------------------------------------------------------------------------------------------------------------
# The rest of the response-based catalogue (issue 3). Same conventions as above unless a docstring says otherwise.


def _check_pair(name: str, student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ShapeError(
            f"{name}: student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            f"differ; student and teacher must predict the same classes"
        )


def _check_temperature(name: str, temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"{name}: temperature must be > 0, got {temperature}")


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Soft-target cross-entropy, ``T² · (1/B) Σ_i −Σ_k p_ik^T log q_ik^T`` (Hinton et al., 2015, eq. 1 form).

    ``p^T = softmax(t/T)`` (teacher, constant), ``q^T = softmax(s/T)`` (student). It differs from :func:`kd_kl` only by
    the teacher entropy ``T²·H(p^T)``, a constant, so the gradients are identical; its minimum (at ``s = t``) is that
    entropy, not 0. TinyBERT's prediction-layer loss is this function (see ``transformer.prediction_soft_ce``);
    DistilBERT's ``L_ce`` is :func:`kd_kl` (the same gradient).

    Args:
        student_logits: (B, K).
        teacher_logits: (B, K); no gradient flows into it.
        temperature: T > 0.

    Returns:
        Scalar, averaged over the batch (``batchmean``) and multiplied by T².
    """
    _check_temperature("soft_cross_entropy", temperature)
    _check_pair("soft_cross_entropy", student_logits, teacher_logits)
    t = temperature
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)
    p = torch.softmax(teacher_logits.detach().float() / t, dim=-1)
    return -(p * log_q).sum(-1).mean() * (t * t)


def logit_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Squared error between logits (Ba & Caruana, 2014, "Do Deep Nets Really Need to be Deep?", NeurIPS).

    ``L = (1/(B·K)) Σ_i Σ_k (s_ik − t_ik)²`` — the mean over *elements*.

    Convention: the paper writes ``1/(2N) Σ_n ‖s_n − t_n‖²`` (a sum over classes). We average over classes as well,
    as Kim et al. (IJCAI 2021, "Comparing KL divergence and MSE in KD") and ``F.mse_loss`` do, because then the weight
    does not scale with K and the term sits next to T²-scaled KD: for zero-mean logits and T → ∞,
    ``kd_kl(s, t, T) → ½ · logit_mse(s, t)`` (Hinton et al., 2015, section 2.1). Paper's value = ``K/2 ·`` ours.

    Args:
        student_logits: (B, K).
        teacher_logits: (B, K); no gradient flows into it.

    Returns:
        Scalar, 0 when the logits are equal.
    """
    _check_pair("logit_mse", student_logits, teacher_logits)
    return F.mse_loss(student_logits.float(), teacher_logits.detach().float())


def target_logprobs(logits: Tensor, target: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """``log p_y`` and ``log(1 − p_y)`` of ``p = softmax(logits / T)``, both to float32's relative precision.

    With ``S = log Σ_{j≠y} exp((z_j − z_y)/T)``: ``log p_y = −softplus(S)`` and ``log(1 − p_y) = −softplus(−S)``.
    The textbook form ``logsumexp_{j≠y}(z/T) − logsumexp(z/T)`` subtracts two nearly equal numbers when p_y is small
    and loses about ``log2(|z|/T / |log(1 − p_y)|)`` bits (relative error ~1e-4 in float32 at ordinary logit scales).

    Args:
        logits: (B, K) float logits, K ≥ 2.
        target: (B,) int64 class indices.
        temperature: T > 0.

    Returns:
        ``(log_py, log_rest)``, each (B,) in the dtype of ``logits``.
    """
    b, k = logits.shape
    rest = ~F.one_hot(target, k).to(torch.bool)
    z_y = logits.gather(1, target[:, None])
    s = torch.logsumexp((logits[rest].view(b, k - 1) - z_y) / temperature, dim=-1)
    return -F.softplus(s), -F.softplus(-s)


def dkd_terms(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float = 4.0
              ) -> tuple[Tensor, Tensor]:
    """Per-sample TCKD and NCKD of decoupled KD (Zhao et al., CVPR 2022), both multiplied by T².

    * TCKD: binary KL between ``b = [p_y, 1 − p_y]`` of teacher and student, with ``p = softmax(z/T)`` and y the label.
    * NCKD: KL between teacher and student distributions over the non-target classes, ``p̂ = softmax`` of the K−1
      non-target tempered logits — the target class is *removed* (gathered out), which is what the reference
      implementation (mdistiller ``dkd_loss``) approximates by subtracting 1000 from the target's tempered logit. The
      approximation fails for large logits (at ×1e3 scale the "removed" target keeps most of the mass); removal is
      exact at any scale.

    Numerics: with ``S = log Σ_{j≠y} exp((z_j − z_y)/T)`` (differences taken before dividing by T, so no digits are lost
    to a large common offset), ``log p_y = −softplus(S)`` and ``log(1 − p_y) = −softplus(−S)``: neither is a
    difference of two nearly equal log-sum-exps, so both keep float32's relative precision whatever p_y is. The
    non-target log-softmax is likewise taken on logits shifted by their row maximum before dividing by T.

    The paper's identity (eq. 4): ``KL(p^T ‖ q^T) = TCKD + (1 − p_y^T) · NCKD`` per sample, with ``p_y^T`` the
    *teacher's* target probability — Hinton KD couples NCKD to the teacher's confidence; DKD decouples them.

    Args:
        student_logits: (B, K), K ≥ 2.
        teacher_logits: (B, K); no gradient flows into it.
        target: (B,) int64 ground-truth class indices (DKD needs labels).
        temperature: T > 0.

    Returns:
        ``(tckd, nckd)``, each (B,) float32.
    """
    _check_temperature("dkd", temperature)
    _check_pair("dkd", student_logits, teacher_logits)
    if target.ndim != 1 or target.shape[0] != student_logits.shape[0]:
        raise ShapeError(f"dkd: target must be (B,) class indices with B={student_logits.shape[0]}, "
                         f"got shape {tuple(target.shape)}")
    if bool((target < 0).any()):
        raise ValueError("dkd needs a label for every sample; drop unlabelled samples (target -1) or use `kd`")
    b, k = student_logits.shape
    if k < 2:
        raise ShapeError(f"dkd: needs at least 2 classes (a target and a non-target part), got {k}")
    t = float(temperature)
    rest = ~F.one_hot(target, k).to(torch.bool)  # (B, K) True at the K−1 non-target classes

    def split(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # log p_y, log(1 − p_y) and the non-target log-softmax (B, K−1), all without cancellation.
        z = z.float()
        z_rest = z[rest].view(b, k - 1)
        log_py, log_rest = target_logprobs(z, target, t)
        shifted = (z_rest - z_rest.max(dim=-1, keepdim=True).values.detach()) / t
        return log_py, log_rest, F.log_softmax(shifted, dim=-1)

    ls_y, ls_rest, log_q_nt = split(student_logits)
    with torch.no_grad():
        lt_y, lt_rest, log_p_nt = split(teacher_logits.detach())
    tckd = lt_y.exp() * (lt_y - ls_y) + lt_rest.exp() * (lt_rest - ls_rest)
    nckd = (log_p_nt.exp() * (log_p_nt - log_q_nt)).sum(-1)
    return tckd * (t * t), nckd * (t * t)


def dkd(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, alpha: float = 1.0, beta: float = 8.0,
        temperature: float = 4.0) -> Tensor:
    """Decoupled knowledge distillation (Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022).

    ``L = (1/B) Σ_i (α · TCKD_i + β · NCKD_i)``, both parts × T² (see :func:`dkd_terms`), ``batchmean``.

    Published CIFAR-100 settings (mdistiller): α = 1, β = 8, T = 4, CE weight 1, and the DKD weight ramped linearly
    from 0 to 1 over the first 20 epochs — that warm-up is the term's schedule (``warmup_epochs: 20``), not part of
    this function. β per pair: 8 (resnet32x4→resnet8x4, →ShuffleNetV2), 6 (vgg13→vgg8, wrn_40_2→wrn_16_2,
    vgg13→MobileNetV2), 2 (resnet56→resnet20).

    With ``alpha = 1`` and ``beta = 1 − p_y^T`` per sample this is exactly :func:`kd_kl`.

    Args:
        student_logits: (B, K).
        teacher_logits: (B, K); no gradient flows into it.
        target: (B,) int64 labels.
        alpha: weight of TCKD.
        beta: weight of NCKD.
        temperature: T > 0.

    Returns:
        Scalar loss, 0 when the logits are equal.
    """
    tckd, nckd = dkd_terms(student_logits, teacher_logits, target, temperature)
    return (alpha * tckd + beta * nckd).mean()


def noisy_teacher_logits(teacher_logits: Tensor, sigma: float = 0.1, p: float = 0.5,
                         generator: torch.Generator | None = None, mode: str = "multiplicative") -> Tensor:
    """Teacher logits perturbed with Gaussian noise, for the noisy-teacher regulariser (Sau & Balasubramanian, 2016,
    "Deep Model Compression: Distilling Knowledge from Noisy Teachers", arXiv:1610.09650).

    Each sample is perturbed with probability ``p`` (independently); a perturbed sample gets
    ``z' = z ⊙ (1 + ξ)`` (``mode="multiplicative"``, the paper's perturbation, also KD_Lib's) or ``z' = z + ξ``
    (``mode="additive"``), with ``ξ ~ N(0, σ²)`` drawn per logit. The paper trains the student on ``z'`` with the logit
    regression loss (:func:`logit_mse`); any logit loss can consume the result.

    Args:
        teacher_logits: (B, K). Returned values are detached (the teacher is a target, never trained through this).
        sigma: σ ≥ 0, standard deviation of ξ.
        p: probability in [0, 1] that a sample is perturbed (the paper's α).
        generator: a ``torch.Generator`` on the logits' device, for reproducible noise.
        mode: "multiplicative" or "additive".

    Returns:
        (B, K) new tensor; unperturbed rows equal the input.
    """
    if sigma < 0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"noisy_teacher_logits: need sigma >= 0 and p in [0, 1], got sigma={sigma}, p={p}")
    if mode not in ("multiplicative", "additive"):
        raise ValueError(f"noisy_teacher_logits: mode must be 'multiplicative' or 'additive', got {mode!r}")
    z = teacher_logits.detach()
    b = z.shape[0]
    chosen = torch.rand(b, generator=generator, device=z.device) < p
    xi = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype) * sigma
    xi = xi * chosen.view(b, *([1] * (z.ndim - 1))).to(z.dtype)
    return z * (1.0 + xi) if mode == "multiplicative" else z + xi


def multilabel_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Multi-label KD with per-class sigmoids: binary cross-entropy between ``σ(s/T)`` and the teacher's ``σ(t/T)``.

    ``L = T² · (1/(B·K)) Σ_i Σ_k −[p_ik log q_ik + (1 − p_ik) log(1 − q_ik)]``, ``p = σ(t/T)``, ``q = σ(s/T)``.

    Each class is its own two-way distribution, so this is Hinton's soft-target loss applied per class; T² keeps the
    gradient scale independent of T (∂L/∂s = T·(q − p)/(BK) → (s − t)/(4BK) for large T). Reduction: mean over classes
    *and* batch — the same reduction as :func:`multilabel_bce` (``BCEWithLogits``' default), so the hard/soft weights
    balance like for like and do not change with the number of labels. The minimum (at ``s = t``) is the teacher's
    mean binary entropy ``T²·H(p)``, not 0; the gradient equals that of the per-class binary KL.

    Args:
        student_logits: (B, K).
        teacher_logits: (B, K); no gradient flows into it.
        temperature: T > 0.
    """
    _check_temperature("multilabel_kd", temperature)
    _check_pair("multilabel_kd", student_logits, teacher_logits)
    t = temperature
    p = torch.sigmoid(teacher_logits.detach().float() / t)
    return F.binary_cross_entropy_with_logits(student_logits.float() / t, p) * (t * t)


def multilabel_bce(logits: Tensor, multi_hot: Tensor) -> Tensor:
    """Hard-label loss for multi-label classification: per-class sigmoid BCE, mean over classes and labelled samples.

    Args:
        logits: (B, K).
        multi_hot: (B, K) with entries in {0, 1} (floats in [0, 1] are accepted as soft labels). A row containing a
            negative value (the batch convention -1) marks an unlabelled sample and is ignored.

    Returns:
        Scalar; 0 (with a graph) when no sample in the batch is labelled.
    """
    if multi_hot.shape != logits.shape:
        raise ShapeError(f"multilabel_bce: targets {tuple(multi_hot.shape)} must match logits {tuple(logits.shape)} "
                         f"(multi-hot, one column per class)")
    labelled = ~(multi_hot < 0).any(dim=-1)
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[labelled].float(), multi_hot[labelled].float())
