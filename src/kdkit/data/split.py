"""Deterministic, stratified, duplicate-aware train/validation splits, and their JSON files.

Identical images (same duplicate group, see :attr:`kdkit.data.ImageData.groups`) always land on the same side, so
validation accuracy is never inflated by memorised copies (Animal-MNIST has ~5.7% exact duplicates). A split is a pure
function of (targets, groups, val_fraction, seed): it uses numpy's PCG64 ``default_rng``, whose streams are specified
bit-for-bit and identical on every platform.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdkit.data.image_data import ImageData, as_index_tensor
from kdkit.errors import ConfigError, DataError
from kdkit.utils import atomic_write_json

SPLIT_FORMAT = "kdkit-split/1"


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def stratified_split(
    targets: Tensor | np.ndarray, groups: Tensor | np.ndarray | None, val_fraction: float, seed: int
) -> tuple[Tensor, Tensor]:
    """Split sample positions into train and validation, per class, moving whole duplicate groups.

    For each stratum (class; unlabelled samples, -1, form their own; multi-label data is one stratum) the quota is
    ``round(val_fraction * n_class)``, capped so that train keeps at least one sample. The stratum's groups are
    shuffled with ``default_rng(SeedSequence([seed, class + 1]))`` (so adding a class does not reshuffle the others)
    and taken into validation in that order whenever the whole group still fits the quota. The result misses the
    quota by less than one group. A group whose members carry different labels follows its first member's class.

    Args:
        targets: (N,) int class indices (-1 = unlabelled) or (N, K) multi-hot.
        groups: (N,) int duplicate-group ids (samples with equal ids move together), or None for all-distinct.
        val_fraction: fraction of each class to hold out, in (0, 1).
        seed: any integer.

    Returns:
        (train_idx, val_idx): sorted int64 tensors of positions, disjoint, together covering 0..N-1.
    """
    if not isinstance(val_fraction, (int, float)) or not 0.0 < float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction!r}")
    t = _numpy(targets)
    n = t.shape[0]
    if t.ndim == 1:
        key = t.astype(np.int64)
        if n and key.min() < -1:
            raise DataError(f"targets must be >= -1 (-1 = unlabelled), got {key.min()}")
    elif t.ndim == 2:
        key = np.zeros(n, dtype=np.int64)
    else:
        raise DataError(f"targets must be (N,) or (N, K), got shape {t.shape}")
    g = np.arange(n, dtype=np.int64) if groups is None else _numpy(groups).astype(np.int64)
    if g.shape != (n,):
        raise DataError(f"groups must have shape ({n},) like targets, got {g.shape}")

    # Compact group ids; first member (lowest position) of each group decides its stratum.
    _, first, inverse, sizes = np.unique(g, return_index=True, return_inverse=True, return_counts=True)
    group_key = key[first]
    seed_word = int(seed) % (1 << 64)  # SeedSequence takes non-negative integers
    in_val = np.zeros(len(sizes), dtype=bool)
    for s in np.unique(group_key):
        gids = np.flatnonzero(group_key == s)  # ascending, hence deterministic before shuffling
        n_s = int(sizes[gids].sum())
        quota = min(math.floor(float(val_fraction) * n_s + 0.5), n_s - 1)
        if quota <= 0:
            continue
        rng = np.random.default_rng(np.random.SeedSequence([seed_word, int(s) + 1]))
        taken = 0
        for gid in gids[rng.permutation(len(gids))]:
            size = int(sizes[gid])
            if taken + size <= quota:
                in_val[gid] = True
                taken += size
                if taken == quota:
                    break
    val_mask = in_val[inverse.reshape(-1)]
    val_idx = torch.from_numpy(np.flatnonzero(val_mask).astype(np.int64))
    train_idx = torch.from_numpy(np.flatnonzero(~val_mask).astype(np.int64))
    return train_idx, val_idx


def stratified_subset(targets: Tensor | np.ndarray, groups: Tensor | np.ndarray | None, size: int,
                      seed: int) -> Tensor:
    """Positions of a class-balanced subset of ``size`` samples (``data.train_limit``), moving whole duplicate groups.

    Each class gives its rounded share first (:func:`stratified_split` with ``fraction = size / N``, so the subset can
    exceed ``size`` by the per-class rounding, as it always has). Classes too small for a share (one sample each
    among a hundred classes) give none; when the shares fall short of ``size`` the subset is topped up with whole
    groups of the remaining samples in a seeded random order (stopping short only when no remaining group fits).
    So the subset is never empty for ``size >= 1`` and keeps the class proportions where they can be kept.

    Returns:
        sorted int64 positions.
    """
    t = _numpy(targets)
    n = int(t.shape[0])
    if size >= n:
        return torch.arange(n, dtype=torch.int64)
    if size < 1:
        raise ConfigError(f"data.train_limit must be at least 1, got {size}")
    _, picked = stratified_split(targets, groups, size / n, seed)
    chosen = np.zeros(n, dtype=bool)
    chosen[picked.numpy()] = True
    g = np.arange(n, dtype=np.int64) if groups is None else _numpy(groups).astype(np.int64)
    taken = int(chosen.sum())
    if taken < size:
        rest = np.unique(g[~chosen])
        rng = np.random.default_rng(np.random.SeedSequence([int(seed) % (1 << 64), 0]))
        for gid in rest[rng.permutation(len(rest))]:
            members = np.flatnonzero((g == gid) & ~chosen)
            if taken + len(members) <= size:
                chosen[members] = True
                taken += len(members)
                if taken == size:
                    break
    return torch.from_numpy(np.flatnonzero(chosen).astype(np.int64))


def evaluation_subset(data: Any, split: str, val_fraction: float, seed: int) -> Any:
    """What ``kdkit eval`` scores: ``split="val"`` re-creates a recipe's validation split of ``data`` -- the source's
    own held-out part when it has one (``test_indices``: npz ``x_val``/``x_test`` or CIFAR with ``split: all``), else
    the stratified split (same ``val_fraction`` and ``seed`` as ``data.val_fraction`` / ``data.split_seed``) -- and
    ``"all"`` keeps every sample.

    ``data`` is any source with ``targets``, ``groups`` and ``subset`` (:class:`ImageData`, text data).
    """
    if split == "val":
        if getattr(data, "test_indices", None) is not None:  # the source's own held-out part, as in training
            return data.subset(data.test_indices)
        _, idx = stratified_split(data.targets, data.groups, val_fraction, seed)
        return data.subset(torch.as_tensor(idx))
    if split != "all":
        raise ConfigError(f"--split must be 'val' or 'all', got '{split}'")
    return data


def split_data(data: ImageData, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """:func:`stratified_split` of an :class:`ImageData` over its targets and duplicate groups."""
    return stratified_split(data.targets, data.groups, val_fraction, seed)


def predefined_split(data: ImageData) -> tuple[Tensor, Tensor]:
    """Use the dataset's own test split (e.g. CIFAR ``test_batch``) as validation.

    Returns:
        (train_idx, val_idx): sorted int64 positions; val is :attr:`ImageData.test_indices`.
    """
    if data.test_indices is None:
        raise DataError(
            f"dataset '{data.name}' has no predefined test split; load it with split='all' (cifar10:, cifar100:, "
            "npz: with x_test) or split by val_fraction"
        )
    is_val = torch.zeros(len(data), dtype=torch.bool)
    is_val[data.test_indices] = True
    return (~is_val).nonzero().flatten(), is_val.nonzero().flatten()


def save_split(path: str | Path, train_idx: Any, val_idx: Any, meta: dict[str, Any] | None = None) -> None:
    """Write a split as JSON (atomically): ``{"format", "meta", "train": [...], "val": [...]}``.

    ``meta`` should say what the split belongs to (dataset name and fingerprint, seed, val_fraction), so that a run
    can refuse a split made for other data.
    """
    train = as_index_tensor(train_idx, what="train_idx").tolist()
    val = as_index_tensor(val_idx, what="val_idx").tolist()
    if set(train) & set(val):
        raise DataError(f"{path}: train and val indices overlap; a split must be disjoint")
    atomic_write_json(Path(path), {"format": SPLIT_FORMAT, "meta": dict(meta or {}), "train": train, "val": val})


def load_split(path: str | Path) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Read a split written by :func:`save_split`.

    Returns:
        (train_idx, val_idx, meta).
    """
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except OSError as e:
        raise DataError(f"cannot read split file {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"split file {path} is not valid JSON ({e})") from None
    if not isinstance(obj, dict) or obj.get("format") != SPLIT_FORMAT:
        raise DataError(f'{path} is not a kdkit split file (expected "format": "{SPLIT_FORMAT}")')
    try:
        train = as_index_tensor(obj["train"], what=f"{path} train")
        val = as_index_tensor(obj["val"], what=f"{path} val")
    except KeyError as e:
        raise DataError(f"split file {path} has no '{e.args[0]}' list") from None
    if (train.numel() and int(train.min()) < 0) or (val.numel() and int(val.min()) < 0):
        raise DataError(f"split file {path} holds negative indices")
    if np.intersect1d(train.numpy(), val.numpy()).size:
        raise DataError(f"split file {path}: train and val indices overlap")
    meta = obj.get("meta") or {}
    return train, val, meta
