"""Feature losses: FitNets hint, attention transfer, similarity-preserving KD (numpy references, invariances)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdkit.errors import ShapeError
from kdkit.losses.features import at_map, attention_transfer, fitnet_hint, similarity_preserving


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
