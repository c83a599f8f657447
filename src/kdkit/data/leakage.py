"""Did a teacher train on the student's validation images?

A student is tuned and judged on a validation split cut from the training images (``data.val_fraction``). A teacher
trained on the whole training set has seen those images and fits them far better than new ones; a student that copies
the teacher inherits part of that, so its validation score over-states how it does on images nobody saw. Measured in
docs/benchmarks.md ("A teacher assistant for the MLP at 60 epochs"): an MLP teacher that had trained on the 6,000
validation images lifted its MLP student's validation score by up to 0.61 points over the same teacher trained without
them, while on the test split the student gained 0.12 where validation had promised 0.40.

Which images a teacher trained on is read from its kdkit run directory (``split.json``), in the dataset's own indices,
so the check needs a teacher given as a run directory on the student's ``data.name``; weights files, remote teachers
and a directory whose ``split.json`` is not a kdkit split record are not checked (the check is advice: it never stops
a run).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def split_train_indices(split: dict[str, Any]) -> tuple[str | None, np.ndarray]:
    """The dataset and the dataset indices of the images a run trained on, from its ``split.json`` record.

    Args:
        split: a run's split record: ``{"source", "train_idx", ...}`` for a split cut from one dataset, or
            ``{"train", "n_train", ...}`` for a separate training part (its first ``n_train`` images); either with
            ``train_limit_positions`` when ``data.train_limit`` kept a subset.

    Returns:
        (dataset name or None, (N_train,) int64 indices).
    """
    source = split.get("source", split.get("train"))
    idx = np.asarray(split["train_idx"], dtype=np.int64) if "train_idx" in split else \
        np.arange(int(split["n_train"]), dtype=np.int64)
    if "train_limit_positions" in split:
        idx = idx[np.asarray(split["train_limit_positions"], dtype=np.int64)]
    return source, idx


def run_train_indices(run: str | Path) -> tuple[str | None, np.ndarray] | None:
    """:func:`split_train_indices` of a kdkit run directory; None when it holds no ``split.json``."""
    p = Path(run) / "split.json"
    if not p.is_file():
        return None
    return split_train_indices(json.loads(p.read_text()))


def teachers_on_validation(split: dict[str, Any], teacher_runs: list[str | Path | None]) -> list[dict[str, Any]]:
    """The teachers that trained on some of a run's validation images.

    Args:
        split: the student run's split record; only a validation part cut from the training dataset (``source`` and
            ``val_idx``) is checked.
        teacher_runs: each teacher's checkpoint (None, a weights file or a run directory), in the recipe's order.

    Returns:
        One record per teacher run that saw any: ``{"teacher": i, "run", "val_images_seen", "val_images"}``.
    """
    if "source" not in split or "val_idx" not in split:
        return []
    val = np.asarray(split["val_idx"], dtype=np.int64)
    seen = []
    for i, run in enumerate(teacher_runs):
        if run is None or not Path(run).is_dir():
            continue
        try:
            got = run_train_indices(run)
        except (ValueError, KeyError, TypeError, IndexError):  # not a kdkit split record: nothing to compare
            continue
        if got is None or got[0] != split["source"]:
            continue
        n = int(np.isin(val, got[1]).sum())
        if n:
            seen.append({"teacher": i, "run": str(run), "val_images_seen": n, "val_images": int(val.size)})
    return seen


def describe(seen: dict[str, Any]) -> str:
    """One line for a record of :func:`teachers_on_validation`."""
    return (f"teacher {seen['teacher']} ('{seen['run']}') trained on {seen['val_images_seen']} of this run's "
            f"{seen['val_images']} validation images: validation scores will over-state the student (a teacher fits "
            f"its own training images more tightly); to tune on clean images, train the teacher with the same "
            f"data.val_fraction and data.split_seed as the student")
