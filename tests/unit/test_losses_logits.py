"""The response-based catalogue: soft CE, logit MSE, DKD, noisy teacher, multi-label KD/BCE.

Reference values are computed in numpy (float64) or with explicit per-sample loops, never by calling the function
under test; identities (DKD decomposition, KD's high-temperature limit) tie the functions to each other.
"""

import numpy as np
import pytest
import torch

from kdkit.errors import ShapeError
from kdkit.losses.logits import (
    dkd,
    dkd_terms,
    kd_kl,
    logit_mse,
    multilabel_bce,
    multilabel_kd,
    noisy_teacher_logits,
    soft_cross_entropy,
)


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _pair(b=16, k=10, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g) * scale, torch.randn(b, k, generator=g) * scale


def _grad_norms(fn, T_values, scale=0.1, **kw):
    s0, t = _pair(32, 10, scale, seed=3)
    out = []
    for T in T_values:
        s = s0.clone().requires_grad_(True)
        fn(s, t, temperature=T, **kw).backward()
        out.append(float(s.grad.norm()))
    return out


# ---------------------------------------------------------------------------------------------------- soft CE


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_soft_cross_entropy_matches_numpy(T):
    s, t = _pair()
    p, q = _softmax(t.double().numpy() / T), _softmax(s.double().numpy() / T)
    ref = T * T * np.mean(-np.sum(p * np.log(q), axis=1))
    assert float(soft_cross_entropy(s, t, T)) == pytest.approx(ref, rel=1e-5)


def test_soft_cross_entropy_is_kd_plus_teacher_entropy_and_has_kd_gradient():
    s, t = _pair(seed=1)
    T = 3.0
    p = _softmax(t.double().numpy() / T)
    entropy = T * T * np.mean(-np.sum(p * np.log(p), axis=1))
    assert float(soft_cross_entropy(s, t, T)) == pytest.approx(float(kd_kl(s, t, T)) + entropy, rel=1e-5)
    # Its minimum over the student is at s = t and equals the entropy term.
    assert float(soft_cross_entropy(t, t, T)) == pytest.approx(entropy, rel=1e-5)
    s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    soft_cross_entropy(s1, t, T).backward()
    kd_kl(s2, t, T).backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-5, atol=1e-7)


def test_soft_cross_entropy_no_teacher_grad_and_T_scale():
    s, t = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    soft_cross_entropy(s, t, 2.0).backward()
    assert s.grad is not None and t.grad is None
    norms = _grad_norms(soft_cross_entropy, [1.0, 2.0, 5.0, 10.0, 20.0])
    assert max(norms) / min(norms) < 1.2


# ---------------------------------------------------------------------------------------------------- logit MSE


def test_logit_mse_value_zero_and_no_teacher_grad():
    s, t = _pair(seed=2)
    ref = np.mean((s.double().numpy() - t.double().numpy()) ** 2)  # mean over B*K elements
    assert float(logit_mse(s, t)) == pytest.approx(ref, rel=1e-6)
    assert float(logit_mse(t, t.clone())) == 0.0
    s = s.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    logit_mse(s, t).backward()
    assert s.grad is not None and t.grad is None


def test_kd_tends_to_half_logit_mse_at_high_temperature():
    # Hinton et al. 2015 §2.1: for zero-mean logits, T²·KL → (1/2K) Σ (s − t)², i.e. half our element-mean MSE.
    s, t = _pair(64, 10, scale=1.0, seed=4)
    s, t = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    assert float(kd_kl(s, t, 200.0)) == pytest.approx(0.5 * float(logit_mse(s, t)), rel=2e-3)


def test_logit_mse_shape_error():
    with pytest.raises(ShapeError, match="differ"):
        logit_mse(torch.randn(2, 3), torch.randn(2, 4))


# ---------------------------------------------------------------------------------------------------- DKD


