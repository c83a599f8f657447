"""In-memory image datasets: uint8 pixels, targets, class names and duplicate groups.

Every image source (the offline package sets and the user formats) returns one :class:`ImageData`. Whole datasets
live in memory as ``uint8`` tensors: the offline sets are a few MB and CIFAR-100 is 150 MB, so indexing a batch is
one tensor gather and augmentation can run on whole batches (see :mod:`kdkit.data.augment`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdkit.errors import DataError


def as_index_tensor(indices: Any, n: int | None = None, what: str = "indices") -> Tensor:
    """Convert a list / numpy array / tensor of positions into a 1-D int64 CPU tensor, checking bounds against ``n``."""
    t = torch.as_tensor(np.asarray(indices) if not isinstance(indices, Tensor) else indices)
    if t.dim() != 1:
        raise DataError(f"{what} must be 1-D, got shape {tuple(t.shape)}")
    if t.dtype == torch.bool:
        raise DataError(f"{what} must be integer positions, got a boolean mask; use mask.nonzero().flatten()")
    if t.numel() and (t.dtype.is_floating_point or t.dtype.is_complex):
        raise DataError(f"{what} must be integers, got {t.dtype}")
    t = t.to(device="cpu", dtype=torch.int64)
    if n is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
        raise DataError(f"{what} out of range: values must lie in [0, {n}), got [{int(t.min())}, {int(t.max())}]")
    return t


def duplicate_groups(images: Tensor) -> Tensor:
    """Group ids such that samples with byte-identical pixels share an id.

    Ids are compact (0..G-1) and numbered in order of first appearance, so they are deterministic for a given
    dataset. Each image's bytes are hashed (BLAKE2b, 128 bits: collisions are not a practical concern).

    Args:
        images: (N, C, H, W) uint8.

    Returns:
        (N,) int64 group ids.
    """
    if images.shape[0] == 0:  # an empty source: the builder refuses it with a message naming the data
        return torch.empty(0, dtype=torch.int64)
    arr = images.detach().cpu().contiguous().numpy().reshape(images.shape[0], -1)
    seen: dict[bytes, int] = {}
    out = np.empty(arr.shape[0], dtype=np.int64)
    for i, row in enumerate(arr):
        key = hashlib.blake2b(row.tobytes(), digest_size=16).digest()
        out[i] = seen.setdefault(key, len(seen))
    return torch.from_numpy(out)


@dataclass
class ImageData:
    """A classification dataset held in memory: images, signals or tabular features.

    Attributes:
        images: the inputs: (N, C, H, W) uint8 pixels 0-255 (image sources), or float32 of any sample shape --
            (N, D) tabular, (N, C, L) signals, (N, C, H, W) float images -- kept in the data's own units.
        targets: (N,) int64 class indices (-1 = unlabelled), or (N, K) float multi-hot for multi-label data.
        classes: class names; ``len(classes)`` is the number of classes K.
        name: where the data came from (``"mnist_5k"``, ``"imagefolder:/data/pets"``, ...), for messages and manifests.
        groups: (N,) int64; samples with byte-identical pixels share a group id, so that a split never puts one copy
            in train and another in val. Computed from the pixels when not given.
        mean: optional per-channel mean (uint8: on the 0-1 scale; float: in the data's units); None = compute from
            train.
        std: optional per-channel standard deviation (same scale as ``mean``).
        test_indices: positions of the samples that form the dataset's own predefined test split (CIFAR
            ``test_batch``) when the source loaded it alongside the training data, else None.
        inputs: further named inputs of the same samples from the source (another modality: an ``.npz`` array
            ``x_NAME``), one row per sample, any shape; uint8 (N, C, H, W) pixels or float32 like ``images``. A model
            reads one with ``input: NAME`` (:mod:`kdkit.data.views`).
    """

    images: Tensor
    targets: Tensor
    classes: list[str]
    name: str
    groups: Tensor | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    test_indices: Tensor | None = field(default=None)
    inputs: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        imgs, tg = self.images, self.targets
        for key, arr in self.inputs.items():
            ok = isinstance(arr, Tensor) and arr.shape[:1] == imgs.shape[:1] and (
                (arr.dtype == torch.uint8 and arr.dim() == 4) or (arr.dtype == torch.float32 and arr.dim() >= 2))
            if not ok:
                got = f"{arr.dtype} {tuple(arr.shape)}" if isinstance(arr, Tensor) else type(arr).__name__
                raise DataError(f"dataset '{self.name}': input '{key}' must be a uint8 (N, C, H, W) or float32 "
                                f"(N, ...) tensor with one row per sample (N = {imgs.shape[0]}), got {got}")
        ok = isinstance(imgs, Tensor) and (
            (imgs.dtype == torch.uint8 and imgs.dim() == 4) or (imgs.dtype == torch.float32 and imgs.dim() >= 2))
        if not ok:
            got = f"{imgs.dtype} {tuple(imgs.shape)}" if isinstance(imgs, Tensor) else type(imgs).__name__
            raise DataError(f"dataset '{self.name}': inputs must be a uint8 tensor (N, C, H, W) or a float32 tensor "
                            f"(N, ...) such as (N, D), (N, C, L) or (N, C, H, W), got {got}")
        if imgs.dtype == torch.float32 and imgs.numel() and not bool(torch.isfinite(imgs).all()):
            raise DataError(f"dataset '{self.name}': inputs contain NaN or infinity; clean or impute them first")
        n = imgs.shape[0]
        if not isinstance(tg, Tensor) or tg.shape[:1] != (n,) or tg.dim() not in (1, 2):
            got = tuple(tg.shape) if isinstance(tg, Tensor) else type(tg).__name__
            raise DataError(f"dataset '{self.name}': targets must have shape ({n},) or ({n}, K), got {got}")
        if tg.dim() == 1 and tg.dtype != torch.int64:
            if tg.dtype.is_floating_point:
                raise DataError(f"dataset '{self.name}': class targets must be integers, got {tg.dtype}")
            self.targets = tg = tg.to(torch.int64)
        if tg.dim() == 2:
            if tg.shape[1] != len(self.classes):
                raise DataError(
                    f"dataset '{self.name}': multi-hot targets have {tg.shape[1]} columns but there are "
                    f"{len(self.classes)} class names"
                )
            self.targets = tg = tg.to(torch.float32)
        elif n and int(tg.max()) >= len(self.classes):
            raise DataError(
                f"dataset '{self.name}': target {int(tg.max())} is out of range for {len(self.classes)} classes"
            )
        elif n and int(tg.min()) < -1:
            raise DataError(f"dataset '{self.name}': targets must be >= -1 (-1 = unlabelled), got {int(tg.min())}")
        self.classes = [str(c) for c in self.classes]
        if self.groups is None:
            self.groups = duplicate_groups(imgs)
        else:
            self.groups = as_index_tensor(self.groups, what=f"dataset '{self.name}' groups")
            if self.groups.shape[0] != n:
                raise DataError(f"dataset '{self.name}': groups must have shape ({n},), got {tuple(self.groups.shape)}")
        for attr in ("mean", "std"):
            v = getattr(self, attr)
            if v is not None:
                v = tuple(float(x) for x in v)
                if len(v) != self.in_channels:
                    raise DataError(
                        f"dataset '{self.name}': {attr} has {len(v)} values for {self.in_channels} channels"
                    )
                setattr(self, attr, v)
        if self.test_indices is not None:
            self.test_indices = as_index_tensor(self.test_indices, n, what=f"dataset '{self.name}' test_indices")

    # ----------------------------------------------------------------------------------------------------- shapes
    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape: (C, H, W) for images, (C, L) for signals, (D,) for tabular features."""
        return tuple(int(v) for v in self.images.shape[1:])

    @property
    def input_dtype(self) -> str:
        """``uint8`` (pixels 0-255, normalised on the 0-1 scale) or ``float32`` (kept in the data's own units)."""
        return "uint8" if self.images.dtype == torch.uint8 else "float32"

    @property
    def is_image(self) -> bool:
        """Samples are (C, H, W) images (uint8 or float): crop and flip augmentation apply."""
        return self.images.dim() == 4

    @property
    def hw(self) -> tuple[int, int]:
        """(H, W) of every image."""
        if not self.is_image:
            raise DataError(f"dataset '{self.name}' holds samples of shape {self.input_shape}, not (C, H, W) images")
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def image_size(self) -> int:
        """H for images (which may be non-square; see :attr:`hw`); the last axis' length for other data."""
        return int(self.images.shape[2]) if self.is_image else int(self.images.shape[-1])

    @property
    def multi_label(self) -> bool:
        return self.targets.dim() == 2

    def class_counts(self) -> Tensor:
        """(K,) number of samples per class (multi-label: positives per class); unlabelled samples are not counted."""
        if self.multi_label:
            return (self.targets > 0.5).sum(0).to(torch.int64)
        t = self.targets[self.targets >= 0]
        return torch.bincount(t, minlength=self.num_classes)

    # -------------------------------------------------------------------------------------------------- subsetting
    def subset(self, indices: Sequence[int] | np.ndarray | Tensor) -> ImageData:
        """A new dataset with the samples at ``indices`` (in that order). Group ids are kept as they are."""
        idx = as_index_tensor(indices, len(self), what=f"subset indices of '{self.name}'")
        test = None
        if self.test_indices is not None:
            # Map the predefined test positions into the subset's coordinates.
            is_test = torch.zeros(len(self), dtype=torch.bool)
            is_test[self.test_indices] = True
            test = is_test[idx].nonzero().flatten()
        return ImageData(
            images=self.images.index_select(0, idx.to(self.images.device)),
            targets=self.targets.index_select(0, idx.to(self.targets.device)),
            classes=list(self.classes),
            name=self.name,
            groups=self.groups.index_select(0, idx),
            mean=self.mean,
            std=self.std,
            test_indices=test,
            inputs={k: v.index_select(0, idx.to(v.device)) for k, v in self.inputs.items()},
        )

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the pixel and target bytes, with their shapes and dtypes.

        Identifies the exact data a cache (e.g. the teacher soft-label store) was computed on: any change to a pixel,
        a label or the sample order changes it.
        """
        h = hashlib.sha256()
        for key in sorted(self.inputs):
            h.update(f"input:{key};".encode())
        for t in (self.images, self.targets, *(self.inputs[k] for k in sorted(self.inputs))):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)};".encode())
            h.update(memoryview(t.numpy()).cast("B"))
        return h.hexdigest()

    def describe(self) -> str:
        """One line: name, size, shape, classes."""
        shape = "x".join(str(v) for v in self.input_shape)
        what = "images" if self.is_image else "samples"
        return f"{self.name}: {len(self)} {what} {shape} {self.input_dtype}, {self.num_classes} classes"


def dataset_stats(images: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation, channel = axis 1.

    uint8 images: on the 0-1 scale (pixels / 255). float32 data of any shape (N, C, ...) or (N, D): in the data's own
    units, reduced over every axis but axis 1 (so tabular (N, D) data gets one mean/std per feature). Compute it over
    the training split only, so that validation data does not leak into normalisation. Accumulates in float64 over
    chunks, so a 150 MB CIFAR-100 tensor is never copied whole to float.

    Args:
        images: (N, C, H, W) uint8, or (N, C, ...) float32.
        chunk: samples per accumulation step.

    Returns:
        (mean, std): two tuples of C floats.
    """
    ok = isinstance(images, Tensor) and images.dim() >= 2 and images.shape[0] > 0 and (
        (images.dtype == torch.uint8 and images.dim() == 4) or images.dtype == torch.float32)
    if not ok:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise DataError(f"dataset_stats needs a non-empty uint8 (N, C, H, W) or float32 (N, C, ...) tensor, got {got}")
    c = images.shape[1]
    dims = tuple(d for d in range(images.dim()) if d != 1)
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64)
        s += x.sum(dim=dims)
        s2 += x.square().sum(dim=dims)
    count = images.numel() // c
    mean = s / count
    var = (s2 / count - mean.square()).clamp_min(0.0)
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    mean01, std01 = mean / scale, var.sqrt() / scale
    # A constant channel would give std 0 and a division by zero in normalisation; 1.0 leaves it merely centred.
    std01 = torch.where(std01 > 1e-8, std01, torch.ones_like(std01))
    return tuple(float(v) for v in mean01), tuple(float(v) for v in std01)
