"""Students derived from a teacher architecture, addressed by a model-name prefix.

* ``shrink:NAME`` -- a thinner and/or shallower copy of zoo model NAME: ``width`` scales every channel / hidden width,
  ``depth`` scales the number of blocks (ResNet, WRN), convolutions per stage (CNN, VGG) or hidden layers (MLP).
  ``create_model("shrink:resnet32x4", num_classes=100, width=0.5, depth=0.25)`` is a ResNet-8 with half the channels
  of ResNet-32x4: stages keep their number and order, so stage-wise feature terms pair one to one.
* ``prune:NAME`` -- a structurally pruned copy of NAME initialised from the teacher's weights (``init_from``): every
  layer keeps the ``1 - amount`` fraction of its filters with the largest L1 norm (chain families: cnn, mlp, VGG), to
  be recovered by KD -- the seeds' "mix the compression methods".

Quantised copies are :mod:`kdkit.models.qat`; multi-exit students :mod:`kdkit.models.exits`. Prefixed names are
stored in checkpoint metadata like any other model name, so ``kdkit.load_student`` rebuilds them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from kdkit.errors import ConfigError
from kdkit.models import mobilenetv2, resnet, small, vgg, wrn
from kdkit.models.factory import create_model
from kdkit.registry import MODEL_SOURCES
from kdkit.weights import load_weights, resolve_checkpoint

# ------------------------------------------------------------------------------------------------------- shrink


def _scale(w: int, f: float) -> int:
    return max(1, int(round(w * f)))


def _keep(n: int, f: float) -> int:
    """How many of ``n`` repeated units a depth factor keeps (at least one)."""
    return max(1, int(math.ceil(n * f - 1e-9)))


def _convs(seq: nn.Module) -> list[nn.Conv2d]:
    return [m for m in seq.modules() if isinstance(m, nn.Conv2d)]


def shrink_model(base: nn.Module, num_classes: int, in_channels: int, image_size: int, width: float = 1.0,
                 depth: float = 1.0) -> nn.Module:
    """A freshly initialised, thinner/shallower model of ``base``'s family (``base`` only supplies the shape).

    Args:
        base: a zoo model (SmallCNN, MLP, CIFAR ResNet, WRN, VGG, MobileNetV2).
        width: factor on channel widths (0 < width); widths are rounded, at least 1.
        depth: factor on repeated units per stage (0 < depth <= 1 typical); at least one unit per stage is kept.

    Raises:
        ConfigError: the family has no shrink rule, or the factor does not apply to it.
    """

    if width <= 0 or depth <= 0:
        raise ConfigError(f"shrink: width and depth must be > 0, got width={width}, depth={depth}")
    if isinstance(base, small.SmallCNN):
        stages = []
        for name in base.kd_stages:
            widths = [c.out_channels for c in _convs(getattr(base, name))]
            stages.append([_scale(w, width) for w in widths[: _keep(len(widths), depth)]])
        p = base.drop.p if isinstance(base.drop, nn.Dropout) else 0.0
        head: dict[str, Any] = {}
        hidden = [m for m in getattr(base, "hidden", nn.Identity()).modules() if isinstance(m, nn.Linear)]
        if hidden:  # a pooled-grid hidden head (cnn_teacher / cnn_student): keep the grid, scale the width
            grid = base.pool.output_size
            head = {"head_grid": grid if isinstance(grid, int) else grid[0],
                    "head_hidden": _scale(hidden[0].out_features, width)}
        return small.SmallCNN(stages, num_classes, in_channels, p, **head)
    if isinstance(base, small.MLP):
        hidden = [m.out_features for m in base.hidden if isinstance(m, nn.Linear)]
        hidden = [_scale(h, width) for h in hidden[: _keep(len(hidden), depth)]] if hidden else []
        return small.MLP(base.in_features, hidden, num_classes)
    if isinstance(base, resnet.CifarResNet):
        n = len(base.layer1)
        widths = (base.conv1.out_channels, base.layer1[0].conv1.out_channels, base.layer2[0].conv1.out_channels,
                  base.layer3[0].conv1.out_channels)
        return resnet.CifarResNet(6 * _keep(n, depth) + 2, tuple(_scale(w, width) for w in widths), num_classes,
                                  in_channels)
    if isinstance(base, wrn.WideResNet):
        n = len(base.block1.layer)
        widen = base.block1.layer[0].conv1.out_channels // 16
        new_widen = widen * width
        if abs(new_widen - round(new_widen)) > 1e-6 or round(new_widen) < 1:
            raise ConfigError(f"shrink: a WRN's width scales in whole widen factors; widen {widen} x width {width} "
                              f"= {new_widen} is not a positive integer")
        drop = base.block1.layer[0].drop_rate
        return wrn.WideResNet(6 * _keep(n, depth) + 4, int(round(new_widen)), num_classes, in_channels, drop)
    if isinstance(base, vgg.VGG):
        cfg = []
        for i in range(5):
            widths = [c.out_channels for c in _convs(getattr(base, f"block{i}"))]
            cfg.append([_scale(w, width) for w in widths[: _keep(len(widths), depth)]])
        return vgg.VGG(cfg, num_classes, in_channels)
    if isinstance(base, mobilenetv2.MobileNetV2):
        if depth != 1.0:
            raise ConfigError("shrink: MobileNetV2 shrinks in width only (its block table is fixed); drop `depth`")
        wm = base.conv1[0].out_channels / 32.0
        expand = base.blocks[1][0].conv[0].out_channels // base.blocks[1][0].conv[0].in_channels
        return mobilenetv2.MobileNetV2(num_classes, in_channels, wm * width, expand)
    raise ConfigError(f"shrink: no shrink rule for {type(base).__name__}; supported families: cnn, mlp, CIFAR resnet, "
                      f"wrn, vgg, mobilenetv2")


def _build_shrink(name: str, num_classes: int, in_channels: int, image_size: int, width: float = 1.0,
                  depth: float = 1.0, **params: Any) -> nn.Module:
    base = create_model(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **params)
    return shrink_model(base, num_classes, in_channels, image_size, float(width), float(depth))


# -------------------------------------------------------------------------------------------------------- prune


def _prune_chain(model: nn.Module) -> list[tuple[str, str | None]]:
    """(weight layer path, following BatchNorm path) in forward order, for the families whose layers form a chain."""

    def seq(prefix: str, mod: nn.Module) -> list[tuple[str, str | None]]:
        out: list[tuple[str, str | None]] = []
        names = [(f"{prefix}.{n}" if prefix else n, m) for n, m in mod.named_modules() if n]
        for i, (path, m) in enumerate(names):
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nxt = next(((p, q) for p, q in names[i + 1:] if isinstance(q, (nn.Conv2d, nn.Linear, nn.BatchNorm2d,
                                                                                 nn.BatchNorm1d))), None)
                bn = nxt[0] if nxt is not None and isinstance(nxt[1], (nn.BatchNorm2d, nn.BatchNorm1d)) else None
                out.append((path, bn))
        return out

    if isinstance(model, small.SmallCNN):
        chain = [c for st in model.kd_stages for c in seq(st, getattr(model, st))]
        return chain + seq("hidden", model.hidden) + [("fc", None)]
    if isinstance(model, small.MLP):
        return seq("hidden", model.hidden) + [("fc", None)]
    if isinstance(model, vgg.VGG):
        return [c for i in range(5) for c in seq(f"block{i}", getattr(model, f"block{i}"))] + [("fc", None)]
    raise ConfigError(f"prune: no filter-pruning rule for {type(model).__name__} (residual connections tie channels "
                      f"across layers); supported: cnn, cnn_teacher, cnn_student, mlp, vgg -- use shrink: otherwise")


@torch.no_grad()
def prune_from(teacher: nn.Module, pruned: nn.Module) -> nn.Module:
    """Fill ``pruned`` (a thinner model of the teacher's family, :func:`shrink_model`) with the teacher's weights of the
    filters it keeps: in every layer, the output filters (neurons) with the largest L1 norm (Li et al., "Pruning
    Filters for Efficient ConvNets", ICLR 2017), and the input channels the previous layer kept. The classifier keeps
    every class. A flattened pooled grid feeding a linear layer keeps the grid cells of the kept channels.
    """
    prev: Tensor | None = None
    prev_width = 0
    for path, bn in _prune_chain(teacher):
        t, s = teacher.get_submodule(path), pruned.get_submodule(path)
        w = t.weight
        n_out = s.weight.shape[0]
        keep = torch.arange(w.shape[0]) if n_out == w.shape[0] else \
            w.abs().flatten(1).sum(1).topk(n_out).indices.sort().values
        cols = torch.arange(w.shape[1]) if prev is None else prev
        if prev is not None and w.shape[1] != prev_width:  # (C, g, g) flattened before a linear layer
            cells = w.shape[1] // prev_width
            cols = (prev[:, None] * cells + torch.arange(cells)).flatten()
        s.weight.copy_(w[keep][:, cols])
        if getattr(t, "bias", None) is not None and s.bias is not None:
            s.bias.copy_(t.bias[keep])
        if bn is not None:
            tb, sb = teacher.get_submodule(bn), pruned.get_submodule(bn)
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(sb, name).copy_(getattr(tb, name)[keep])
        prev, prev_width = keep, w.shape[0]
    return pruned


def _build_prune(name: str, num_classes: int, in_channels: int, image_size: int, amount: float = 0.5,
                 init_from: str | None = None, **params: Any) -> nn.Module:
    if not 0.0 <= float(amount) < 1.0:
        raise ConfigError(f"prune: amount (fraction of filters removed) must be in [0, 1), got {amount}")
    teacher = create_model(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **params)
    if init_from:
        load_weights(teacher, resolve_checkpoint(str(init_from), "student.params.init_from"))
    _prune_chain(teacher)  # fail early for unsupported families
    pruned = shrink_model(teacher, num_classes, in_channels, image_size, width=1.0 - float(amount))
    return prune_from(teacher.eval(), pruned)


MODEL_SOURCES.add("shrink", _build_shrink, "shrink:NAME, a thinner/shallower copy of zoo model NAME (width, depth)")
MODEL_SOURCES.add("prune", _build_prune, "prune:NAME, an L1 filter-pruned copy of NAME initialised from the teacher "
                                         "(amount, init_from)")
