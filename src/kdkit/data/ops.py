"""Pure augmentation ops driven by given uniform numbers: random resized crop boxes, colour jitter, mixup and cutmix.

Every function here takes its randomness as arguments (uint32 hash words or numbers derived from them) and holds no
RNG state, so :class:`kdkit.data.augment.Augment` can key every decision by ``(seed, view, index)`` and any view of any
sample -- including the partner it is mixed with -- can be re-created exactly (the soft-label store relies on it).

- Random resized crop follows torchvision's ``RandomResizedCrop.get_params`` sampling rule (Szegedy et al. 2015,
  "Going deeper with convolutions", the Inception crop): up to 10 attempts of an area fraction ~ U(scale) and a
  log-uniform aspect ratio, a uniform position, and the same centre-crop fallback.
- Colour jitter follows torchvision's brightness / contrast / saturation blends: on uint8 tensor batches (rounded back
  to uint8 after each op; in-memory data) or on PIL images with ``ImageEnhance`` (streamed folders' workers), the
  order fixed to brightness, contrast, saturation (torchvision draws the order at random and also offers hue, which
  kdkit leaves out).
- Mixup (Zhang et al., ICLR 2018): ``x = λ x_a + (1 − λ) x_b``, λ ~ Beta(α, α).
- CutMix (Yun et al., ICCV 2019): a box of area fraction ``1 − λ`` (λ ~ Beta(α, α)), centre uniform over the image,
  clipped at the borders, is pasted from ``x_b``; λ is then corrected to the pasted area, as the reference code does.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.special import betaincinv  # scipy comes with scikit-learn (a core dependency); exact Beta quantiles
from torch import Tensor

RRC_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before falling back to a centre crop


def unit_float(words: np.ndarray) -> np.ndarray:
    """uint32 words (held in int64) -> float64 in [0, 1), exactly ``word / 2^32``."""
    return np.asarray(words, dtype=np.float64) * (1.0 / 4294967296.0)


def resized_crop_boxes(u: np.ndarray, heights: np.ndarray, widths: np.ndarray, scale: tuple[float, float],
                       ratio: tuple[float, float]) -> np.ndarray:
    """Random resized crop boxes, by torchvision's rule, from given uniform numbers.

    For attempt a = 0..9: ``area = H W · U(scale)``, ``aspect = exp(U(log r0, log r1))``, ``w = round(√(area·aspect))``,
    ``h = round(√(area/aspect))``; the first attempt with ``0 < w ≤ W`` and ``0 < h ≤ H`` is kept with top-left
    ``(i, j)`` uniform in ``[0, H − h] × [0, W − w]``. If none fits: the largest centre crop whose aspect is clamped
    to ``ratio``.

    Args:
        u: (B, 4 · RRC_ATTEMPTS) float64 uniforms in [0, 1): per attempt (area, log-aspect, row, column).
        heights: (B,) image heights H.
        widths: (B,) image widths W.
        scale: (lo, hi) area fraction range.
        ratio: (lo, hi) aspect (w / h) range.

    Returns:
        (B, 4) int64 boxes ``(top, left, height, width)``.
    """
    b = u.shape[0]
    hh, ww = np.asarray(heights, dtype=np.int64), np.asarray(widths, dtype=np.int64)
    area = (hh * ww).astype(np.float64)
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    out = np.zeros((b, 4), dtype=np.int64)
    done = np.zeros(b, dtype=bool)
    for a in range(RRC_ATTEMPTS):
        ua, ur, ui, uj = (u[:, 4 * a + k] for k in range(4))
        target = area * (scale[0] + (scale[1] - scale[0]) * ua)
        aspect = np.exp(lr0 + (lr1 - lr0) * ur)
        w = np.round(np.sqrt(target * aspect)).astype(np.int64)
        h = np.round(np.sqrt(target / aspect)).astype(np.int64)
        ok = ~done & (w > 0) & (w <= ww) & (h > 0) & (h <= hh)
        i = np.floor(ui * (hh - h + 1)).astype(np.int64)
        j = np.floor(uj * (ww - w + 1)).astype(np.int64)
        out[ok] = np.stack([i, j, h, w], axis=1)[ok]
        done |= ok
    if not done.all():  # torchvision's fallback: whole image, aspect clamped into `ratio`, centred
        rest = ~done
        in_ratio = ww / hh
        w = np.where(in_ratio < ratio[0], ww, np.where(in_ratio > ratio[1], np.round(hh * ratio[1]), ww))
        h = np.where(in_ratio < ratio[0], np.round(ww / ratio[0]), hh)
        w, h = w.astype(np.int64), h.astype(np.int64)
        out[rest] = np.stack([(hh - h) // 2, (ww - w) // 2, h, w], axis=1)[rest]
    return out


def _gray_x1000(x: Tensor) -> Tensor:
    """1000 × ITU-R 601-2 luma (299 R + 587 G + 114 B) in exact int32 (int64 for the sums); (B, 1, H, W)."""
    if x.shape[1] == 1:
        return x.to(torch.int32) * 1000
    xi = x.to(torch.int32)
    return xi[:, 0:1] * 299 + xi[:, 1:2] * 587 + xi[:, 2:3] * 114


def _blend(x: Tensor, other: Tensor, f: Tensor) -> Tensor:
    """torchvision's ``_blend`` for uint8: ``clamp(f x + (1 − f) other, 0, 255)`` truncated to uint8."""
    out = x.to(torch.float32) * f + other * (1.0 - f)
    return out.clamp_(0.0, 255.0).to(torch.uint8)


