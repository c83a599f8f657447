"""Hinton KD and CE: independent numpy values, identities, gradient scale with T²."""

import numpy as np
import pytest
import torch

from kdkit.losses.logits import cross_entropy, kd_kl


def _np_kd(s, t, T):
    def softmax(z):
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    p, q = softmax(t / T), softmax(s / T)
    return T * T * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 8.0])
def test_kd_matches_numpy(T):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(16, 10, generator=g) * 3, torch.randn(16, 10, generator=g) * 3
    ours = float(kd_kl(s, t, T))
    ref = _np_kd(s.double().numpy(), t.double().numpy(), T)
    assert ours == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_kd_zero_when_equal_and_positive_otherwise():
    z = torch.randn(8, 5)
    assert float(kd_kl(z, z.clone(), 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_kl(z, z + torch.randn(8, 5), 4.0)) > 0


def test_kd_batchmean_not_elementwise_mean():
    # Duplicating the batch must not change the value (batchmean), and the value is a sum over classes.
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    assert float(kd_kl(torch.cat([s, s]), torch.cat([t, t]), 2.0)) == pytest.approx(float(kd_kl(s, t, 2.0)), rel=1e-5)


def test_kd_gradient_scale_invariant_in_T():
    # With T², dL/ds = T (q - p) / B; for small logits this tends to (s - t)/(K B) independent of T.
    g = torch.Generator().manual_seed(1)
    s0, t = torch.randn(32, 10, generator=g) * 0.1, torch.randn(32, 10, generator=g) * 0.1
    norms = []
    for T in (2.0, 5.0, 20.0):
        s = s0.clone().requires_grad_(True)
        kd_kl(s, t, T).backward()
        norms.append(float(s.grad.norm()))
    assert max(norms) / min(norms) < 1.1
    # Without T² the gradient would shrink by T² (factor 100 between T=2 and T=20).


def test_kd_no_gradient_into_teacher():
    s = torch.randn(4, 6, requires_grad=True)
    t = torch.randn(4, 6, requires_grad=True)
    kd_kl(s, t, 3.0).backward()
    assert s.grad is not None and t.grad is None


def test_kd_shape_and_temperature_errors():
    with pytest.raises(ValueError, match="differ"):
        kd_kl(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        kd_kl(torch.randn(2, 3), torch.randn(2, 3), 0.0)


def test_cross_entropy_matches_numpy_and_ignores_unlabelled():
    z = torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 3, -1, 1])
    logp = z.double().log_softmax(1).numpy()
    ref = -np.mean([logp[i, y[i]] for i in range(6) if y[i] >= 0])
    assert float(cross_entropy(z, y)) == pytest.approx(ref, rel=1e-5)
    none = z.clone().requires_grad_(True)
    loss = cross_entropy(none, torch.full((6,), -1))
    loss.backward()  # no labelled sample: 0, and a zero gradient (not NaN), so an unlabelled batch is harmless
    assert float(loss.detach()) == 0.0 and torch.equal(none.grad, torch.zeros_like(z))


def test_label_smoothing_with_unlabelled_samples_averages_over_the_labelled_ones():
    z = torch.randn(6, 4)
    y = torch.tensor([0, -1, 2, 3, -1, 1])
    eps = 0.2
    logp = z.double().log_softmax(1).numpy()
    rows = [i for i in range(6) if y[i] >= 0]
    ref = -np.mean([(1 - eps) * logp[i, y[i]] + eps / 4 * logp[i].sum() for i in rows])
    assert float(cross_entropy(z, y, label_smoothing=eps)) == pytest.approx(ref, rel=1e-5)


def test_label_smoothing_value():
    z = torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 3, 0])
    eps = 0.1
    logp = z.double().log_softmax(1).numpy()
    target = np.full((5, 4), eps / 4)
    target[np.arange(5), y.numpy()] += 1 - eps
    ref = -np.mean(np.sum(target * logp, 1))
    assert float(cross_entropy(z, y, label_smoothing=eps)) == pytest.approx(ref, rel=1e-5)
