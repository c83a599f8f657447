"""Scheme base class, the frozen-teacher wrapper and the trainable student+terms module."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from kdkit.taps import FeatureTap
from kdkit.terms import LossTerm, SetupContext, TermInputs, total_loss
from kdkit.types import Batch, ModelOutput, StepOutput, TrainState


def freeze(model: nn.Module) -> nn.Module:
    """Stop gradients and put ``model`` in eval mode (BatchNorm uses running statistics, dropout is off)."""
    model.requires_grad_(False)
    return model.eval()


class FrozenTeacher(nn.Module):
    """A teacher that can never train: the one place where teachers are frozen.

    ``train()`` keeps the wrapped model in eval mode, ``forward`` runs under ``torch.no_grad()``, and parameters have
    ``requires_grad=False``. The wrapper is never handed to the optimiser or to DDP.
    """

    def __init__(self, model: nn.Module, taps: Sequence[str] = ()) -> None:
        super().__init__()
        self.model = freeze(model)
        self.tap = FeatureTap(self.model, taps, detach=True, role="teacher") if taps else None

    def train(self, mode: bool = True) -> FrozenTeacher:  # noqa: ARG002 - mode is ignored on purpose
        self.training = False
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(self, x: Tensor) -> ModelOutput:
        logits = self.model(x)
        feats = self.tap.pop() if self.tap is not None else {}
        return ModelOutput(logits=logits_of(logits), features=feats)


def logits_of(out: Any) -> Tensor:
    """Models return a tensor; Hugging Face models return an object with ``.logits``."""
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"cannot find logits in a model output of type {type(out).__name__}")


class DistillModule(nn.Module):
    """What the optimiser and DDP see: the student plus every trainable part of the loss terms.

    ``forward(batch, teacher, teachers, state)`` runs the student with its taps, evaluates all terms and returns a
    :class:`StepOutput`. Calling it through the (DDP-)wrapped module keeps gradient synchronisation correct.
    """

    def __init__(self, student: nn.Module, terms: Sequence[LossTerm]) -> None:
        super().__init__()
        self.student = student
        self.terms = nn.ModuleList(terms)
        paths = [p for t in terms for p in t.student_taps()]
        self.tap = FeatureTap(student, paths, role="student") if paths else None
        self.input_grad = any(getattr(t, "needs_input_grad", False) for t in terms)

    def forward(self, batch: Batch, teacher: ModelOutput | None, teachers: list[ModelOutput], state: TrainState
                ) -> StepOutput:
        if self.input_grad:  # derivative-matching terms differentiate the outputs w.r.t. this very tensor
            batch = dict(batch, input=batch["input"].detach().requires_grad_(True))
        logits = logits_of(self.student(batch["input"]))
        feats = self.tap.pop() if self.tap is not None else {}
        out = ModelOutput(logits=logits, features=feats)
        inp = TermInputs(student=out, teacher=teacher, teachers=teachers, batch=batch, state=state)
        loss, logged = total_loss(self.terms, inp)
        return StepOutput(loss=loss, logits=logits, terms=logged)


@dataclass
class BuildContext:
    """What a scheme needs to assemble itself from a recipe (see :func:`kdkit.build.build_run`)."""

    recipe: Any  # kdkit.recipe.Recipe
    num_classes: int
    in_channels: int
    image_size: int
    example: Tensor  # a few real training inputs, (B, C, H, W), for probing shapes
    num_train: int
    make_model: Callable[[Any], nn.Module]  # ModelSpec -> nn.Module (weights loaded)
    make_terms: Callable[[Sequence[Any]], list[LossTerm]]  # TermSpecs -> terms
    extras: dict[str, Any] = field(default_factory=dict)

    def setup_context(self, student: nn.Module, teachers: Sequence[nn.Module], has_teacher_features: bool = True
                      ) -> SetupContext:
        return SetupContext(student=student, teachers=list(teachers), example=self.example,
                            num_classes=self.num_classes, num_train=self.num_train,
                            has_teacher_features=has_teacher_features)


class Scheme:
    """Who teaches whom. A scheme owns its models and answers :meth:`step`.

    The engine builds the optimiser over ``trainable()`` (after ``accelerator.prepare``) and passes the prepared
    module back to ``step``; it evaluates ``eval_models()`` (first entry = the model exported as "the student").
    Nothing method-specific lives in the engine.
    """

    name: str = "scheme"

    @classmethod
    def build(cls, ctx: BuildContext, **params: Any) -> Scheme:
        raise NotImplementedError

    def trainable(self) -> nn.Module:
        raise NotImplementedError

    def step(self, model: nn.Module, batch: Batch, state: TrainState) -> StepOutput:
        raise NotImplementedError

    def eval_models(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def to(self, device: torch.device) -> Scheme:
        """Move non-trainable parts (teachers) to ``device``; the engine moves ``trainable()``."""
        return self

    def on_epoch_start(self, state: TrainState) -> None:
        """Hook for schemes that change behaviour per epoch (pipelines, schedules)."""
