"""Weights on disk: read and write state dicts safely, checkpoint paths, and the metadata stored with a model.

kdkit writes weights only as safetensors, atomically, with a JSON ``kdkit`` metadata entry that lets any command
rebuild the model (name, params, classes, input shape, normalisation, dataset) without the recipe. It reads
safetensors or ``torch.load(..., weights_only=True)`` state dicts, never anything that can run code.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_model
from torch import Tensor, nn

from kdkit.errors import CheckpointError, ConfigError
from kdkit.utils import fsync_dir, fsync_file

_NESTED_KEYS = ("state_dict", "model", "model_state_dict")
_STRIP_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile wrappers
_TORCH_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".tar"}


def rename_legacy_keys(state_dict: Mapping[str, Any], aliases: Mapping[str, str], prefix: str = "") -> dict[str, Any]:
    """Return ``state_dict`` with keys ``prefix + old...`` renamed to ``prefix + new...`` for each alias pair.

    Keys that already use the new name are left alone, so applying the function twice is harmless.
    """
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        new_key = key
        for old, new in aliases.items():
            if key.startswith(prefix + old):
                new_key = prefix + new + key[len(prefix + old):]
                break
        out[new_key] = value
    return out


@dataclass
class LoadReport:
    """What :func:`load_weights` did not load (only non-empty with ``strict=False``)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file (``weights_only=True``), on CPU.

    A ``torch.save`` dict that holds the weights under ``"state_dict"``, ``"model"`` or ``"model_state_dict"`` (e.g.
    RepDistiller/mdistiller and Lightning checkpoints) is unwrapped, and a ``module.`` / ``_orig_mod.`` prefix on
    every key (DataParallel, torch.compile) is removed.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint '{p}' not found" + ("; it is a directory, name the weights file inside"
                                                                if p.is_dir() else ""))
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(p), device="cpu")
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"checkpoint '{p}' is not a readable safetensors file ({_first_line(err)})") from None
    elif suffix in _TORCH_SUFFIXES:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(f"checkpoint '{p}' holds pickled objects that weights_only loading refuses "
                                  f"({_first_line(err)}); re-save model.state_dict() or use .safetensors") from None
        except Exception as err:
            raise CheckpointError(f"checkpoint '{p}' could not be read ({type(err).__name__}: "
                                  f"{_first_line(err)})") from None
    else:
        raise CheckpointError(f"checkpoint '{p}' has an unknown extension; use .safetensors or .pt/.pth/.bin")
    if isinstance(state, Mapping):
        for key in _NESTED_KEYS:
            inner = state.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                state = inner
                break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        keys = list(state)[:6] if isinstance(state, Mapping) else type(state).__name__
        raise CheckpointError(f"checkpoint '{p}' holds no state dict of tensors (found {keys}); save "
                              f"model.state_dict()")
    state = dict(state)
    for pre in _STRIP_PREFIXES:
        if all(k.startswith(pre) for k in state):
            state = {k[len(pre):]: v for k, v in state.items()}
    for k, v in state.items():
        # A model with NaN/inf weights only ever produces NaN; say so here rather than as a "loss became nan" later.
        if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise CheckpointError(f"checkpoint '{p}': tensor '{k}' holds {bad} non-finite value(s) (NaN/inf); the "
                                  f"model is broken — use an earlier checkpoint or retrain it")
    return state


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def _fill_shared(model_state: Mapping[str, Tensor], state: dict[str, Tensor]) -> None:
    """safetensors stores one name per shared tensor (tied weights); give the other names the same tensor."""
    groups: dict[tuple, list[str]] = {}
    for k, t in model_state.items():
        if t.numel() == 0 or t.device.type == "meta":
            continue
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        groups.setdefault(key, []).append(k)
    for names in groups.values():
        present = [n for n in names if n in state]
        if len(names) > 1 and present:
            for n in names:
                state.setdefault(n, state[present[0]])


