"""Python objects, no YAML: ``kdkit.train`` / ``kdkit.distill`` with ``nn.Module`` models and in-memory data.

The objects are turned into an ordinary recipe and run by the same code as a YAML recipe (:func:`kdkit.runs.run`):
same engine, run directory, checkpoints, ``resume`` and report. The data is written once into the run directory
(``RUN/data/train.npz``, ``val.npz``, read back with the ``npz:`` source), so the run stays re-evaluable and
resumable; the models are handed over as objects (recipe names ``object:ROLE:module.Class``) and trained in place.

    >>> result = kdkit.distill(student=small_net, teachers=[big_net], train=train_loader, val=(x_val, y_val),
    ...                        terms="kd", epochs=20, output_dir="runs", name="my_kd")   # doctest: +SKIP
    >>> result.student, result.run_dir, result.best                                      # doctest: +SKIP
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from kdkit.data.arrays import as_data
from kdkit.data.image_data import ImageData
from kdkit.engine.loop import FitResult
from kdkit.errors import ConfigError
from kdkit.models.factory import load_model, object_model_name
from kdkit.recipe import recipe_from_dict
from kdkit.runs import prepare_run_dir, run
from kdkit.utils import atomic_write_bytes
from kdkit.weights import load_weights

# Named sets of loss terms for ``terms="..."``; any other string is one registered term with weight 1.
PRESETS: dict[str, list[dict[str, Any]]] = {
    "ce": [{"name": "ce"}],
    "kd": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "params": {"temperature": 4.0}}],
    "soft_only": [{"name": "kd", "params": {"temperature": 4.0}}],
    "dkd": [{"name": "ce"}, {"name": "dkd", "warmup_epochs": 1.0}],
    # Function matching (Beyer et al. 2022): KL to the teacher on the same (mixed) view, no labels; pair it with
    # data.augment mixup/cutmix and a long schedule (recipes/consistent/, docs/methods.md).
    "consistent": [{"name": "kd", "params": {"temperature": 1.0}}],
}


@dataclass
class ObjectRun:
    """What :func:`kdkit.train` / :func:`kdkit.distill` return for Python objects.

    Attributes:
        student: your student module, trained, holding the weights of its best validation epoch.
        run_dir: the run directory (``config.yaml``, ``metrics.jsonl``, ``checkpoints/``, ``data/``).
        metrics: one dict per epoch (as in ``metrics.jsonl``).
        best: ``{"epoch", "top1", "top5"}`` of the best validation epoch.
        last: the last epoch's metrics.
        best_path: the best weights (safetensors).
        fit: the engine's :class:`~kdkit.engine.loop.FitResult`.
    """

    student: nn.Module
    run_dir: Path
    metrics: list[dict[str, Any]]
    best: dict[str, Any]
    last: dict[str, Any]
    best_path: Path | None
    fit: FitResult = field(repr=False)


def _terms(terms: Any, default: str) -> list[dict[str, Any]]:
    if terms is None:
        terms = default
    if isinstance(terms, str):
        return [dict(t) for t in PRESETS.get(terms, [{"name": terms}])]
    if isinstance(terms, (list, tuple)):
        out = []
        for i, t in enumerate(terms):
            if isinstance(t, str):
                out.append({"name": t})
            elif isinstance(t, dict):
                out.append(dict(t))
            elif hasattr(t, "model_dump"):
                out.append(t.model_dump())
            else:
                raise ConfigError(f"terms.{i}: expected a term name or a dict {{name, weight, params}}, got "
                                  f"{type(t).__name__}")
        return out
    raise ConfigError(f"terms: expected a preset ({', '.join(PRESETS)}), a term name or a list of terms, got "
                      f"{type(terms).__name__}")


def _save_npz(data: ImageData, path: Path) -> dict[str, Any]:
    """Write ``data`` as .npz (atomically); returns the ``npz`` source params that read it back identically."""
    buf = io.BytesIO()
    arrays = {"x": data.images.numpy(), "y": data.targets.numpy(), "classes": np.array(data.classes, dtype=str)}
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return {"layout": "NCHW"} if data.images.dim() == 4 else {}


def _teacher_spec(t: Any, i: int) -> dict[str, Any]:
    if isinstance(t, nn.Module):
        return {"name": object_model_name(t, f"teacher{i}")}
    if isinstance(t, (str, Path)):  # a kdkit run directory or weights file
        model, _ = load_model(t)
        return {"name": object_model_name(model, f"teacher{i}")}
    raise ConfigError(f"teachers.{i}: expected an nn.Module or a kdkit run directory / weights file, got "
                      f"{type(t).__name__}")


def run_objects(*, student: nn.Module, teachers: list[Any] | None, train: Any, val: Any = None,
                terms: Any = None, epochs: int = 10, output_dir: str | Path = "runs", name: str | None = None,
                resume: bool = False, quiet: bool = False, default_terms: str = "ce", **fields: Any) -> ObjectRun:
    """Train (no ``teachers``) or distil ``student`` on in-memory data; see :func:`kdkit.distill`."""
    if not isinstance(student, nn.Module):
        raise ConfigError(f"student: expected a torch.nn.Module, got {type(student).__name__}")
    if train is None:
        raise ConfigError("train: pass the training data (a Dataset, a DataLoader, (x, y) tensors or arrays)")
    name = name or ("distill" if teachers else "train")
    recipe: dict[str, Any] = {
        "name": name, "output_dir": str(output_dir), "epochs": epochs,
        "student": {"name": object_model_name(student, "student")},
        "teachers": [_teacher_spec(t, i) for i, t in enumerate(teachers or [])],
        "terms": _terms(terms, default_terms),
    }
    data_fields = dict(fields.pop("data", {}) or {})
    unknown = set(data_fields) & {"name", "val", "params", "val_params"}
    if unknown:
        raise ConfigError(f"data: {sorted(unknown)} are set from train/val; pass only batch_size, val_fraction, "
                          f"augment, mean, std ...")
    recipe.update(fields)
    recipe["data"] = data_fields
    checked = recipe_from_dict(dict(recipe, data={"name": "npz:unused"}))  # one-line errors before any file is written
    prepare_run_dir(checked, resume, clean=False)  # refuses (one line) before any data file is written; run() cleans
    run_dir = checked.run_dir
    train_data = as_data(train, "train")
    if "mean" not in data_fields and "std" not in data_fields:
        # Your modules see your data as you gave it: a teacher trained elsewhere on raw inputs must not be fed
        # normalised ones (uint8 images arrive as /255 floats). data={"mean": [...], "std": [...]} normalises.
        recipe["data"]["mean"] = [0.0] * train_data.in_channels
        recipe["data"]["std"] = [1.0] * train_data.in_channels
    recipe["data"]["name"] = str(run_dir / "data" / "train.npz")
    recipe["data"]["params"] = _save_npz(train_data, run_dir / "data" / "train.npz")
    recipe["data"]["name"] = "npz:" + recipe["data"]["name"]
    if val is not None:
        val_data = as_data(val, "val")
        if val_data.input_shape != train_data.input_shape:
            raise ConfigError(f"val: samples of shape {val_data.input_shape} but train has {train_data.input_shape}")
        recipe["data"]["val_params"] = _save_npz(val_data, run_dir / "data" / "val.npz")
        recipe["data"]["val"] = "npz:" + str(run_dir / "data" / "val.npz")
    fit = run(recipe_from_dict(recipe), resume=resume, quiet=quiet)
    if fit.best_path is not None:
        load_weights(student, fit.best_path)
    return ObjectRun(student=student, run_dir=fit.run_dir, metrics=list(fit.history), best=fit.best, last=fit.last,
                     best_path=fit.best_path, fit=fit)


__all__ = ["ObjectRun", "PRESETS", "run_objects"]
