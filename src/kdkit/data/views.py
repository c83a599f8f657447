"""Several named inputs per sample, derived from the main one: another resolution, another normalisation.

Cross-modal / cross-resolution distillation (issue 13 §4) feeds the teacher and the student different inputs of the
*same* sample. A recipe declares them under ``data.inputs``::

    data:
      inputs:
        small: {resize: [14, 14]}                 # the student reads 14x14 digits
        other_norm: {mean: [0.5], std: [0.5]}     # another normalisation of the same pixels

and a model reads one with ``input: small`` in its spec (the main input is ``input``). Each derived input is computed
from the main input's *geometric* augmentation (the replayable crop/flip of :class:`kdkit.data.augment.Augment`),
before any normalisation, so every model sees the same crop and flip of the same sample::

    geo   = augment.geometric(x, index, view)                 # uint8 pixels or float data, (B, C, H, W)
    input = augment.normalize(geo)                            # the main input, as without named inputs
    small = (resize(geo / unit, (h, w)) - mean_v) / std_v     # unit = 255 for uint8 pixels, 1 for float data

``resize`` is bilinear (``align_corners=False``), antialiased when shrinking (the teacher adapters'
:class:`kdkit.teachers.adapters.InputAdapter` resamples the same way); signals (B, C, L) are resampled along L. The
statistics ``mean_v``/``std_v`` default to the main input's (resampling keeps the mean of a channel). A derived input
is a pure function of (seed, view, index), like the main one, so a soft-label store can replay it.

Why not torchvision's ``Resize``/``Normalize``: they work per sample (or per batch of one size) and on 0-1 floats;
here one vectorised op per batch runs on the same uint8 batch the main input came from, and the derivation has to be
recorded in a checkpoint's metadata (:meth:`InputView.to_dict`) so that ``kdkit eval``/``export`` can recreate it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdkit.data.augment import Augment
from kdkit.errors import ConfigError
from kdkit.types import MAIN_INPUT, input_key


@dataclass(frozen=True)
class InputView:
    """How one named input is derived from the main input's geometric augmentation.

    Attributes:
        size: spatial size after resampling: (H, W) for images, (L,) for signals; None keeps the size.
        mean, std: per-channel statistics (0-1 scale for uint8 pixels, own units for float data); None = the main
            input's.
    """

    size: tuple[int, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputView:
        size = d.get("resize", d.get("size"))
        return cls(tuple(int(s) for s in size) if size else None,
                   tuple(float(v) for v in d["mean"]) if d.get("mean") is not None else None,
                   tuple(float(v) for v in d["std"]) if d.get("std") is not None else None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for checkpoint metadata and the soft-label store's identity."""
        return {"resize": list(self.size) if self.size else None, "mean": list(self.mean) if self.mean else None,
                "std": list(self.std) if self.std else None}

    def check(self, name: str, base_shape: tuple[int, ...]) -> None:
        """Refuse a view that cannot apply to samples of ``base_shape`` (one line naming ``data.inputs.NAME``)."""
        where = f"data.inputs.{name}"
        channels = base_shape[0]
        for attr in ("mean", "std"):
            v = getattr(self, attr)
            if v is not None and len(v) != channels:
                raise ConfigError(f"{where}.{attr}: {len(v)} value(s) for samples with {channels} channel(s) (shape "
                                  f"{base_shape}); give one per channel")
        if self.std is not None and any(not s > 0 for s in self.std):
            raise ConfigError(f"{where}.std: values must be positive, got {list(self.std)}")
        if self.size is not None:
            spatial = len(base_shape) - 1
            if spatial not in (1, 2) or len(self.size) != spatial:
                want = {2: "[H, W]", 1: "[L]"}.get(spatial)
                raise ConfigError(f"{where}.resize: {list(self.size)} does not fit samples of shape {base_shape}; "
                                  + (f"give {want}" if want else "tabular (D,) samples cannot be resized; drop resize"))

    def shape(self, base_shape: tuple[int, ...]) -> tuple[int, ...]:
        """One sample's shape in this input."""
        return (base_shape[0], *self.size) if self.size else tuple(base_shape)

    def __call__(self, geo: Tensor, base: Augment) -> Tensor:
        """Derive this input from a geometrically augmented batch.

        Args:
            geo: (B, C, H, W) or (B, C, L) uint8 pixels or float32 data, augmented (crop/flip) but not normalised;
                (B, D) tabular data when no resize is asked.
            base: the main input's augmentation (its statistics are the default ones).

        Returns:
            float32 (B, C, *size) on ``geo``'s device.
        """
        x = geo.to(torch.float32)
        if geo.dtype == torch.uint8:
            x = x / 255.0
        if self.size is not None:
            signal = x.dim() == 3
            x4 = x.unsqueeze(2) if signal else x  # (B, C, L) -> (B, C, 1, L): one resampling code path
            size = (1, self.size[0]) if signal else self.size
            shrink = any(s < h for s, h in zip(size, x4.shape[2:], strict=True))
            x4 = F.interpolate(x4, size=size, mode="bilinear", align_corners=False, antialias=shrink)
            x = x4.squeeze(2) if signal else x4
        mean = self.mean if self.mean is not None else base.mean
        std = self.std if self.std is not None else base.std
        bshape = (1, -1) + (1,) * (x.dim() - 2)
        m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(bshape)
        s = torch.tensor(std, dtype=torch.float32, device=x.device).view(bshape)
        return ((x - m) / s).contiguous()


