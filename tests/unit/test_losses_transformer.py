"""TinyBERT / DistilBERT losses and the layer map (numpy references, masking, TinyBERT's reference conventions)."""

import numpy as np
import pytest
import torch
from torch import nn

from kdkit.errors import ConfigError, ShapeError
from kdkit.losses.logits import soft_cross_entropy
from kdkit.losses.transformer import (
    attention_mse,
    embedding_mse,
    hidden_cosine,
    hidden_mse,
    layer_map,
    prediction_soft_ce,
)


def _states(b=3, length=5, ds=8, dt=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, length, ds, generator=g), torch.randn(b, length, dt, generator=g)


MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])


def test_hidden_mse_reference_convention_and_masked_mean():
    s, t = _states()
    sn, tn = s.double().numpy(), t.double().numpy()
    assert float(hidden_mse(s, t)) == pytest.approx(np.mean((sn - tn) ** 2), rel=1e-6)  # padding included
    m = MASK.numpy().astype(bool)
    assert float(hidden_mse(s, t, mask=MASK)) == pytest.approx(np.mean((sn[m] - tn[m]) ** 2), rel=1e-6)
    # With a mask, whatever sits at padded positions does not matter.
    s2 = s.clone()
    s2[1, 3:] = 100.0
    assert float(hidden_mse(s2, t, mask=MASK)) == pytest.approx(float(hidden_mse(s, t, mask=MASK)), rel=1e-6)
    assert float(hidden_mse(t, t.clone())) == 0.0


def test_hidden_mse_projection_grads_and_errors():
    s, t = _states(ds=4, dt=6, seed=1)
    proj = nn.Linear(4, 6)
    w, b = proj.weight.detach().double().numpy(), proj.bias.detach().double().numpy()
    ref = np.mean((s.double().numpy() @ w.T + b - t.double().numpy()) ** 2)
    assert float(hidden_mse(s, t, proj).detach()) == pytest.approx(ref, rel=1e-5)
    s, t = s.requires_grad_(True), t.requires_grad_(True)
    hidden_mse(s, t, proj).backward()
    assert s.grad is not None and proj.weight.grad is not None and t.grad is None
    with pytest.raises(ShapeError, match="projection"):
        hidden_mse(s, t)
    e_s, e_t = _states(ds=4, dt=6, seed=2)
    assert float(embedding_mse(e_s, e_t, proj).detach()) == pytest.approx(float(hidden_mse(e_s, e_t, proj).detach()))


def _scores(b=3, h=2, length=5, seed=0, mask=None):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(b, h, length, length, generator=g)
    if mask is not None:  # BERT's additive mask on padded keys
        a = a + (1.0 - mask[:, None, None, :].float()) * -10000.0
    return a


def test_attention_mse_on_scores_follows_tinybert_zeroing():
    s, t = _scores(seed=1, mask=MASK), _scores(seed=2, mask=MASK)
    sn, tn = s.double().numpy(), t.double().numpy()
    sn, tn = np.where(sn <= -1e2, 0.0, sn), np.where(tn <= -1e2, 0.0, tn)
    assert float(attention_mse(s, t)) == pytest.approx(np.mean((sn - tn) ** 2), rel=1e-5)


def test_attention_mse_with_mask_ignores_padded_queries_and_keys():
    s, t = _scores(seed=3), _scores(seed=4)
    sn, tn = s.double().numpy(), t.double().numpy()
    m = MASK.numpy().astype(float)
    pair = (m[:, :, None] * m[:, None, :])[:, None]
    ref = np.mean((sn * pair - tn * pair) ** 2)  # averaged over all entries (TinyBERT's normalisation)
    assert float(attention_mse(s, t, MASK)) == pytest.approx(ref, rel=1e-5)
    s2 = s.clone()
    s2[2, :, 3, :] = 7.0  # a padded query row
    s2[1, :, :, 4] = -3.0  # a padded key column
    assert float(attention_mse(s2, t, MASK)) == pytest.approx(float(attention_mse(s, t, MASK)), rel=1e-6)


