"""Offline distillation: frozen, pre-trained teacher(s) -- or a soft-label store -- guide one student. With no teacher
it is plain supervised training (``kdkit train``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from kdkit.errors import ConfigError
from kdkit.registry import SCHEMES
from kdkit.schemes.base import BuildContext, DistillModule, Scheme, teacher_nonfinite
from kdkit.teachers.frozen import COMBINES, FrozenTeachers
from kdkit.terms.base import LossTerm, SetupContext
from kdkit.types import Batch, StepOutput, TeacherSource, TrainState


def offline_parts(ctx: BuildContext, combine: str = "mean_logits", teacher_weights: list[float] | None = None,
                  teacher_inputs: str | list | None = "auto") -> tuple[DistillModule, TeacherSource | None]:
    """The student with its terms, and the teacher source: the store when the recipe reads one, else the recipe's
    frozen teachers (combined by ``combine``). Shared by every scheme that distils from frozen teachers."""
    r = ctx.recipe
    if combine not in COMBINES:
        raise ConfigError(f"scheme.params.combine: '{combine}' is not one of {', '.join(COMBINES)}")
    student = ctx.make_model(r.student)
    terms = ctx.make_terms(r.terms)
    store = ctx.store
    # With a store no teacher runs; the store still carries the teacher networks a term differentiates (Sobolev).
    models = list(store.models) if store is not None else ctx.make_teachers(teacher_inputs)
    needs = [t.name for t in terms if t.needs_teacher]
    if needs and not models and store is None:
        raise ConfigError(f"loss terms {needs} need a teacher; add `teachers:` to the recipe or drop them")
    setup = ctx.setup_context(student, models, has_teacher_features=store is None and bool(models))
    reads = [t.input or "input" for t in r.teachers]
    if any(t.needs_input_grad for t in terms) and any(n != (r.student.input or "input") for n in reads):
        raise ConfigError(f"loss terms {[t.name for t in terms if t.needs_input_grad]} match input gradients, which "
                          f"needs teacher and student to read the same input; the student reads "
                          f"'{r.student.input or 'input'}', the teachers {reads}")
    module = DistillModule(student, terms, setup, input_name=r.student.input)
    if store is not None:
        return module, store
    source = FrozenTeachers(models, module.teacher_taps, combine, teacher_weights, r.seed,
                            policy=ctx.teacher_policy, inputs=[t.input for t in r.teachers]) if models else None
    return module, source


@SCHEMES.register("offline", description="frozen teacher(s) guide one student; no teacher = supervised training")
class OfflineScheme(Scheme):
    """One student, zero or more frozen teachers (or a soft-label store).

    ``scheme.params``: ``combine`` -- how several teachers make the signal for logit terms: ``mean_logits``
    (default), ``mean_probs`` (log of the averaged probabilities, so softmax of it is the ensemble's distribution at
    T=1), ``weighted`` (logit average with ``teacher_weights``), or ``random`` (one teacher drawn per step);
    ``teacher_inputs`` -- see :mod:`kdkit.teachers.adapters`.
    """

    name = "offline"
    accepts_store = True
    accepts_named_inputs = True

    def __init__(self, module: DistillModule, teachers: TeacherSource | None) -> None:
        self.module = module
        self.teachers = teachers

    @classmethod
    def build(cls, ctx: BuildContext, **params: Any) -> OfflineScheme:
        allowed = {"combine", "teacher_weights", "teacher_inputs"}
        if set(params) - allowed:
            raise ConfigError(f"scheme 'offline' has no params {sorted(set(params) - allowed)}; allowed: "
                              f"{', '.join(sorted(allowed))}")
        return cls(*offline_parts(ctx, **params))

    @classmethod
    def from_models(cls, student: nn.Module, teachers: list[nn.Module], terms: list[LossTerm], example: Tensor,
                    num_classes: int, num_train: int = 0, store: TeacherSource | None = None,
                    combine: str = "mean_logits", teacher_weights: list[float] | None = None, seed: int = 0
                    ) -> OfflineScheme:
        """The scheme from Python objects, without a recipe: ``student`` distilled from frozen ``teachers`` (or from
        ``store``, a :class:`~kdkit.types.TeacherSource` such as :class:`kdkit.teachers.StoreTeacher`) with built
        ``terms``; ``example`` is a small real input batch for probing shapes."""
        models = list(store.models) if store is not None else list(teachers)
        setup = SetupContext(student=student, teachers=models, example=example, num_classes=num_classes,
                             num_train=num_train, has_teacher_features=store is None and bool(models))
        module = DistillModule(student, terms, setup)
        if store is not None:
            return cls(module, store)
        return cls(module, FrozenTeachers(models, module.teacher_taps, combine, teacher_weights, seed) if models
                   else None)

    def trainable(self) -> nn.Module:
        return self.module

    def to(self, device: torch.device) -> OfflineScheme:
        if self.teachers is not None:
            self.teachers.to(device)
        return self

    def step(self, model: nn.Module, batch: Batch, state: TrainState) -> StepOutput:
        # The teacher runs only on steps where a term that reads it is active: after an initialisation term stops
        # (AB's init, a FitNets stage) or before a late term starts, a CE-only step costs what scratch training costs.
        used = self.teachers is not None and any(t.needs_teacher and t.schedule.active(state)
                                                 for t in self.module.terms)
        signal = self.teachers.outputs(batch) if used else None
        return model(batch, signal, state)

    def eval_models(self) -> dict[str, nn.Module]:
        return {"student": self.module.student}

    def eval_inputs(self) -> dict[str, str]:
        return {"student": self.module.input_key}

    def explain_nonfinite(self, batch: Batch) -> str | None:
        return teacher_nonfinite(self.teachers, batch)


__all__ = ["OfflineScheme", "offline_parts"]
