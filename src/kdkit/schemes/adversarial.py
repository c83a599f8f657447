"""Boundary-supporting samples (Heo, Lee, Yun & Choi, "Knowledge Distillation with Adversarial Samples Supporting
Decision Boundary", AAAI 2019).

Soft targets on training samples say little about where the teacher's decision boundary lies; samples *near* the
boundary do. Each step, training samples the teacher classifies correctly ("base samples") are moved towards the
teacher's boundary with another class k by an iterative targeted attack on the teacher, and the student is also
distilled on these boundary-supporting samples (BSS):

    attack step:  x ← x + η · (z_b(x) − z_k(x) + 10⁻⁴) · g / ‖g‖₂,   g = ∇_x (z_k(x) − z_b(x))

(teacher logits z, base class b = the teacher's prediction on the clean sample), for ``steps`` iterations or until
the sample crosses the boundary (a sample stops moving once the teacher no longer predicts b), clamped to the valid
pixel range. The loss adds ``w(t) · T² · KL(softmax(t(x_adv)/T) ‖ softmax(s(x_adv)/T))`` to the recipe's terms, with
``w(t)`` decaying linearly from ``weight`` to 0 at ``stop_fraction`` of training (the paper uses the samples only in
the early part of training, when the student's boundary is still being formed).

The target class k is the teacher's second class (``target: second``, the boundary nearest in logit terms) or drawn
from the non-top classes in proportion to the teacher's probabilities (``target: sample``, the reference code's
choice). When more than ``attack_size`` base samples qualify, those where student and teacher disagree most (squared
probability difference over the non-true classes) are attacked, as in the reference code.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from kdkit.errors import ConfigError
from kdkit.losses.logits import kd_kl
from kdkit.registry import SCHEMES
from kdkit.schemes.base import BuildContext, DistillModule, Scheme
from kdkit.schemes.offline import offline_parts
from kdkit.types import Batch, StepOutput, TeacherSignal, TeacherSource, TrainState, is_logits_only, logits_of


def boundary_samples(teacher: nn.Module, x: Tensor, target_class: Tensor, steps: int = 10, step_size: float = 0.3,
                     lower: Tensor | float | None = None, upper: Tensor | float | None = None) -> Tensor:
    """Move each sample of ``x`` towards ``teacher``'s decision boundary between its predicted class and
    ``target_class`` (the BSS attack above).

    Args:
        teacher: the frozen teacher (eval mode; its parameters may have ``requires_grad=False``).
        x: (B, C, H, W) inputs as the teacher sees them (normalised).
        target_class: (B,) class k to approach for each sample.
        steps: maximum attack iterations.
        step_size: η.
        lower, upper: clamp bounds of the inputs (e.g. the normalised image of pixel values 0 and 1), broadcastable
            to ``x``; None = no clamp.

    Returns:
        (B, C, H, W) detached samples; a sample stops moving once the teacher's prediction leaves its base class.
    """
    x0 = x.detach()
    with torch.no_grad():
        base = logits_of(teacher(x0)).argmax(1)
    adv = x0.clone()
    kk = target_class.view(-1, 1)
    bb = base.view(-1, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            z = logits_of(teacher(adv)).float()
            z_b, z_k = z.gather(1, bb).squeeze(1), z.gather(1, kk).squeeze(1)
            (grad,) = torch.autograd.grad((z_k - z_b).sum(), adv)
        with torch.no_grad():
            active = (z.argmax(1) == base).float()
            if not bool(active.any()):
                adv = adv.detach()
                break
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
            scale = step_size * active * (z_b - z_k + 1e-4) / norm
            adv = adv.detach() + scale.view(-1, *([1] * (x.dim() - 1))) * grad
            if lower is not None or upper is not None:
                adv = torch.max(adv, torch.as_tensor(lower, dtype=adv.dtype, device=adv.device)) \
                    if lower is not None else adv
                adv = torch.min(adv, torch.as_tensor(upper, dtype=adv.dtype, device=adv.device)) \
                    if upper is not None else adv
    return adv.detach()


def top2_margin(logits: Tensor) -> Tensor:
    """(B,) difference between the largest and second-largest logit: the distance to the nearest boundary in logit
    terms."""
    top = logits.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def choose_target_class(teacher_logits: Tensor, mode: str, generator: torch.Generator | None = None) -> Tensor:
    """(B,) class to attack towards: the teacher's second class, or one drawn from the non-top classes with
    probability proportional to the teacher's softmax."""
    order = teacher_logits.argsort(dim=1, descending=True)
    if mode == "second":
        return order[:, 1]
    probs = torch.softmax(teacher_logits.float(), dim=1).gather(1, order[:, 1:])
    pick = torch.multinomial(probs.cpu() + 1e-12, 1, generator=generator).to(order.device)
    return order[:, 1:].gather(1, pick).squeeze(1)


