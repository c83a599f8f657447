"""Stochastic Sobolev loss: analytic input-gradients of linear models, equality, gradient routing, determinism."""

import numpy as np
import pytest
import torch
from torch import nn

from kdkit.errors import ShapeError
from kdkit.losses.sobolev import sample_projections, sobolev_loss


def _np_log_softmax_grad(w, b, x, c):
    """∇_x log softmax(Wx + b)_c = W_c − Σ_k p_k W_k for one sample."""
    z = w @ x + b
    p = np.exp(z - z.max())
    p /= p.sum()
    return w[c] - p @ w


def _linear(d_in, k, seed):
    torch.manual_seed(seed)
    return nn.Linear(d_in, k)


def test_matches_analytic_gradients_of_linear_models():
    d, k, b = 12, 5, 6
    student, teacher = _linear(d, k, 0), _linear(d, k, 1)
    x = torch.randn(b, 3, 2, 2, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    draws = sample_projections(x, k, 3, torch.Generator().manual_seed(3))
    loss = sobolev_loss(student(x.flatten(1)), teacher(x.flatten(1)), x, projections=draws)
    ws, bs = student.weight.double().detach().numpy(), student.bias.double().detach().numpy()
    wt, bt = teacher.weight.double().detach().numpy(), teacher.bias.double().detach().numpy()
    xs = x.detach().double().flatten(1).numpy()
    total = 0.0
    for cls, v in draws:
        vs = v.double().flatten(1).numpy()
        for i in range(b):
            ds = _np_log_softmax_grad(ws, bs, xs[i], int(cls[i])) @ vs[i]
            dt = _np_log_softmax_grad(wt, bt, xs[i], int(cls[i])) @ vs[i]
            total += (ds - dt) ** 2
    assert float(loss.detach()) == pytest.approx(total / (3 * b), rel=1e-4)
    for _, v in draws:  # directions are unit vectors in input space
        torch.testing.assert_close(v.flatten(1).norm(dim=1), torch.ones(b))


def test_zero_for_the_same_function_even_with_shifted_logits():
    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    x = torch.randn(5, 8).requires_grad_(True)
    out = net(x)
    loss = sobolev_loss(out, net(x) + 3.0, x, num_projections=2, generator=torch.Generator().manual_seed(0))
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-10)


def test_gradients_reach_student_params_not_teacher():
    torch.manual_seed(4)
    student = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))
    teacher = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))  # parameters left trainable on purpose
    x = torch.randn(7, 6).requires_grad_(True)
    loss = sobolev_loss(student(x), teacher(x), x, num_projections=2, generator=torch.Generator().manual_seed(5))
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert float(student[0].weight.grad.abs().sum()) > 0  # through the input-gradient (double backward)
    assert all(p.grad is None for p in teacher.parameters())


def test_deterministic_and_average_of_projections():
    torch.manual_seed(6)
    student, teacher = _linear(5, 4, 7), _linear(5, 4, 8)
    x = torch.randn(4, 5).requires_grad_(True)
    s_out, t_out = student(x), teacher(x)
    a = sobolev_loss(s_out, t_out, x, 3, torch.Generator().manual_seed(9))
    b = sobolev_loss(s_out, t_out, x, 3, torch.Generator().manual_seed(9))
    assert float(a.detach()) == float(b.detach())
    draws = sample_projections(x, 4, 3, torch.Generator().manual_seed(9))
    singles = [float(sobolev_loss(s_out, t_out, x, projections=[d]).detach()) for d in draws]
    assert float(a.detach()) == pytest.approx(np.mean(singles), rel=1e-6)


def test_errors_explain_the_contract():
    student, teacher = _linear(5, 4, 0), _linear(5, 4, 1)
    x = torch.randn(3, 5)
    with pytest.raises(ValueError, match="require grad"):
        sobolev_loss(student(x), teacher(x), x)
    x.requires_grad_(True)
    with torch.no_grad():
        t_out = teacher(x)
    with pytest.raises(ValueError, match="enable_grad"):
        sobolev_loss(student(x), t_out, x)
    with pytest.raises(ShapeError):
        sobolev_loss(student(x), teacher(x)[:, :3], x)
