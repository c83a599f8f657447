"""DKD numerics (issue 14): the target class is removed exactly, and log(1 − p_y) keeps float32's precision.

References are float64 evaluations of the paper's definitions on the same float32 inputs.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdkit.losses.logits import dkd_terms, target_logprobs

EPS32 = torch.finfo(torch.float32).eps


def _reference(zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TCKD and NCKD × T² in float64, from the definitions: binary KL of [p_y, 1 − p_y]; KL of the renormalised
    distributions over the K − 1 non-target classes (the target dropped, not masked)."""

    def parts(z: torch.Tensor):
        z = z.double() / t
        m = F.one_hot(y, z.shape[1]).bool()
        lse = torch.logsumexp(z, -1)
        log_py = z.gather(1, y[:, None]).squeeze(1) - lse
        # log(1 − p) by log1p where p is small, by the log-sum-exp difference where it is not (no cancellation then)
        log_rest = torch.where(log_py < -math.log(2), torch.log1p(-log_py.exp()),
                               torch.logsumexp(z.masked_fill(m, -math.inf), -1) - lse)
        return log_py, log_rest, torch.log_softmax(z[~m].view(z.shape[0], -1), -1)

    sy, sr, sq = parts(zs)
    ty, tr, tp = parts(zt)
    tckd = ty.exp() * (ty - sy) + tr.exp() * (tr - sr)
    nckd = (tp.exp() * (tp - sq)).sum(-1)
    return tckd * t * t, nckd * t * t


def _pair(scale: float, seed: int = 0, b: int = 128, k: int = 100):
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(b, k, generator=g) * scale
    zt = torch.randn(b, k, generator=g) * scale
    y = torch.randint(0, k, (b,), generator=g)
    # a trained teacher: the target beats every other class by a margin that grows with the scale
    zt = zt.scatter(1, y[:, None], zt.max(1, keepdim=True).values + 3 * scale)
    return zs, zt, y


@pytest.mark.parametrize("scale", [1.0, 10.0, 1e3])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_terms_match_float64_reference_at_any_logit_scale(scale, temperature):
    zs, zt, y = _pair(scale)
    tckd, nckd = dkd_terms(zs, zt, y, temperature)
    ref_t, ref_n = _reference(zs, zt, y, temperature)
    # Tolerance: each float32 tempered logit of magnitude M carries an absolute rounding of about eps·M/T, which every
    # log-probability inherits; a few dozen operations follow, hence 16·eps·(1 + M/T), times the T² factor.
    m = torch.maximum(zs.abs().amax(1), zt.abs().amax(1)).double()
    tol = temperature**2 * 16 * EPS32 * (1 + m / temperature)
    assert torch.all((tckd.double() - ref_t).abs() <= tol)
    assert torch.all((nckd.double() - ref_n).abs() <= tol)


def test_dkd_removes_the_target_exactly_where_a_minus_1000_mask_fails():
    zs, zt, y = _pair(1e3)
    t = 1.0
    # The reference implementation's mask: at ×1e3 scale the "removed" target still holds the non-target mass.
    masked = torch.softmax(zt / t - 1000.0 * F.one_hot(y, zt.shape[1]), -1).gather(1, y[:, None])
    assert float(masked.min()) > 0.99
    _, nckd = dkd_terms(zs, zt, y, t)
    _, ref_n = _reference(zs, zt, y, t)
    assert torch.isfinite(nckd).all()
    # relative: the non-target KL at this scale is large (hundreds), far from the absolute rounding of the logits
    rel = ((nckd.double() - ref_n).abs() / ref_n.abs().clamp_min(1.0)).max()
    assert float(rel) < 1e-5  # 1e-5 ≈ 80·eps32: M/T = 3e3 enters only through the ±max shift, see the docstring


def test_target_logprobs_keep_relative_precision_when_p_y_is_small():
    # p_y small: log(1 − p_y) ≈ −p_y is tiny, where a difference of two log-sum-exps cancels
    g = torch.Generator().manual_seed(1)
    z = torch.randn(256, 100, generator=g) * 5
    y = z.argmin(1)  # the least likely class as the target
    log_py, log_rest = target_logprobs(z, y, 4.0)
    zd = z.double() / 4.0
    ref_py = zd.gather(1, y[:, None]).squeeze(1) - torch.logsumexp(zd, -1)
    ref_rest = torch.log1p(-ref_py.exp())
    rel_rest = ((log_rest.double() - ref_rest).abs() / ref_rest.abs()).max()
    rel_py = ((log_py.double() - ref_py).abs() / ref_py.abs()).max()
    # a handful of float32 roundings on a well-conditioned formula: within 16 ulps relative
    assert float(rel_rest) < 16 * EPS32
    assert float(rel_py) < 16 * EPS32
    # the textbook form loses digits here (this is what the stable form replaces)
    zf = z / 4.0
    m = F.one_hot(y, 100).bool()
    naive = torch.logsumexp(zf.masked_fill(m, -math.inf), -1) - torch.logsumexp(zf, -1)
    assert float(((naive.double() - ref_rest).abs() / ref_rest.abs()).max()) > 100 * EPS32


def test_dkd_gradient_is_finite_at_large_scale():
    zs, zt, y = _pair(1e3)
    zs.requires_grad_(True)
    tckd, nckd = dkd_terms(zs, zt, y, 4.0)
    (tckd + 8 * nckd).mean().backward()
    assert torch.isfinite(zs.grad).all()


def test_dkd_needs_two_classes():
    from kdkit.errors import ShapeError

    with pytest.raises(ShapeError, match="at least 2 classes"):
        dkd_terms(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))