class BSSModule(nn.Module):
    """The student's module plus the BSS term: ``forward(batch, teacher, teachers, state) -> StepOutput`` (term
    ``bss``, unweighted, logged every step; 0 once its weight has decayed)."""

    def __init__(self, distill: DistillModule, teacher: nn.Module, weight: float, stop_fraction: float,
                 temperature: float, steps: int, step_size: float, attack_size: int, target: str,
                 bounds: tuple[Tensor, Tensor] | None, seed: int) -> None:
        super().__init__()
        self.distill = distill
        self._teacher = [teacher]  # a plain list: the frozen teacher must not become a trained/synced submodule
        self.weight, self.stop_fraction, self.temperature = float(weight), float(stop_fraction), float(temperature)
        self.steps, self.step_size = int(steps), float(step_size)
        self.attack_size, self.target = int(attack_size), target
        if bounds is not None:
            self.register_buffer("lower", bounds[0], persistent=False)
            self.register_buffer("upper", bounds[1], persistent=False)
        else:
            self.lower = self.upper = None
        self._gen = torch.Generator().manual_seed(seed + 104729)

    def weight_at(self, state: TrainState) -> float:
        """``weight · max(0, 1 − progress / (stop_fraction · epochs))``."""
        end = self.stop_fraction * max(1, state.epochs)
        return self.weight * max(0.0, 1.0 - state.progress / end) if end > 0 else 0.0

    def forward(self, batch: Batch, signal: TeacherSignal | None, state: TrainState) -> StepOutput:
        out = self.distill(batch, signal, state)
        teacher = signal.combined if signal is not None else None
        w = self.weight_at(state)
        zero = out.loss.new_zeros(())
        if w <= 0 or teacher is None:
            return StepOutput(out.loss, out.logits, dict(out.terms, bss=zero))
        t_logits = teacher.logits.detach()
        y = batch["target"]
        pred = t_logits.argmax(1)
        ok = (pred == y) | (y < 0) if y.ndim == 1 else torch.ones_like(pred, dtype=torch.bool)
        idx = ok.nonzero().squeeze(1)
        if idx.numel() == 0:
            return StepOutput(out.loss, out.logits, dict(out.terms, bss=zero))
        if idx.numel() > self.attack_size:
            # Attack where student and teacher disagree most, ignoring the (shared) true class.
            diff = (torch.softmax(t_logits[idx].float(), 1) - torch.softmax(out.logits[idx].detach().float(), 1)) ** 2
            score = diff.sum(1) - diff.gather(1, pred[idx].view(-1, 1)).squeeze(1)
            idx = idx[score.argsort(descending=True)[: self.attack_size]]
        k = choose_target_class(t_logits[idx], self.target, self._gen)
        teacher_net = self._teacher[0]
        x_adv = boundary_samples(teacher_net, batch["input"][idx], k, self.steps, self.step_size, self.lower,
                                 self.upper)
        with torch.no_grad():
            t_adv = logits_of(teacher_net(x_adv))
        s_adv = logits_of(self.distill.student(x_adv))
        if self.distill.tap is not None:
            self.distill.tap.pop()  # the adversarial forward filled the student's taps; nothing reads them
        bss = kd_kl(s_adv, t_adv, self.temperature)
        return StepOutput(out.loss + w * bss, out.logits, dict(out.terms, bss=bss.detach()))


@SCHEMES.register("bss", description="offline KD plus boundary-supporting adversarial samples (Heo et al., AAAI 2019)")
class BSSScheme(Scheme):
    """Offline distillation from one frozen teacher, with the BSS term.

    ``scheme.params``: ``weight`` (1.0), ``stop_fraction`` (0.75), ``temperature`` (3), ``steps`` (10), ``step_size``
    η (0.3), ``attack_size`` (64 samples per batch), ``target`` (``second`` | ``sample``), and ``teacher_inputs`` as
    for ``offline``. The recipe's ``terms`` (e.g. ``ce`` + ``kd``) apply to the clean batch as usual.
    """

    name = "bss"

    def __init__(self, module: BSSModule, teachers: TeacherSource) -> None:
        self.module = module
        self.teachers = teachers

    @classmethod
    def build(cls, ctx: BuildContext, weight: float = 1.0, stop_fraction: float = 0.75, temperature: float = 3.0,
              steps: int = 10, step_size: float = 0.3, attack_size: int = 64,
              target: Literal["second", "sample"] = "second", teacher_inputs: str | list | None = "auto"
              ) -> BSSScheme:
        if len(ctx.recipe.teachers) != 1:
            raise ConfigError(f"scheme 'bss' attacks one teacher; the recipe has {len(ctx.recipe.teachers)}")
        if target not in ("second", "sample"):
            raise ConfigError(f"scheme.params.target must be 'second' or 'sample', got '{target}'")
        if weight < 0 or not 0 < stop_fraction <= 1 or steps < 1 or step_size <= 0 or attack_size < 1:
            raise ConfigError("scheme 'bss': need weight >= 0, 0 < stop_fraction <= 1, steps >= 1, step_size > 0, "
                              "attack_size >= 1")
        distill, teachers = offline_parts(ctx, teacher_inputs=teacher_inputs)
        if teachers is None or not teachers.models:
            raise ConfigError("scheme 'bss' attacks the teacher network itself; it cannot read a soft-label store")
        if is_logits_only(teachers.models[0]):
            raise ConfigError(f"scheme 'bss' differentiates the teacher to find boundary samples, but teacher 0 "
                              f"('{ctx.recipe.teachers[0].name}') gives logits only (no gradient through ONNX "
                              f"Runtime); use the PyTorch teacher")
        data = ctx.data
        bounds = None
        if data is not None and data.mean is not None:
            mean = torch.tensor(data.mean).view(1, -1, 1, 1)
            std = torch.tensor(data.std).view(1, -1, 1, 1)
            bounds = ((0.0 - mean) / std, (1.0 - mean) / std)  # pixel values 0 and 1, normalised
        module = BSSModule(distill, teachers.models[0], weight, stop_fraction, temperature, steps, step_size,
                           attack_size, target, bounds, ctx.recipe.seed)
        return cls(module, teachers)

    def trainable(self) -> nn.Module:
        return self.module

    def to(self, device: torch.device) -> BSSScheme:
        self.teachers.to(device)
        return self

    def step(self, model: nn.Module, batch: Batch, state: TrainState) -> StepOutput:
        return model(batch, self.teachers.outputs(batch), state)

    def eval_models(self) -> dict[str, nn.Module]:
        return {"student": self.module.distill.student}


__all__ = ["BSSModule", "BSSScheme", "boundary_samples", "choose_target_class", "top2_margin"]
