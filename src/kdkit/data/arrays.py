"""Arrays of any shape: ``.npz`` files, your own Python function (``py:module:function``), and tensors or datasets
handed to the Python API.

Every input becomes one in-memory :class:`~kdkit.data.image_data.ImageData`:

- ``uint8`` arrays of 3 or 4 axes are images, kept as uint8 pixels: (N, H, W) grayscale, (N, C, H, W) or
  (N, H, W, C) (the layout is detected from the channel count, or given);
- every other numeric dtype (float, int, bool) is converted to float32 and kept in its own units, whatever the
  sample shape: (N, D) tabular features, (N, C, L) signals, (N, C, H, W) float images of any height and width.
  Nothing is rescaled or quantised; normalisation (per channel = axis 1; per feature for (N, D)) happens per batch
  with statistics of the training split.

Labels: (N,) integer class indices, (N, K) multi-hot (multi-label), or none (unlabelled, -1).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from kdkit.data.image_data import ImageData
from kdkit.data.sources import _as_path, _check_split, _detect_image
from kdkit.errors import ConfigError, DataError
from kdkit.registry import DATASETS, import_object

LAYOUTS = ("auto", "NCHW", "NHWC", "NHW", "NCL", "NLC")


def _as_numpy(a: Any, what: str) -> np.ndarray:
    if isinstance(a, Tensor):
        return a.detach().cpu().numpy()
    arr = np.asarray(a)
    if arr.dtype == object:
        raise DataError(f"{what}: expected a numeric array, got objects; stack your samples into one array")
    return arr


def _images_nchw(x: np.ndarray, layout: str, source: str) -> np.ndarray:
    """uint8 pixels -> (N, C, H, W)."""
    if x.ndim == 3:  # (N, H, W): grayscale
        return x[:, None]
    if x.ndim != 4:
        raise DataError(f"{source}: uint8 images must be (N, H, W), (N, H, W, C) or (N, C, H, W), got shape {x.shape}")
    return _channels_first(x, layout, source)


def _channels_first(x: np.ndarray, layout: str, source: str) -> np.ndarray:
    if layout in ("auto", "NCHW", "NHWC") and x.ndim == 4:
        if layout == "auto":
            first, last = x.shape[1] in (1, 3, 4), x.shape[3] in (1, 3, 4)
            if first == last:
                raise DataError(f"{source}: cannot tell NCHW from NHWC for shape {x.shape}; pass layout: NCHW or NHWC "
                                f"(in the recipe: data.params.layout)")
            layout = "NCHW" if first else "NHWC"
        return x if layout == "NCHW" else x.transpose(0, 3, 1, 2)
    if layout in ("NCHW", "NHWC", "NHW") and x.ndim != (3 if layout == "NHW" else 4):
        raise DataError(f"{source}: layout {layout} needs {len(layout)}-axis arrays, got shape {x.shape}")
    if layout == "NHW":
        return x[:, None]
    if layout in ("NCL", "NLC"):
        if x.ndim != 3:
            raise DataError(f"{source}: layout {layout} needs 3-axis arrays (N, C, L), got shape {x.shape}")
        return x if layout == "NCL" else x.transpose(0, 2, 1)
    return x  # auto, not 4 axes: (N, D), (N, C, L), (N, C, D1, D2, D3) are kept as they are


def _inputs(x: np.ndarray, layout: str, source: str) -> np.ndarray:
    """uint8 images stay uint8 (N, C, H, W); anything else numeric becomes float32 in its own units."""
    if x.ndim < 2:
        raise DataError(f"{source}: inputs must have a sample axis and at least one more, e.g. (N, D); got shape "
                        f"{x.shape}")
    if x.dtype == np.uint8 and x.ndim in (3, 4) and layout not in ("NCL", "NLC"):
        return _images_nchw(x, layout, source)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.iscomplexobj(x):
        raise DataError(f"{source}: inputs must be numeric (uint8 pixels, or float/int values), got dtype {x.dtype}")
    out = _channels_first(x, layout, source).astype(np.float32)
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).sum())
        raise DataError(f"{source}: {bad} input value(s) are NaN or infinite (or overflow float32); clean or impute "
                        f"them first")
    return out


def _labels(ys: list[np.ndarray | None], n: int, names: list[str] | None, source: str
            ) -> tuple[Tensor, list[str]]:
    if all(y is None for y in ys):
        return torch.full((n,), -1, dtype=torch.int64), names or []
    if any(y is None for y in ys):
        raise DataError(f"{source}: labels are given for some parts but not others")
    y = np.concatenate([np.asarray(v) for v in ys])
    if y.shape[0] != n or y.ndim not in (1, 2):
        raise DataError(f"{source}: {n} samples but labels have shape {y.shape}; expected ({n},) or ({n}, K)")
    if y.ndim == 2:  # multi-hot
        return torch.from_numpy(y.astype(np.float32)), names or [str(i) for i in range(y.shape[1])]
    if not np.issubdtype(y.dtype, np.integer) and not (
        np.issubdtype(y.dtype, np.floating) and np.array_equal(y, np.rint(y))
    ):
        raise DataError(f"{source}: labels must be integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    return torch.from_numpy(y), names or [str(i) for i in range(int(y.max()) + 1 if n else 0)]


def from_arrays(x: Any, y: Any = None, *, name: str = "arrays", classes: Sequence[str] | None = None,
                layout: str = "auto", test_x: Any = None, test_y: Any = None,
                inputs: dict[str, Any] | None = None, test_inputs: dict[str, Any] | None = None) -> ImageData:
    """In-memory data from arrays or tensors (see the module docstring for dtypes and shapes).

    Args:
        x: (N, ...) inputs.
        y: (N,) class indices, (N, K) multi-hot, or None (unlabelled).
        name: where the data came from, for messages.
        classes: class names (default ``"0"``, ``"1"``, ...).
        layout: ``auto``, ``NCHW``, ``NHWC``, ``NHW`` (3-axis arrays are grayscale images), ``NCL`` or ``NLC``
            (3-axis signals, channels first or last).
        test_x, test_y: a predefined test part, appended and marked in ``test_indices``.
        inputs, test_inputs: further named inputs of the same samples (name -> (N, ...) array; same dtype rules,
            layout detected), for the main part and the test part.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"{name}: layout must be one of {', '.join(LAYOUTS)}, got '{layout}'")
    xs = [_inputs(_as_numpy(x, name), layout, name)]
    ys = [None if y is None else _as_numpy(y, f"{name} labels")]
    if test_x is not None:
        xs.append(_inputs(_as_numpy(test_x, name), layout, f"{name} test part"))
        ys.append(None if test_y is None else _as_numpy(test_y, f"{name} test labels"))
    if len({(a.shape[1:], a.dtype) for a in xs}) != 1:
        raise DataError(f"{name}: train and test inputs differ in shape or dtype ({xs[0].shape[1:]} {xs[0].dtype} "
                        f"vs {xs[1].shape[1:]} {xs[1].dtype})")
    main = np.concatenate(xs) if len(xs) > 1 else xs[0]
    n = main.shape[0]
    targets, names = _labels(ys, n, list(classes) if classes is not None else None, name)
    test_idx = torch.arange(xs[0].shape[0], n) if len(xs) == 2 else None
    named = {}
    for key, arr in (inputs or {}).items():
        parts = [_inputs(_as_numpy(arr, f"{name} input '{key}'"), "auto", f"{name} input '{key}'")]
        if len(xs) == 2:
            if key not in (test_inputs or {}):
                raise DataError(f"{name}: input '{key}' has no test part")
            parts.append(_inputs(_as_numpy(test_inputs[key], name), "auto", f"{name} test input '{key}'"))
        if sum(a.shape[0] for a in parts) != n:
            raise DataError(f"{name}: input '{key}' has {sum(a.shape[0] for a in parts)} rows for {n} samples")
        named[key] = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts) if len(parts) > 1 else parts[0]))
    return ImageData(torch.from_numpy(np.ascontiguousarray(main)), targets, [str(c) for c in names], name,
                     test_indices=test_idx, inputs=named)


