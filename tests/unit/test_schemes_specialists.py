"""Generalist + specialists (Hinton et al. 2015): subsets, the target q and the specialist heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdkit.errors import ConfigError
from kdkit.schemes.specialists import (
    Specialist,
    confusable_subsets,
    project_to_specialist,
    soft_confusion,
    specialist_from_generalist,
    specialist_objective,
    specialist_target,
)


def _problem(seed: int = 0, b: int = 32, k: int = 10, sharp: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    p_g = torch.softmax(torch.randn(b, k, generator=g) * sharp, 1)
    subsets = [torch.tensor([1, 3, 5]), torch.tensor([2, 3, 7, 8])]
    p_s = [torch.softmax(torch.randn(b, len(s) + 1, generator=g) * sharp, 1) for s in subsets]
    active = torch.rand(b, 2, generator=g) > 0.3
    return p_g, p_s, subsets, active


def _objective(q, p_g, p_s, subsets, active):
    return specialist_objective(q.double(), p_g.double(), [p.double() for p in p_s], subsets, active)


def test_em_solver_reaches_a_stationary_minimum():
    # Independent of the solver's hand-derived gradient: autograd's gradient of F w.r.t. the logits vanishes at the
    # solution, and random perturbations of the logits only increase F.
    p_g, p_s, subsets, active = _problem()
    q = specialist_target(p_g, p_s, subsets, active, steps=20, solver="em").double()
    assert torch.allclose(q.sum(1), torch.ones(q.shape[0], dtype=q.dtype), atol=1e-6)
    z = torch.log(q).requires_grad_(True)
    f = _objective(torch.softmax(z, 1), p_g, p_s, subsets, active)
    (grad,) = torch.autograd.grad(f.sum(), z)
    assert float(grad.abs().max()) < 1e-4
    g = torch.Generator().manual_seed(5)
    for scale in (1e-2, 1e-1, 1.0):
        worse = _objective(torch.softmax(z.detach() + scale * torch.randn(z.shape, generator=g, dtype=z.dtype), 1),
                           p_g, p_s, subsets, active)
        assert bool((worse >= f.detach() - 1e-9).all())


def test_gd_solver_decreases_the_objective_towards_the_em_optimum():
    p_g, p_s, subsets, active = _problem(1)
    f_opt = float(_objective(specialist_target(p_g, p_s, subsets, active, steps=40, solver="em"), p_g, p_s, subsets,
                             active).sum())
    values = [float(_objective(specialist_target(p_g, p_s, subsets, active, steps=n, lr=2.0, solver="gd"), p_g, p_s,
                               subsets, active).sum()) for n in (0, 5, 20, 60)]
    assert values == sorted(values, reverse=True)
    assert values[-1] - f_opt < 0.25 * (values[0] - f_opt)
    assert min(values) >= f_opt - 1e-6


def test_no_active_specialist_gives_the_generalist_exactly():
    p_g, p_s, subsets, _ = _problem(2)
    active = torch.zeros(p_g.shape[0], 2, dtype=torch.bool)
    q = specialist_target(p_g, p_s, subsets, active)
    assert torch.allclose(q, p_g, atol=1e-7)


def test_closed_form_when_a_specialist_covers_all_but_one_class():
    # A specialist over K-1 classes (dustbin = the remaining class) is a full distribution over the K classes, so
    # F = KL(p_g‖q) + KL(p_m‖q) and the optimum is the arithmetic mean (p_g + p_m) / 2 (Hinton et al., eq. 5 note).
    k = 6
    g = torch.Generator().manual_seed(3)
    p_g = torch.softmax(torch.randn(8, k, generator=g), 1)
    subset = torch.arange(k - 1)
    p_m = torch.softmax(torch.randn(8, k, generator=g), 1)  # last column = the class k-1 (dustbin)
    active = torch.ones(8, 1, dtype=torch.bool)
    q = specialist_target(p_g, [p_m], [subset], active, steps=50, solver="em")
    assert torch.allclose(q, (p_g + p_m) / 2, atol=1e-6)


def test_projection_sums_the_mass_outside_the_subset_into_the_dustbin():
    q = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    out = project_to_specialist(q, torch.tensor([1, 3]))
    assert torch.allclose(out, torch.tensor([[0.2, 0.4, 0.4]]))


def test_soft_confusion_and_greedy_subsets_find_the_confused_classes():
    # 6 classes; the "model" mixes 0<->1<->2 and 3<->4, while 5 is clean.
    probs, targets = [], []
    mix = {0: [0.6, 0.2, 0.2], 1: [0.2, 0.6, 0.2], 2: [0.2, 0.2, 0.6]}
    for c in range(6):
        p = torch.zeros(6)
        if c in mix:
            p[:3] = torch.tensor(mix[c])
        elif c in (3, 4):
            p[3], p[4] = (0.7, 0.3) if c == 3 else (0.3, 0.7)
        else:
            p[5] = 1.0
        probs += [p] * 4
        targets += [c] * 4
    conf = soft_confusion(torch.stack(probs), torch.tensor(targets), 6)
    assert torch.allclose(conf.sum(1), torch.ones(6))
    # The most confused pair (3, 4) has nothing else confused with it, so it stays a pair; then {0, 1, 2}.
    assert confusable_subsets(conf, 2, 3) == [[3, 4], [0, 1, 2]]
    assert confusable_subsets(conf, 3, 2)[0] == [3, 4]
    assert len(confusable_subsets(conf, 5, 2)) == 3  # class 5 is never confused: no subset for it alone
    with pytest.raises(ConfigError, match="subset_size"):
        confusable_subsets(conf, 2, 6)


def test_specialist_head_starts_from_the_generalist():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(5, 8)
            self.fc = nn.Linear(8, 6)

        def forward(self, x):
            return self.fc(torch.relu(self.body(x)))

    gen = Net()
    x = torch.randn(7, 5)
    spec = Specialist(specialist_from_generalist(gen, [1, 4]), [1, 4])
    z_g, z_s = gen(x), spec(x)
    assert z_s.shape == (7, 3)
    assert torch.allclose(z_s[:, :2], z_g[:, [1, 4]], atol=1e-6)
    # The dustbin starts as the log-sum-exp of the bias of the other classes over mean weights: finite, and the
    # generalist is left untouched.
    assert torch.isfinite(z_s).all()
    assert gen.fc.out_features == 6
