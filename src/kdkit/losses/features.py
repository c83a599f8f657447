"""Feature-based losses: FitNets hints, attention transfer, similarity-preserving KD.

Pure functions of feature tensors. Conventions follow RepDistiller (Tian et al., the CIFAR-100 benchmark code), whose
published loss weights (hint ×100, AT ×1000, SP ×3000) were tuned for exactly these normalisations; docs/methods.md
states where that differs from each paper's formula. Teacher features are detached here as well as by the taps, so a
teacher never receives a gradient through these functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kdkit.errors import ShapeError


def fitnet_hint(s_feat_mapped: Tensor, t_feat: Tensor) -> Tensor:
    """FitNets hint loss (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

    ``L = mean over all elements of (r(u_s) − u_t)²`` where ``r`` is the regressor g(m) (a connector from
    :mod:`kdkit.connectors`) already applied by the caller to the student's guided-layer output ``u_s``, and ``u_t``
    is the teacher's hint-layer output.

    Convention: the paper writes ``½‖u_t − r(u_s)‖²`` (a sum); RepDistiller uses ``nn.MSELoss()`` (mean over
    B·C·H·W elements) with weight β = 100 on the middle stage (``hint_layer=2``) — we follow the mean so that weight
    applies. The paper's two stages (hint pre-training, then KD) are a pipeline matter, not this function's.

    Args:
        s_feat_mapped: (B, ...) student feature mapped to the teacher's shape.
        t_feat: (B, ...) teacher feature, same shape; no gradient flows into it.

    Returns:
        Scalar, 0 when the two are equal.
    """
    if s_feat_mapped.shape != t_feat.shape:
        raise ShapeError(
            f"fitnet_hint: mapped student feature {tuple(s_feat_mapped.shape)} and teacher feature "
            f"{tuple(t_feat.shape)} differ; the connector must map the student layer to the teacher's shape"
        )
    return F.mse_loss(s_feat_mapped.float(), t_feat.detach().float())


def at_map(f: Tensor, p: float = 2.0) -> Tensor:
    """Spatial attention map of a feature map (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017).

    ``Q = vec(mean_c |A_c|^p)`` L2-normalised per sample. The paper's ``F_sum^p = Σ_c |A_c|^p``; the mean over
    channels differs by the constant C, which the normalisation removes. (RepDistiller uses ``A^p`` without the
    absolute value, identical for even p and for post-ReLU features.)

    The same definition applies unchanged to 1-D conv maps (B, C, L): attention over the L positions.

    Args:
        f: (B, C, H, W) or (B, C, L) feature map.
        p: the power p > 0 (the paper uses p = 2).

    Returns:
        (B, H·W) or (B, L) unit-norm rows (a zero map stays zero).
    """
    if f.ndim not in (3, 4):
        raise ShapeError(f"at_map expects a (B, C, H, W) or (B, C, L) feature map, got {tuple(f.shape)}")
    a = f.float().abs().pow(p).mean(dim=1)
    return F.normalize(a.flatten(1), p=2, dim=1)


def _match_spatial(fs: Tensor, ft: Tensor, resize: bool, name: str) -> tuple[Tensor, Tensor]:
    if fs.ndim != ft.ndim or fs.ndim not in (3, 4):
        raise ShapeError(f"{name}: expects two (B, C, H, W) or two (B, C, L) maps, got student {tuple(fs.shape)} "
                         f"and teacher {tuple(ft.shape)}")
    if fs.shape[0] != ft.shape[0]:
        raise ShapeError(f"{name}: batch sizes differ, student {tuple(fs.shape)} vs teacher {tuple(ft.shape)}")
    if fs.shape[2:] == ft.shape[2:]:
        return fs, ft
    if not resize:
        raise ShapeError(
            f"{name}: spatial sizes differ, student {tuple(fs.shape)} vs teacher {tuple(ft.shape)}; pair layers of "
            f"equal resolution (see kdkit.connectors.pair_stages) or allow resizing"
        )
    # RepDistiller's rule: average-pool the larger map down to the smaller one (per dimension).
    size = tuple(min(a, b) for a, b in zip(fs.shape[2:], ft.shape[2:], strict=True))
    pool = F.adaptive_avg_pool2d if fs.ndim == 4 else F.adaptive_avg_pool1d
    if tuple(fs.shape[2:]) != size:
        fs = pool(fs, size)
    if tuple(ft.shape[2:]) != size:
        ft = pool(ft, size)
    return fs, ft


def attention_transfer(s_feats: Tensor | Sequence[Tensor], t_feats: Tensor | Sequence[Tensor], p: float = 2.0,
                       resize: bool = True, reduction: str = "sum") -> Tensor:
    """Activation-based attention transfer (Zagoruyko & Komodakis, ICLR 2017).

    Per pair j: ``ℓ_j = mean_{b, hw} (Q_s,j − Q_t,j)²`` with ``Q = at_map(·, p)``; the loss combines the pairs with
    ``reduction`` ("sum", default, or "mean").

    Convention: the paper's ``β/2 · Σ_j ‖Q_s/‖Q_s‖ − Q_t/‖Q_t‖‖_p`` is implemented by both the authors' code and
    RepDistiller as the *squared* difference averaged over batch and positions, *summed* over the pairs
    (RepDistiller: ``sum(loss_group)`` over the three/four stage outputs) with β = 1000. Summing keeps that published
    weight valid; "mean" divides it by the number of pairs. When the two maps of a pair have different spatial sizes
    the larger feature is average-pooled to the smaller (RepDistiller's rule, needed for cross-architecture pairs);
    ``resize=False`` raises :class:`ShapeError` instead.

    1-D conv maps (B, C, L) work the same way (attention over positions; lengths pooled to the shorter).

    Args:
        s_feats: one (B, C_s, H, W) (or (B, C_s, L)) student map or a sequence of them.
        t_feats: the matching teacher map(s) (B, C_t, H', W'); channel counts may differ. No gradient flows into them.
        p: attention power.
        resize: pool mismatched spatial sizes (True) or raise.
        reduction: "sum" or "mean" over pairs.

    Returns:
        Scalar, 0 when each student map is a positive multiple of its teacher map.
    """
    ss = [s_feats] if isinstance(s_feats, Tensor) else list(s_feats)
    ts = [t_feats] if isinstance(t_feats, Tensor) else list(t_feats)
    if len(ss) != len(ts) or not ss:
        raise ShapeError(f"attention_transfer: got {len(ss)} student and {len(ts)} teacher feature maps; "
                         f"they must pair one to one (and at least one)")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"attention_transfer: reduction must be 'sum' or 'mean', got {reduction!r}")
    losses = []
    for fs, ft in zip(ss, ts, strict=True):
        fs, ft = _match_spatial(fs, ft.detach(), resize, "attention_transfer")
        losses.append((at_map(fs, p) - at_map(ft, p)).pow(2).mean())
    total = torch.stack(losses).sum()
    return total if reduction == "sum" else total / len(losses)


def similarity_matrix(f: Tensor) -> Tensor:
    """Row-normalised batch similarity ``G = normalize_rows(F Fᵀ)`` of flattened features, (B, ...) -> (B, B)."""
    flat = f.float().flatten(1)
    return F.normalize(flat @ flat.t(), p=2, dim=1)


def similarity_preserving(s_feat: Tensor, t_feat: Tensor) -> Tensor:
    """Similarity-preserving KD (Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019).

    ``L = ‖G_s − G_t‖_F² / B²`` with ``G = normalize_rows(F Fᵀ)`` over the flattened (B, C·H·W) activations; the two
    features may have any (different) shapes with the same batch size. Published: γ = 3000 on the last stage's output
    (RepDistiller ``feat[-2]``, "verified by the original author"). The paper sums over layer pairs; kdkit terms sum
    this function over the pairs they are given. Matches the paper's formula exactly.

    Args:
        s_feat: (B, ...) student activations.
        t_feat: (B, ...) teacher activations; no gradient flows into them.

    Returns:
        Scalar, 0 when the student's activations are a positive multiple of the teacher's (or of any features with the
        same normalised similarities).
    """
    if s_feat.shape[0] != t_feat.shape[0]:
        raise ShapeError(f"similarity_preserving: batch sizes differ, student {tuple(s_feat.shape)} vs teacher "
                         f"{tuple(t_feat.shape)}")
    b = s_feat.shape[0]
    diff = similarity_matrix(s_feat) - similarity_matrix(t_feat.detach())
    return diff.pow(2).sum() / (b * b)


# ----------------------------------------------------------------------------------------------------------------------
# Issue 17: neuron selectivity transfer (NST) and variational information distillation (VID).


def _spatial_pair(name: str, fs: Tensor, ft: Tensor) -> tuple[Tensor, Tensor]:
    """Both maps at the smaller spatial size (RepDistiller's rule), flattened to (B, C, H·W); the teacher detached."""
    fs, ft = _match_spatial(fs, ft.detach(), True, name)
    return fs.float().flatten(2), ft.float().flatten(2)


def _poly2_mean(a: Tensor, b: Tensor) -> Tensor:
    """``mean_{n,i,j} ⟨a_ni, b_nj⟩²`` over (B, C_a, M) and (B, C_b, M): the mean of the degree-2 polynomial kernel."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


def nst_loss(s_feat: Tensor, t_feat: Tensor) -> Tensor:
    """Neuron selectivity transfer (Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity
    Transfer", arXiv:1707.01219, 2017, eqs. 3-6) with the polynomial kernel k(x, y) = (xᵀy)² (their best, d = 2, c = 0).

    Each channel's spatial map, flattened and L2-normalised (``f_i ∈ R^{HW}``, ‖f_i‖ = 1), is one sample of the
    layer's distribution of neuron selectivity; the student's and the teacher's are compared by the squared MMD,
    per sample and averaged over the batch:
    ``L = mean_{i,i'} k(t_i, t_i') + mean_{j,j'} k(s_j, s_j') − 2·mean_{i,j} k(s_j, t_i)``.

    Channel counts may differ (MMD compares distributions); a larger map is average-pooled to the smaller one.

    Convention: RepDistiller's (its published weight 50 assumes it): the three means over (B, C, C') entries, the
    teacher-only term detached (a constant), pairs summed by the term; the paper's β/2 is in the weight.

    Args:
        s_feat: (B, C_s, H, W) or (B, C_s, L) student map.
        t_feat: (B, C_t, H', W') or (B, C_t, L') teacher map; no gradient flows into it.

    Returns:
        Scalar >= 0 (an MMD²); 0 when the normalised channel sets coincide (e.g. the student's channels are a
        permutation or positive rescaling of the teacher's).
    """
    fs, ft = _spatial_pair("nst_loss", s_feat, t_feat)
    fs, ft = F.normalize(fs, p=2, dim=2), F.normalize(ft, p=2, dim=2)
    return _poly2_mean(ft, ft).detach() + _poly2_mean(fs, fs) - 2.0 * _poly2_mean(fs, ft)


def vid_nll(pred_mean: Tensor, t_feat: Tensor, log_scale: Tensor, eps: float = 1e-5) -> Tensor:
    """Variational information distillation (Ahn, Hu, Damianou, Lawrence & Dai, "Variational Information Distillation
    for Knowledge Transfer", CVPR 2019, eqs. 2-5): the negative log-likelihood of the teacher's feature under a
    Gaussian predicted from the student's, with a learned per-channel variance.

    ``σ_c² = softplus(α_c) + eps``, ``L = mean_{b,c,h,w} ½·((t − μ)² / σ_c² + log σ_c²)`` — the mean of
    ``−log N(t; μ, σ²)`` without its constant ½·log 2π. Minimising it over μ (the regressor on the student's feature)
    and α maximises a variational lower bound on the mutual information between the two features.

    Convention: RepDistiller's (published weight 1 per pair assumes it): the mean over all elements (the paper sums
    over channels and positions), the constant dropped, eps = 1e-5, σ² initialised to 5 by the term.

    Args:
        pred_mean: (B, C, ...) μ, the regressor's output on the student feature (same shape as ``t_feat``).
        t_feat: (B, C, ...) teacher feature; no gradient flows into it.
        log_scale: (C,) α, the variance parameters.
        eps: lower bound of the variance.

    Returns:
        Scalar; its minimum over μ for fixed σ is ½·mean(log σ²) (at μ = t).
    """
    if pred_mean.shape != t_feat.shape or log_scale.shape != (t_feat.shape[1],):
        raise ShapeError(f"vid_nll: prediction {tuple(pred_mean.shape)}, teacher feature {tuple(t_feat.shape)} and "
                         f"log_scale {tuple(log_scale.shape)} must be (B, C, ...), (B, C, ...) and (C,)")
    var = F.softplus(log_scale.float()) + eps
    var = var.view(1, -1, *([1] * (t_feat.ndim - 2)))
    return (0.5 * ((pred_mean.float() - t_feat.detach().float()).pow(2) / var + torch.log(var))).mean()


def vid_log_scale_init(init_var: float = 5.0, eps: float = 1e-5) -> float:
    """α such that softplus(α) + eps = ``init_var`` (the reference's initial variance 5)."""
    return float(torch.log(torch.expm1(torch.tensor(init_var - eps, dtype=torch.float64))))


# ----------------------------------------------------------------------------------------------------------------------
# Issue 17: flow of solution procedure (FSP) and activation boundaries (AB).


def fsp_matrix(lower: Tensor, upper: Tensor) -> Tensor:
    """The FSP ("flow of solution procedure") matrix of two maps of one network:
    ``G_{ij} = (1/(H·W)) Σ_{h,w} upper_{i,h,w} · lower_{j,h,w}``, (B, C_l, H, W) × (B, C_u, H', W') -> (B, C_u, C_l).

    The larger map is average-pooled to the smaller one's size first (RepDistiller's rule; the paper pairs maps of
    equal size). Works for (B, C, L) maps as well.
    """
    lower, upper = _match_spatial(lower, upper, True, "fsp_matrix")
    lo, up = lower.float().flatten(2), upper.float().flatten(2)
    return torch.bmm(up, lo.transpose(1, 2)) / lo.shape[2]


def fsp_loss(s_feats: Sequence[Tensor], t_feats: Sequence[Tensor]) -> Tensor:
    """FSP distillation (Yim, Joo, Bae & Kim, "A Gift from Knowledge Distillation: Fast Optimization, Network
    Minimization and Transfer Learning", CVPR 2017, eqs. 1-2).

    For consecutive tapped maps ``f_0, f_1, ... f_n`` of each network, ``G_k = fsp_matrix(f_k, f_{k+1})``, and
    ``L = Σ_k mean_{b,i,j} (G^s_k − G^t_k)²``.

    Convention: RepDistiller's (its weight 50 assumes it): a mean over the (B, C_u, C_l) entries per layer pair (the
    paper sums over entries with λ_k = 1 and averages over the batch), summed over the pairs. The student's and the
    teacher's maps must have equal channel counts pair by pair (the paper's premise; the ``fsp`` term can map the
    student's first with a connector).

    Args:
        s_feats: n + 1 >= 2 student maps (B, C_k, H_k, W_k), shallow to deep.
        t_feats: the teacher's n + 1 maps with the same channel counts; no gradient flows into them.

    Returns:
        Scalar, 0 when the FSP matrices coincide.
    """
    if len(s_feats) != len(t_feats) or len(s_feats) < 2:
        raise ShapeError(f"fsp_loss: needs the same number (>= 2) of student and teacher maps, got {len(s_feats)} and "
                         f"{len(t_feats)}")
    losses = []
    for k in range(len(s_feats) - 1):
        g_s = fsp_matrix(s_feats[k], s_feats[k + 1])
        with torch.no_grad():
            g_t = fsp_matrix(t_feats[k].detach(), t_feats[k + 1].detach())
        if g_s.shape != g_t.shape:
            raise ShapeError(f"fsp_loss: FSP matrices of maps {k}-{k + 1} differ, student {tuple(g_s.shape)} vs "
                             f"teacher "
                             f"{tuple(g_t.shape)}; FSP needs equal channel counts (map the student's with a connector)")
        losses.append((g_s - g_t).pow(2).mean())
    return torch.stack(losses).sum()


def ab_margin_loss(s_mapped: Tensor, t_feat: Tensor, margin: float = 1.0) -> Tensor:
    """Activation-boundary loss of one layer, summed over its elements and averaged over the batch (Heo, Lee, Yun &
    Choi, "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons", AAAI 2019, eq. 6):

    ``(1/B) Σ [ 1(t > 0) · ReLU(μ − r)² + 1(t ≤ 0) · ReLU(μ + r)² ]`` — the student's mapped pre-activation ``r``
    is pushed above +μ where the teacher's neuron is active and below −μ where it is not: only *which side of the
    boundary* counts, not the value. The teacher's sign is the same before or after its ReLU.

    Args:
        s_mapped: (B, C, ...) the student's feature mapped by the connector r(·) (no ReLU after it).
        t_feat: (B, C, ...) the teacher's feature (pre- or post-ReLU); no gradient flows into it.
        margin: μ >= 0.

    Returns:
        Scalar, 0 when every mapped student neuron is on the teacher's side with margin μ.
    """
    if s_mapped.shape != t_feat.shape:
        raise ShapeError(f"ab_margin_loss: mapped student feature {tuple(s_mapped.shape)} and teacher feature "
                         f"{tuple(t_feat.shape)} differ; map the student's with a connector")
    s = s_mapped.float()
    on = t_feat.detach() > 0
    loss = torch.where(on, F.relu(margin - s).pow(2), F.relu(margin + s).pow(2))
    return loss.sum() / s.shape[0]


def ab_loss(s_mapped: Sequence[Tensor], t_feats: Sequence[Tensor], margin: float = 1.0) -> Tensor:
    """AB over layers, shallow to deep: ``(3/1000) · Σ_i 2^{i−n+1} · ab_margin_loss(r_i(s_i), t_i)``.

    Convention: RepDistiller's / the authors' (their loss scale assumes it): layer i of n weighted 2^{i−n+1} (the
    deepest 1, each shallower one half the next), the sum over elements divided by the batch size and scaled by
    3/1000, margin μ = 1. The paper trains AB alone as an initialisation before the classification loss; in kdkit that
    is the term's ``stop_epoch`` (``recipes/methods/ab.yaml``).
    """
    if len(s_mapped) != len(t_feats) or not s_mapped:
        raise ShapeError(f"ab_loss: needs as many student as teacher layers (>= 1), got {len(s_mapped)} and "
                         f"{len(t_feats)}")
    n = len(s_mapped)
    parts = [2.0 ** (i - n + 1) * ab_margin_loss(s, t, margin) for i, (s, t) in enumerate(zip(s_mapped, t_feats,
                                                                                            strict=True))]
    return torch.stack(parts).sum() * (3.0 / 1000.0)


def hcl_loss(s_feats: Sequence[Tensor], t_feats: Sequence[Tensor], pool_sizes: Sequence[int] = (4, 2, 1),
             decay: float = 0.5) -> Tensor:
    """Hierarchical context loss of ReviewKD (Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review",
    CVPR 2021, sec. 3.3): each level's fused student map is compared with the teacher's at its full resolution and
    at coarser context levels obtained by average pooling (a spatial pyramid).

    For a level with maps ``F_s, F_t`` of shape (B, C, H, W) and pyramid sizes ``l_1 > l_2 > ...`` (4, 2, 1):
    ``HCL(F_s, F_t) = Σ_k w_k · MSE(P_k(F_s), P_k(F_t)) / Σ_k w_k``, where ``P_0`` is the identity with ``w_0 = 1``,
    ``P_k`` the adaptive average pool to ``min(l_k, H) × min(l_k, W)`` with ``w_k = decay^k``, and MSE the mean over
    all elements. A pyramid size that would not shrink the map is skipped and does not count in the weights (a 4×4
    map gets levels 4×4, 2×2, 1×1 with weights 1, ½, ¼). The loss is the sum over levels.

    Convention: the reference implementation's (dvlab-research/ReviewKD, mdistiller ``hcl_loss``; its CIFAR-100 loss
    weight 1 assumes it): pyramid 4, 2, 1, weights 1, 0.5, 0.25, 0.125 normalised by their sum, mean squared error.
    The paper writes the pyramid sum without saying how levels are weighted; ``decay`` = 1 gives equal weights.

    Args:
        s_feats: per level, (B, C, H, W) student maps (already fused and mapped to the teacher's shapes by ABF).
        t_feats: per level, (B, C, H, W) teacher maps of the same shapes; no gradient flows into them.
        pool_sizes: the pyramid's pooled sizes, coarsening.
        decay: weight ratio between consecutive pyramid levels.

    Returns:
        Scalar >= 0, 0 when every pair of maps is equal.
    """
    if len(s_feats) != len(t_feats) or not s_feats:
        raise ShapeError(f"hcl_loss: needs as many student as teacher levels (>= 1), got {len(s_feats)} and "
                         f"{len(t_feats)}")
    total = s_feats[0].new_zeros(())
    for i, (fs, ft) in enumerate(zip(s_feats, t_feats, strict=True)):
        if fs.shape != ft.shape or fs.ndim != 4:
            raise ShapeError(f"hcl_loss: level {i} student map {tuple(fs.shape)} and teacher map {tuple(ft.shape)} "
                             f"must be equal (B, C, H, W) shapes; ABF maps the student's to the teacher's")
        ft = ft.detach()
        h, w = fs.shape[2:]
        level, weight, weights = F.mse_loss(fs, ft), 1.0, 1.0
        for size in pool_sizes:
            out = (min(size, h), min(size, w))
            if out == (h, w):
                continue
            weight *= decay
            level = level + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, out), F.adaptive_avg_pool2d(ft, out))
            weights += weight
        total = total + level / weights
    return total


def review_fuse(x: Tensor, residual: Tensor, attention: Tensor) -> Tensor:
    """ReviewKD's attention-based fusion (ABF, sec. 3.2): ``x · a_0 + up(r) · a_1`` per pixel.

    Args:
        x: (B, C, H, W) this level's student map (after ABF's 1×1 conv).
        residual: (B, C, h, w) the fused map of the next deeper level; resized to H × W by nearest neighbour (the
            reference's ``F.interpolate(mode="nearest")``).
        attention: (B, 2, H, W) the two attention maps in [0, 1] (a 1×1 conv and a sigmoid over ``cat(x, up(r))``).

    Returns:
        (B, C, H, W) fused map.
    """
    if x.shape[:2] != residual.shape[:2] or attention.shape != (x.shape[0], 2, *x.shape[2:]):
        raise ShapeError(f"review_fuse: x {tuple(x.shape)}, residual {tuple(residual.shape)} and attention "
                         f"{tuple(attention.shape)} do not fit: need (B, C, H, W), (B, C, h, w) and (B, 2, H, W)")
    if residual.shape[2:] != x.shape[2:]:
        residual = F.interpolate(residual, size=tuple(x.shape[2:]), mode="nearest")
    return x * attention[:, :1] + residual * attention[:, 1:2]
