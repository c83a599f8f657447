"""Derivative matching: Sobolev training differentiates the teacher itself."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdkit.errors import ConfigError
from kdkit.losses import sobolev
from kdkit.terms.base import LossTerm, SetupContext, TermInputs, register_term
from kdkit.types import logits_of


@register_term("sobolev", description="Sobolev training: match projections of input gradients of log-probabilities "
                                        "(Czarnecki et al., NeurIPS 2017); ~(1+2P)× backward cost")
class SobolevTerm(LossTerm):
    """Stochastic Sobolev term with ``projections`` random (class, direction) draws per step. The teacher is run again
    with autograd on the input (its weights stay frozen), so this term costs an extra teacher forward and backward
    and a double backward of the student."""

    needs_input_grad = True

    def __init__(self, projections: int = 1, teacher: int = 0, seed: int = 0) -> None:
        super().__init__()
        if projections < 1:
            raise ConfigError(f"projections must be >= 1, got {projections}")
        self.projections, self.teacher_index, self.seed = int(projections), int(teacher), int(seed)
        self._teacher: list[nn.Module] = []  # a list, so the frozen teacher is not registered as a submodule
        self._gen: torch.Generator | None = None

    def setup(self, ctx: SetupContext) -> None:
        if self.teacher_index >= len(ctx.teachers):
            raise ConfigError(f"loss term '{self.name}' needs an online teacher (it differentiates the teacher)")
        self._teacher = [ctx.teachers[self.teacher_index]]

    def compute(self, inp: TermInputs) -> Tensor:
        x = inp.batch["input"]
        if not x.requires_grad:
            raise ConfigError(f"loss term '{self.name}': the scheme did not enable input gradients")
        teacher = self._teacher[0]
        with torch.enable_grad():
            t_out = teacher(x)
        t_logits = logits_of(t_out)
        if self._gen is None or self._gen.device != x.device:
            self._gen = torch.Generator(device=x.device).manual_seed(self.seed)
        return sobolev.sobolev_loss(inp.student.logits, t_logits, x, self.projections, self._gen)
