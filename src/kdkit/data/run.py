"""A run's data: the training and validation splits, their loaders, normalisation and what the models must take.

:func:`build_data` turns a recipe's ``data:`` into :class:`RunData`; the dataset's registry entry decides how (image
sources here, text sources in :mod:`kdkit.text.data`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from kdkit.data.augment import Augment
from kdkit.data.image_data import dataset_stats
from kdkit.data.loader import BatchLoader
from kdkit.data.sources import load_source, resolve_dataset
from kdkit.data.split import predefined_split, stratified_split, stratified_subset
from kdkit.data.stream import FileImageData, StreamLoader
from kdkit.data.views import InputView, NamedInputs, build_views
from kdkit.errors import ConfigError, DataError
from kdkit.recipe import Recipe


@dataclass
class RunData:
    """The data side of a run: the split, normalisation and both loaders."""

    train: Any  # kdkit.data.ImageData or kdkit.text.batches.TextData (the training subset)
    val: Any
    train_loader: Any
    val_loader: Any
    augment: Any
    num_classes: int
    in_channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    classes: list[str]
    split: dict[str, Any]
    input_shape: tuple[int, ...] | None = None  # one sample's shape: (C, H, W), (C, L), (D,) ...
    input_dtype: str = "uint8"  # how the data is held: uint8 pixels (0-1 scale statistics) or float32 (own units)
    views: dict[str, InputView] = dataclasses.field(default_factory=dict)  # named inputs derived from the main one
    arrays: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # the source's own further inputs:
    # name -> {"mean", "std", "shape", "dtype"} (statistics of the training split, or data.inputs.NAME's)

    @property
    def streamed(self) -> bool:
        """Whether the training images are decoded from files batch by batch (``data.params.stream: true``) rather
        than held in memory (``train.images``)."""
        return isinstance(self.train, FileImageData)

    @property
    def input_names(self) -> list[str]:
        """Every named input of a batch, the main one (``input``) first."""
        return ["input", *self.views, *self.arrays]

    def check_input(self, name: str | None, field: str) -> None:
        """Refuse (one line naming ``field``) a model reading an input the data does not make."""
        if name is not None and name not in self.input_names:
            raise ConfigError(f"{field}: unknown input '{name}'; this data makes {', '.join(self.input_names)} "
                              f"(declare others under data.inputs)")

    def view_of(self, name: str | None) -> InputView | None:
        """The derivation of the named input (None for the main input and the source's own arrays)."""
        return self.views.get(name) if name not in (None, "input") else None

    def shape_of(self, name: str | None) -> tuple[int, ...] | None:
        """One sample's shape in the named input."""
        if name in self.arrays:
            return tuple(self.arrays[name]["shape"])
        view = self.view_of(name)
        if view is None or self.input_shape is None:
            return self.input_shape
        return view.shape(tuple(self.input_shape))

    def named_inputs(self, augment: Augment) -> NamedInputs | None:
        """What makes every named input of a batch over ``augment`` (None: the main input only)."""
        if not self.views and not self.arrays:
            return None
        norms = {k: Augment(a["mean"], a["std"], seed=augment.seed) for k, a in self.arrays.items()}
        return NamedInputs(augment, self.views, norms)

    def make_inputs(self, images: torch.Tensor, index: torch.Tensor, view: int | torch.Tensor,
                    arrays: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
        """Every named input of training samples ``images`` (and their further ``arrays``, by input name) at
        positions ``index`` in ``view``, exactly as the training loader makes them (the soft-label store replays
        these)."""
        named = self.named_inputs(self.augment)
        if named is None:
            return {"input": self.augment(images, index, view)}
        return named(images, index, view, arrays)


def build_data(recipe: Recipe, num_shards: int = 1, shard: int = 0) -> RunData:
    """The run's data: the dataset entry that serves ``data.name`` says how (``run_data`` in its registry metadata,
    e.g. the text package's builder); image data is the default: load the source, split it (stratified, duplicates
    kept on one side), and make the loaders."""
    entry, _ = resolve_dataset(recipe.data.name)
    builder = entry.meta.get("run_data", build_image_data)
    return builder(recipe, num_shards, shard)


def _distinct_labels(targets: torch.Tensor) -> int:
    t = torch.as_tensor(targets)
    return int(t.shape[1]) if t.ndim == 2 else int(torch.unique(t[t >= 0]).numel())


def check_labels(targets: torch.Tensor, where: str) -> None:
    """Refuse data that cannot train a classifier: no samples, or labels that are all one class (a wrong label
    column/array; the run would reach 100 % accuracy and learn nothing)."""
    t = torch.as_tensor(targets)
    if t.shape[0] == 0:
        raise DataError(f"{where} holds no samples; check the file or directory")
    if t.ndim == 1:
        labels = torch.unique(t[t >= 0])
        if labels.numel() == 1:
            raise DataError(f"{where}: every labelled sample has class {int(labels[0])}; a classifier needs at least 2 "
                            f"classes — check the labels (column, array or folder layout)")


def build_image_data(recipe: Recipe, num_shards: int = 1, shard: int = 0) -> RunData:
    d = recipe.data
    full = load_source(d.name, **d.params)
    check_labels(full.targets, f"data.name '{d.name}'")
    if d.val:
        train, val = full, load_source(d.val, **d.val_params)
        train_idx = torch.arange(len(full.targets))
        val_idx = torch.arange(len(val.targets))
        split = {"train": d.name, "val": d.val, "n_train": len(train_idx), "n_val": len(val_idx)}
    elif getattr(full, "test_indices", None) is not None:
        # The source brings its own held-out part (npz x_val/x_test or CIFAR test_batch with split: all): validate
        # on it rather than mixing it into a stratified split.
        train_idx, val_idx = predefined_split(full)
        train, val = full.subset(train_idx), full.subset(val_idx)
        split = {"source": d.name, "predefined": True, "train_idx": train_idx.tolist(), "val_idx": val_idx.tolist()}
    else:
        tr, va = stratified_split(full.targets, full.groups, d.val_fraction, d.split_seed)
        train_idx, val_idx = torch.as_tensor(tr), torch.as_tensor(va)
        train, val = full.subset(train_idx), full.subset(val_idx)
        split = {"source": d.name, "val_fraction": d.val_fraction, "split_seed": d.split_seed,
                 "train_idx": train_idx.tolist(), "val_idx": val_idx.tolist()}
    if d.train_limit is not None and d.train_limit < len(train.targets):
        n_classes = _distinct_labels(train.targets)
        if d.train_limit < n_classes:
            raise ConfigError(f"data.train_limit: {d.train_limit} is fewer than the {n_classes} classes of the "
                              f"training split; a stratified subset keeps at least one sample per class — use "
                              f"data.train_limit >= {n_classes}")
        # A stratified subset (not the first N: sources are often sorted by class).
        keep = stratified_subset(train.targets, train.groups, d.train_limit, d.split_seed + 1)
        if d.held_out:  # the complement of the teacher's subset: a transfer set it never saw
            keep = sorted(set(range(len(train.targets))) - set(int(k) for k in keep))
        train = train.subset(torch.as_tensor(keep))
        split["train_limit"] = d.train_limit
        split["train_limit_positions"] = torch.as_tensor(keep).tolist()
    elif d.held_out:
        raise ConfigError("data.held_out needs data.train_limit (the held-out set is what train_limit leaves out)")
    for part, ds, fix in (("training", train, "data.val_fraction or data.train_limit"),
                          ("validation", val, "data.val_fraction" if not d.val else "data.val")):
        if len(ds.targets) == 0:
            raise ConfigError(f"the {part} split is empty; check {fix}")
    if d.unlabelled:
        if train.targets.ndim != 1:
            raise ConfigError("data.unlabelled works with single-label data; multi-label targets cannot be dropped")
        train = dataclasses.replace(train, targets=torch.full_like(train.targets, -1))
        split["unlabelled"] = True
    if isinstance(train, FileImageData) != isinstance(val, FileImageData):
        raise ConfigError(f"data.val '{d.val}' and data.name '{d.name}' must both be streamed or both in memory; set "
                          f"params.stream the same in data.params and data.val_params")
    if val.num_classes != train.num_classes and d.val:
        raise ConfigError(f"data.val '{d.val}' has {val.num_classes} classes but data.name '{d.name}' has "
                          f"{train.num_classes}")
    if d.mean is not None and d.std is not None:
        mean, std = list(d.mean), list(d.std)
    else:
        m, s = dataset_stats(train.stats_images() if isinstance(train, FileImageData) else train.images)
        mean, std = [float(x) for x in m], [float(x) for x in s]
    if len(mean) != train.in_channels or len(std) != train.in_channels:
        raise ConfigError(f"data.mean/std have {len(mean)}/{len(std)} values for {train.in_channels} channel(s)")
    if not train.is_image and (d.augment.crop_padding or d.augment.flip):
        raise ConfigError(f"data.augment: crop and flip are image augmentations, but '{d.name}' holds samples of "
                          f"shape {train.input_shape}, not (C, H, W) images; remove data.augment")
    if val.input_shape != train.input_shape or val.input_dtype != train.input_dtype:
        raise ConfigError(f"data.val '{d.val}' holds {val.input_dtype} samples of shape {val.input_shape}, but "
                          f"data.name '{d.name}' holds {train.input_dtype} {train.input_shape}; they must match")
    a = d.augment
    aug = Augment(mean=mean, std=std, crop_padding=a.crop_padding, flip=a.flip, seed=recipe.seed,
                  jitter=tuple(a.jitter), mixup=a.mixup, cutmix=a.cutmix, resized_crop=a.resized_crop,
                  crop_scale=tuple(a.crop_scale), crop_ratio=tuple(a.crop_ratio))
    plain = aug.as_eval()
    if isinstance(train, FileImageData):
        if a.crop_padding:
            raise ConfigError("data.augment.crop_padding: a streamed image folder is cropped by "
                              "data.augment.resized_crop; set crop_padding to 0")
        if d.inputs:
            raise ConfigError("data.inputs: named inputs are made from in-memory data; a streamed image folder "
                              "(data.params.stream: true) has one input — remove data.inputs or stream: true")
        train_loader: Any = StreamLoader(train, d.batch_size, aug, shuffle=True, seed=recipe.seed, train=True,
                                         num_shards=num_shards, shard=shard)
        val_loader: Any = StreamLoader(val, d.eval_batch_size, plain, shuffle=False, seed=recipe.seed, train=False)
        return RunData(train, val, train_loader, val_loader, aug, train.num_classes, train.in_channels,
                       train.image_size, mean, std, list(train.classes), split, train.input_shape, train.input_dtype)
    if a.resized_crop:
        raise ConfigError(f"data.augment.resized_crop works on streamed image folders (data.params.stream: true); "
                          f"'{d.name}' is held in memory at one size — use crop_padding for it")
    if (any(a.jitter) or a.mixup or a.cutmix) and train.input_dtype != "uint8":
        raise ConfigError(f"data.augment.jitter/mixup/cutmix work on uint8 images; '{d.name}' holds "
                          f"{train.input_dtype} samples — remove them")
    arrays = _source_arrays(train, val, d, aug)
    if (a.mixup or a.cutmix) and (d.inputs or arrays):
        raise ConfigError("data.augment.mixup/cutmix: mixing makes one input per sample; it cannot be combined with "
                          "named inputs (data.inputs / data.params.inputs) — remove one of them")
    views = build_views({k: v for k, v in d.inputs.items() if k not in arrays}, train.input_shape)
    rd = RunData(train, val, None, None, aug, train.num_classes, train.in_channels, train.image_size, mean, std,
                 list(train.classes), split, train.input_shape, train.input_dtype, views, arrays)
    rd.train_loader = BatchLoader(train, torch.arange(len(train.targets)), d.batch_size, aug, shuffle=True,
                                  seed=recipe.seed, drop_last=False, num_shards=num_shards, shard=shard,
                                  inputs=rd.named_inputs(aug))
    rd.val_loader = BatchLoader(val, torch.arange(len(val.targets)), d.eval_batch_size, plain, shuffle=False,
                                seed=recipe.seed, inputs=rd.named_inputs(plain))
    return rd


def _source_arrays(train: Any, val: Any, d: Any, aug: Augment) -> dict[str, dict[str, Any]]:
    """The source's own further inputs (``data.params.inputs`` of an ``.npz``): shape, dtype and statistics of the
    training split (or ``data.inputs.NAME.mean``/``std``), checked against the validation part and the
    augmentation."""
    out: dict[str, dict[str, Any]] = {}
    for name, arr in getattr(train, "inputs", {}).items():
        if name == "input":
            raise ConfigError("data.params.inputs: 'input' is the main input's name; call the array otherwise")
        spec = d.inputs.get(name)
        if spec is not None and spec.resize is not None:
            raise ConfigError(f"data.inputs.{name}.resize: '{name}' is an array of the source, not derived from the "
                              f"main input; drop resize (or resample it before saving)")
        v = getattr(val, "inputs", {}).get(name)
        if v is None or tuple(v.shape[1:]) != tuple(arr.shape[1:]) or v.dtype != arr.dtype:
            raise ConfigError(f"data.val: the validation data has no input '{name}' of shape {tuple(arr.shape[1:])} "
                              f"{str(arr.dtype).replace('torch.', '')}; give it the same arrays")
        if aug.is_random and arr.dim() == 4 and tuple(arr.shape[2:]) != tuple(train.images.shape[2:]):
            raise ConfigError(f"data.augment: input '{name}' holds images of {tuple(arr.shape[2:])}, the main input "
                              f"{tuple(train.images.shape[2:])}; crop/flip needs one size (or remove data.augment)")
        if spec is not None and spec.mean is not None and spec.std is not None:
            mean, std = list(spec.mean), list(spec.std)
        else:
            m, s = dataset_stats(arr)
            mean, std = [float(x) for x in m], [float(x) for x in s]
        if len(mean) != arr.shape[1] or len(std) != arr.shape[1]:
            raise ConfigError(f"data.inputs.{name}: mean/std have {len(mean)}/{len(std)} values for {arr.shape[1]} "
                              f"channel(s)")
        out[name] = {"mean": mean, "std": std, "shape": [int(s) for s in arr.shape[1:]],
                     "dtype": "uint8" if arr.dtype == torch.uint8 else "float32"}
    return out