# ------------------------------------------------------------------------------------------------------------- npz
@DATASETS.register("npz", takes_path=True, detect=lambda p: _detect_image(p) == "npz",
                   description="user data: npz:PATH, inputs x (any shape; uint8 = images) and labels y")
def npz(
    path: str | os.PathLike[str] | None = None,
    split: str = "train",
    layout: str = "auto",
    classes: Sequence[str] | None = None,
    inputs: Sequence[str] | None = None,
) -> ImageData:
    """A NumPy ``.npz`` file with inputs and labels.

    Keys: inputs in ``x`` or ``images`` (or ``x_train``/``x_val``/``x_test``, as in Keras' ``mnist.npz``, chosen by
    ``split``), labels in ``y`` or ``labels`` (or ``y_train``/``y_val``/``y_test``); (N,) class indices, or (N, K)
    multi-hot for
    multi-label; no labels = unlabelled (-1). Optional ``classes``/``class_names`` array of names. uint8 inputs are
    images; float (or integer) inputs of any shape stay float32 in their own units. Object arrays are refused (they
    would need pickle).

    Args:
        path: the .npz file.
        split: with ``x_train``/``x_val``/``x_test`` keys: ``train``, ``val``, ``test``, or ``all``: the training
            part plus the file's own held-out part (``x_val``, else ``x_test``) marked in ``test_indices``, which a run
            then validates on (:func:`kdkit.data.split.predefined_split`). A file with one set (``x``) has no
            ``val``/``test`` part: a run holds out ``data.val_fraction`` of it.
        layout: ``auto``, ``NCHW``, ``NHWC``, ``NHW``, ``NCL`` or ``NLC`` (see :func:`from_arrays`).
        classes: class names, overriding any stored in the file.
        inputs: names of further inputs of the same samples (another modality) to read: array ``x_NAME`` (with
            split parts: ``x_NAME_train``, ``x_NAME_val``, ``x_NAME_test``); a model reads one with ``input: NAME``.
    """
    file = _as_path(path, "npz")
    _check_split(split, "npz", ("train", "val", "test", "all"))
    try:
        with np.load(file, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # BadZipFile, ValueError (object arrays), OSError ...
        raise DataError(f"npz: cannot read {file} as a .npz archive without pickle ({e})") from None

    def pick(*keys: str) -> np.ndarray | None:
        return next((arrays[k] for k in keys if k in arrays), None)

    stored = pick("classes", "class_names")
    names = list(classes) if classes is not None else ([str(c) for c in stored.tolist()] if stored is not None
                                                       else None)
    source = f"npz:{file}"
    wanted_inputs = [str(n) for n in (inputs or [])]

    def named(part: str | None) -> dict[str, np.ndarray]:
        out = {}
        for n in wanted_inputs:
            key = f"x_{n}" if part is None else f"x_{n}_{part}"
            if key not in arrays:
                raise DataError(f"npz: {file} has no array '{key}' for input '{n}' (found: {', '.join(arrays)})")
            out[n] = arrays[key]
        return out

    if pick("x", "images") is not None:
        if split in ("val", "test"):
            raise DataError(f"npz: {file} holds one set (x) with no x_{split} part; use split: train (kdkit then "
                            f"holds out data.val_fraction of it) or give data.val another file")
        return from_arrays(pick("x", "images"), pick("y", "labels"), name=source, classes=names, layout=layout,
                           inputs=named(None))
    if any(f"x_{s}" in arrays for s in ("train", "val", "test")):
        if split == "all":  # the training part plus the file's own held-out part (x_val, else x_test) as validation
            held = next((s for s in ("val", "test") if f"x_{s}" in arrays), None)
            if "x_train" not in arrays:
                raise DataError(f"npz: {file} has no array 'x_train' for split 'all'")
            extra = {"test_x": arrays[f"x_{held}"], "test_y": arrays.get(f"y_{held}"),
                     "test_inputs": named(held)} if held else {}
            return from_arrays(arrays["x_train"], arrays.get("y_train"), name=source, classes=names, layout=layout,
                               inputs=named("train"), **extra)
        if f"x_{split}" not in arrays:
            raise DataError(f"npz: {file} has no array 'x_{split}' for split '{split}' (found: {', '.join(arrays)})")
        return from_arrays(arrays[f"x_{split}"], arrays.get(f"y_{split}"), name=source, classes=names,
                           layout=layout, inputs=named(split))
    raise DataError(f"npz: {file} needs an input array named x or images (found: {', '.join(arrays) or 'none'})")


# ------------------------------------------------------------------------------------------------ Python objects
def as_data(obj: Any, name: str, layout: str = "auto") -> ImageData:
    """Data handed over as Python objects -> :class:`ImageData`.

    Accepted: an :class:`ImageData`; a tuple ``(x, y)`` or ``(x, y, classes)`` of arrays/tensors; a dict with ``x``,
    ``y`` (and ``classes``); a ``torch.utils.data.DataLoader`` (its batches of ``(x, y)`` are read once, in order);
    a map-style ``torch.utils.data.Dataset`` whose items are ``(x, y)`` pairs.
    """
    if isinstance(obj, ImageData):
        return obj
    if isinstance(obj, dict):
        unknown = sorted(set(obj) - {"x", "y", "classes", "test_x", "test_y"})
        if "x" not in obj or unknown:
            raise ConfigError(f"{name}: a dict of data needs the key 'x' (and 'y', 'classes'); got keys {sorted(obj)}")
        return from_arrays(obj["x"], obj.get("y"), name=name, classes=obj.get("classes"), layout=layout,
                           test_x=obj.get("test_x"), test_y=obj.get("test_y"))
    if isinstance(obj, tuple) and len(obj) in (2, 3):
        classes = obj[2] if len(obj) == 3 else None
        return from_arrays(obj[0], obj[1], name=name, classes=classes, layout=layout)
    if isinstance(obj, DataLoader):
        xs, ys = [], []
        for i, batch in enumerate(obj):
            x, y = _pair(batch, f"{name}: batch {i}")
            xs.append(torch.as_tensor(x))
            ys.append(torch.as_tensor(y))
        if not xs:
            raise DataError(f"{name}: the DataLoader yielded no batches")
        return from_arrays(torch.cat(xs), torch.cat(ys), name=name, layout=layout)
    if isinstance(obj, Dataset) or (hasattr(obj, "__len__") and hasattr(obj, "__getitem__")):
        n = len(obj)  # type: ignore[arg-type]
        if n == 0:
            raise DataError(f"{name}: the dataset is empty")
        pairs = [_pair(obj[i], f"{name}: item {i}") for i in range(n)]
        x = torch.stack([torch.as_tensor(p[0]) for p in pairs])
        y = torch.stack([torch.as_tensor(p[1]) for p in pairs])
        return from_arrays(x, y, name=name, layout=layout)
    raise ConfigError(f"{name}: expected a Dataset, a DataLoader, an (x, y) tuple of arrays/tensors or a dict with "
                      f"'x' and 'y', got {type(obj).__name__}")


def _pair(item: Any, where: str) -> tuple[Any, Any]:
    if isinstance(item, dict) and "x" in item and "y" in item:
        return item["x"], item["y"]
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    raise DataError(f"{where} is {type(item).__name__}; expected an (input, label) pair")


@DATASETS.register("py", takes_path=True,
                   description="your code: py:module:function returning (x, y) arrays, a dict or a Dataset")
def py(path: str | None = None, **params: Any) -> ImageData:
    """``py:package.module:function``: your function (called with ``data.params``) returns ``(x, y)``, ``(x, y,
    classes)``, a dict with ``x``/``y``/``classes``, a map-style ``Dataset`` of ``(x, y)`` pairs or a
    ``DataLoader``; an attribute that is not callable is used as it is. The module is imported from the recipe's
    folder or ``PYTHONPATH``."""
    if not path:
        raise ConfigError("dataset 'py' needs a reference: py:package.module:function")
    obj = import_object(path, f"data 'py:{path}'")
    layout = params.pop("layout", "auto")
    if callable(obj) and not isinstance(obj, type):
        try:
            obj = obj(**params)
        except TypeError as err:
            raise ConfigError(f"data 'py:{path}': {err} (data.params are passed as keyword arguments)") from None
    elif params:
        raise ConfigError(f"data 'py:{path}' is not a function; drop data.params {sorted(params)}")
    return as_data(obj, f"py:{path}", layout=layout)
