"""Scheme base class, what a scheme is built from, and the trainable student+terms module every scheme shares."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kdkit.taps import FeatureTap
from kdkit.terms.base import LossTerm, SetupContext, TermInputs, setup_terms, total_loss
from kdkit.types import Batch, ModelOutput, StepOutput, TeacherSignal, TeacherSource, TrainState, input_key, logits_of


class DistillModule(nn.Module):
    """What the optimiser and DDP see: the student plus every trainable part of the loss terms.

    Building it sets the terms up against the models of ``setup`` (shape probes, connectors) and collects what they
    tap of each teacher (:attr:`teacher_taps`). ``forward(batch, signal, state)`` runs the student with its taps,
    evaluates the terms through :func:`kdkit.terms.base.total_loss` and returns a :class:`StepOutput`. Calling it
    through the (DDP-)wrapped module keeps gradient synchronisation correct.
    """

    def __init__(self, student: nn.Module, terms: Sequence[LossTerm], setup: SetupContext | None = None,
                 input_name: str | None = None) -> None:
        super().__init__()
        self.input_key = input_key(input_name)  # the batch key of the named input the student reads
        self.teacher_taps: dict[int, list[str]] = setup_terms(terms, setup) if setup is not None else {}
        self.student = student
        self.terms = nn.ModuleList(terms)
        paths = [p for t in terms for p in t.student_taps()]
        self.tap = FeatureTap(student, paths, role="student") if paths else None
        self.input_grad = any(t.needs_input_grad for t in terms)

    def forward(self, batch: Batch, signal: TeacherSignal | None, state: TrainState) -> StepOutput:
        key = self.input_key
        if self.input_grad:  # derivative-matching terms differentiate the outputs w.r.t. this very tensor
            batch = {**batch, key: batch[key].detach().requires_grad_(True)}
        logits = logits_of(self.student(batch[key]))
        feats = self.tap.pop() if self.tap is not None else {}
        out = ModelOutput(logits=logits, features=feats)
        teacher = signal.combined if signal is not None else None
        teachers = signal.each if signal is not None else []
        inp = TermInputs(student=out, teacher=teacher, teachers=teachers, batch=batch, state=state)
        loss, logged = total_loss(self.terms, state, lambda term: term(inp), like=logits)
        if signal is not None and signal.logs:
            logged.update(signal.logs)
        return StepOutput(loss=loss, logits=logits, terms=logged)


@dataclass
class BuildContext:
    """What a scheme is assembled from (made by :func:`kdkit.builder.build_scheme`).

    Attributes:
        recipe: the validated recipe.
        num_classes, in_channels, image_size: what the data says about the models' shapes.
        example: a few real inputs, for probing shapes.
        num_train: size of the training split.
        make_model: ModelSpec -> nn.Module (weights loaded).
        make_terms: TermSpecs -> terms.
        make_teachers: ``teacher_inputs`` -> the recipe's teacher networks (with input adapters where needed).
        store: the soft-label store as a teacher source, when the recipe reads one (then teachers need not exist).
        data: the run's :class:`kdkit.data.RunData` (specialists train on it; BSS reads the pixel range).
        teacher_policy: how frozen teachers run (:class:`kdkit.teachers.policy.TeacherPolicy`); None is fp32.
        examples: a few real inputs per named input (``input``, ``small`` ...); ``example`` is the student's.
    """

    recipe: Any
    num_classes: int
    in_channels: int
    image_size: int
    example: Tensor
    num_train: int
    make_model: Callable[[Any], nn.Module]
    make_terms: Callable[[Sequence[Any]], list[LossTerm]]
    make_teachers: Callable[..., list[nn.Module]] = lambda teacher_inputs="auto": []
    store: TeacherSource | None = None
    data: Any = None
    teacher_policy: Any = None
    examples: dict[str, Tensor] | None = None

    def setup_context(self, student: nn.Module, teachers: Sequence[nn.Module], has_teacher_features: bool = True
                      ) -> SetupContext:
        targets = getattr(getattr(self.data, "train", None), "targets", None)
        specs = list(getattr(self.recipe, "teachers", []) or [])
        teacher_examples = None
        if self.examples and len(specs) == len(teachers):  # each teacher is probed with the input it reads
            teacher_examples = [self.examples[s.input or "input"] for s in specs]
        return SetupContext(student=student, teachers=list(teachers), example=self.example,
                            num_classes=self.num_classes, num_train=self.num_train,
                            has_teacher_features=has_teacher_features, targets=targets,
                            teacher_examples=teacher_examples)


class Scheme:
    """Who teaches whom. A scheme owns its models and answers :meth:`step`; it satisfies
    :class:`kdkit.types.TrainableScheme`, the protocol the engine is handed.

    The engine builds the optimiser over ``trainable()`` (after ``accelerator.prepare``) and passes the prepared
    module back to ``step``; it evaluates ``eval_models()`` (first entry = the model exported as "the student").
    Nothing method-specific lives in the engine. ``accepts_store``: the scheme reads its teacher signal from a
    :class:`~kdkit.types.TeacherSource`, so a soft-label store can stand in for its frozen teachers.
    """

    name: str = "scheme"
    accepts_store: ClassVar[bool] = False
    accepts_named_inputs: ClassVar[bool] = False  # models may read their own named input (``input:`` in a spec)

    @classmethod
    def build(cls, ctx: BuildContext, **params: Any) -> Scheme:
        raise NotImplementedError

    def trainable(self) -> nn.Module:
        raise NotImplementedError

    def step(self, model: nn.Module, batch: Batch, state: TrainState) -> StepOutput:
        raise NotImplementedError

    def eval_models(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def eval_inputs(self) -> dict[str, str]:
        """The batch key each of :meth:`eval_models` reads; models not listed read the main ``input``."""
        return {}

    def to(self, device: torch.device) -> Scheme:
        """Move non-trainable parts (teachers) to ``device``; the engine moves ``trainable()``."""
        return self

    def on_epoch_start(self, state: TrainState) -> None:
        """Hook for schemes that change behaviour per epoch (pipelines, schedules)."""

    def explain_nonfinite(self, batch: Batch) -> str | None:
        """Called by the engine when the loss is NaN/inf: name a cause the scheme can see (e.g. the teacher signal),
        or None. Schemes with a teacher source use :func:`teacher_nonfinite`."""
        return None


def teacher_nonfinite(source: TeacherSource | None, batch: Batch) -> str | None:
    """'the teacher outputs hold NaN/inf ...' when ``source``'s logits for ``batch`` are not all finite, else None."""
    if source is None:
        return None
    with torch.no_grad():
        logits = source.outputs(batch).combined.logits
    if bool(torch.isfinite(logits).all()):
        return None
    bad = int((~torch.isfinite(logits)).sum())
    return (f"the teacher outputs hold {bad} non-finite logit(s) for this batch — check the teacher (its checkpoint "
            f"or a soft-label store's values), not the learning rate")


__all__ = ["BuildContext", "DistillModule", "Scheme", "teacher_nonfinite"]
