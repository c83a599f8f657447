"""IE-KD: factor distances against numpy, the pull/push directions, the channel split and the auto-encoder."""

import numpy as np
import pytest
import torch

from kdkit.errors import ShapeError
from kdkit.losses.ie import (
    FactorAutoEncoder,
    FactorEncoder,
    factor_distance,
    ie_exploration_loss,
    ie_inheritance_loss,
    ie_reconstruction_loss,
    split_channels,
)


def _np_factor_distance(x, y, p=1.0):
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    return np.mean(np.abs(x - y) ** p) ** (1.0 / p)


def _np_cos(x, y):
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    return np.sum(x * y, 1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))


def _factors(seed=0, shape=(4, 6, 3, 3)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_factor_distances_match_numpy(p):
    s, t = _factors()
    ref = _np_factor_distance(s.double().numpy(), t.double().numpy(), p)
    assert float(factor_distance(s, t, p)) == pytest.approx(ref, rel=1e-5)
    assert float(ie_inheritance_loss(s, t, p)) == pytest.approx(ref, rel=1e-5)
    assert float(ie_exploration_loss(s, t, p)) == pytest.approx(-ref, rel=1e-5)


def test_cosine_variants_match_numpy():
    s, t = _factors(seed=1)
    cos = _np_cos(s.double().numpy(), t.double().numpy())
    assert float(ie_inheritance_loss(s, t, metric="cos")) == pytest.approx(np.mean(1 - cos), rel=1e-5)
    assert float(ie_exploration_loss(s, t, metric="cos")) == pytest.approx(np.mean(np.abs(cos)), rel=1e-5)
    with pytest.raises(ValueError):
        ie_inheritance_loss(s, t, metric="l3")


def test_inheritance_zero_for_proportional_factors_and_scale_invariant():
    _, t = _factors(seed=2)
    assert float(ie_inheritance_loss(3.0 * t, t)) == pytest.approx(0.0, abs=1e-7)
    assert float(ie_inheritance_loss(3.0 * t, t, metric="cos")) == pytest.approx(0.0, abs=1e-6)
    s, _ = _factors(seed=3)
    assert float(ie_exploration_loss(5.0 * s, t)) == pytest.approx(float(ie_exploration_loss(s, t)), rel=1e-5)


@pytest.mark.parametrize("metric", ["ft", "cos"])
def test_inheritance_pulls_exploration_pushes_and_teacher_gets_no_grad(metric):
    s0, t0 = _factors(seed=4)
    for loss_fn, sign in ((ie_inheritance_loss, -1), (ie_exploration_loss, +1)):
        s, t = s0.clone().requires_grad_(True), t0.clone().requires_grad_(True)
        loss_fn(s, t, metric=metric).backward()
        assert t.grad is None and s.grad is not None
        with torch.no_grad():
            before = float(factor_distance(s, t)) if metric == "ft" else float((1 - torch.cosine_similarity(
                s.flatten(1), t.flatten(1))).mean())
            s2 = s - 0.05 * s.grad / s.grad.norm() * s.norm()
            after = float(factor_distance(s2, t)) if metric == "ft" else float((1 - torch.cosine_similarity(
                s2.flatten(1), t.flatten(1))).mean())
        # inheritance: the step reduces the distance; exploration: it increases it (towards orthogonality for cos)
        assert (after - before) * sign > 0


def test_reconstruction_loss_value_and_zero():
    f, r = _factors(seed=5)
    ref = np.mean(np.abs(f.double().numpy() - r.double().numpy()))
    assert float(ie_reconstruction_loss(f, r)) == pytest.approx(ref, rel=1e-6)
    assert float(ie_reconstruction_loss(f, f.clone())) == 0.0
    ft, rr = f.clone().requires_grad_(True), r.clone().requires_grad_(True)
    ie_reconstruction_loss(ft, rr).backward()
    assert ft.grad is None and rr.grad is not None


def test_split_channels_natural_and_indexed():
    f = torch.arange(2 * 6 * 2 * 2, dtype=torch.float32).view(2, 6, 2, 2)
    inh, exp = split_channels(f)
    assert torch.equal(inh, f[:, :3]) and torch.equal(exp, f[:, 3:])
    idx = torch.tensor([5, 0, 2])
    inh, exp = split_channels(f, idx)
    assert torch.equal(inh, f[:, [0, 2, 5]]) and torch.equal(exp, f[:, [1, 3, 4]])
    with pytest.raises(ShapeError):
        split_channels(torch.randn(2, 1, 2, 2))


def test_shape_errors_name_both_shapes():
    with pytest.raises(ShapeError, match=r"\(2, 4, 3, 3\).*\(2, 8, 3, 3\)"):
        ie_inheritance_loss(torch.randn(2, 4, 3, 3), torch.randn(2, 8, 3, 3))


@pytest.fixture
def one_thread():
    # Many tiny steps: with 2 OpenMP threads on a loaded 2-core machine each op pays a thread hand-off.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_auto_encoder_shapes_and_learns_to_reconstruct(one_thread):
    torch.manual_seed(0)
    ae = FactorAutoEncoder(8, 4)
    feats = torch.relu(torch.randn(8, 8, 4, 4))
    factor, recon = ae(feats)
    assert factor.shape == (8, 4, 4, 4) and recon.shape == feats.shape
    opt = torch.optim.Adam(ae.parameters(), lr=1e-2)
    with torch.no_grad():
        first = float(ie_reconstruction_loss(feats, ae(feats)[1]))
    for _ in range(40):
        loss = ie_reconstruction_loss(feats, ae(feats)[1])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.7 * first
    enc = FactorEncoder(3, 4)
    assert enc(torch.randn(2, 3, 5, 5)).shape == (2, 4, 5, 5)
    with pytest.raises(ShapeError):
        enc(torch.randn(2, 3))
