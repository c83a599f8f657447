"""Stochastic Sobolev training for distillation (Czarnecki, Osindero, Jaderberg, Świrszcz & Pascanu, "Sobolev
Training for Neural Networks", NeurIPS 2017).

Besides matching the teacher's outputs, the student matches the teacher's *derivatives with respect to the input*.
The full Jacobian (K classes × input size) is far too large, so the stochastic variant matches random projections.
kdkit's definition, per projection j (drawn afresh each call):

* a class ``c_ij`` uniformly at random for each sample i, and the scalar output ``g(x_i) = log softmax(f(x_i))_{c_ij}``
  (log-probabilities, so a constant added to all logits — which does not change the prediction — changes nothing);
* a direction ``v_ij`` uniformly on the unit sphere of the input space;
* the directional derivative ``D_ij = ⟨∇_x g(x_i), v_ij⟩`` of student and teacher;

``L = (1/(P·B)) Σ_j Σ_i (D^s_ij − D^t_ij)²``.

Cost: each projection needs one extra backward pass through the teacher and one through the student with
``create_graph=True``; the training step's ``loss.backward()`` then differentiates through that backward (a
double-backward of the student). Expect roughly (1 + 2P)× the student's backward cost plus P teacher backwards, and
the teacher forward must run *with* autograd enabled on the input (not under ``no_grad``). Layers without second
derivatives (e.g. ReLU) still work: their Hessian is zero almost everywhere, so the gradient flows through the
first-order path. BatchNorm in training mode couples the samples of a batch, so the per-sample derivatives are then
only approximately per-sample (the gradient of the summed outputs is taken); eval-mode teachers are unaffected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdkit.errors import ShapeError


def sample_projections(inputs: Tensor, num_classes: int, num_projections: int,
                       generator: torch.Generator | None = None) -> list[tuple[Tensor, Tensor]]:
    """``num_projections`` pairs ``(classes (B,), unit directions shaped like inputs)``, drawn from ``generator``."""
    b = inputs.shape[0]
    out = []
    for _ in range(num_projections):
        cls = torch.randint(0, num_classes, (b,), generator=generator, device=inputs.device)
        v = torch.randn(inputs.shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
        v = v / v.flatten(1).norm(dim=1).clamp_min(1e-12).view(b, *([1] * (inputs.ndim - 1)))
        out.append((cls, v))
    return out


def _directional(out: Tensor, inputs: Tensor, cls: Tensor, v: Tensor, create_graph: bool) -> Tensor:
    g = F.log_softmax(out.float(), dim=-1).gather(1, cls[:, None]).sum()
    (grad,) = torch.autograd.grad(g, inputs, create_graph=create_graph, retain_graph=True)
    return (grad * v).flatten(1).sum(1)


def sobolev_loss(student_fn_out: Tensor, teacher_fn_out: Tensor, inputs: Tensor, num_projections: int = 1,
                 generator: torch.Generator | None = None,
                 projections: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
    """Stochastic Sobolev loss between student and teacher input-gradients (see the module docstring).

    Args:
        student_fn_out: (B, K) student logits computed from ``inputs`` (with autograd).
        teacher_fn_out: (B, K) teacher logits computed from the *same* ``inputs`` tensor with autograd enabled
            (the teacher's parameters may be frozen; they receive no gradient from this loss).
        inputs: (B, ...) the input tensor, ``requires_grad=True``.
        num_projections: P ≥ 1.
        generator: for reproducible classes and directions.
        projections: explicit ``[(classes, directions)]`` to use instead of sampling (tests, or sharing draws).

    Returns:
        Scalar, 0 when student and teacher compute the same function (up to a per-sample constant on the logits).
    """
    if student_fn_out.shape != teacher_fn_out.shape or student_fn_out.ndim != 2:
        raise ShapeError(f"sobolev_loss: student {tuple(student_fn_out.shape)} and teacher "
                         f"{tuple(teacher_fn_out.shape)} outputs must both be (B, K)")
    if not inputs.requires_grad:
        raise ValueError("sobolev_loss: inputs must require grad (x.requires_grad_(True) before both forwards)")
    if teacher_fn_out.grad_fn is None:
        raise ValueError("sobolev_loss: the teacher output has no graph back to the inputs; run the teacher forward "
                         "under torch.enable_grad() on the same inputs tensor (its parameters can stay frozen)")
    if num_projections < 1 and projections is None:
        raise ValueError(f"sobolev_loss: num_projections must be >= 1, got {num_projections}")
    draws = projections if projections is not None else sample_projections(
        inputs, student_fn_out.shape[1], num_projections, generator)
    total = student_fn_out.new_zeros((), dtype=torch.float32)
    for cls, v in draws:
        d_s = _directional(student_fn_out, inputs, cls, v, create_graph=True)
        d_t = _directional(teacher_fn_out, inputs, cls, v, create_graph=False).detach()
        total = total + (d_s - d_t).pow(2).mean()
    return total / len(draws)
