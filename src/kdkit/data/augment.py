"""Replayable batch augmentation: random crop with zero padding, horizontal flip, normalisation.

The augmented view of a sample is a pure function of ``(seed, view, index)``: its random numbers come from a
counter-based integer hash, not from a stateful RNG. So a sample looks the same whatever batch it is in, in whatever
order, on whatever device, and the teacher soft-label store can recreate exactly the view the teacher saw
(Hinton et al. 2015 distil on the *same* inputs; caching teacher outputs is only valid if views are replayable).

The hash is Chris Wellons' ``lowbias32`` finaliser (a murmur3-style xorshift-multiply mixer with lower bias),
absorbing 32-bit words one at a time. It is computed in int64 on values kept in [0, 2^32), and both multipliers are
below 2^31, so no product reaches 2^63: signed overflow, undefined behaviour in C++ that could differ between CPU and
GPU kernels, never happens. The same code runs on Python ints (the seed and a scalar ``view``), numpy arrays and
torch tensors, giving bit-identical words.

Everything is vectorised over the batch, with no per-sample Python: one zero-padded copy, one gather (index arithmetic
on any device; on CPU, a sliding-window view indexed per sample, in numpy whose single-threaded kernels do not stall
when the cores are shared), and two element-wise ops. The CPU and device paths produce the same bytes (tested).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from kdkit.data import ops
from kdkit.errors import ConfigError, DataError

_M32 = 0xFFFFFFFF
# 2^32 / golden ratio, xored into every absorbed word so that an all-zero input is not a fixed point.
_GOLDEN = 0x9E3779B9
# Draw numbers: fixed per random decision, so that turning one augmentation on or off never changes the others.
DRAW_CROP_Y, DRAW_CROP_X, DRAW_FLIP = 0, 1, 2
DRAW_BRIGHTNESS, DRAW_CONTRAST, DRAW_SATURATION = 3, 4, 5
DRAW_PARTNER, DRAW_MIX_LAM, DRAW_MIX_KIND, DRAW_CUT_Y, DRAW_CUT_X = 6, 7, 8, 9, 10
DRAW_RESIZED_CROP = 16  # 16 .. 16 + 4 * RRC_ATTEMPTS - 1: (area, aspect, row, column) per attempt

# The hash runs unchanged on Python ints, numpy int64 arrays and torch int64 tensors (same operators, same bits).
Ints = TypeVar("Ints", int, np.ndarray, Tensor)


def mix32(x: Ints) -> Ints:
    """lowbias32 (Wellons, "hash-prospector"): a bijection on [0, 2^32) with near-ideal avalanche.

    Both multipliers are below 2^31, so for x < 2^32 every product is below 2^63 and exact in int64; masking to 32
    bits afterwards gives the product mod 2^32, as the unsigned 32-bit reference computes it.
    """
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _M32
    x = x ^ (x >> 15)
    return x


def absorb(h: Ints, word: Ints) -> Ints:
    """Fold one 32-bit word into the hash state ``h`` (both in [0, 2^32))."""
    return mix32(h ^ word ^ _GOLDEN)


def absorb64(h: Ints, value: Ints) -> Ints:
    """Fold a 64-bit (two's complement) integer: low word, then high word."""
    h = absorb(h, value & _M32)
    return absorb(h, (value >> 32) & _M32)


def hash_draws(
    seed: int, view: int | np.ndarray | Tensor, index: np.ndarray | Tensor, draws: Sequence[int]
) -> np.ndarray | Tensor:
    """Counter-based random words: one uint32 (held in int64) per sample and draw.

    ``h = absorb(absorb(absorb64(absorb64(0, seed), view), index mod 2^32), draw)``. The seed and an int view are
    absorbed as Python ints; the per-sample part runs as numpy or torch ops, following the type of ``index``.

    Args:
        seed: the augmentation seed.
        view: an int, or (B,) int64 per-sample views (same array type as ``index``).
        index: (B,) int64 sample indices (taken mod 2^32: no in-memory dataset comes close).
        draws: draw numbers.

    Returns:
        (B, len(draws)) int64 in [0, 2^32), a pure function of (seed, view, index[b], draws[d]).
    """
    h: Any = absorb64(0, int(seed))
    if isinstance(index, Tensor):
        view = view.to(torch.int64) if isinstance(view, Tensor) else int(view)
        index = index.to(torch.int64)
        d: Any = torch.as_tensor(list(draws), dtype=torch.int64, device=index.device)
    else:
        view = np.asarray(view, dtype=np.int64) if isinstance(view, (np.ndarray, Tensor)) else int(view)
        index = np.asarray(index, dtype=np.int64)
        d = np.asarray(list(draws), dtype=np.int64)
    h = absorb64(h, view)
    h = absorb(h, index & _M32)
    return absorb(h.reshape(-1, 1), d.reshape(1, -1))


def uniform_int(words: Ints, n: int) -> Ints:
    """Map uint32 words to integers in [0, n) by multiply-shift (Lemire), bias below n / 2^32."""
    return (words * n) >> 32


def _use_numpy(images: Tensor, backend: str) -> bool:
    if backend not in ("auto", "numpy", "torch"):
        raise ConfigError(f"augment: backend must be auto, numpy or torch, got '{backend}'")
    if backend == "numpy" and images.device.type != "cpu":
        raise ConfigError("augment: the numpy backend needs CPU tensors")
    return backend == "numpy" or (backend == "auto" and images.device.type == "cpu")


def _pad(xp: Any, images: Any, p: int, **like: Any) -> Any:
    """Zero padding by one zeroed buffer and a slice copy (cheaper than F.pad / np.pad for uint8)."""
    b, c, h, w = images.shape
    padded = xp.zeros((b, c, h + 2 * p, w + 2 * p), dtype=images.dtype, **like)
    padded[:, :, p : p + h, p : p + w] = images
    return padded


def _crop_flip_torch(images: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, p: int) -> Tensor:
    """Crop with zero padding, then flip, as one gather at flat positions (any device).

    ``out[b, ch, i, j] = padded[b, ch, dy_b + i, dx_b + j']`` with ``j' = j``, or ``W - 1 - j`` when flipped (the flip
    acts inside the crop window). Only the last broadcast is full-size.
    """
    b, c, h, w = images.shape
    hp, wp = h + 2 * p, w + 2 * p
    dev = images.device
    padded = _pad(torch, images, p, device=dev) if p else images.contiguous()
    ar_w = torch.arange(w, device=dev)
    row0 = torch.arange(b, device=dev) * (c * hp * wp) + dy * wp  # (B,)
    rows = row0[:, None] + torch.arange(h, device=dev)[None, :] * wp  # (B, H)
    cols = dx[:, None] + torch.where(flip[:, None], (w - 1) - ar_w[None, :], ar_w[None, :])  # (B, W)
    rows = rows[:, None, :, None] + (torch.arange(c, device=dev) * (hp * wp))[None, :, None, None]  # (B, C, H, 1)
    flat = rows + cols[:, None, None, :]  # (B, C, H, W)
    return padded.reshape(-1).index_select(0, flat.reshape(-1)).view(b, c, h, w)


def _crop_flip_numpy(images: np.ndarray, dy: np.ndarray, dx: np.ndarray, flip: np.ndarray, p: int) -> np.ndarray:
    """The same bytes as :func:`_crop_flip_torch`, on CPU: a (2p+1)^2 sliding-window *view* of the padded batch is
    indexed at (b, dy_b, dx_b), which copies whole rows instead of gathering single bytes; flipped samples are then
    mirrored in place."""
    b, c, h, w = images.shape
    padded = _pad(np, images, p) if p else images
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(2, 3))  # (B, C, 2p+1, 2p+1, H, W)
    out = windows[np.arange(b), :, dy, dx]  # advanced indices around a slice: (B, C, H, W), a fresh array
    if flip.any():
        out[flip] = out[flip][..., ::-1]
    return out


