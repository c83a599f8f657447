"""Evaluation: top-1 / top-5 accuracy and cross-entropy over a loader."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from kdkit.types import Batch, logits_of, to_device


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable[Batch], device: torch.device | str = "cpu", key: str = "input"
             ) -> dict[str, float]:
    """Accuracy of ``model`` on every batch of ``loader`` (labels -1 are skipped); the model reads ``batch[key]`` (a
    named input, :func:`kdkit.types.input_key`).

    Returns:
        ``{"top1": %, "top5": % (when there are ≥5 classes), "loss": mean CE, "n": samples}``. For multi-label
        targets ((B, K) floats) ``top1`` is the per-label accuracy at threshold 0.5 instead.
    """
    was = model.training
    model.eval()
    n = correct1 = correct5 = 0
    loss_sum = 0.0
    multilabel = False
    try:
        for batch in loader:
            batch = to_device(batch, device)
            logits = logits_of(model(batch[key])).float()
            y = batch["target"]
            if y.ndim == 2:  # multi-label
                multilabel = True
                pred = logits.sigmoid() > 0.5
                correct1 += int((pred == (y > 0.5)).float().mean(1).sum())
                loss_sum += float(F.binary_cross_entropy_with_logits(logits, y.float(), reduction="sum") / y.shape[1])
                n += y.shape[0]
                continue
            keep = y >= 0
            if not bool(keep.any()):
                continue
            logits, y = logits[keep], y[keep]
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            correct1 += int((top[:, 0] == y).sum())
            correct5 += int((top == y[:, None]).any(1).sum())
            n += y.numel()
    finally:
        model.train(was)
    out = {"top1": 100.0 * correct1 / max(1, n), "loss": loss_sum / max(1, n), "n": float(n)}
    if not multilabel:
        out["top5"] = 100.0 * correct5 / max(1, n)
    return out
