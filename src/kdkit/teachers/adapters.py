"""Teachers that expect another input: a different resolution, normalisation or number of channels.

The batch carries ``input`` normalised with the *student's* statistics at the student's size. A teacher trained on
other statistics or at another size gets an :class:`InputAdapter` in front of it: un-normalise, resize, convert the
channels, re-normalise. The adapter is attached as a forward pre-hook on the teacher model itself, so the teacher's
module paths (feature taps, shape probing of loss terms) are unchanged and every caller -- the scheme, the loss terms'
shape probes, a soft-label store -- sees the adapted input.

Where the teacher's expectations come from, per teacher (``scheme.params.teacher_inputs``):

* ``"auto"`` (default): the kdkit metadata of the teacher's checkpoint (``mean``, ``std``, ``image_size``,
  ``in_channels``, written with every kdkit ``best.safetensors``); else the model's own ``pretrained_cfg`` (timm
  models, the ``ccexam:`` digit CNNs) when it takes the data's number of channels; else the student's input as is;
* a list with one entry per teacher: ``null`` (unchanged) or ``{image_size, mean, std, in_channels}`` (any subset;
  missing keys default to the student's);
* ``"none"``: never adapt.

An adapter that would do nothing (same size, channels and statistics to 1e-6) is not attached. A teacher whose spec
reads a named input of its own (``input: NAME``, declared under ``data.inputs``; :mod:`kdkit.data.views`) is fed that
input and gets no adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdkit.errors import ConfigError
from kdkit.models.factory import create_model
from kdkit.weights import read_metadata, resolve_checkpoint

ADAPTER_NAME = "kdkit_input_adapter"
# ITU-R BT.601 luma weights: the usual RGB -> grey conversion (PIL's "L" mode).
_LUMA = (0.299, 0.587, 0.114)


class InputAdapter(nn.Module):
    """(B, C_s, H_s, W_s) student-normalised input -> (B, C_t, S_t, S_t) teacher-normalised input.

    ``x_t = (resize(channels(x_s · σ_s + μ_s)) − μ_t) / σ_t``: pixels are brought back to the 0-1 scale, resized
    bilinearly (antialiased when shrinking), converted between grey and RGB (grey -> RGB repeats the channel; RGB ->
    grey uses BT.601 luma weights), and normalised with the teacher's statistics.

    Args:
        src_mean, src_std: the student's per-channel statistics (0-1 scale), C_s values each.
        dst_mean, dst_std: the teacher's, C_t values each.
        size: the teacher's square input size S_t, or None to keep the size.
    """

    def __init__(self, src_mean: Sequence[float], src_std: Sequence[float], dst_mean: Sequence[float],
                 dst_std: Sequence[float], size: int | None = None) -> None:
        super().__init__()
        # Non-persistent: they move with the teacher (.to) but never enter its state dict.
        for name, v in (("src_mean", src_mean), ("src_std", src_std), ("dst_mean", dst_mean), ("dst_std", dst_std)):
            self.register_buffer(name, torch.tensor(list(v), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        cs, ct = len(src_mean), len(dst_mean)
        if (cs, ct) not in ((1, 1), (3, 3), (1, 3), (3, 1)) and cs != ct:
            raise ConfigError(f"teacher input adapter: cannot convert {cs} channels to {ct} (only 1 <-> 3)")
        self.size = int(size) if size else None

    def forward(self, x: Tensor) -> Tensor:
        x = x * self.src_std + self.src_mean
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            shrink = self.size < min(x.shape[-2:])
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=shrink)
        cs, ct = x.shape[1], self.dst_mean.shape[1]
        if cs == 1 and ct == 3:
            x = x.expand(-1, 3, -1, -1)
        elif cs == 3 and ct == 1:
            w = x.new_tensor(_LUMA).view(1, 3, 1, 1)
            x = (x * w).sum(1, keepdim=True)
        return (x - self.dst_mean) / self.dst_std

    def extra_repr(self) -> str:
        return f"size={self.size}, channels={self.src_mean.shape[1]}->{self.dst_mean.shape[1]}"


def attach_input_adapter(model: nn.Module, adapter: InputAdapter) -> nn.Module:
    """Run ``adapter`` on the first positional input of every ``model`` forward (a forward pre-hook).

    The adapter becomes the submodule ``kdkit_input_adapter`` of the teacher, so it moves with ``.to(device)``; its
    buffers are non-persistent, so the teacher's state dict is unchanged.
    """
    model.add_module(ADAPTER_NAME, adapter)

    def hook(module: nn.Module, args: tuple) -> tuple:
        return (getattr(module, ADAPTER_NAME)(args[0]),) + tuple(args[1:])

    model.register_forward_pre_hook(hook)
    return model


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(abs(float(x) - float(y)) <= 1e-6 for x, y in zip(a, b, strict=True))


def _teacher_meta(spec: Any, i: int) -> dict[str, Any]:
    """kdkit metadata of a teacher checkpoint ({} when it has none or is not safetensors)."""
    if not getattr(spec, "checkpoint", None):
        return {}
    path = resolve_checkpoint(spec.checkpoint, f"teachers.{i}.checkpoint")
    if path.suffix != ".safetensors":
        return {}
    return read_metadata(path)


def _pretrained_cfg(model: nn.Module, in_channels: int) -> dict[str, Any] | None:
    """What a model with a ``pretrained_cfg`` (timm models, the ccexam digit CNNs) was trained on, when it takes the
    data's number of channels; None otherwise."""
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, dict) or not cfg.get("mean") or not cfg.get("std") or not cfg.get("input_size"):
        return None
    c, _, size = cfg["input_size"]
    if c != in_channels or len(cfg["mean"]) != c or len(cfg["std"]) != c:
        return None
    return {"image_size": int(size), "in_channels": int(c), "mean": list(cfg["mean"]), "std": list(cfg["std"]),
            "_from_cfg": True}