@dataclass(frozen=True)
class Augment:
    """Per-sample replayable augmentation applied to whole uint8 batches.

    ``out = (crop_flip(x) / 255 - mean) / std``, where the crop takes an H x W window at offsets (dy, dx) in
    [0, 2p]^2 of the image zero-padded by p on every side, and the flip mirrors it left-right with probability 1/2
    (the standard CIFAR recipe: p = 4, flip, He et al. 2016).

    Attributes:
        mean: per-channel mean, 0-1 scale.
        std: per-channel standard deviation, 0-1 scale.
        crop_padding: p; 0 disables the random crop.
        flip: random horizontal flip.
        seed: augmentation seed; with (view, index) it fixes every random decision.
        jitter: (brightness, contrast, saturation) strengths s: each factor ~ U[max(0, 1 - s), 1 + s] per sample,
            applied to uint8 pixels as torchvision's ColorJitter (:func:`kdkit.data.ops.color_jitter`); 0 = off.
        mixup: α of mixup's λ ~ Beta(α, α) (Zhang et al. 2018); 0 = off.
        cutmix: α of CutMix's λ ~ Beta(α, α) (Yun et al. 2019); 0 = off. With both on, each sample takes one of
            the two with probability 1/2 (timm's ``switch_prob`` 0.5).
        resized_crop: random resized crop (the Inception crop), done where images are decoded (a streaming image
            folder's workers, :mod:`kdkit.data.stream`) because it needs each image at its own size.
        crop_scale: area fraction range of the resized crop (torchvision: (0.08, 1)).
        crop_ratio: aspect (w / h) range of the resized crop (torchvision: (3/4, 4/3)).

    Mixing: sample ``i`` of view ``v`` is mixed with partner ``p = ⌊N · hash(seed, v, i)⌋`` of the same split (N
    its size), itself cropped, flipped and jittered as view ``v`` of ``p`` -- a pure function of (seed, v, i), so the
    soft-label store can replay the mixed image the teacher saw.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0
    flip: bool = False
    seed: int = 0
    jitter: tuple[float, float, float] = (0.0, 0.0, 0.0)
    mixup: float = 0.0
    cutmix: float = 0.0
    resized_crop: bool = False
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)

    def __post_init__(self) -> None:
        mean = tuple(float(v) for v in self.mean)
        std = tuple(float(v) for v in self.std)
        if not mean or len(mean) != len(std):
            raise ConfigError(f"augment: mean and std need one value per channel, got {len(mean)} and {len(std)}")
        if any(not s > 0 for s in std):
            raise ConfigError(f"augment: std values must be positive, got {std}")
        if not isinstance(self.crop_padding, int) or isinstance(self.crop_padding, bool) or self.crop_padding < 0:
            raise ConfigError(f"augment: crop_padding must be a non-negative integer, got {self.crop_padding!r}")
        if self.crop_padding > 1 << 14:
            raise ConfigError(f"augment: crop_padding {self.crop_padding} is unreasonably large")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "flip", bool(self.flip))
        object.__setattr__(self, "seed", int(self.seed))
        jitter = tuple(float(v) for v in self.jitter)
        if len(jitter) != 3 or any(not 0 <= v < 1e6 for v in jitter) or jitter[0] > 1 or jitter[1] > 1 \
                or jitter[2] > 1:
            raise ConfigError(f"data.augment.jitter: give [brightness, contrast, saturation], each in [0, 1], got "
                              f"{self.jitter!r}")
        object.__setattr__(self, "jitter", jitter)
        for field in ("mixup", "cutmix"):
            a = float(getattr(self, field))
            if not 0 <= a < 1e3:
                raise ConfigError(f"data.augment.{field}: α must be >= 0 (0 = off), got {a}")
            object.__setattr__(self, field, a)
        scale, ratio = tuple(float(v) for v in self.crop_scale), tuple(float(v) for v in self.crop_ratio)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ConfigError(f"data.augment.crop_scale: give [lo, hi] with 0 < lo <= hi <= 1, got {self.crop_scale!r}")
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise ConfigError(f"data.augment.crop_ratio: give [lo, hi] with 0 < lo <= hi, got {self.crop_ratio!r}")
        object.__setattr__(self, "crop_scale", scale)
        object.__setattr__(self, "crop_ratio", ratio)
        object.__setattr__(self, "resized_crop", bool(self.resized_crop))

    # --------------------------------------------------------------------------------------------- construction
    @classmethod
    def normalize_only(cls, mean: Sequence[float], std: Sequence[float]) -> Augment:
        """Evaluation transform: no crop, no flip, just ``(x / 255 - mean) / std``."""
        return cls(tuple(mean), tuple(std))

    def as_eval(self) -> Augment:
        """This augmentation's evaluation counterpart (same normalisation, no randomness)."""
        return dataclasses.replace(self, crop_padding=0, flip=False, jitter=(0.0, 0.0, 0.0), mixup=0.0, cutmix=0.0,
                                   resized_crop=False)

    @property
    def is_random(self) -> bool:
        return self.crop_padding > 0 or self.flip or self.mixes or any(self.jitter) or self.resized_crop

    @property
    def mixes(self) -> bool:
        """Whether samples are mixed with partners (mixup and/or cutmix): batches then carry ``target_b`` and
        ``lam``."""
        return self.mixup > 0 or self.cutmix > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description, for run manifests and the soft-label store."""
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_padding": self.crop_padding,
            "flip": self.flip,
            "seed": self.seed,
            # The newer ops only when on, so a description (and a store made) without them reads as before.
            **({"jitter": list(self.jitter)} if any(self.jitter) else {}),
            **({"mixup": self.mixup} if self.mixup else {}),
            **({"cutmix": self.cutmix} if self.cutmix else {}),
            **({"resized_crop": True, "crop_scale": list(self.crop_scale), "crop_ratio": list(self.crop_ratio)}
               if self.resized_crop else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Augment:
        return cls(
            tuple(d["mean"]),
            tuple(d["std"]),
            int(d.get("crop_padding", 0)),
            bool(d.get("flip", False)),
            int(d.get("seed", 0)),
            tuple(d.get("jitter", (0.0, 0.0, 0.0))),
            float(d.get("mixup", 0.0)),
            float(d.get("cutmix", 0.0)),
            bool(d.get("resized_crop", False)),
            tuple(d.get("crop_scale", (0.08, 1.0))),
            tuple(d.get("crop_ratio", (3.0 / 4.0, 4.0 / 3.0))),
        )

    # --------------------------------------------------------------------------------------------- randomness
    def draws(self, index: np.ndarray | Tensor, view: int | np.ndarray | Tensor) -> tuple[Any, Any, Any]:
        """The random decisions for each sample.

        Args:
            index: (B,) int64 sample indices, a tensor (any device) or a numpy array.
            view: int or (B,) int64.

        Returns:
            dy, dx: (B,) int64 crop offsets in [0, 2p] (zeros when p = 0); flip: (B,) bool (False when disabled);
            of the same array type as ``index``.
        """
        if not isinstance(index, (Tensor, np.ndarray)):
            index = torch.as_tensor(index, dtype=torch.int64)
        words = hash_draws(self.seed, view, index, (DRAW_CROP_Y, DRAW_CROP_X, DRAW_FLIP))
        span = 2 * self.crop_padding + 1
        dy, dx = uniform_int(words[:, 0], span), uniform_int(words[:, 1], span)
        flip = (uniform_int(words[:, 2], 2) == 1) & self.flip
        return dy, dx, flip

    def _words(self, index: Any, view: Any, draws: Sequence[int]) -> np.ndarray:
        """(B, len(draws)) hash words as numpy, for the per-sample parameters computed on the CPU."""
        idx = index.cpu().numpy() if isinstance(index, Tensor) else np.asarray(index, dtype=np.int64)
        v = view.cpu().numpy() if isinstance(view, Tensor) and view.dim() > 0 else \
            (int(view) if isinstance(view, Tensor) else view)
        return np.asarray(hash_draws(self.seed, v, idx.astype(np.int64), draws))

    def crop_boxes(self, index: Any, view: Any, heights: Any, widths: Any) -> np.ndarray:
        """Random resized crop boxes (torchvision's rule, :func:`kdkit.data.ops.resized_crop_boxes`) for images of
        the given sizes; with ``resized_crop`` off, the whole image.

        Returns:
            (B, 4) int64 ``(top, left, height, width)``, a pure function of (seed, view, index, image size).
        """
        hh, ww = np.asarray(heights, dtype=np.int64), np.asarray(widths, dtype=np.int64)
        if not self.resized_crop:
            return np.stack([np.zeros_like(hh), np.zeros_like(ww), hh, ww], axis=1)
        draws = range(DRAW_RESIZED_CROP, DRAW_RESIZED_CROP + 4 * ops.RRC_ATTEMPTS)
        u = ops.unit_float(self._words(index, view, draws))
        return ops.resized_crop_boxes(u, hh, ww, self.crop_scale, self.crop_ratio)

    def flips(self, index: Any, view: Any) -> np.ndarray:
        """(B,) bool: which samples are mirrored (the same draw as :meth:`draws`)."""
        return (ops.unit_float(self._words(index, view, (DRAW_FLIP,))[:, 0]) >= 0.5) & self.flip

    def jitter_factors(self, index: Any, view: Any) -> np.ndarray:
        """(B, 3) float64 (brightness, contrast, saturation) factors ``max(0, 1 + s (2u - 1))`` -- torchvision's
        U[max(0, 1 - s), 1 + s] -- with u from (seed, view, index); factor 1 where a strength is 0."""
        u = ops.unit_float(self._words(index, view, (DRAW_BRIGHTNESS, DRAW_CONTRAST, DRAW_SATURATION)))
        return np.maximum(0.0, 1.0 + np.asarray(self.jitter)[None, :] * (2.0 * u - 1.0))

    def photometric(self, images: Tensor, index: Any, view: Any) -> Tensor:
        """Colour jitter (brightness, contrast, saturation) of a uint8 batch, on its device; identity when off.

        Factors are ``1 + s (2u - 1)`` clipped at 0, u from (seed, view, index) -- torchvision's U[max(0, 1-s), 1+s].
        """
        if not any(self.jitter) or images.shape[0] == 0:
            return images
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ConfigError("data.augment.jitter works on uint8 images (B, C, H, W); remove it for this data")
        fac = self.jitter_factors(index, view).astype(np.float32)
        f = [torch.from_numpy(fac[:, k].copy()) if s else None for k, s in enumerate(self.jitter)]
        return ops.color_jitter(images, *f)

    def partners(self, index: Any, view: Any, n: int) -> Tensor:
        """(B,) int64 split-local partner of each sample for mixing: ``⌊n · u⌋``, u from (seed, view, index)."""
        words = self._words(index, view, (DRAW_PARTNER,))[:, 0]
        return torch.from_numpy(np.asarray(uniform_int(words, int(n)), dtype=np.int64))

    def mix_params(self, index: Any, view: Any, h: int, w: int) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample mixing decisions: λ (weight of the sample itself), cutmix boxes and which samples use cutmix.

        Returns:
            lam (B,) float32 -- for cutmix already corrected to the pasted area; boxes (B, 4) int64 ``(y0, y1, x0,
            x1)``; use_cut (B,) bool.
        """
        u = ops.unit_float(self._words(index, view, (DRAW_MIX_LAM, DRAW_MIX_KIND, DRAW_CUT_Y, DRAW_CUT_X)))
        b = u.shape[0]
        use_cut = (u[:, 1] < 0.5) if (self.mixup > 0 and self.cutmix > 0) else np.full(b, self.cutmix > 0)
        lam = np.ones(b, dtype=np.float64)
        if self.mixup > 0:
            lam = np.where(~use_cut, ops.beta_quantile(u[:, 0], self.mixup), lam)
        boxes = np.zeros((b, 4), dtype=np.int64)
        if self.cutmix > 0:
            cut_boxes, lam_cut = ops.cutmix_boxes(ops.beta_quantile(u[:, 0], self.cutmix), u[:, 2], u[:, 3], h, w)
            boxes = np.where(use_cut[:, None], cut_boxes, boxes)
            lam = np.where(use_cut, lam_cut, lam)
        return (torch.from_numpy(lam.astype(np.float32)), torch.from_numpy(boxes), torch.from_numpy(use_cut))

    def mix(self, images: Tensor, partner_images: Tensor, index: Any, view: Any) -> tuple[Tensor, Tensor]:
        """Mix a uint8 batch with its partners' (already augmented) pixels.

        Args:
            images: (B, C, H, W) uint8, the samples' own views.
            partner_images: (B, C, H, W) uint8, view ``view`` of each sample's partner (:meth:`partners`).
            index: (B,) int64 split-local indices; view: int or (B,).

        Returns:
            (B, C, H, W) uint8 mixed pixels; (B,) float32 λ on ``images``' device (the label weight of the sample).
        """
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ConfigError("data.augment.mixup/cutmix work on uint8 images (B, C, H, W); remove them for this data")
        lam, boxes, use_cut = self.mix_params(index, view, images.shape[2], images.shape[3])
        return ops.mix_images(images, partner_images, lam, boxes, use_cut), lam.to(images.device)

    # --------------------------------------------------------------------------------------------- transforms
    def geometric(self, images: Tensor, index: Tensor, view: int | Tensor, *, backend: str = "auto") -> Tensor:
        """Random crop (zero padding) and flip only.

        Args:
            images: (B, C, H, W) uint8 or float32 (other shapes pass through when no augmentation is on).
            index: (B,) int64.
            view: int or (B,) int64.
            backend: ``auto`` (numpy for CPU tensors, torch otherwise), ``numpy`` or ``torch``; all give identical
                bytes. On CPU numpy is preferred because its kernels are single-threaded: torch's 2-thread OpenMP
                kernels on these ~0.1 MB batches gain nothing when idle and stall badly when the cores are shared
                (DDP processes, a busy machine).

        Returns:
            the augmented batch, same dtype and device as ``images``.
        """
        b, c, h, w = self._check(images, index, view)
        if not (self.crop_padding > 0 or self.flip) or b == 0:
            return images
        if _use_numpy(images, backend):
            idx = torch.as_tensor(index, dtype=torch.int64).cpu().numpy()
            v = view.cpu().numpy() if isinstance(view, Tensor) else view
            dy, dx, flip = self.draws(idx, v)
            return torch.from_numpy(_crop_flip_numpy(images.numpy(), dy, dx, flip, self.crop_padding))
        index = torch.as_tensor(index, dtype=torch.int64).to(images.device)
        if isinstance(view, Tensor):
            view = view.to(device=images.device, dtype=torch.int64)
        dy, dx, flip = self.draws(index, view)
        return _crop_flip_torch(images, dy, dx, flip, self.crop_padding)

    def normalize(self, images: Tensor, *, backend: str = "auto") -> Tensor:
        """``(x / 255 - mean) / std`` (uint8 pixels) or ``(x - mean) / std`` (float data of any shape (B, C, ...),
        channel = axis 1) as float32, computed as ``x * (1 / (255 std)) + (-mean / std)``.

        Two separately rounded element-wise ops (no fused multiply-add), so every element is bit-identical whatever
        the batch, backend or device.
        """
        c = images.shape[1]
        if c != len(self.mean):
            raise DataError(f"augment: inputs have {c} channels (axis 1) but mean/std have {len(self.mean)} values")
        unit = 255.0 if images.dtype == torch.uint8 else 1.0
        bshape = (1, c) + (1,) * (images.dim() - 2)
        scale = np.array([1.0 / (unit * s) for s in self.std], dtype=np.float32).reshape(bshape)
        shift = np.array([-m / s for m, s in zip(self.mean, self.std, strict=True)], dtype=np.float32)
        shift = shift.reshape(bshape)
        if _use_numpy(images, backend):
            out = images.numpy().astype(np.float32)
            out *= scale
            out += shift
            return torch.from_numpy(out)
        out = images.to(torch.float32)
        out.mul_(torch.from_numpy(scale).to(images.device))
        out.add_(torch.from_numpy(shift).to(images.device))
        return out

    def __call__(self, images: Tensor, index: Tensor, view: int | Tensor = 0) -> Tensor:
        """Augment and normalise a batch.

        Args:
            images: (B, C, H, W) uint8 pixels, or float32 (B, C, ...) data in its own units.
            index: (B,) int64 sample indices (the split-local index of :class:`kdkit.data.BatchLoader` batches).
            view: int or (B,) int64 view numbers (the epoch, or epoch mod V with a soft-label store).

        Returns:
            float32 of the shape of ``images``, on its device.
        """
        return self.normalize(self.photometric(self.geometric(images, index, view), index, view))

    def _check(self, images: Tensor, index: Tensor, view: int | Tensor) -> tuple[int, int, int, int]:
        if not isinstance(images, Tensor) or images.dtype not in (torch.uint8, torch.float32) or images.dim() < 2:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
            raise DataError(f"augment: expected a uint8 or float32 batch (B, C, ...), got {got}")
        if images.dim() != 4:
            if self.is_random:
                raise ConfigError(f"data.augment: crop and flip are image augmentations, but the samples have shape "
                                  f"{tuple(images.shape[1:])}, not (C, H, W); remove data.augment")
            images = images.reshape(images.shape[0], images.shape[1], 1, -1)
        b, c, h, w = images.shape
        if c != len(self.mean):
            raise DataError(f"augment: images have {c} channels but mean/std have {len(self.mean)} values")
        if tuple(torch.as_tensor(index).shape) != (b,):
            raise DataError(f"augment: index must have shape ({b},), got {tuple(torch.as_tensor(index).shape)}")
        if isinstance(view, Tensor) and view.dim() > 0 and tuple(view.shape) != (b,):
            raise DataError(f"augment: view must be an int or shape ({b},), got {tuple(view.shape)}")
        return b, c, h, w
