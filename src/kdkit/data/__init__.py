"""kdkit's image data layer: offline datasets, user formats, deterministic splits, replayable augmentation, fast
batches.

Typical use::

    from kdkit.data import Augment, BatchLoader, dataset_stats, load_source, stratified_split

    data = load_source("mnist_5k")
    train_idx, val_idx = stratified_split(data.targets, data.groups, val_fraction=0.1, seed=0)
    mean, std = dataset_stats(data.images[train_idx])
    train = BatchLoader(data, train_idx, 128, Augment(mean, std, crop_padding=2, seed=0), shuffle=True, seed=0)
    val = BatchLoader(data, val_idx, 256, Augment.normalize_only(mean, std), shuffle=False, seed=0)
"""

from kdkit.data.arrays import as_data, from_arrays
from kdkit.data.augment import Augment
from kdkit.data.image_data import ImageData, dataset_stats, duplicate_groups
from kdkit.data.loader import BatchLoader
from kdkit.data.run import RunData, build_data
from kdkit.data.safe_pickle import SafeUnpickler, safe_load
from kdkit.data.sources import detect_format, load_source, resolve_dataset
from kdkit.data.split import load_split, predefined_split, save_split, split_data, stratified_split

__all__ = [
    "Augment",
    "as_data",
    "from_arrays",
    "BatchLoader",
    "ImageData",
    "RunData",
    "SafeUnpickler",
    "build_data",
    "dataset_stats",
    "detect_format",
    "duplicate_groups",
    "load_source",
    "load_split",
    "predefined_split",
    "resolve_dataset",
    "safe_load",
    "save_split",
    "split_data",
    "stratified_split",
]
