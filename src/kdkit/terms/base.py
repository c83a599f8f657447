"""Loss terms: a pure loss function bound to model outputs, the taps it reads and a schedule of its weight.

A term is an ``nn.Module`` so that anything trainable it owns (a connector g(m), an embedding head, a memory bank)
is trained and checkpointed with the student. The math lives in :mod:`kdkit.losses`; a term only picks tensors out of
:class:`TermInputs` and calls it. A term's constructor takes only its own parameters (the recipe's ``params``); its
log name and its :class:`TermSchedule` (weight, warm-up, epoch window) come from the recipe through
:func:`build_term`. :func:`total_loss` is the one term loop every scheme uses.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from kdkit.errors import ConfigError
from kdkit.registry import LOSSES
from kdkit.taps import probe_shapes
from kdkit.types import Batch, ModelOutput, TrainState, is_logits_only


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
    """What a term may inspect once, before training, to size its connectors and buffers.

    Attributes:
        student: the student network.
        teachers: the teacher networks that exist as PyTorch modules (``TeacherSource.models``); empty with a store.
        example: a small real input batch, e.g. (B, C, H, W) -- of the input the student reads.
        num_classes: K.
        num_train: size of the training split (CRD's memory bank).
        has_teacher_features: False when the teacher signal holds logits only (a soft-label store).
        targets: (N,) training labels in split order when the data has them (CRD draws negatives of other classes).
    """

    student: nn.Module
    teachers: list[nn.Module]
    example: Tensor
    num_classes: int
    num_train: int
    has_teacher_features: bool = True
    targets: Tensor | None = None
    teacher_examples: list[Tensor] | None = None  # per teacher, when teachers read another named input

    def student_shapes(self, paths: Sequence[str]) -> dict[str, tuple[int, ...]]:
        return probe_shapes(self.student, self.example, list(paths), role="student")

    def teacher_shapes(self, paths: Sequence[str], i: int = 0) -> dict[str, tuple[int, ...]]:
        if i >= len(self.teachers):
            raise ConfigError(f"a term reads features of teacher {i}, but the recipe has {len(self.teachers)} "
                              f"teacher model(s)")
        if is_logits_only(self.teachers[i]):
            raise ConfigError(_logits_only_message("a term", i, self.teachers[i]))
        example = self.teacher_examples[i] if self.teacher_examples else self.example
        return probe_shapes(self.teachers[i], example, list(paths), role=f"teacher {i}")


def _logits_only_message(who: str, i: int, teacher: nn.Module) -> str:
    return (f"{who} reads features of teacher {i} ({teacher.extra_repr() or type(teacher).__name__}), which gives "
            f"logits only (an ONNX teacher has no module to tap); use logit terms (kd, dkd, ...) with it, or give the "
            f"PyTorch teacher")


@dataclass(frozen=True)
class TermSchedule:
    """When and how much a term counts: ``weight``, ramped linearly from 0 over ``warmup_epochs`` after
    ``start_epoch`` (DKD's warm-up), and 0 outside the window ``start_epoch <= progress < stop_epoch`` (FitNets'
    two stages are a hint term with ``stop_epoch`` and KD terms with ``start_epoch``). Built from the recipe's
    term entry; progress is in fractional epochs."""

    weight: float = 1.0
    warmup_epochs: float = 0.0
    start_epoch: float = 0.0
    stop_epoch: float | None = None

    @classmethod
    def from_spec(cls, spec: Any) -> TermSchedule:
        return cls(float(spec.weight), float(spec.warmup_epochs), float(spec.start_epoch),
                   None if spec.stop_epoch is None else float(spec.stop_epoch))

    @property
    def windowed(self) -> bool:
        """The term is off for part of training (its connectors then get no gradient: DDP must know)."""
        return self.start_epoch > 0 or self.stop_epoch is not None

    def active(self, state: TrainState) -> bool:
        p = state.progress
        return p >= self.start_epoch and (self.stop_epoch is None or p < self.stop_epoch)

    def weight_at(self, state: TrainState) -> float:
        if not self.active(state):
            return 0.0
        if self.warmup_epochs <= 0:
            return self.weight
        return self.weight * min(1.0, (state.progress - self.start_epoch) / self.warmup_epochs)


class LossTerm(nn.Module):
    """Base class of loss terms.

    Subclasses set ``needs_teacher``/``needs_teacher_features``, override :meth:`compute`, and, for feature terms,
    :meth:`student_taps`/:meth:`teacher_taps` and :meth:`setup`. Keyword arguments of ``__init__`` are the recipe's
    ``params``; invalid ones raise :class:`ConfigError` with a message that :func:`build_term` prefixes with the
    term's name.
    """

    needs_teacher: ClassVar[bool] = True
    needs_teacher_features: ClassVar[bool] = False
    needs_input_grad: ClassVar[bool] = False  # the student's input must require grad (derivative matching)
    allows_negative_weight: ClassVar[bool] = False  # a negative weight would train *away* from the target
    registered_name: ClassVar[str] = ""  # set by @LOSSES.register through register_term

    def __init__(self) -> None:
        super().__init__()
        self.name = self.registered_name or type(self).__name__
        self.schedule = TermSchedule()

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
        return self.schedule.weight_at(state)

    def forward(self, inp: TermInputs) -> Tensor:
        if self.needs_teacher and inp.teacher is None:
            raise ConfigError(f"loss term '{self.name}' needs a teacher; add `teachers:` to the recipe or drop the "
                              f"term")
        return self.compute(inp)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, weight={self.schedule.weight}"


def register_term(name: str, *, description: str | None = None) -> Callable[[type[LossTerm]], type[LossTerm]]:
    """``@register_term("kd", description=...)``: register a :class:`LossTerm` in :data:`kdkit.registry.LOSSES`."""

    def deco(cls: type[LossTerm]) -> type[LossTerm]:
        cls.registered_name = name
        LOSSES.add(name, cls, description)
        return cls

    return deco


def check_temperature(temperature: float) -> float:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature must be a finite number > 0, got {temperature}")
    return float(temperature)


def build_term(spec: Any, where: str = "terms") -> LossTerm:
    """Instantiate a registered term from a :class:`kdkit.recipe.TermSpec` (at recipe position ``where``), with
    one-line errors for bad params and weights."""
    cls = LOSSES.get(spec.name)
    if not (isinstance(cls, type) and issubclass(cls, LossTerm)):
        what = getattr(cls, "__name__", repr(cls))
        raise ConfigError(f"{where}: loss term '{spec.name}' ({what}) is not a subclass of kdkit.terms.base.LossTerm; "
                          f"see docs/own-models-and-data.md")
    if spec.weight < 0 and not cls.allows_negative_weight:
        raise ConfigError(f"{where}: loss term '{spec.log_name}' has weight {spec.weight}; a negative weight trains "
                          f"the student away from what the term measures -- use a weight >= 0")
    if not math.isfinite(spec.weight):
        raise ConfigError(f"{where}: loss term '{spec.log_name}' weight must be finite, got {spec.weight}")
    for key, value in spec.params.items():
        if _non_finite(value):
            raise ConfigError(f"{where}: loss term '{spec.log_name}' param '{key}' is {value!r}; every number must be "
                              f"finite (no NaN/inf)")
    try:
        term = cls(**spec.params)
    except ConfigError as err:
        raise ConfigError(f"{where}: loss term '{spec.log_name}': {err}") from None
    except TypeError as err:
        allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise ConfigError(f"{where}: loss term '{spec.name}' params {sorted(spec.params)}: {err}; allowed params: "
                          f"{', '.join(allowed) or '(none)'}") from None
    term.name = spec.log_name
    term.schedule = TermSchedule.from_spec(spec)
    return term


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    return False


def build_terms(specs: Sequence[Any]) -> list[LossTerm]:
    return [build_term(s, f"terms.{i}") for i, s in enumerate(specs)]


def hard_target(batch: Batch) -> Tensor:
    """The batch's class labels. A batch mixed by mixup/cutmix (``lam`` in it) has two labels per sample; only
    ``ce`` weighs them (:func:`kdkit.losses.logits.mixed_cross_entropy`), so other label terms refuse it."""
    if "lam" in batch:
        raise ConfigError("a loss term reads hard labels, but data.augment.mixup/cutmix mix two labels per sample; "
                          "only 'ce' weighs both (and the teacher terms need none) — remove this term or the mixing")
    return batch["target"]


def total_loss(terms: Sequence[LossTerm], state: TrainState, value_of: Callable[[LossTerm], Tensor],
               like: Tensor, prefix: str = "") -> tuple[Tensor, dict[str, Tensor]]:
    """The one term loop: the weighted sum of ``value_of(term)`` over the terms active at ``state``.

    A term outside its epoch window is neither computed nor logged. Returns ``(loss, logged)`` with every term's
    *unweighted*, detached value under ``prefix + term.name``.

    Args:
        terms: the loss terms.
        state: training progress (weights and windows are read from each term's schedule).
        value_of: computes one term's unweighted value (schemes decide what the term sees).
        like: a tensor of the graph (the student's logits), for a zero loss that keeps the graph when no term is
            active.
        prefix: log-name prefix (e.g. ``peer1_``).
    """
    if len(terms) == 0:
        raise ConfigError("the recipe has no loss terms; add at least `terms: [{name: ce}]`")
    loss: Tensor | None = None
    logged: dict[str, Tensor] = {}
    for term in terms:
        if not term.schedule.active(state):
            continue  # outside its active window: not computed (and not logged) at all
        value = value_of(term)
        logged[prefix + term.name] = value.detach()
        part = value * term.weight_at(state)
        loss = part if loss is None else loss + part
    if loss is None:  # every term is outside its window: a zero loss that keeps the graph
        loss = like.sum() * 0.0
    return loss, logged


def setup_terms(terms: Sequence[LossTerm], ctx: SetupContext) -> dict[int, list[str]]:
    """Set every term up (probe shapes, make connectors) and gather what they tap of each teacher.

    Returns:
        ``{teacher index: module paths}``; raises when a term reads a teacher the context does not have.
    """
    needs = [t.name for t in terms if t.needs_teacher_features]
    if needs and not ctx.has_teacher_features:
        raise ConfigError(f"loss terms {needs} compare features, which need an online teacher; a soft-label store only "
                          f"has logits -- add `teachers:` without `soft_labels:`, or drop the terms")
    # A teacher that gives logits only (ONNX) has nothing to tap or differentiate: refuse before any shape probe.
    for i, teacher in enumerate(ctx.teachers):
        if not is_logits_only(teacher):
            continue
        for term in terms:
            if term.needs_teacher_features:
                raise ConfigError(_logits_only_message(f"loss term '{term.name}'", i, teacher))
            if term.needs_input_grad and term.needs_teacher:
                raise ConfigError(f"loss term '{term.name}' differentiates the teacher, but teacher {i} "
                                  f"({teacher.extra_repr() or type(teacher).__name__}) gives logits only (no gradient "
                                  f"through an ONNX graph); give the PyTorch teacher or drop the term")
    for term in terms:
        term.setup(ctx)
    taps: dict[int, list[str]] = {}
    for term in terms:
        for i, paths in term.teacher_taps().items():
            if i >= len(ctx.teachers):
                raise ConfigError(f"loss term '{term.name}' reads teacher {i}, but the recipe has "
                                  f"{len(ctx.teachers)} teacher model(s)")
            if paths and is_logits_only(ctx.teachers[i]):
                raise ConfigError(_logits_only_message(f"loss term '{term.name}'", i, ctx.teachers[i]))
            taps.setdefault(i, []).extend(p for p in paths if p not in taps.get(i, []))
    return taps