def _np_dkd_parts(s, t, y, T):
    """Naive per-sample loop: binary KL of [p_y, 1 − p_y]; KL over the K−1 non-target classes, exactly renormalised."""
    tckd, nckd = [], []
    for i in range(s.shape[0]):
        ps, pt = _softmax(s[i] / T), _softmax(t[i] / T)
        bs, bt = np.array([ps[y[i]], 1 - ps[y[i]]]), np.array([pt[y[i]], 1 - pt[y[i]]])
        tckd.append(np.sum(bt * np.log(bt / bs)))
        keep = [k for k in range(s.shape[1]) if k != y[i]]
        qs, qt = _softmax(s[i, keep] / T), _softmax(t[i, keep] / T)
        nckd.append(np.sum(qt * np.log(qt / qs)))
    return T * T * np.array(tckd), T * T * np.array(nckd)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_matches_naive_loop(T):
    s, t = _pair(12, 7, seed=5)
    y = torch.randint(0, 7, (12,), generator=torch.Generator().manual_seed(0))
    tc, nc = _np_dkd_parts(s.double().numpy(), t.double().numpy(), y.numpy(), T)
    ours_t, ours_n = dkd_terms(s, t, y, T)
    np.testing.assert_allclose(ours_t.numpy(), tc, rtol=1e-4, atol=1e-6 * T * T)
    np.testing.assert_allclose(ours_n.numpy(), nc, rtol=1e-4, atol=1e-6 * T * T)
    assert float(dkd(s, t, y, alpha=1.0, beta=8.0, temperature=T)) == pytest.approx(np.mean(tc + 8 * nc), rel=1e-4)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 10.0])
def test_dkd_decomposition_identity_vs_kd(T):
    # Zhao et al. 2022, eq. (4): KD = TCKD + (1 − p_y^T) · NCKD, with p_y^T the teacher's target probability.
    s, t = _pair(32, 10, scale=2.0, seed=6)
    y = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(1))
    tckd, nckd = dkd_terms(s, t, y, T)
    p_y = torch.softmax(t / T, dim=1).gather(1, y[:, None]).squeeze(1)
    assert float((tckd + (1 - p_y) * nckd).mean()) == pytest.approx(float(kd_kl(s, t, T)), rel=1e-4)
    # With α = 1 and β = 1 − p_y (one sample, so β is a number) dkd *is* Hinton KD.
    for i in range(3):
        si, ti, yi = s[i : i + 1], t[i : i + 1], y[i : i + 1]
        beta = 1.0 - float(p_y[i])
        assert float(dkd(si, ti, yi, 1.0, beta, T)) == pytest.approx(float(kd_kl(si, ti, T)), rel=1e-4, abs=1e-6)


def test_dkd_zero_at_equality_no_teacher_grad_and_published_defaults():
    s, t = _pair(8, 6, seed=7)
    y = torch.randint(0, 6, (8,))
    assert float(dkd(s, s.clone(), y)) == pytest.approx(0.0, abs=1e-5)
    s, t = s.clone().requires_grad_(True), t.clone().requires_grad_(True)
    dkd(s, t, y).backward()
    assert s.grad is not None and bool(s.grad.abs().sum() > 0) and t.grad is None
    import inspect

    sig = inspect.signature(dkd).parameters
    assert (sig["alpha"].default, sig["beta"].default, sig["temperature"].default) == (1.0, 8.0, 4.0)


def test_dkd_gradient_scale_across_T():
    y = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(2))
    norms = _grad_norms(dkd, [1.0, 2.0, 5.0, 10.0, 20.0], target=y, alpha=1.0, beta=1.0)
    assert max(norms) / min(norms) < 1.5


def test_dkd_errors():
    with pytest.raises(ValueError, match="label"):
        dkd(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, -1]))
    with pytest.raises(ShapeError):
        dkd(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1, 2]))


# ---------------------------------------------------------------------------------------------------- noisy teacher


