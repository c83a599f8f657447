"""``exits:NAME`` -- model NAME with classifier exits at intermediate tap points (:class:`MultiExitNet`, used by the
``self_distill`` scheme); ``export_exit`` selects the exit whose logits ``forward`` returns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kdkit.errors import ConfigError
from kdkit.models.factory import create_model
from kdkit.registry import MODEL_SOURCES
from kdkit.taps import FeatureTap, probe_shapes

# ------------------------------------------------------------------------------------------------- multi-exit


class _StopForward(Exception):
    """Raised by a tap hook to end a backbone forward early (a shallow exit needs nothing deeper)."""

    def __init__(self, feature: Tensor) -> None:
        super().__init__()
        self.feature = feature


def _bottleneck(src: tuple[int, ...], dst: tuple[int, ...], width: int | None) -> nn.Module:
    """Map a feature of shape ``src`` (C, H, W) or (D,) onto the deepest feature's shape ``dst`` (Be Your Own Teacher:
    1x1 conv -> stride-2 3x3 convs until the sizes match -> 1x1 conv to the deep width, each with BN and ReLU)."""
    if len(dst) == 3 and len(src) == 3:
        c_in, h_in = src[0], src[1]
        c_out, h_out, w_out = dst
        mid = width or max(8, c_out // 2)
        layers: list[nn.Module] = [nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU()]
        ratio = h_in / max(1, h_out)
        steps = int(round(math.log2(ratio))) if ratio >= 1 and 2 ** round(math.log2(ratio)) == ratio else None
        if steps is None:  # sizes that are not a power of two apart: pool to the deep size
            layers.append(nn.AdaptiveAvgPool2d((h_out, w_out)))
        else:
            for _ in range(steps):
                layers += [nn.Conv2d(mid, mid, 3, 2, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU()]
        layers += [nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        return nn.Sequential(*layers)
    if len(dst) == 1:
        pre: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)] if len(src) == 3 else [nn.Flatten(1)]
        d_in = src[0] if len(src) == 3 else int(math.prod(src))
        return nn.Sequential(*pre, nn.Linear(d_in, dst[0]), nn.ReLU())
    raise ConfigError(f"exits: cannot map a feature of shape {src} onto the deepest feature's shape {dst}")


class _ExitHead(nn.Module):
    """Classifier of one exit: global pooling (for maps) -> linear."""

    def __init__(self, shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)) if len(shape) == 3 else nn.Flatten(1)
        self.fc = nn.Linear(shape[0] if len(shape) == 3 else int(math.prod(shape)), num_classes)

    def forward(self, f: Tensor) -> Tensor:
        return self.fc(self.pool(f))


class MultiExitNet(nn.Module):
    """A backbone with extra classifier exits (Zhang et al., "Be Your Own Teacher", ICCV 2019).

    Exits are numbered 1..E from shallow to deep; exit E is the backbone's own classifier, exits 1..E-1 each read a
    tap point ``exits[i]`` through a bottleneck that maps the feature onto the shape of the deepest feature
    (``deep``, default the backbone's last ``kd_stages`` entry) and a linear classifier.

    * ``forward(x)`` -> (B, K) logits of exit ``export_exit`` (a shallow exit stops the backbone at its tap point);
    * ``forward_all(x)`` -> (logits per exit [E x (B, K)], bottleneck features per shallow exit [(E-1) x deep shape],
      deepest feature) for training.

    Args:
        backbone: the network (its module paths stay valid under ``backbone.``).
        num_classes: K.
        example: one (1, C, H, W) input to size the bottlenecks.
        exits: tap paths of the shallow exits; default every ``kd_stages`` entry but the last.
        deep: path of the deepest feature; default the last ``kd_stages`` entry.
        bottleneck_width: middle width of the bottlenecks (default half the deep width, at least 8).
        export_exit: which exit ``forward`` returns (1..E; default E, the backbone itself).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, example: Tensor, exits: Sequence[str] | None = None,
                 deep: str | None = None, bottleneck_width: int | None = None, export_exit: int | None = None
                 ) -> None:
        super().__init__()
        stages = list(getattr(backbone, "kd_stages", ()) or ())
        if exits is None or deep is None:
            if len(stages) < 2:
                raise ConfigError(f"exits: {type(backbone).__name__} has no kd_stages to attach exits to; name the "
                                  f"tap points with `exits: [path, ...]` and `deep: path`")
        self.exit_paths = list(exits) if exits is not None else stages[:-1]
        self.deep_path = deep if deep is not None else stages[-1]
        if not self.exit_paths:
            raise ConfigError("exits: give at least one shallow tap point")
        self.backbone = backbone
        shapes = probe_shapes(backbone, example, self.exit_paths + [self.deep_path], role="exits backbone")
        deep_shape = shapes[self.deep_path][1:]
        self.bottlenecks = nn.ModuleList(_bottleneck(shapes[p][1:], deep_shape, bottleneck_width)
                                         for p in self.exit_paths)
        self.heads = nn.ModuleList(_ExitHead(deep_shape, num_classes) for _ in self.exit_paths)
        self.num_exits = len(self.exit_paths) + 1
        self.export_exit = self.num_exits if export_exit is None else int(export_exit)
        if not 1 <= self.export_exit <= self.num_exits:
            raise ConfigError(f"exits: export_exit must be in 1..{self.num_exits}, got {export_exit}")
        self._tap: FeatureTap | None = None
        # kd_stages of the whole net: the backbone's stages, so feature terms still pair with a teacher.
        self.kd_stages = tuple(f"backbone.{s}" for s in stages)

    def exit_logits(self, x: Tensor, k: int) -> Tensor:
        """(B, K) logits of exit ``k`` (1-based), computing no deeper layers than needed."""
        if k == self.num_exits:
            return self.backbone(x)
        module = self.backbone.get_submodule(self.exit_paths[k - 1])

        def stop(_m: nn.Module, _a: tuple, out: Any) -> None:
            raise _StopForward(out if isinstance(out, Tensor) else out[0])

        handle = module.register_forward_hook(stop)
        try:
            self.backbone(x)
        except _StopForward as s:
            feat = s.feature
        else:  # pragma: no cover - the tap always runs
            raise ConfigError(f"exits: tap point '{self.exit_paths[k - 1]}' did not run in the forward pass")
        finally:
            handle.remove()
        return self.heads[k - 1](self.bottlenecks[k - 1](feat))

    def forward(self, x: Tensor) -> Tensor:
        return self.exit_logits(x, self.export_exit)

    def forward_all(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
        if self._tap is None:
            self._tap = FeatureTap(self.backbone, self.exit_paths + [self.deep_path], role="exits backbone")
        deep_logits = self.backbone(x)
        feats = self._tap.pop()
        hints = [b(feats[p]) for b, p in zip(self.bottlenecks, self.exit_paths, strict=True)]
        logits = [h(f) for h, f in zip(self.heads, hints, strict=True)] + [deep_logits]
        return logits, hints, feats[self.deep_path]


class ExitView(nn.Module):
    """Evaluates one exit of a :class:`MultiExitNet` (shares its weights)."""

    def __init__(self, net: MultiExitNet, k: int) -> None:
        super().__init__()
        self.net, self.k = net, k

    def forward(self, x: Tensor) -> Tensor:
        return self.net.exit_logits(x, self.k)


def make_multi_exit(backbone: nn.Module, num_classes: int, in_channels: int, image_size: int,
                    exits: Sequence[str] | None = None, deep: str | None = None, bottleneck_width: int | None = None,
                    export_exit: int | None = None) -> MultiExitNet:
    example = torch.zeros(2, in_channels, image_size, image_size)
    return MultiExitNet(backbone, num_classes, example, exits, deep, bottleneck_width, export_exit)


def _build_exits(name: str, num_classes: int, in_channels: int, image_size: int, exits: Sequence[str] | None = None,
                 deep: str | None = None, bottleneck_width: int | None = None, export_exit: int | None = None,
                 **params: Any) -> nn.Module:
    backbone = create_model(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **params)
    return make_multi_exit(backbone, num_classes, in_channels, image_size, exits, deep, bottleneck_width, export_exit)


MODEL_SOURCES.add("exits", _build_exits, "exits:NAME, NAME with classifier exits at tap points (self-distillation)")
