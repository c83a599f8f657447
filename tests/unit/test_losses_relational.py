"""Relational KD (distance- and angle-wise): naive-loop references and the invariances the paper relies on."""

from math import exp, factorial

import numpy as np
import pytest
import torch

from kdkit.errors import ShapeError
from kdkit.losses.relational import cc_correlation, cc_loss, pairwise_distances, pkt_loss, rkd_angle, rkd_distance


def _huber(x):
    a = np.abs(x)
    return np.where(a < 1.0, 0.5 * x * x, a - 0.5)


def _np_dist(e):
    b = e.shape[0]
    d = np.zeros((b, b))
    for i in range(b):
        for j in range(b):
            if i != j:
                d[i, j] = np.sqrt(np.sum((e[i] - e[j]) ** 2))
    return d / d[d > 0].mean()


def _np_angles(e):
    b = e.shape[0]
    out = np.zeros((b, b, b))
    for i in range(b):
        for j in range(b):
            for k in range(b):
                u, v = e[j] - e[i], e[k] - e[i]
                nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                if nu > 0 and nv > 0:
                    out[i, j, k] = u @ v / (nu * nv)
    return out


def _emb(b=8, ds=5, dt=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, ds, generator=g), torch.randn(b, dt, generator=g)


def _orthonormal(d_out, d_in, seed=0):
    q, _ = torch.linalg.qr(torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(seed)))
    return q  # (d_out, d_in) with orthonormal columns


def test_pairwise_distances_exact_zero_diagonal():
    s, _ = _emb()
    d = pairwise_distances(s)
    assert bool((d.diagonal() == 0).all())
    np.testing.assert_allclose(d.double().numpy(), torch.cdist(s.double(), s.double()).numpy(), atol=1e-5)


def test_rkd_distance_matches_loop():
    s, t = _emb(seed=1)
    ref = np.mean(_huber(_np_dist(s.double().numpy()) - _np_dist(t.double().numpy())))
    assert float(rkd_distance(s, t)) == pytest.approx(ref, rel=1e-5)


def test_rkd_distance_scale_invariance_and_zero_for_similar_figures():
    s, t = _emb(seed=2)
    base = float(rkd_distance(s, t))
    assert float(rkd_distance(4.0 * s, 0.3 * t)) == pytest.approx(base, rel=1e-5)
    # A rotated, scaled, translated copy of the teacher in a wider space has the same normalised distances.
    similar = 2.5 * t @ _orthonormal(16, 12).T + 1.0
    assert float(rkd_distance(similar, t)) == pytest.approx(0.0, abs=1e-6)


def test_rkd_angle_matches_loop():
    s, t = _emb(b=6, seed=3)
    ref = np.mean(_huber(_np_angles(s.double().numpy()) - _np_angles(t.double().numpy())))
    assert float(rkd_angle(s, t)) == pytest.approx(ref, rel=1e-5)


