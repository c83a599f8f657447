"""Loss terms: a pure loss function bound to model outputs, a weight (optionally warmed up) and the taps it reads.

A term is an ``nn.Module`` so that anything trainable it owns (a connector g(m), an embedding head, a memory bank)
is trained and checkpointed with the student. The math lives in :mod:`kdkit.losses`; a term only picks tensors out of
:class:`TermInputs` and calls it. Terms register in :data:`kdkit.registry.LOSSES` under their recipe name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kdkit.errors import ConfigError
from kdkit.losses.logits import cross_entropy, kd_kl
from kdkit.registry import LOSSES
from kdkit.taps import probe_shapes
from kdkit.types import Batch, ModelOutput, TrainState


@dataclass
class TermInputs:
    """Everything a term may read for one batch.

    Attributes:
        student: the student's output (logits + tapped features).
        teacher: the teacher signal for logit terms: the single teacher's output, the teachers' combination
            (multi-teacher), or logits read from a soft-label store (then ``features`` is empty). None without teacher.
        teachers: each teacher's own output (features of teacher i are in ``teachers[i].features``).
        batch: the batch (``input``, ``target``, ``index``, ``view`` ...).
        state: training progress.
    """

    student: ModelOutput
    teacher: ModelOutput | None
    batch: Batch
    state: TrainState
    teachers: list[ModelOutput] = field(default_factory=list)


@dataclass
class SetupContext:
    """What a term may inspect once, before training, to size its connectors and buffers."""

    student: nn.Module
    teachers: list[nn.Module]
    example: Tensor  # a small real input batch, (B, C, H, W)
    num_classes: int
    num_train: int  # size of the training split (CRD's memory bank)
    has_teacher_features: bool = True  # False when teacher logits come from a soft-label store
    teacher_example: Tensor | None = None  # when teachers see another view (cross-modal), else None

    def student_shapes(self, paths: Sequence[str]) -> dict[str, tuple[int, ...]]:
        return probe_shapes(self.student, self.example, list(paths), role="student")

    def teacher_shapes(self, paths: Sequence[str], i: int = 0) -> dict[str, tuple[int, ...]]:
        if i >= len(self.teachers):
            raise ConfigError(f"a term reads features of teacher {i}, but the recipe has {len(self.teachers)} "
                              f"teacher(s)")
        x = self.teacher_example if self.teacher_example is not None else self.example
        return probe_shapes(self.teachers[i], x, list(paths), role=f"teacher {i}")


class LossTerm(nn.Module):
    """Base class of loss terms.

    Subclasses set ``needs_teacher``/``needs_teacher_features``, override :meth:`compute`, and, for feature terms,
    :meth:`student_taps`/:meth:`teacher_taps` and :meth:`setup`. Keyword arguments of ``__init__`` beyond
    ``name``, ``weight`` and ``warmup_epochs`` are the recipe's ``params``.
    """

    needs_teacher: ClassVar[bool] = True
    needs_teacher_features: ClassVar[bool] = False
    needs_input_grad: ClassVar[bool] = False  # the student's input must require grad (derivative matching)

    def __init__(self, name: str, weight: float = 1.0, warmup_epochs: float = 0.0) -> None:
        super().__init__()
        self.name = name
        self.weight = float(weight)
        self.warmup_epochs = float(warmup_epochs)
        # Active window in (fractional) epochs: the term counts for start_epoch <= progress < stop_epoch. Set from the
        # recipe's TermSpec; e.g. FitNets' two stages are a hint term with stop_epoch and KD terms with start_epoch.
        self.start_epoch = 0.0
        self.stop_epoch: float | None = None

    # -- declared once: what the term reads ---------------------------------------------------------------------
    def student_taps(self) -> list[str]:
        return []

    def teacher_taps(self) -> dict[int, list[str]]:
        """Module paths to tap per teacher index."""
        return {}

    def setup(self, ctx: SetupContext) -> None:
        """Probe shapes and create connectors. Called once before the optimiser is built."""

    # -- per batch ----------------------------------------------------------------------------------------------
    def compute(self, inp: TermInputs) -> Tensor:
        raise NotImplementedError

    def weight_at(self, state: TrainState) -> float:
        """The weight: 0 outside [start_epoch, stop_epoch), ramped linearly from 0 over ``warmup_epochs`` after
        ``start_epoch`` (DKD's warm-up, for instance)."""
        progress = state.progress
        if progress < self.start_epoch or (self.stop_epoch is not None and progress >= self.stop_epoch):
            return 0.0
        if self.warmup_epochs <= 0:
            return self.weight
        return self.weight * min(1.0, (progress - self.start_epoch) / self.warmup_epochs)

    def forward(self, inp: TermInputs) -> Tensor:
        if self.needs_teacher and inp.teacher is None:
            raise ConfigError(f"loss term '{self.name}' needs a teacher; add `teachers:` to the recipe or drop the "
                              f"term")
        return self.compute(inp)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, weight={self.weight}"


def build_term(spec: Any) -> LossTerm:
    """Instantiate a registered term from a :class:`kdkit.recipe.TermSpec`, with one-line errors for bad params."""
    cls = LOSSES.get(spec.name)
    try:
        term = cls(name=spec.log_name, weight=spec.weight, warmup_epochs=spec.warmup_epochs, **spec.params)
        term.start_epoch = float(spec.start_epoch)
        term.stop_epoch = None if spec.stop_epoch is None else float(spec.stop_epoch)
        return term
    except TypeError as err:
        import inspect

        allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "name", "weight",
                                                                                     "warmup_epochs")]
        raise ConfigError(f"loss term '{spec.name}' params {sorted(spec.params)}: {err}; allowed params: "
                          f"{', '.join(allowed) or '(none)'}") from None


