"""What a soft-label store's logits are a function of (data, split, augmentation, teachers, combine rule), and how two
such descriptions differ -- so a store is never used for a recipe it was not made for."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from kdkit.recipe import Recipe
from kdkit.softlabels.store import json_sha256, state_dict_sha256

# Keys of a run's split record that describe only the validation side: a store depends on the training side alone.
_VAL_ONLY = ("val_idx", "val", "n_val")
_REL_TOL = 1e-6  # mean/std are recomputed from the pixels; allow for reduction-order rounding


def run_identity(recipe: Recipe, data: Any, teachers: Sequence[nn.Module] | None) -> dict[str, Any]:
    """Everything the stored logits are a function of.

    Args:
        recipe: the recipe (teacher specs, combine mode).
        data: :class:`kdkit.data.RunData` (training split, split record, augmentation).
        teachers: the built teacher models (their weights are hashed), or None when the recipe names none.

    Returns:
        A JSON-ready dict: ``num_classes``, ``data`` (name, params, num_samples, fingerprint, split_sha256),
        ``augment`` (:meth:`kdkit.data.Augment.to_dict`), ``teachers`` (name, params, checkpoint, sha256) and
        ``combine`` (mode, teacher_weights).
    """
    split_train = {k: v for k, v in dict(data.split).items() if k not in _VAL_ONLY}
    params = recipe.scheme.params
    ident: dict[str, Any] = {
        "num_classes": int(data.num_classes),
        "data": {"name": recipe.data.name, "params": recipe.data.params, "num_samples": len(data.train.targets),
                 "fingerprint": data.train.fingerprint(), "split_sha256": json_sha256(split_train)},
        "augment": data.augment.to_dict(),
        "teachers": None,
        "combine": {"mode": params.get("combine", "mean_logits"), "teacher_weights": params.get("teacher_weights")},
    }
    if teachers is not None:
        ident["teachers"] = [{"name": s.name, "params": s.params, "checkpoint": s.checkpoint,
                              "sha256": state_dict_sha256(m), "input": _input_of(s, data)}
                             for s, m in zip(recipe.teachers, teachers, strict=True)]
    return ident


def _input_of(spec: Any, data: Any) -> dict[str, Any] | None:
    """The named input a teacher reads and how it is derived (None: the main input)."""
    name = getattr(spec, "input", None)
    if name in (None, "input"):
        return None
    view = data.view_of(name)
    if view is not None:
        return {"name": name, "view": view.to_dict()}
    array = (getattr(data, "arrays", None) or {}).get(name, {})  # the source's own array: its statistics
    return {"name": name, "array": {"mean": array.get("mean"), "std": array.get("std")}}


def training_source_index(data: Any) -> np.ndarray:
    """(N_train,) the dataset index (position in ``data.name``) of each training-split position."""
    split = data.split
    idx = np.asarray(split["train_idx"], dtype=np.int64) if "train_idx" in split else \
        np.arange(int(split["n_train"]), dtype=np.int64)
    if "train_limit_positions" in split:
        idx = idx[np.asarray(split["train_limit_positions"], dtype=np.int64)]
    return idx


def dataset_size(data: Any) -> int:
    """Samples in the recipe's dataset (``data.name``) before the train/val split."""
    split = data.split
    if "train_idx" in split:
        return len(split["train_idx"]) + len(split["val_idx"])
    return int(split["n_train"])


def _short(h: Any) -> str:
    return f"{h[:12]}…" if isinstance(h, str) and len(h) > 12 else repr(h)


def _close(a: Any, b: Any) -> bool:
    if not (isinstance(a, list) and isinstance(b, list)) or len(a) != len(b):
        return a == b
    return all(math.isclose(float(x), float(y), rel_tol=_REL_TOL, abs_tol=1e-9) for x, y in zip(a, b, strict=True))


def identity_diff(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between a store's identity and the recipe's, one short phrase each.

    Teachers are compared only when ``current`` names some (a recipe may give ``soft_labels`` without ``teachers``);
    the augmentation seed only when the augmentation is random (otherwise every view is the plain image).
    """
    out: list[str] = []
    if stored["num_classes"] != current["num_classes"]:
        out.append(f"number of classes (store {stored['num_classes']}, recipe {current['num_classes']})")
    sd, cd = stored["data"], current["data"]
    if sd["num_samples"] != cd["num_samples"]:
        out.append(f"training samples (store {sd['num_samples']}, recipe {cd['num_samples']})")
    if sd["fingerprint"] != cd["fingerprint"]:
        out.append(f"training data fingerprint (store {_short(sd['fingerprint'])} from '{sd['name']}', recipe "
                   f"{_short(cd['fingerprint'])} from '{cd['name']}')")
    if sd["split_sha256"] != cd["split_sha256"]:
        out.append(f"data split (store {_short(sd['split_sha256'])}, recipe {_short(cd['split_sha256'])})")
    sa, ca = stored["augment"], current["augment"]
    # Augment.to_dict writes the newer ops (jitter, mixup, cutmix, resized crop) only when on: absent = off.
    for key, off in (("crop_padding", 0), ("flip", False), ("jitter", None), ("mixup", None), ("cutmix", None),
                     ("resized_crop", None), ("crop_scale", None), ("crop_ratio", None)):
        if sa.get(key, off) != ca.get(key, off):
            out.append(f"augmentation {key} (store {sa.get(key, off)}, recipe {ca.get(key, off)})")
    for key in ("mean", "std"):
        if not _close(sa.get(key), ca.get(key)):
            out.append(f"normalisation {key} (store {sa.get(key)}, recipe {ca.get(key)})")
    # every random op draws from the seed (a mixup partner and λ too), so the seed counts whenever one is on
    random_aug = any(bool(ca.get(key)) for key in ("crop_padding", "flip", "jitter", "mixup", "cutmix",
                                                    "resized_crop"))
    if random_aug and sa.get("seed") != ca.get("seed"):
        out.append(f"augmentation seed (store {sa.get('seed')}, recipe {ca.get('seed')})")
    st, ct = stored.get("teachers"), current.get("teachers")
    if ct is not None and st is not None:
        if len(st) != len(ct):
            out.append(f"number of teachers (store {len(st)}, recipe {len(ct)})")
        for i, (s, c) in enumerate(zip(st, ct, strict=False)):  # a count difference is reported above
            if s["name"] != c["name"]:
                out.append(f"teacher {i} model (store '{s['name']}', recipe '{c['name']}')")
            elif s["params"] != c["params"]:
                out.append(f"teacher {i} params (store {s['params']}, recipe {c['params']})")
            if "input" in s and s.get("input") != c.get("input"):  # stores written before named inputs lack it
                out.append(f"teacher {i} input (store {s.get('input')}, recipe {c.get('input')})")
            if s["sha256"] != c["sha256"]:
                out.append(f"teacher {i} weights (store sha256 {_short(s['sha256'])}, recipe {_short(c['sha256'])} "
                           f"from {c['checkpoint']})")
        if len(ct) > 1 and stored["combine"] != current["combine"]:
            out.append(f"teacher combine (store {stored['combine']}, recipe {current['combine']})")
    return out
