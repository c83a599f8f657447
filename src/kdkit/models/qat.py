"""``qat:NAME`` -- model NAME (any name the factory knows, e.g. ``qat:cnn_teacher`` or ``qat:shrink:resnet32x4``) made
ready for int8 quantisation-aware training with ``torch.ao.quantization``: fake-quantised weights (per-channel
symmetric int8) and activations (per-tensor affine uint8) on every convolution, linear, BatchNorm and the input;
exported to ONNX it becomes QuantizeLinear/DequantizeLinear pairs (an int8 model).

``init_from`` loads float weights first (the teacher's checkpoint: "a quantised copy of the teacher"). Module paths
are unchanged, so feature taps of the teacher work on the copy, and feature shapes match the teacher's exactly
(feature terms need no connector).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from kdkit.models.factory import create_model
from kdkit.registry import MODEL_SOURCES
from kdkit.weights import load_weights, resolve_checkpoint

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
        load_weights(model, resolve_checkpoint(str(init_from), "student.params.init_from"))
    return prepare_qat(model, bool(reduce_range))


def is_qat(model: nn.Module) -> bool:
    return bool(getattr(model, _QAT_FLAG, False))


def qat_full_range(model: nn.Module) -> bool:
    """True when a ``qat:`` model fake-quantises activations to the full 0..255 (``reduce_range: false``)."""
    return is_qat(model) and any(getattr(m, "quant_max", 0) == 255 for m in _fake_quant_modules(model))


MODEL_SOURCES.add("qat", _build_qat, "qat:NAME, NAME with int8 fake quantisation for quantisation-aware training")