def color_jitter(x: Tensor, brightness: Tensor | None, contrast: Tensor | None, saturation: Tensor | None) -> Tensor:
    """Brightness, contrast and saturation blends per sample, as torchvision's tensor ColorJitter on uint8.

    ``brightness: blend(x, 0, f)``; ``contrast: blend(x, mean(gray(x)), f)``; ``saturation: blend(x, gray(x), f)``;
    each rounded down to uint8 like torchvision. Grey is ``(299 R + 587 G + 114 B) / 1000`` (torchvision: 0.2989 R
    ...); the contrast mean is summed in exact integers, so a sample's result does not depend on the batch it is in
    or the device.

    Args:
        x: (B, C, H, W) uint8, C = 1 or 3 (saturation needs C = 3; it is skipped on grey images).
        brightness, contrast, saturation: (B,) float32 factors on ``x``'s device, or None to skip the op.

    Returns:
        (B, C, H, W) uint8.
    """
    def col(f: Tensor) -> Tensor:
        return f.to(device=x.device, dtype=torch.float32).view(-1, 1, 1, 1)

    if brightness is not None:
        x = _blend(x, torch.zeros((), device=x.device), col(brightness))
    if contrast is not None:
        g = _gray_x1000(x).to(torch.int64).sum(dim=(1, 2, 3)).to(torch.float64)
        mean = (g / (1000.0 * x.shape[2] * x.shape[3])).to(torch.float32)
        x = _blend(x, mean.view(-1, 1, 1, 1), col(contrast))
    if saturation is not None and x.shape[1] == 3:
        gray = (_gray_x1000(x) // 1000).to(torch.float32)
        x = _blend(x, gray, col(saturation))
    return x


def color_jitter_pil(im: Any, brightness: float, contrast: float, saturation: float) -> Any:
    """The same three ops on one PIL image, as torchvision's ColorJitter does on PIL images (``ImageEnhance``:
    blends with black, with the mean grey level, and with the grey image, in C on uint8); a factor of 1 skips the op.

    The streamed loader's workers use this one: on a decoded 224x224 image it costs ~1 ms, where the batched tensor
    version (:func:`color_jitter`) on one CPU thread costs ~10 ms per image (measured, benchmarks/input_pipeline.py).
    """
    from PIL import ImageEnhance

    if brightness != 1.0:
        im = ImageEnhance.Brightness(im).enhance(brightness)
    if contrast != 1.0:
        im = ImageEnhance.Contrast(im).enhance(contrast)
    if saturation != 1.0 and im.mode == "RGB":
        im = ImageEnhance.Color(im).enhance(saturation)
    return im


def beta_quantile(u: np.ndarray, alpha: float) -> np.ndarray:
    """λ ~ Beta(α, α) by inverse CDF of the given uniforms (exact, deterministic: scipy's ``betaincinv``)."""
    return np.asarray(betaincinv(alpha, alpha, np.asarray(u, dtype=np.float64)), dtype=np.float64)


def cutmix_boxes(lam: np.ndarray, u_cy: np.ndarray, u_cx: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """CutMix boxes (Yun et al. 2019, reference ``rand_bbox``): cut ratio ``√(1 − λ)``, centre uniform, clipped.

    Args:
        lam: (B,) λ ~ Beta(α, α).
        u_cy, u_cx: (B,) uniforms for the box centre.
        h, w: image size.

    Returns:
        boxes (B, 4) int64 ``(y0, y1, x0, x1)`` half-open; lam_eff (B,) float64 = 1 − box area / (h w).
    """
    cut = np.sqrt(1.0 - lam)
    ch, cw = np.floor(h * cut).astype(np.int64), np.floor(w * cut).astype(np.int64)
    cy, cx = np.floor(u_cy * h).astype(np.int64), np.floor(u_cx * w).astype(np.int64)
    y0, y1 = np.clip(cy - ch // 2, 0, h), np.clip(cy + ch // 2, 0, h)
    x0, x1 = np.clip(cx - cw // 2, 0, w), np.clip(cx + cw // 2, 0, w)
    lam_eff = 1.0 - ((y1 - y0) * (x1 - x0)) / float(h * w)
    return np.stack([y0, y1, x0, x1], axis=1), lam_eff


def mix_images(a: Tensor, b: Tensor, lam: Tensor, boxes: Tensor, use_cut: Tensor) -> Tensor:
    """Mixup or CutMix per sample on uint8 batches.

    ``out = round(λ a + (1 − λ) b)`` where ``use_cut`` is False (mixup); where True, ``out = a`` with the box
    ``[y0, y1) × [x0, x1)`` taken from ``b`` (cutmix).

    Args:
        a, b: (B, C, H, W) uint8, the samples and their partners.
        lam: (B,) float32 mixup weights of ``a`` (ignored where ``use_cut``).
        boxes: (B, 4) int64 cutmix boxes (ignored where not ``use_cut``).
        use_cut: (B,) bool.

    Returns:
        (B, C, H, W) uint8.
    """
    _, _, h, w = a.shape
    lam4 = lam.to(device=a.device, dtype=torch.float32).view(-1, 1, 1, 1)
    mixed = (a.to(torch.float32) * lam4 + b.to(torch.float32) * (1.0 - lam4)).round_().clamp_(0, 255).to(torch.uint8)
    boxes = boxes.to(a.device)
    ys = torch.arange(h, device=a.device).view(1, h, 1)
    xs = torch.arange(w, device=a.device).view(1, 1, w)
    inside = ((ys >= boxes[:, 0, None, None]) & (ys < boxes[:, 1, None, None])
              & (xs >= boxes[:, 2, None, None]) & (xs < boxes[:, 3, None, None]))  # (B, H, W)
    cut = torch.where(inside[:, None], b, a)
    return torch.where(use_cut.to(a.device).view(-1, 1, 1, 1), cut, mixed)
