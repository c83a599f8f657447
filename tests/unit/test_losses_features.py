"""Feature losses: FitNets hint, attention transfer, similarity-preserving KD (numpy references, invariances)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdkit.errors import ShapeError
from kdkit.losses.features import (
    ab_loss,
    ab_margin_loss,
    at_map,
    attention_transfer,
    fitnet_hint,
    fsp_loss,
    fsp_matrix,
    nst_loss,
    similarity_preserving,
    vid_log_scale_init,
    vid_nll,
)


def _maps(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g) for s in shapes]


def _np_at(f, p=2.0):
    a = np.mean(np.abs(f) ** p, axis=1).reshape(f.shape[0], -1)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------------- FitNets


def test_fitnet_hint_value_zero_and_grads():
    s, t = _maps((4, 8, 5, 5), (4, 8, 5, 5))
    ref = np.mean((s.double().numpy() - t.double().numpy()) ** 2)
    assert float(fitnet_hint(s, t)) == pytest.approx(ref, rel=1e-6)
    assert float(fitnet_hint(t, t.clone())) == 0.0
    s, t = s.requires_grad_(True), t.requires_grad_(True)
    fitnet_hint(s, t).backward()
    assert s.grad is not None and t.grad is None


def test_fitnet_hint_shape_error_names_both_shapes():
    with pytest.raises(ShapeError, match=r"\(2, 8, 4, 4\).*\(2, 16, 4, 4\)"):
        fitnet_hint(torch.randn(2, 8, 4, 4), torch.randn(2, 16, 4, 4))


# ---------------------------------------------------------------------------------------------------- AT


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_at_map_matches_numpy_and_is_unit_norm(p):
    (f,) = _maps((3, 6, 4, 5))
    q = at_map(f, p)
    np.testing.assert_allclose(q.double().numpy(), _np_at(f.double().numpy(), p), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(q.norm(dim=1), torch.ones(3))


def test_at_map_invariant_to_positive_scaling_and_channel_duplication():
    (f,) = _maps((2, 4, 6, 6), seed=1)
    torch.testing.assert_close(at_map(3.7 * f), at_map(f))
    torch.testing.assert_close(at_map(torch.cat([f, f], 1)), at_map(f))  # channel count does not matter


def test_attention_transfer_sum_over_pairs_matches_loop():
    s1, s2, t1, t2 = _maps((4, 8, 8, 8), (4, 16, 4, 4), (4, 32, 8, 8), (4, 64, 4, 4), seed=2)
    ref = 0.0
    for s, t in ((s1, t1), (s2, t2)):
        ref += np.mean((_np_at(s.double().numpy()) - _np_at(t.double().numpy())) ** 2)
    assert float(attention_transfer([s1, s2], [t1, t2])) == pytest.approx(ref, rel=1e-5)
    assert float(attention_transfer([s1, s2], [t1, t2], reduction="mean")) == pytest.approx(ref / 2, rel=1e-5)
    assert float(attention_transfer(s1, t1)) == pytest.approx(float(attention_transfer([s1], [t1])), rel=1e-6)


def test_attention_transfer_zero_for_scaled_teacher_and_no_teacher_grad():
    s, t = _maps((4, 8, 6, 6), (4, 8, 6, 6), seed=3)
    assert float(attention_transfer(2.5 * t, t)) == pytest.approx(0.0, abs=1e-12)
    s, t = s.requires_grad_(True), t.requires_grad_(True)
    attention_transfer(s, t).backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0 and t.grad is None


def test_attention_transfer_spatial_mismatch_pools_or_raises():
    s, t = _maps((2, 8, 8, 8), (2, 16, 4, 4), seed=4)
    pooled = F.adaptive_avg_pool2d(s, (4, 4)).double().numpy()
    ref = np.mean((_np_at(pooled) - _np_at(t.double().numpy())) ** 2)
    assert float(attention_transfer(s, t)) == pytest.approx(ref, rel=1e-5)
    with pytest.raises(ShapeError, match=r"\(2, 8, 8, 8\).*\(2, 16, 4, 4\)"):
        attention_transfer(s, t, resize=False)
    with pytest.raises(ShapeError, match="pair one to one"):
        attention_transfer([s, s], [t])


def test_attention_transfer_published_weight_scale():
    # With β = 1000 and RepDistiller's sum over 3 stages, the weighted term on unrelated random maps is O(1):
    # each map has H·W unit-norm entries, so (Q_s − Q_t)² averages ~ 2/(H·W) at most.
    ss = _maps((8, 16, 32, 32), (8, 32, 16, 16), (8, 64, 8, 8), seed=5)
    ts = _maps((8, 64, 32, 32), (8, 128, 16, 16), (8, 256, 8, 8), seed=6)
    weighted = 1000 * float(attention_transfer([F.relu(x) for x in ss], [F.relu(x) for x in ts]))
    assert 0.01 < weighted < 50.0


# ---------------------------------------------------------------------------------------------------- SP


def _np_sp(s, t):
    def g(f):
        f = f.reshape(f.shape[0], -1)
        m = f @ f.T
        return m / np.linalg.norm(m, axis=1, keepdims=True)

    b = s.shape[0]
    return np.sum((g(s) - g(t)) ** 2) / (b * b)


def test_similarity_preserving_matches_numpy_with_different_shapes():
    s, t = _maps((6, 8, 4, 4), (6, 32, 2, 2), seed=7)
    assert float(similarity_preserving(s, t)) == pytest.approx(_np_sp(s.double().numpy(), t.double().numpy()),
                                                               rel=1e-5)


def test_similarity_preserving_scale_invariance_zero_and_grads():
    s, t = _maps((6, 8, 4, 4), (6, 16, 4, 4), seed=8)
    base = float(similarity_preserving(s, t))
    assert float(similarity_preserving(5.0 * s, t)) == pytest.approx(base, rel=1e-5)
    assert float(similarity_preserving(s, 0.2 * t)) == pytest.approx(base, rel=1e-5)
    assert float(similarity_preserving(3.0 * t, t)) == pytest.approx(0.0, abs=1e-10)
    s, t = s.requires_grad_(True), t.requires_grad_(True)
    similarity_preserving(s, t).backward()
    assert s.grad is not None and t.grad is None
    with pytest.raises(ShapeError, match="batch"):
        similarity_preserving(torch.randn(3, 4), torch.randn(4, 4))


# -- NST and VID (issue 17) -------------------------------------------------------------------------------------------
# Tolerances: float32 functions vs float64 loops over small maps (C <= 6, H·W <= 16): a few float32 eps (1.2e-7) of
# relative error per entry; rel=1e-5 (~100 eps) is far below a formula error.

def _np_nst(fs, ft):
    def unit(f):
        f = f.reshape(f.shape[0], f.shape[1], -1)
        return f / np.linalg.norm(f, axis=2, keepdims=True)

    s, t = unit(fs), unit(ft)
    b = s.shape[0]
    total = 0.0
    for n in range(b):  # squared MMD per sample with k(x, y) = (x·y)², then the batch mean
        k_tt = np.mean([(x @ y) ** 2 for x in t[n] for y in t[n]])
        k_ss = np.mean([(x @ y) ** 2 for x in s[n] for y in s[n]])
        k_st = np.mean([(x @ y) ** 2 for x in s[n] for y in t[n]])
        total += k_tt + k_ss - 2 * k_st
    return total / b


def test_nst_matches_numpy_mmd_and_identities():
    g = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(3, 4, 4, 4, generator=g), torch.randn(3, 6, 4, 4, generator=g)
    assert float(nst_loss(fs, ft)) == pytest.approx(_np_nst(fs.double().numpy(), ft.double().numpy()), rel=1e-5)
    # a larger student map is average-pooled to the teacher's size first (RepDistiller's rule)
    big = torch.randn(3, 4, 8, 8, generator=g)
    pooled = torch.nn.functional.adaptive_avg_pool2d(big, (4, 4)).double().numpy()
    assert float(nst_loss(big, ft)) == pytest.approx(_np_nst(pooled, ft.double().numpy()), rel=1e-5)
    # identical channel sets up to order and positive scale -> 0 (MMD of equal distributions)
    perm = ft[:, torch.randperm(6, generator=g)] * 2.5
    assert float(nst_loss(perm, ft)) == pytest.approx(0.0, abs=1e-6)  # cancellation of O(1) means: ~10 float32 eps
    assert float(nst_loss(fs, ft)) > 1e-3
    s = fs.clone().requires_grad_(True)
    t = ft.clone().requires_grad_(True)
    nst_loss(s, t).backward()
    assert s.grad is not None and t.grad is None


def test_vid_matches_gaussian_nll_and_its_minimum():
    g = torch.Generator().manual_seed(1)
    mu, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    alpha = torch.tensor([0.3, -1.0, 2.0])
    var = np.log1p(np.exp(alpha.double().numpy())) + 1e-5
    m, tt = mu.double().numpy(), t.double().numpy()
    ref = np.mean([0.5 * ((m[b, c, i, j] - tt[b, c, i, j]) ** 2 / var[c] + np.log(var[c]))
                   for b in range(2) for c in range(3) for i in range(4) for j in range(4)])
    assert float(vid_nll(mu, t, alpha)) == pytest.approx(ref, rel=1e-5)
    # at μ = t the loss is ½·mean(log σ²); the reference's initial variance is 5
    assert float(vid_nll(t, t, alpha)) == pytest.approx(0.5 * np.mean(np.log(var)), rel=1e-5)
    a0 = vid_log_scale_init(5.0)
    assert float(torch.nn.functional.softplus(torch.tensor(a0, dtype=torch.float64)) + 1e-5) == pytest.approx(5.0)
    # the optimal variance is the mean squared error per channel: the gradient in α vanishes there
    err2 = ((mu - t) ** 2).mean(dim=(0, 2, 3)).double()
    a_opt = torch.log(torch.expm1(err2 - 1e-5)).float().requires_grad_(True)
    vid_nll(mu, t, a_opt).backward()
    assert float(a_opt.grad.abs().max()) < 1e-6
    with pytest.raises(ShapeError):
        vid_nll(mu, t, torch.zeros(4))


# -- FSP and AB (issue 17) --------------------------------------------------------------------------------------------

def _np_fsp(lo, up):
    b, cl = lo.shape[:2]
    cu = up.shape[1]
    lo, up = lo.reshape(b, cl, -1), up.reshape(b, cu, -1)
    g = np.zeros((b, cu, cl))
    for n in range(b):
        for i in range(cu):
            for j in range(cl):
                g[n, i, j] = np.mean(up[n, i] * lo[n, j])
    return g


def test_fsp_matches_numpy_and_identities():
    g = torch.Generator().manual_seed(3)
    shapes = [(2, 3, 8, 8), (2, 4, 4, 4), (2, 5, 4, 4)]
    s = [torch.randn(*sh, generator=g) for sh in shapes]
    t = [torch.randn(*sh, generator=g) for sh in shapes]
    # the 8x8 map is pooled to 4x4 before it meets the 4x4 one (RepDistiller's rule)
    pool = lambda x: F.adaptive_avg_pool2d(x, (4, 4)).double().numpy()  # noqa: E731
    assert np.allclose(fsp_matrix(s[0], s[1]).double().numpy(), _np_fsp(pool(s[0]), s[1].double().numpy()),
                       rtol=1e-5, atol=1e-6)
    ref = sum(np.mean((_np_fsp(a, b) - _np_fsp(c, d)) ** 2) for a, b, c, d in [
        (pool(s[0]), s[1].double().numpy(), pool(t[0]), t[1].double().numpy()),
        (s[1].double().numpy(), s[2].double().numpy(), t[1].double().numpy(), t[2].double().numpy())])
    assert float(fsp_loss(s, t)) == pytest.approx(ref, rel=1e-5)
    assert float(fsp_loss(t, t)) == 0.0
    # an orthogonal mixing of positions leaves every FSP matrix unchanged (it is a Gram over positions)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    mixed = [(f.flatten(2) @ q).reshape(f.shape) for f in t[1:]]
    assert float(fsp_loss(mixed, t[1:])) == pytest.approx(0.0, abs=1e-10)  # float32 entries O(1): ~1e-13 squared
    with pytest.raises(ShapeError, match="channel"):
        fsp_loss(s[1:], [torch.randn(2, 6, 4, 4), t[2]])


def test_ab_matches_the_papers_piecewise_loss():
    g = torch.Generator().manual_seed(4)
    r, t = torch.randn(3, 2, 4, 4, generator=g) * 2, torch.randn(3, 2, 4, 4, generator=g)
    rn, tn = r.double().numpy(), t.double().numpy()
    ref = np.where(tn > 0, np.maximum(1 - rn, 0) ** 2, np.maximum(1 + rn, 0) ** 2).sum() / 3
    assert float(ab_margin_loss(r, t, 1.0)) == pytest.approx(ref, rel=1e-5)
    # on the teacher's side with the margin: 0; the teacher's sign is the same before or after its ReLU
    right = torch.where(t > 0, 1.5, -1.5)
    assert float(ab_margin_loss(right, t)) == 0.0
    assert float(ab_margin_loss(r, F.relu(t))) == float(ab_margin_loss(r, t))
    # layers weighted 2^(i-n+1), scaled 3/1000 (RepDistiller / the authors)
    r2 = torch.randn(3, 2, 4, 4, generator=g)
    t2 = torch.randn(3, 2, 4, 4, generator=g)
    want = 3e-3 * (0.5 * float(ab_margin_loss(r, t)) + float(ab_margin_loss(r2, t2)))
    assert float(ab_loss([r, r2], [t, t2])) == pytest.approx(want, rel=1e-6)
    rr = r.clone().requires_grad_(True)
    tt = t.clone().requires_grad_(True)
    ab_loss([rr], [tt]).backward()
    assert rr.grad is not None and tt.grad is None
