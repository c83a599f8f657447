"""Teacher-free regularisers: confidence penalty, label smoothing, Tf-KD virtual teacher (numpy references)."""

import math

import numpy as np
import pytest
import torch

from kdkit.errors import ShapeError
from kdkit.losses.regularizers import (
    confidence_penalty,
    entropy,
    label_smoothing_ce,
    tf_kd_virtual,
    virtual_teacher,
)


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _data(b=12, k=7, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g) * scale, torch.randint(0, k, (b,), generator=g)


def test_confidence_penalty_value_and_extremes():
    z, _ = _data()
    lp = _log_softmax(z.double().numpy())
    h = -np.sum(np.exp(lp) * lp, axis=1)
    assert float(confidence_penalty(z, beta=0.5)) == pytest.approx(-0.5 * h.mean(), rel=1e-5)
    # Most negative (its minimum) for a uniform prediction: −β log K; ~0 for a confident one.
    assert float(confidence_penalty(torch.zeros(3, 7), 1.0)) == pytest.approx(-math.log(7), rel=1e-6)
    confident = torch.full((3, 7), -50.0)
    confident[:, 0] = 50.0
    assert abs(float(confidence_penalty(confident, 1.0))) < 1e-6
    assert float(confidence_penalty(z, 0.0)) == 0.0
    # Invariant to a constant shift of the logits (softmax is).
    assert float(confidence_penalty(z + 3.0, 0.5)) == pytest.approx(float(confidence_penalty(z, 0.5)), rel=1e-5)


def test_confidence_penalty_gradient_step_raises_entropy():
    z, _ = _data(seed=1)
    z = z.requires_grad_(True)
    confidence_penalty(z, 1.0).backward()
    with torch.no_grad():
        assert float(entropy(z - 0.1 * z.grad).mean()) > float(entropy(z).mean())
    with pytest.raises(ValueError):
        confidence_penalty(z, -1.0)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_matches_numpy(eps):
    z, y = _data(seed=2)
    k = z.shape[1]
    target = np.full(z.shape, eps / k)
    target[np.arange(len(y)), y.numpy()] += 1 - eps
    ref = -np.mean(np.sum(target * _log_softmax(z.double().numpy()), axis=1))
    assert float(label_smoothing_ce(z, y, eps)) == pytest.approx(ref, rel=1e-5)


def test_label_smoothing_errors():
    with pytest.raises(ValueError):
        label_smoothing_ce(torch.randn(2, 3), torch.tensor([0, 1]), 1.0)
    with pytest.raises(ShapeError):
        label_smoothing_ce(torch.randn(2, 3), torch.tensor([[0, 1]]), 0.1)


def test_virtual_teacher_distribution():
    y = torch.tensor([0, 3, 1])
    p = virtual_teacher(y, 5, a=0.9)
    torch.testing.assert_close(p.sum(1), torch.ones(3))
    assert float(p[1, 3]) == pytest.approx(0.9) and float(p[1, 0]) == pytest.approx(0.1 / 4)


def _np_tfkd(z, y, a, T):
    b, k = z.shape
    out = []
    for i in range(b):
        pd = np.full(k, (1 - a) / (k - 1))
        pd[y[i]] = a
        soft = pd ** (1.0 / T)
        soft /= soft.sum()
        lq = _log_softmax(z[i] / T)
        out.append(np.sum(soft * (np.log(soft) - lq)))
    return T * T * np.mean(out)


@pytest.mark.parametrize("a,T", [(0.9, 1.0), (0.9, 4.0), (0.99, 20.0)])
def test_tf_kd_virtual_matches_loop(a, T):
    z, y = _data(seed=3)
    ref = _np_tfkd(z.double().numpy(), y.numpy(), a, T)
    assert float(tf_kd_virtual(z, y, a, T)) == pytest.approx(ref, rel=1e-4)


def test_tf_kd_virtual_identities():
    z, y = _data(seed=4)
    k, a = z.shape[1], 0.9
    # T = 1: label smoothing with ε = (1 − a)K/(K − 1), minus the virtual teacher's entropy (a constant).
    eps = (1 - a) * k / (k - 1)
    pd = virtual_teacher(y, k, a).double().numpy()
    h = -np.mean(np.sum(pd * np.log(pd), axis=1))
    assert float(tf_kd_virtual(z, y, a, 1.0)) == pytest.approx(float(label_smoothing_ce(z, y, eps)) - h, rel=1e-4)
    # Zero when the student's logits are log p_d (up to a constant): the student *is* the virtual teacher.
    logits = torch.log(virtual_teacher(y, k, a)) + 1.7
    assert float(tf_kd_virtual(logits, y, a, 4.0)) == pytest.approx(0.0, abs=1e-5)


def test_tf_kd_virtual_gradient_scale_and_errors():
    g = torch.Generator().manual_seed(5)
    s0, y = torch.randn(32, 10, generator=g) * 0.1, torch.randint(0, 10, (32,), generator=g)
    norms = []
    for T in (5.0, 10.0, 20.0):
        s = s0.clone().requires_grad_(True)
        tf_kd_virtual(s, y, 0.9, T).backward()
        norms.append(float(s.grad.norm()))
    # T² scaling: the gradient does not vanish as T grows (without it, it would fall by 16x from T=5 to T=20).
    assert max(norms) / min(norms) < 2.0
    with pytest.raises(ValueError):
        tf_kd_virtual(s0, y, 1.0, 4.0)
    with pytest.raises(ValueError):
        tf_kd_virtual(s0, torch.full((32,), -1), 0.9, 4.0)
