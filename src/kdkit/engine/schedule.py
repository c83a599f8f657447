"""Learning-rate schedules as pure functions of the step, so resuming needs no scheduler state."""

from __future__ import annotations

import math

from kdkit.recipe import ScheduleSpec


def lr_at(spec: ScheduleSpec, base_lr: float, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Learning rate for optimiser step ``step`` (0-based).

    - ``constant``: base_lr.
    - ``multistep``: base_lr · gamma^(number of milestones ≤ current epoch) — the CIFAR tables' 150/180/210 decay.
    - ``cosine``: half-cosine from base_lr to min_lr over all steps after warm-up.
    - ``onecycle``: cosine rise from base_lr/25 to base_lr over ``pct_start`` of the steps, then cosine decay to
      base_lr/(25·10⁴) (the shape of ``torch.optim.lr_scheduler.OneCycleLR``).
    ``warmup_epochs`` (not onecycle) ramps linearly from base_lr/steps to base_lr first.
    """
    total = max(1, steps_per_epoch * epochs)
    epoch = step / max(1, steps_per_epoch)
    if spec.name == "onecycle":
        rise = max(1, int(spec.pct_start * total))
        lo, hi, end = base_lr / 25.0, base_lr, base_lr / 25.0 / 1e4
        if step < rise:
            return _cos(lo, hi, step / rise)
        return _cos(hi, end, (step - rise) / max(1, total - rise))
    warm = int(spec.warmup_epochs * steps_per_epoch)
    if step < warm:
        return base_lr * (step + 1) / warm
    if spec.name == "constant":
        return base_lr
    if spec.name == "multistep":
        return base_lr * spec.gamma ** sum(1 for m in spec.milestones if epoch >= m)
    if spec.name == "cosine":
        t = (step - warm) / max(1, total - warm)
        return _cos(base_lr, spec.min_lr, t)
    raise ValueError(f"unknown schedule {spec.name}")


def _cos(start: float, end: float, t: float) -> float:
    t = min(max(t, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))