def hard_target(batch: Batch) -> Tensor:
    return batch["target"]


# ----------------------------------------------------------------------------------------------------------------------
# The foundation's two terms. The knowledge catalogue (issue 3) adds the rest in kdkit.terms_catalog.


@LOSSES.register("ce", description="hard-label cross-entropy (optional label smoothing)")
class CrossEntropyTerm(LossTerm):
    """Cross-entropy with the ground-truth labels; ``label_smoothing`` ε mixes ε/K into the target."""

    needs_teacher = False

    def __init__(self, name: str = "ce", weight: float = 1.0, warmup_epochs: float = 0.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__(name, weight, warmup_epochs)
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"loss term '{name}': label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def compute(self, inp: TermInputs) -> Tensor:
        return cross_entropy(inp.student.logits, hard_target(inp.batch), self.label_smoothing)


@LOSSES.register("kd", description="Hinton KD: T²·KL(softmax(t/T) ‖ softmax(s/T)), batchmean")
class KDTerm(LossTerm):
    """Soft-target distillation (Hinton et al., 2015) with temperature ``temperature``."""

    def __init__(self, name: str = "kd", weight: float = 1.0, warmup_epochs: float = 0.0,
                 temperature: float = 4.0) -> None:
        super().__init__(name, weight, warmup_epochs)
        if temperature <= 0:
            raise ConfigError(f"loss term '{name}': temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def compute(self, inp: TermInputs) -> Tensor:
        assert inp.teacher is not None
        return kd_kl(inp.student.logits, inp.teacher.logits, self.temperature)


def total_loss(terms: nn.ModuleList, inp: TermInputs) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of terms; returns (loss, unweighted detached values by name)."""
    if len(terms) == 0:
        raise ConfigError("the recipe has no loss terms; add at least `terms: [{name: ce}]`")
    loss: Tensor | None = None
    logged: dict[str, Tensor] = {}
    for term in terms:
        w = term.weight_at(inp.state)
        if w == 0.0 and (term.start_epoch > 0 or term.stop_epoch is not None):
            continue  # outside its active window: not computed (and not logged) at all
        value = term(inp)
        logged[term.name] = value.detach()
        part = value * w
        loss = part if loss is None else loss + part
    if loss is None:  # every term is outside its window: a zero loss that keeps the graph
        loss = inp.student.logits.sum() * 0.0
    return loss, logged


__all__ = ["LossTerm", "TermInputs", "SetupContext", "build_term", "total_loss", "CrossEntropyTerm", "KDTerm",
           "torch"]
