"""Student makers: a student derived from a teacher architecture, addressed by a model-name prefix.

* ``shrink:NAME`` -- a thinner and/or shallower copy of zoo model NAME: ``width`` scales every channel / hidden width,
  ``depth`` scales the number of blocks (ResNet, WRN), convolutions per stage (CNN, VGG) or hidden layers (MLP).
  ``create_model("shrink:resnet32x4", num_classes=100, width=0.5, depth=0.25)`` is a ResNet-8 with half the channels
  of ResNet-32x4: stages keep their number and order, so stage-wise feature terms pair one to one.
* ``prune:NAME`` -- a structurally pruned copy of NAME initialised from the teacher's weights (``init_from``): every
  layer keeps the ``1 - amount`` fraction of its filters with the largest L1 norm (chain families: cnn, mlp, VGG), to
  be recovered by KD -- the seeds' "mix the compression methods".
* ``qat:NAME`` -- model NAME (any name the factory knows, e.g. ``qat:cnn_teacher`` or ``qat:shrink:resnet32x4``) made
  ready for int8 quantisation-aware training with ``torch.ao.quantization``: fake-quantised weights (per-channel
  symmetric int8) and activations (per-tensor affine uint8) on every convolution, linear, BatchNorm and the input;
  exported to ONNX it becomes QuantizeLinear/DequantizeLinear pairs (an int8 model).
  ``init_from`` loads float weights first (the teacher's checkpoint: "a quantised copy of the teacher"). Module paths
  are unchanged, so feature taps of the teacher work on the copy, and feature shapes match the teacher's exactly
  (feature terms need no connector).
* ``exits:NAME`` -- model NAME with classifier exits at intermediate tap points (:class:`MultiExitNet`, used by the
  ``self_distill`` scheme); ``export_exit`` selects the exit whose logits ``forward`` returns.

Prefixed names are stored in checkpoint metadata like any other model name, so ``kdkit.load_student`` rebuilds them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kdkit.errors import ConfigError
from kdkit.models.factory import create_model, register_prefix
from kdkit.taps import FeatureTap, probe_shapes

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
    from kdkit.models import mobilenetv2, resnet, small, vgg, wrn

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
    from kdkit.models import small, vgg

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
        from kdkit.build import resolve_checkpoint
        from kdkit.models import load_weights

        load_weights(teacher, resolve_checkpoint(str(init_from), "student.params.init_from"))
    _prune_chain(teacher)  # fail early for unsupported families
    pruned = shrink_model(teacher, num_classes, in_channels, image_size, width=1.0 - float(amount))
    return prune_from(teacher.eval(), pruned)


# ---------------------------------------------------------------------------------------------------------- QAT

_QAT_FLAG = "_kdkit_qat"


class _FakeQuantInput(nn.Module):
    """Holds the fake-quantiser of the network input (a QuantStub equivalent that keeps module paths unchanged)."""

    def __init__(self, fq: nn.Module) -> None:
        super().__init__()
        self.fq = fq

    def forward(self, x: Tensor) -> Tensor:
        return self.fq(x)


def _fake_quant_modules(model: nn.Module) -> list[nn.Module]:
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase

    return [m for m in model.modules() if isinstance(m, FakeQuantizeBase)]


def set_observers(model: nn.Module, enabled: bool) -> None:
    """Turn range observation of every fake-quantiser on (training) or off (evaluation: fixed scales)."""
    for m in _fake_quant_modules(model):
        if enabled:
            m.enable_observer()
        else:
            m.disable_observer()


def qat_qconfig(reduce_range: bool = True) -> Any:
    """The fake-quantisation config of ``qat:`` students.

    Weights: per-output-channel symmetric int8 (moving-average min/max). Activations: per-tensor affine uint8 in
    0..127 with ``reduce_range`` (the default, as PyTorch's x86 configs), else 0..255. x86 int8 kernels without VNNI
    (ONNX Runtime's among them) multiply uint8 by int8 in pairs summed into int16, which saturates with full-range
    activations: the exported model then drifts from the trained one (measured: logits off by 25 output steps on
    cnn_student, against an exact match with the reduced range). Plain ``FakeQuantize`` modules (not
    the fused default) so that an exported model becomes ONNX QuantizeLinear/DequantizeLinear pairs -- an int8 model
    ONNX Runtime runs.
    """
    from torch.ao.quantization import (
        FakeQuantize,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
        QConfig,
    )

    act = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0,
                                 quant_max=127 if reduce_range else 255, dtype=torch.quint8,
                                 qscheme=torch.per_tensor_affine)
    weight = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127,
                                    dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)
    return QConfig(activation=act, weight=weight)


def prepare_qat(model: nn.Module, reduce_range: bool = True) -> nn.Module:
    """Insert int8 fake quantisation into ``model`` in place (eager mode, ``torch.ao.quantization.prepare_qat``).

    Convolutions and linear layers become their ``torch.ao.nn.qat`` versions (weights fake-quantised, see
    :func:`qat_qconfig`); every leaf module's output and the network input are fake-quantised. Observers update in
    training mode and freeze in eval mode (a pre-hook toggles them), so evaluation never moves the ranges.

    The per-channel weight observers are initialised on the current weights, so that a fresh model and a trained
    checkpoint have state dicts of identical shapes (their buffers start empty otherwise).
    """
    import torch.ao.quantization as tq

    qconfig = qat_qconfig(reduce_range)
    model.train()
    model.qconfig = qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tq.prepare_qat(model, inplace=True)
        model.add_module("quant_input", _FakeQuantInput(qconfig.activation()))
    with torch.no_grad():
        for m in model.modules():
            wfq = getattr(m, "weight_fake_quant", None)
            if wfq is not None and isinstance(getattr(m, "weight", None), Tensor):
                wfq(m.weight)
    object.__setattr__(model, _QAT_FLAG, True)
    state = {"training": None}

    def pre_hook(module: nn.Module, args: tuple) -> tuple:
        if state["training"] is not module.training:  # flip observers only when the mode changes
            set_observers(module, module.training)
            state["training"] = module.training
        return (module.quant_input(args[0]),) + tuple(args[1:])

    model.register_forward_pre_hook(pre_hook)
    return model


def qat_float_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The float weights of a ``qat:NAME`` model without its fake-quantisation state: loads into plain ``NAME``
    (e.g. to re-quantise it after training with another tool)."""
    skip = ("weight_fake_quant.", "activation_post_process.", "quant_input.")
    return {k: v for k, v in model.state_dict().items() if not any(f".{s}" in f".{k}" for s in skip)}


def _build_qat(name: str, num_classes: int, in_channels: int, image_size: int, reduce_range: bool = True,
               init_from: str | None = None, **params: Any) -> nn.Module:
    model = create_model(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **params)
    if init_from:
        from kdkit.build import resolve_checkpoint
        from kdkit.models import load_weights

        load_weights(model, resolve_checkpoint(str(init_from), "student.params.init_from"))
    return prepare_qat(model, bool(reduce_range))


def is_qat(model: nn.Module) -> bool:
    return bool(getattr(model, _QAT_FLAG, False))


def qat_full_range(model: nn.Module) -> bool:
    """True when a ``qat:`` model fake-quantises activations to the full 0..255 (``reduce_range: false``)."""
    return is_qat(model) and any(getattr(m, "quant_max", 0) == 255 for m in _fake_quant_modules(model))


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


register_prefix("shrink", _build_shrink)
register_prefix("prune", _build_prune)
register_prefix("qat", _build_qat)
register_prefix("exits", _build_exits)

__all__ = ["ExitView", "MultiExitNet", "is_qat", "make_multi_exit", "prepare_qat", "prune_from", "qat_float_state_dict",
           "qat_qconfig", "set_observers", "shrink_model"]