def test_attention_mse_probabilities_heads_and_grads():
    s = torch.softmax(_scores(seed=5), -1).requires_grad_(True)
    t = torch.softmax(_scores(seed=6), -1).requires_grad_(True)
    ref = np.mean((s.detach().double().numpy() - t.detach().double().numpy()) ** 2)
    loss = attention_mse(s, t)
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-5)
    loss.backward()
    assert s.grad is not None and t.grad is None
    assert float(attention_mse(t.detach(), t.detach())) == 0.0
    t4 = torch.softmax(_scores(h=4, seed=7), -1)
    with pytest.raises(ShapeError, match="head"):
        attention_mse(s.detach(), t4)
    ref_avg = np.mean((s.detach().double().numpy().mean(1) - t4.double().numpy().mean(1)) ** 2)
    assert float(attention_mse(s.detach(), t4, average_heads=True)) == pytest.approx(ref_avg, rel=1e-5)


def test_prediction_soft_ce_is_soft_ce_and_k_times_tinybert_reference():
    g = torch.Generator().manual_seed(8)
    s, t = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    assert float(prediction_soft_ce(s, t, 2.0)) == pytest.approx(float(soft_cross_entropy(s, t, 2.0)))
    # TinyBERT's soft_cross_entropy: (−softmax(t)·log_softmax(s)).mean() over B·K elements, T = 1.
    reference = float((-torch.softmax(t, -1) * torch.log_softmax(s, -1)).mean())
    assert float(prediction_soft_ce(s, t, 1.0)) == pytest.approx(3 * reference, rel=1e-5)


def test_hidden_cosine_value_mask_and_invariance():
    s, t = _states(seed=9)
    sn, tn = s.double().numpy(), t.double().numpy()
    cos = np.sum(sn * tn, -1) / (np.linalg.norm(sn, axis=-1) * np.linalg.norm(tn, axis=-1))
    m = MASK.numpy().astype(bool)
    assert float(hidden_cosine(s, t, MASK)) == pytest.approx(np.mean(1 - cos[m]), rel=1e-5)
    assert float(hidden_cosine(s, t)) == pytest.approx(np.mean(1 - cos), rel=1e-5)
    assert float(hidden_cosine(4.0 * s, t, MASK)) == pytest.approx(float(hidden_cosine(s, t, MASK)), rel=1e-5)
    assert float(hidden_cosine(2.0 * t, t)) == pytest.approx(0.0, abs=1e-6)
    s, t = s.requires_grad_(True), t.requires_grad_(True)
    hidden_cosine(s, t, MASK).backward()
    assert s.grad is not None and t.grad is None
    assert float(s.grad[2, 2:].abs().sum()) == 0.0  # padded tokens get no gradient


def test_layer_map_strategies():
    assert layer_map(4, 12) == [(1, 3), (2, 6), (3, 9), (4, 12)]
    # TinyBERT reference: 0-based student layer i <- teacher layer (i+1)·k − 1
    k = 12 // 4
    assert [t - 1 for _, t in layer_map(4, 12)] == [(i + 1) * k - 1 for i in range(4)]
    assert layer_map(4, 12, with_embeddings=True)[0] == (0, 0)
    assert layer_map(3, 6, "last") == [(1, 4), (2, 5), (3, 6)]
    assert layer_map(2, 6, [2, 6]) == [(1, 2), (2, 6)]
    uneven = [t for _, t in layer_map(4, 6)]
    assert uneven == sorted(set(uneven)) and uneven[-1] == 6  # strictly increasing, ends at the top layer
    with pytest.raises(ConfigError, match="more layers"):
        layer_map(8, 6)
    with pytest.raises(ConfigError, match="outside"):
        layer_map(2, 6, [0, 7])
    with pytest.raises(ConfigError, match="entries"):
        layer_map(3, 6, [1, 2])
    with pytest.raises(ConfigError, match="strategy"):
        layer_map(3, 6, "middle")
