"""Offline distillation: frozen, pre-trained teacher(s) guide one student. With no teacher it is plain supervised
training (``kdkit train``)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from kdkit.errors import ConfigError
from kdkit.registry import SCHEMES
from kdkit.schemes.adapters import build_teachers
from kdkit.schemes.base import BuildContext, DistillModule, FrozenTeacher, Scheme
from kdkit.types import Batch, ModelOutput, StepOutput, TrainState

Combine = Literal["mean_logits", "mean_probs", "weighted", "random"]


@SCHEMES.register("offline", description="frozen teacher(s) guide one student; no teacher = supervised training")
class OfflineScheme(Scheme):
    """One student, zero or more frozen teachers.

    With several teachers, the teacher signal given to logit terms is ``combine``d: ``mean_logits`` (default),
    ``mean_probs`` (log of the averaged probabilities, so softmax of it is the ensemble's distribution at T=1),
    ``weighted`` (logit average with ``teacher_weights``), or ``random`` (one teacher drawn per step).
    """

    name = "offline"

    def __init__(self, student: nn.Module, teachers: list[nn.Module], terms: list, ctx: BuildContext,
                 combine: Combine = "mean_logits", teacher_weights: list[float] | None = None) -> None:
        self.teachers_raw = teachers
        self.combine = combine
        if combine not in ("mean_logits", "mean_probs", "weighted", "random"):
            raise ConfigError(f"scheme.params.combine: '{combine}' is not one of mean_logits, mean_probs, weighted, "
                              f"random")
        if teacher_weights is not None and len(teacher_weights) != len(teachers):
            raise ConfigError(f"scheme.params.teacher_weights has {len(teacher_weights)} values for "
                              f"{len(teachers)} teachers")
        self.teacher_weights = teacher_weights
        needs = [t.name for t in terms if t.needs_teacher]
        if needs and not teachers and not ctx.recipe.soft_labels:
            raise ConfigError(f"loss terms {needs} need a teacher; add `teachers:` to the recipe or drop them")
        setup = ctx.setup_context(student, teachers, has_teacher_features=bool(teachers))
        for term in terms:
            term.setup(setup)
        taps: dict[int, list[str]] = {}
        for term in terms:
            for i, paths in term.teacher_taps().items():
                if i >= len(teachers):
                    raise ConfigError(f"loss term '{term.name}' reads teacher {i}, but the recipe has "
                                      f"{len(teachers)} teacher(s)")
                taps.setdefault(i, []).extend(paths)
        self.teachers = [FrozenTeacher(t, taps.get(i, ())) for i, t in enumerate(teachers)]
        self.module = DistillModule(student, terms)
        self._gen = torch.Generator().manual_seed(ctx.recipe.seed + 7919)

    @classmethod
    def build(cls, ctx: BuildContext, **params: Any) -> OfflineScheme:
        r = ctx.recipe
        student = ctx.make_model(r.student)
        terms = ctx.make_terms(r.terms)
        # Teachers trained at another size/normalisation get an input adapter (kdkit.schemes.adapters). With a
        # soft-label store the teachers' logits come with each batch (kdkit.softlabels): no teacher is loaded, unless
        # a term differentiates the teacher model itself (Sobolev).
        teacher_inputs = params.pop("teacher_inputs", "auto")
        needs_model = any(t.needs_input_grad and t.needs_teacher for t in terms)
        teachers = [] if r.soft_labels and not needs_model else build_teachers(ctx, r.teachers, teacher_inputs)
        return cls(student, teachers, terms, ctx, **params)

    def trainable(self) -> nn.Module:
        return self.module

    def to(self, device: torch.device) -> OfflineScheme:
        for t in self.teachers:
            t.to(device)
        return self

    def teacher_outputs(self, batch: Batch) -> tuple[ModelOutput | None, list[ModelOutput]]:
        """Run the teachers (no grad, eval mode) and combine their logits for logit terms."""
        if "teacher_logits" in batch:  # read from a soft-label store: no teacher forward at all
            return ModelOutput(logits=batch["teacher_logits"]), []
        if not self.teachers:
            return None, []
        x = batch.get("teacher_input", batch["input"])
        outs = [t(x) for t in self.teachers]
        return self._combine(outs), outs

    def _combine(self, outs: list[ModelOutput]) -> ModelOutput:
        if len(outs) == 1:
            return outs[0]
        logits = torch.stack([o.logits.float() for o in outs])  # (N, B, K)
        if self.combine == "random":
            i = int(torch.randint(len(outs), (1,), generator=self._gen))
            return outs[i]
        if self.combine == "mean_probs":
            combined = torch.log(torch.softmax(logits, dim=-1).mean(0).clamp_min(1e-12))
        elif self.combine == "weighted" and self.teacher_weights is not None:
            w = torch.tensor(self.teacher_weights, dtype=logits.dtype, device=logits.device)
            combined = (logits * (w / w.sum()).view(-1, 1, 1)).sum(0)
        else:
            combined = logits.mean(0)
        return ModelOutput(logits=combined, features=outs[0].features)

    def step(self, model: nn.Module, batch: Batch, state: TrainState) -> StepOutput:
        teacher, teachers = self.teacher_outputs(batch)
        return model(batch, teacher, teachers, state)

    def eval_models(self) -> dict[str, nn.Module]:
        return {"student": self.module.student}