def test_noisy_teacher_deterministic_and_statistics():
    t = torch.randn(4000, 10) + 5.0  # away from 0, so z'/z − 1 = ξ is well defined
    a = noisy_teacher_logits(t, sigma=0.2, p=0.5, generator=torch.Generator().manual_seed(0))
    b = noisy_teacher_logits(t, sigma=0.2, p=0.5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    changed = (a != t).any(dim=1)
    assert 0.45 < float(changed.float().mean()) < 0.55  # rows perturbed with probability p
    xi = (a[changed] / t[changed] - 1.0).flatten()
    assert float(xi.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(xi.std()) == pytest.approx(0.2, rel=0.05)
    torch.testing.assert_close(a[~changed], t[~changed])


def test_noisy_teacher_additive_edge_cases_and_no_graph():
    t = torch.randn(500, 4, requires_grad=True)
    add = noisy_teacher_logits(t, sigma=0.5, p=1.0, generator=torch.Generator().manual_seed(1), mode="additive")
    assert float((add - t.detach()).std()) == pytest.approx(0.5, rel=0.1)
    assert not add.requires_grad
    torch.testing.assert_close(noisy_teacher_logits(t, 0.3, 0.0), t.detach())
    torch.testing.assert_close(noisy_teacher_logits(t, 0.0, 1.0), t.detach())
    with pytest.raises(ValueError):
        noisy_teacher_logits(t, -1.0, 0.5)
    with pytest.raises(ValueError):
        noisy_teacher_logits(t, 0.1, 0.5, mode="bogus")


# ---------------------------------------------------------------------------------------------------- multi-label


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_multilabel_kd_matches_numpy(T):
    s, t = _pair(8, 6, seed=8)
    p, q = _sigmoid(t.double().numpy() / T), _sigmoid(s.double().numpy() / T)
    ref = T * T * np.mean(-(p * np.log(q) + (1 - p) * np.log(1 - q)))
    assert float(multilabel_kd(s, t, T)) == pytest.approx(ref, rel=1e-5)


def test_multilabel_kd_minimum_at_equality_and_grads():
    s, t = _pair(8, 6, seed=9)
    T = 2.0
    p = _sigmoid(t.double().numpy() / T)
    entropy = T * T * np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p)))
    t_as_s = t.clone().requires_grad_(True)
    loss = multilabel_kd(t_as_s, t, T)
    assert float(loss.detach()) == pytest.approx(entropy, rel=1e-5)
    loss.backward()
    assert float(t_as_s.grad.abs().max()) < 1e-7  # a minimum: zero gradient
    s, t = s.clone().requires_grad_(True), t.clone().requires_grad_(True)
    multilabel_kd(s, t, T).backward()
    assert s.grad is not None and t.grad is None
    norms = _grad_norms(multilabel_kd, [1.0, 2.0, 5.0, 10.0, 20.0])
    assert max(norms) / min(norms) < 1.2


def test_multilabel_bce_value_and_unlabelled_rows():
    g = torch.Generator().manual_seed(10)
    z = torch.randn(5, 4, generator=g)
    y = (torch.rand(5, 4, generator=g) > 0.5).float()
    y[2] = -1.0  # unlabelled sample
    keep = [0, 1, 3, 4]
    zz, yy = z.double().numpy()[keep], y.double().numpy()[keep]
    pr = _sigmoid(zz)
    ref = np.mean(-(yy * np.log(pr) + (1 - yy) * np.log(1 - pr)))
    assert float(multilabel_bce(z, y)) == pytest.approx(ref, rel=1e-5)
    z = z.clone().requires_grad_(True)
    out = multilabel_bce(z, torch.full((5, 4), -1.0))
    assert float(out.detach()) == 0.0
    out.backward()  # still part of the graph
    with pytest.raises(ShapeError, match="multi-hot"):
        multilabel_bce(z, torch.zeros(5))