def _preview(keys: list[str], n: int = 4) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def read_state_for(model: nn.Module, path: str | Path) -> dict[str, Tensor]:
    """The state dict in ``path`` (safetensors, or ``torch.load(weights_only=True)``), with the key names older kdkit
    versions used renamed to ``model``'s (each module's ``legacy_key_aliases``)."""
    state = read_state_dict(path)
    for mod_path, module in model.named_modules():
        aliases = getattr(module, "legacy_key_aliases", None)
        if aliases:
            state = rename_legacy_keys(state, aliases, f"{mod_path}." if mod_path else "")
    return state


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> LoadReport:
    """Load a local state dict into ``model`` (see :func:`read_state_dict` for the formats).

    Keys are renamed with the ``legacy_key_aliases`` of the model's modules (published CIFAR checkpoints name the
    classifier ``linear``/``classifier``), tied weights stored once are filled in, and a missing
    ``num_batches_tracked`` (checkpoints from PyTorch < 0.4.1) is set to 0.

    Args:
        model: the module to fill, in place.
        path: ``.safetensors`` or ``.pt/.pth/.bin`` file.
        strict: if True, any missing, unexpected or shape-mismatched key is an error; if False, only keys whose
            names and shapes match are loaded (e.g. fine-tuning with another number of classes).

    Returns:
        A :class:`LoadReport` of the keys that were not loaded (empty when strict).

    Raises:
        CheckpointError: one line naming the file and the first few missing / unexpected / mismatched keys.
    """
    state = read_state_for(model, path)
    own = model.state_dict()
    _fill_shared(own, state)
    for k in own:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros((), dtype=torch.long)
    report = LoadReport(
        missing=[k for k in own if k not in state],
        unexpected=[k for k in state if k not in own],
        mismatched=[k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)],
    )
    if strict and (report.missing or report.unexpected or report.mismatched):
        parts = []
        if report.missing:
            parts.append(f"missing {len(report.missing)} key(s): {_preview(report.missing)}")
        if report.unexpected:
            parts.append(f"unexpected {len(report.unexpected)} key(s): {_preview(report.unexpected)}")
        if report.mismatched:
            shapes = [f"{k} file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in report.mismatched]
            parts.append(f"{len(shapes)} shape mismatch(es): {_preview(shapes, 3)}")
        raise CheckpointError(f"checkpoint '{path}' does not fit {type(model).__name__}: {'; '.join(parts)}. Was it "
                              f"saved from another architecture or number of classes/channels?")
    for k in report.mismatched + report.unexpected:
        state.pop(k, None)
    model.load_state_dict(state, strict=strict)
    return report


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``model``'s state dict to ``path`` as safetensors, atomically.

    The file is written to a temporary file in the same directory and moved into place with ``os.replace``, so a
    crash never leaves a half-written checkpoint. Shared (tied) tensors are stored once, as
    ``safetensors.torch.save_model`` does; :func:`load_weights` restores them.

    Args:
        model: the module to save.
        path: destination, ending in ``.safetensors``; parent directories are created.
        metadata: optional string -> string header entries.

    Returns:
        The path written.
    """
    from safetensors.torch import save_model

    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        raise ConfigError(f"save_weights writes safetensors; name the file '{p.with_suffix('.safetensors')}'")
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ConfigError("save_weights metadata must map strings to strings")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        save_model(model, tmp, metadata=dict(metadata) if metadata else None)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return p


META_KEY = "kdkit"


def write_weights(model: nn.Module, path: Path, meta: dict[str, Any] | None = None) -> Path:
    """Save ``model``'s weights as safetensors atomically, with ``meta`` (JSON) under the ``kdkit`` metadata key.

    The metadata lets ``kdkit eval best.safetensors`` rebuild the model (name, params, classes, channels, size,
    normalisation) without the recipe.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    metadata = {META_KEY: json.dumps(meta or {})}
    try:
        save_model(model, str(tmp), metadata=metadata)
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_metadata(path: Path) -> dict[str, Any]:
    """The ``kdkit`` metadata of a safetensors file ({} when absent)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"checkpoint '{path}' is not a readable safetensors file ({err})") from None
    raw = meta.get(META_KEY)
    return json.loads(raw) if raw else {}


def resolve_checkpoint(path: str | os.PathLike, field: str) -> Path:
    """A checkpoint may be a weights file or a run directory (then its best weights are used)."""
    p = Path(path)
    if p.is_dir():
        for cand in (p / "checkpoints" / "best.safetensors", p / "last.safetensors"):
            if cand.is_file():
                return cand
        raise CheckpointError(f"{field}: run directory '{p}' has no checkpoints/best.safetensors; train it first")
    if not p.is_file():
        raise CheckpointError(f"{field}: checkpoint file '{p}' not found")
    return p


def code_folder(module: str) -> str | None:
    """The folder an imported user module (``pkg.mod``) was imported from: the folder that must be on the path."""
    mod = sys.modules.get(module)
    file = getattr(mod, "__file__", None)
    if not file:
        return None
    p = Path(file).resolve().parent
    for _ in range(module.count(".") + (1 if Path(file).name == "__init__.py" else 0)):
        p = p.parent
    return str(p)


def input_shape_of(meta: dict[str, Any]) -> tuple[int, ...]:
    """One sample's input shape recorded in a checkpoint's metadata: ``input_shape`` (C, H, W) / (C, L) / (D,) ...;
    checkpoints written before it was recorded hold square images: (in_channels, image_size, image_size)."""
    if meta.get("input_shape"):
        return tuple(int(v) for v in meta["input_shape"])
    return int(meta["in_channels"]), int(meta["image_size"]), int(meta["image_size"])


def check_input_shape(data: Any, meta: dict[str, Any], what: str) -> None:
    """``data`` (an ImageData) must hold samples of the shape and dtype the checkpoint was trained on (for a model
    that read a derived named input, the samples it was derived from: ``meta["input"]["source_shape"]``)."""
    rec = meta.get("input") or {}
    want = rec.get("source_shape") or meta.get("input_shape")
    if want is None or getattr(data, "input_shape", None) is None:
        return
    dtype = rec.get("source_dtype") or meta.get("input_dtype", data.input_dtype)
    if tuple(data.input_shape) != tuple(want) or data.input_dtype != dtype:
        raise ConfigError(f"{what} holds {data.input_dtype} samples of shape {tuple(data.input_shape)}, but the model "
                          f"was trained on {dtype} {tuple(want)}; pass the dataset it was trained on")


def model_meta(spec: Any, data: Any, recipe: Any = None) -> dict[str, Any]:
    """What a checkpoint needs to rebuild its model and re-evaluate it (``kdkit eval`` reads ``data``).

    Args:
        spec: the model's :class:`kdkit.recipe.ModelSpec`.
        data: the run's :class:`kdkit.data.RunData` (classes, input shape, normalisation).
        recipe: the recipe, to record the dataset and split (optional).
    """
    model = {"name": spec.name, "params": spec.params}
    if str(spec.name).startswith("py:"):
        folder = code_folder(str(spec.name)[3:].partition(":")[0])
        if folder:
            model["code_dir"] = folder  # said in errors when the module is not importable later; never imported from
    meta = {"model": model, "num_classes": data.num_classes,
            "in_channels": data.in_channels, "image_size": data.image_size, "mean": data.mean, "std": data.std,
            "classes": data.classes}
    shape = getattr(data, "input_shape", None)
    if shape is not None:
        meta["input_shape"] = [int(v) for v in shape]
        meta["input_dtype"] = getattr(data, "input_dtype", "uint8")
    name = getattr(spec, "input", None)
    view = data.view_of(name) if getattr(data, "views", None) else None
    array = (getattr(data, "arrays", None) or {}).get(name) if name else None
    if array is not None and shape is not None:
        # The model reads another array of the source (another modality): its own shape, dtype and statistics;
        # eval/export read that array of the dataset (``input.array``) instead of the main one.
        meta["input"] = {"name": name, "array": name, "view": None, "source_shape": list(array["shape"]),
                         "source_dtype": array["dtype"]}
        meta.update(input_shape=list(array["shape"]), input_dtype=array["dtype"], mean=array["mean"],
                    std=array["std"], in_channels=int(array["shape"][0]),
                    image_size=int(array["shape"][1] if len(array["shape"]) == 3 else array["shape"][-1]))
    elif view is not None and shape is not None:
        # The model reads a derived named input (data.inputs): it takes float32 samples of the view's shape, made
        # from the dataset's samples (source_shape/source_dtype) by `view`; eval/export/bench recreate it.
        model_shape = view.shape(tuple(int(v) for v in shape))
        meta["input"] = {"name": name, "view": view.to_dict(), "source_shape": meta["input_shape"],
                         "source_dtype": meta["input_dtype"]}
        meta["input_shape"], meta["input_dtype"] = list(model_shape), "float32"
        meta["image_size"] = int(model_shape[1] if len(model_shape) == 3 else model_shape[-1])
    elif shape is not None:
        meta["input"] = {"name": "input", "view": None}
    if recipe is not None:
        d = recipe.data
        meta["data"] = {"name": d.name, "params": d.params, "val_fraction": d.val_fraction,
                        "split_seed": d.split_seed, "val": d.val, "val_params": d.val_params}
    return meta