def test_rkd_angle_invariances():
    s, t = _emb(seed=4)
    base = float(rkd_angle(s, t))
    assert float(rkd_angle(3.0 * s - 2.0, t)) == pytest.approx(base, rel=1e-4)
    similar = 0.7 * t @ _orthonormal(20, 12, seed=1).T - 3.0
    assert float(rkd_angle(similar, t)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("fn", [rkd_distance, rkd_angle])
def test_rkd_gradients_only_into_student(fn):
    s, t = _emb(seed=5)
    s, t = s.requires_grad_(True), t.requires_grad_(True)
    fn(s, t).backward()
    assert s.grad is not None and bool(torch.isfinite(s.grad).all()) and float(s.grad.abs().sum()) > 0
    assert t.grad is None


@pytest.mark.parametrize("fn", [rkd_distance, rkd_angle])
def test_rkd_duplicate_rows_give_finite_gradients(fn):
    s, t = _emb(seed=6)
    s = torch.cat([s[:4], s[:4]]).requires_grad_(True)  # coincident points: zero distances off the diagonal
    fn(s, t).backward()
    assert bool(torch.isfinite(s.grad).all())


def test_rkd_errors():
    with pytest.raises(ShapeError, match="batch"):
        rkd_distance(torch.randn(3, 4), torch.randn(4, 4))
    with pytest.raises(ShapeError, match="at least 2"):
        rkd_angle(torch.randn(1, 4), torch.randn(1, 4))


# -- PKT and CC (issue 17) ------------------------------------------------------------------------------------------
# Tolerances: float32 functions vs float64 loops over B <= 10 samples and D <= 12 dims: each entry carries a few
# float32 eps (1.2e-7) of relative error; rel=1e-5 (~100 eps) is far below what a formula error would show.

def _np_pkt(s, t, eps=1e-7):
    def cond(e):
        b = e.shape[0]
        k = np.zeros((b, b))
        for i in range(b):
            for j in range(b):
                ni, nj = np.linalg.norm(e[i]) + eps, np.linalg.norm(e[j]) + eps
                k[i, j] = (1 + e[i] @ e[j] / (ni * nj)) / 2
        return k / k.sum(1, keepdims=True)

    ps, pt = cond(s), cond(t)
    return np.mean(pt * np.log((pt + eps) / (ps + eps)))


def _np_cc(s, t, gamma, order):
    def corr(e):
        u = e / np.linalg.norm(e, axis=1, keepdims=True)
        b = e.shape[0]
        c = np.zeros((b, b))
        for i in range(b):
            for j in range(b):
                x = u[i] @ u[j]
                c[i, j] = sum(exp(-2 * gamma) * (2 * gamma) ** p / factorial(p) * x ** p for p in range(order + 1))
        return c

    return np.mean((corr(s) - corr(t)) ** 2)


def test_pkt_matches_numpy_and_identities():
    s, t = _emb(b=10, ds=5, dt=12)
    ref = _np_pkt(s.double().numpy(), t.double().numpy())
    assert float(pkt_loss(s, t)) == pytest.approx(ref, rel=1e-5)
    assert float(pkt_loss(s, t)) > 1e-4
    # same cosine structure -> 0: the student is the teacher rotated (orthonormal map into 20 dims) and scaled by 3
    q = _orthonormal(20, 12, seed=4)
    assert float(pkt_loss(3.0 * t @ q.t(), t)) == pytest.approx(0.0, abs=1e-6)  # eps-scale: log(1 + ~1e-7)
    ss = s.clone().requires_grad_(True)
    tt = t.clone().requires_grad_(True)
    pkt_loss(ss, tt).backward()
    assert ss.grad is not None and tt.grad is None


@pytest.mark.parametrize(("gamma", "order"), [(0.4, 2), (1.0, 3), (0.4, 0)])
def test_cc_matches_numpy_and_identities(gamma, order):
    s, t = _emb(b=9, ds=5, dt=12, seed=2)
    ref = _np_cc(s.double().numpy(), t.double().numpy(), gamma, order)
    assert float(cc_loss(s, t, gamma, order)) == pytest.approx(ref, rel=1e-5, abs=1e-12)
    q = _orthonormal(20, 12, seed=5)
    assert float(cc_loss(0.5 * t @ q.t(), t, gamma, order)) == pytest.approx(0.0, abs=1e-10)


def test_cc_taylor_tends_to_the_gaussian_kernel():
    # The expansion is of exp(−γ‖x − y‖²) for unit vectors; at high order it equals the kernel (float32: 1e-6 abs).
    e = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    u = torch.nn.functional.normalize(e, dim=1)
    exact = torch.exp(-0.4 * torch.cdist(u, u).pow(2))
    assert torch.allclose(cc_correlation(e, 0.4, 12), exact, atol=1e-6)
    assert not torch.allclose(cc_correlation(e, 0.4, 1), exact, atol=1e-3)
    with pytest.raises(ValueError):
        cc_loss(e, e, gamma=0.0)
