"""The feature contract shared by every kdkit zoo model, and small building blocks.

Every zoo model is a :class:`ClassifierNet`:

* ``kd_stages``: module paths whose outputs are the stage feature maps, shallow -> deep. Feature-KD terms tap them
  with :class:`kdkit.taps.FeatureTap` and automatic stage pairing zips the two models' stages.
* ``embed``: a parameter-free module whose output is the (B, D) penultimate embedding (``nn.Flatten`` after global
  pooling for CNNs, identity for the MLP). Relational terms (RKD, SP, CRD) tap it.
* ``fc``: the final linear classifier.
* ``forward_features(x) -> (B, C, H, W)`` last feature map (``(B, D)`` for the MLP), ``forward_head(f) -> (B, K)``
  logits, ``forward(x) = forward_head(forward_features(x))``.

No ReLU in the zoo is in-place: a forward hook stores a module's output *tensor*, and an in-place activation that
follows would silently overwrite what was tapped (e.g. a BatchNorm output would read as post-ReLU).

Published checkpoints (RepDistiller / mdistiller CIFAR teachers) name the classifier ``linear``, ``classifier`` or
``classifier.0``. Such models declare ``legacy_key_aliases`` (old prefix -> new prefix); :func:`rename_legacy_keys`
applies them, both inside ``load_state_dict`` (a registered pre-hook) and in :func:`kdkit.models.load_weights`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from kdkit.weights import rename_legacy_keys


class ClassifierNet(nn.Module):
    """Base of the zoo: global average pooling -> ``embed`` (flatten) -> ``fc`` on top of ``forward_features``.

    Subclasses build their body, set ``kd_stages``, call :meth:`_build_head` with the width of the last feature map
    and implement :meth:`forward_features`.
    """

    kd_stages: tuple[str, ...] = ()
    legacy_key_aliases: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        super().__init__()
        # Looked up at load time, so subclasses may set the aliases after this constructor ran.
        self.register_load_state_dict_pre_hook(_alias_hook)

    def _build_head(self, in_features: int, num_classes: int) -> None:
        self.pool = nn.AdaptiveAvgPool2d(1)  # any input size >= 8x8 ends in (B, C, 1, 1)
        self.embed = nn.Flatten(1)  # (B, C, 1, 1) -> (B, C): the penultimate embedding, a tap point
        self.fc = nn.Linear(in_features, num_classes)

    @property
    def num_features(self) -> int:
        """Width D of the penultimate embedding."""
        return self.fc.in_features

    def forward_features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, f: Tensor) -> Tensor:
        """(B, C, H, W) last feature map -> (B, K) logits."""
        return self.fc(self.embed(self.pool(f)))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _alias_hook(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    # Runs inside load_state_dict for this module's prefix; renames in place (the dict is the caller's copy).
    if not module.legacy_key_aliases:
        return
    renamed = rename_legacy_keys(state_dict, module.legacy_key_aliases, prefix)
    if renamed.keys() != state_dict.keys():
        state_dict.clear()
        state_dict.update(renamed)


def _uniform_bins(size: int, out: int) -> tuple[int, int] | None:
    """(kernel, stride) when adaptive pooling of ``size`` into ``out`` bins is a plain sliding window, else None.

    Adaptive pooling's bin i spans [floor(i·size/out), ceil((i+1)·size/out)); e.g. 7 → 3 gives [0,3), [2,5), [4,7):
    kernel 3, stride 2.
    """
    starts = [(i * size) // out for i in range(out)]
    ends = [-((-(i + 1) * size) // out) for i in range(out)]
    k = ends[0] - starts[0]
    s = starts[1] - starts[0] if out > 1 else size
    if s > 0 and all(e - b == k and b == i * s for i, (b, e) in enumerate(zip(starts, ends, strict=True))):
        return k, s
    return None


class GridAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` that runs as a plain ``avg_pool2d`` whenever its bins form a regular sliding window
    (same values). ONNX has no adaptive pooling: the TorchScript exporter can only convert adaptive pools whose
    output divides the input, while a window such as 7×7 → 3×3 (kernel 3, stride 2) exports as an ordinary
    AveragePool. Other sizes fall back to adaptive pooling."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.output_size if isinstance(self.output_size, tuple) else (self.output_size, self.output_size)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        oh, ow = (o if o is not None else d for o, d in zip(out, (h, w), strict=True))
        bh, bw = _uniform_bins(h, oh), _uniform_bins(w, ow)
        if bh is None or bw is None:
            return super().forward(x)
        return F.avg_pool2d(x, (bh[0], bw[0]), (bh[1], bw[1]))


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> ReLU, 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(),
    )


def init_weights(model: nn.Module, linear_std: float | None = None) -> None:
    """He-normal (fan_out) convolutions, unit BatchNorm, zero biases; optionally N(0, std) linear weights.

    The RepDistiller CIFAR models use these initialisations (VGG and MobileNetV2 draw linear weights from
    N(0, 0.01)); the published teacher accuracies were obtained with them.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total