def teacher_input_specs(ctx: Any, specs: Sequence[Any], teacher_inputs: str | list | None = "auto"
                        ) -> list[dict[str, Any] | None]:
    """What each teacher expects ({image_size, in_channels, mean, std}) or None to feed the student's input as is."""
    n = len(specs)
    if teacher_inputs in (None, "none"):
        return [None] * n
    if teacher_inputs == "auto":
        out: list[dict[str, Any] | None] = []
        for i, spec in enumerate(specs):
            meta = _teacher_meta(spec, i)
            keys = {k: meta[k] for k in ("image_size", "in_channels", "mean", "std") if meta.get(k) is not None}
            out.append(keys or None)
        return out
    if not isinstance(teacher_inputs, list) or len(teacher_inputs) != n:
        raise ConfigError(f"scheme.params.teacher_inputs: give 'auto', 'none' or a list of {n} entries (one per "
                          f"teacher), got {teacher_inputs!r}")
    allowed = {"image_size", "in_channels", "mean", "std"}
    for i, t in enumerate(teacher_inputs):
        if t is not None and (not isinstance(t, dict) or set(t) - allowed):
            raise ConfigError(f"scheme.params.teacher_inputs.{i}: expected null or a mapping with keys from "
                              f"{sorted(allowed)}, got {t!r}")
    return list(teacher_inputs)


def build_teachers(ctx: Any, specs: Sequence[Any] | None = None, teacher_inputs: str | list | None = "auto"
                   ) -> list[nn.Module]:
    """Build the recipe's teachers, each with an input adapter when it expects another input than the student's.

    A teacher whose input size or channels differ from the data's is built for its own size and channels (models
    like the MLP have input-dependent widths). Without the student's statistics in ``ctx.data`` no adapter
    is attached.
    """
    specs = list(ctx.recipe.teachers if specs is None else specs)
    wants = teacher_input_specs(ctx, specs, teacher_inputs)
    data = getattr(ctx, "data", None)
    teachers: list[nn.Module] = []
    for i, (spec, want) in enumerate(zip(specs, wants, strict=True)):
        if data is None or getattr(spec, "input", None) not in (None, "input"):
            # A teacher reading its own named input (data.inputs) gets that input as declared, never adapted.
            teachers.append(ctx.make_model(spec))
            continue
        if want is None and teacher_inputs == "auto":
            model = ctx.make_model(spec)
            want = _pretrained_cfg(model, ctx.in_channels)
            if want is None:
                teachers.append(model)
                continue
        elif want is None:
            teachers.append(ctx.make_model(spec))
            continue
        size = int(want.get("image_size", ctx.image_size))
        chans = int(want.get("in_channels", len(want.get("mean") or data.mean)))
        mean = list(want.get("mean") or (data.mean if chans == ctx.in_channels else [0.5] * chans))
        std = list(want.get("std") or (data.std if chans == ctx.in_channels else [0.5] * chans))
        if len(mean) != chans or len(std) != chans:
            raise ConfigError(f"teacher {i} ('{spec.name}') input: mean/std have {len(mean)}/{len(std)} values for "
                              f"{chans} channel(s)")
        if (size, chans) == (ctx.image_size, ctx.in_channels) or "_from_cfg" in want:
            model = model if "_from_cfg" in want else ctx.make_model(spec)
        else:
            ckpt = str(resolve_checkpoint(spec.checkpoint, f"teachers.{i}.checkpoint")) if spec.checkpoint else None
            model = create_model(spec.name, num_classes=ctx.num_classes, in_channels=chans, image_size=size,
                                 checkpoint=ckpt, **spec.params)
        same = size == ctx.image_size and chans == ctx.in_channels and _close(mean, data.mean) and \
            _close(std, data.std)
        if not same:
            attach_input_adapter(model, InputAdapter(data.mean, data.std, mean, std,
                                                     size if size != ctx.image_size else None))
        teachers.append(model)
    return teachers