class NamedInputs:
    """The main input and the other named inputs of a batch: ``(images, index, view, arrays) -> {batch key: tensor}``.

    Args:
        augment: the main input's replayable augmentation.
        views: name -> :class:`InputView` (derived from the main input).
        arrays: name -> normalisation (an :class:`Augment` carrying that input's own mean/std) of the source's own
            further inputs (:attr:`kdkit.data.ImageData.inputs`, another modality). Image arrays of the main input's
            H x W get the same crop/flip as the main input (the same draws: the same (seed, view, index)); other
            shapes are not augmented.
    """

    def __init__(self, augment: Augment, views: Mapping[str, InputView],
                 arrays: Mapping[str, Augment] | None = None) -> None:
        self.augment = augment
        self.views = dict(views)
        self.arrays = dict(arrays or {})

    @property
    def names(self) -> list[str]:
        """Every input name, the main one first."""
        return [MAIN_INPUT, *self.views, *self.arrays]

    def __call__(self, images: Tensor, index: Tensor, view: int | Tensor = 0,
                 arrays: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        geo = self.augment.geometric(images, index, view)
        out = {MAIN_INPUT: self.augment.normalize(geo)}
        for name, v in self.views.items():
            out[input_key(name)] = v(geo, self.augment)
        for name, norm in self.arrays.items():
            a = (arrays or {})[name]
            if self.augment.is_random and a.dim() == 4 and a.shape[2:] == images.shape[2:]:
                a = self.augment.geometric(a, index, view)
            out[input_key(name)] = norm.normalize(a)
        return out


class ViewTransform:
    """One named input as a plain transform ``(images, index, view) -> tensor``: what a loader's ``augment`` is when
    a model reading that input is evaluated or exported alone (``kdkit eval``/``export``/``bench``)."""

    def __init__(self, augment: Augment, view: InputView) -> None:
        self.augment, self.view = augment, view

    def __call__(self, images: Tensor, index: Tensor, view: int | Tensor = 0) -> Tensor:
        return self.view(self.augment.geometric(images, index, view), self.augment)


def build_views(specs: Mapping[str, Any], base_shape: tuple[int, ...]) -> dict[str, InputView]:
    """``data.inputs`` of a recipe -> name -> checked :class:`InputView`."""
    out = {}
    for name, spec in specs.items():
        d = spec.model_dump() if hasattr(spec, "model_dump") else dict(spec)
        v = InputView.from_dict(d)
        v.check(name, tuple(base_shape))
        out[name] = v
    return out


def model_data(meta: Mapping[str, Any], data: Any) -> Any:
    """The dataset as a checkpoint's model sees it: ``data`` itself, or -- for a model that read another array of
    the source (``meta["input"]["array"]``, e.g. an ``.npz``'s ``x_signal``) -- the same samples with that array as
    the main input (a one-line error when the data lacks it)."""
    rec = meta.get("input") or {}
    name = rec.get("array")
    if not name:
        return data
    arrays = getattr(data, "inputs", None) or {}
    if name not in arrays:
        raise ConfigError(f"the model reads input '{name}' of its dataset, which '{getattr(data, 'name', data)}' does "
                          f"not hold; load the data with that array (npz: params inputs: [{name}])")
    return dataclasses.replace(data, images=arrays[name], inputs={}, mean=None, std=None, groups=data.groups)


def model_transform(meta: Mapping[str, Any], augment: Augment) -> Augment | ViewTransform:
    """The transform that makes a checkpoint's model input from its dataset's samples: ``augment`` itself for the
    main input, else the recorded derived view over ``augment`` (a student that read ``input: small``)."""
    rec = meta.get("input") or {}
    if not rec.get("view"):
        return augment
    return ViewTransform(augment, InputView.from_dict(rec["view"]))


__all__ = ["InputView", "NamedInputs", "ViewTransform", "build_views", "model_data", "model_transform"]
