"""Data structures that flow between data, models, loss terms, schemes and the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

# A batch is a plain dict so that default collation, DDP and device moves just work. Keys:
#   "input":  (B, C, H, W) float tensor, augmented and normalised (or (B, L) token ids for text)
#   "target": (B,) int64 class indices, or (B, K) float multi-hot for multi-label; -1 marks an unlabelled sample
#   "index":  (B,) int64 position of each sample in its (train/val) split — needed by CRD and the soft-label store
#   "view":   (B,) int64 augmentation view each sample was drawn with (the epoch, or epoch mod V with a store)
# Schemes may add keys (e.g. "teacher_input" for cross-modal distillation, "soft_logits" from a store).
Batch = dict[str, Tensor]


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
    """

    loss: Tensor
    logits: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


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
