"""Data structures that flow between data, models, loss terms, schemes and the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

# A batch is a plain dict so that default collation, DDP and device moves just work. Keys:
#   "input":  (B, C, H, W) float tensor, augmented and normalised (or (B, L) token ids for text): the main input
#   "input.NAME": another named input of the same samples (``data.inputs`` in the recipe: another resolution or
#             normalisation of the same augmented view); a model reads it when its spec says ``input: NAME``
#   "target": (B,) int64 class indices, or (B, K) float multi-hot for multi-label; -1 marks an unlabelled sample
#   "index":  (B,) int64 position of each sample in its (train/val) split — needed by CRD and the soft-label store
#   "view":   (B,) int64 augmentation view each sample was drawn with (the epoch, or epoch mod V with a store)
# The teacher signal never travels in the batch: a TeacherSource (below) answers it.
Batch = dict[str, Tensor]

MAIN_INPUT = "input"  # the name of the main input (a model spec without ``input:`` reads it)


def input_key(name: str | None) -> str:
    """The batch key of the named input ``name`` (None or ``"input"``: the main input)."""
    return MAIN_INPUT if name in (None, MAIN_INPUT) else f"{MAIN_INPUT}.{name}"


def model_input(batch: Batch, name: str | None) -> Tensor:
    """The tensor a model reading the named input ``name`` takes from ``batch``."""
    return batch[input_key(name)]


@dataclass
class ModelOutput:
    """What a model produced for a batch.

    Attributes:
        logits: (B, K) class scores (pre-softmax).
        features: intermediate tensors keyed by module path, filled by :class:`kdkit.taps.FeatureTap`.
    """

    logits: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class StepOutput:
    """What one training step of a scheme returns.

    Attributes:
        loss: scalar to back-propagate (the weighted sum of terms).
        logits: (B, K) student logits, for training accuracy.
        terms: every loss term under its own name, *unweighted* and detached, for logging.
        target: the targets ``logits`` answer when the scheme trained on a batch of its own making (on-policy
            generations, :mod:`kdkit.lm.onpolicy`); None: the batch's ``target``.
    """

    loss: Tensor
    logits: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    target: Tensor | None = None


@dataclass
class TrainState:
    """Where training is. Passed to schemes and terms (e.g. for weight warm-up)."""

    epoch: int = 0  # 0-based epoch being trained
    step: int = 0  # optimiser steps done so far (global)
    steps_per_epoch: int = 1
    epochs: int = 1
    best_metric: float = float("-inf")
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def progress(self) -> float:
        """Fractional epochs done, e.g. 2.5 halfway through the third epoch."""
        return self.step / max(1, self.steps_per_epoch)


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def logits_of(out: Any) -> Tensor:
    """Models return a tensor; Hugging Face models return an object with ``.logits``; some return a tuple."""
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"cannot find logits in a model output of type {type(out).__name__}")


def is_logits_only(model: nn.Module) -> bool:
    """Whether ``model`` gives logits only: its class sets ``kd_logits_only = True`` (e.g. an ONNX Runtime teacher,
    :class:`kdkit.teachers.onnx.OnnxModel`), so it has no module to tap and no gradient to differentiate."""
    return bool(getattr(type(model), "kd_logits_only", False))


@dataclass
class TeacherSignal:
    """What the teacher side says about one batch.

    Attributes:
        combined: the signal for logit terms -- the single teacher's output, the teachers' combination
            (multi-teacher), the specialists' target, or logits read from a store. None when there is no teacher.
        each: every teacher's own output, features included (``each[i].features`` are teacher i's taps); empty when
            the source holds logits only.
        logs: diagnostics to log beside the loss terms (not part of the loss), e.g. ``active_specialists``.
    """

    combined: ModelOutput | None
    each: list[ModelOutput] = field(default_factory=list)
    logs: dict[str, Tensor] = field(default_factory=dict)


@runtime_checkable
class TeacherSource(Protocol):
    """Where the teacher signal comes from: frozen models (PyTorch or ONNX), a soft-label store, specialists.

    Schemes receive one and call :meth:`outputs` per batch; they never look for teacher data in the batch.

    Attributes:
        models: the teacher networks that exist as PyTorch modules (for shape probing and for terms that
            differentiate the teacher); empty for a store.
        has_features: whether ``outputs(batch).each`` carries tapped features.
    """

    models: list[nn.Module]
    has_features: bool

    def outputs(self, batch: Batch) -> TeacherSignal: ...

    def to(self, device: torch.device) -> Any: ...


@runtime_checkable
class TrainableScheme(Protocol):
    """What the engine needs of a scheme (:class:`kdkit.schemes.base.Scheme` implements it).

    The engine builds the optimiser over ``trainable()`` (after ``accelerator.prepare``) and passes the prepared module
    back to ``step``; it evaluates ``eval_models()`` (first entry = the model saved as "the student").
    """

    def trainable(self) -> nn.Module: ...

    def step(self, model: nn.Module, batch: Batch, state: TrainState) -> StepOutput: ...

    def eval_models(self) -> dict[str, nn.Module]: ...

    def eval_inputs(self) -> dict[str, str]:
        """The batch key each of ``eval_models()`` reads (:func:`input_key`); a model not listed reads ``input``."""
        ...

    def to(self, device: torch.device) -> Any: ...

    def on_epoch_start(self, state: TrainState) -> None: ...

    def explain_nonfinite(self, batch: Batch) -> str | None:
        """When the loss is NaN/inf: a cause the scheme can see (e.g. non-finite teacher outputs), or None."""
        ...
