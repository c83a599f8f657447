"""``kdkit cache RECIPE --from-logits FILE``: a teacher that exists only as a table of logits (another framework, a
model behind an API) becomes a soft-label store, checked against the recipe's dataset.

The file gives one row of K raw logits per sample of the recipe's dataset (``data.name``, in the order kdkit reads it
-- :func:`kdkit.data.load_source`), either

* as a plain (N, K) array in dataset order (N = every sample of the dataset, before kdkit's train/val split), or
* with an ``index`` array: row r holds the logits of dataset sample ``index[r]`` (any order, any subset that covers
  the recipe's training samples; rows of other samples are ignored).

Formats: ``.npy`` (the (N, K) array), ``.npz`` or ``.safetensors`` (arrays ``logits`` and optionally ``index``),
``.csv`` (K numbers per line; an optional header line, whose first column named ``index`` makes that column the
index). Nothing is unpickled.

Checked, each failing with one line that names the file: the row count (or the index: integers in range, unique,
covering every training sample), the class count K, finite values within float16's range. The teacher's agreement with
the training labels is printed and recorded: a table in another order than the dataset shows up as chance accuracy.

The logits are of the plain samples, so the recipe must not augment (``data.augment`` off); the store has one view.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from safetensors.numpy import load_file

from kdkit.data.run import RunData, build_data
from kdkit.errors import ConfigError, DataError
from kdkit.recipe import Recipe
from kdkit.registry import SCHEMES
from kdkit.softlabels.cache import default_store_path
from kdkit.softlabels.identity import dataset_size, run_identity, training_source_index
from kdkit.softlabels.store import (
    FORMAT,
    FP16_MAX,
    SAMPLES_SPEC,
    VERSION,
    SoftLabelStore,
    bytes_per_row,
    encode_topk,
    human_bytes,
    write_samples,
)

_CHUNK = 4096  # rows encoded at a time (bounds the float64 working copy)


@dataclass
class ImportResult:
    """What :func:`import_logits` wrote.

    Attributes:
        path: the store directory.
        manifest: its manifest.
        label_agreement: top-1 agreement (%) of the imported logits with the training labels (None when unlabelled).
        file_bytes: size of the arrays.
    """

    path: Path
    manifest: dict[str, Any]
    label_agreement: float | None
    file_bytes: int


def read_logits_file(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(logits (N, K), index (N,) or None) from a ``.npy``, ``.npz``, ``.safetensors`` or ``.csv`` file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"--from-logits '{p}': file not found")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(p, allow_pickle=False), None
        if suffix in (".npz", ".safetensors"):
            if suffix == ".npz":
                with np.load(p, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            else:
                arrays = load_file(str(p))
            if "logits" not in arrays:
                raise DataError(f"--from-logits '{p}' holds arrays {sorted(arrays)}; name the (N, K) array 'logits' "
                                f"(and the dataset index of each row 'index')")
            return arrays["logits"], arrays.get("index")
        if suffix == ".csv":
            return _read_csv(p)
    except DataError:
        raise
    except Exception as err:  # numpy/safetensors raise many types for a damaged or pickled file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise DataError(f"--from-logits '{p}' could not be read ({type(err).__name__}: {first})") from None
    raise DataError(f"--from-logits '{p}' has an unknown extension; use .npy, .npz, .safetensors or .csv")


def _read_csv(p: Path) -> tuple[np.ndarray, np.ndarray | None]:
    with open(p, encoding="utf-8") as f:
        first = f.readline()
    cells = [c.strip().strip('"').lower() for c in first.split(",")]
    header = any(c and not _is_number(c) for c in cells)
    table = np.loadtxt(p, delimiter=",", skiprows=1 if header else 0, dtype=np.float64, ndmin=2)
    if header and cells[0] == "index":
        index = table[:, 0]
        if not np.all(index == np.round(index)):
            raise DataError(f"--from-logits '{p}': the 'index' column holds non-integers")
        return table[:, 1:], index.astype(np.int64)
    return table, None


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def rows_for_training(logits: np.ndarray, index: np.ndarray | None, data: RunData, name: str) -> np.ndarray:
    """Validate ``logits`` (and ``index``) against the recipe's data and return the (N_train, K) float64 rows in
    training-split order. ``name`` names the source in errors."""
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise DataError(f"{name}: logits must be a 2-D (N, K) array, got shape {tuple(logits.shape)}")
    if not (np.issubdtype(logits.dtype, np.floating) or np.issubdtype(logits.dtype, np.integer)):
        raise DataError(f"{name}: logits must be numbers, got dtype {logits.dtype}")
    rows, k = logits.shape
    if k != data.num_classes:
        raise DataError(f"{name}: logits have {k} classes, the dataset has {data.num_classes}; give one column per "
                        f"class in the dataset's class order ({', '.join(map(str, data.classes[:5]))}"
                        f"{', ...' if data.num_classes > 5 else ''})")
    n_src = dataset_size(data)
    if index is None:
        if rows != n_src:
            raise DataError(f"{name}: {rows} rows of logits, the dataset has {n_src} samples; give one row per sample "
                            f"in dataset order, or an 'index' array with the dataset index of each row")
        pos = np.arange(rows)
    else:
        index = np.asarray(index)
        if index.ndim != 1 or len(index) != rows:
            raise DataError(f"{name}: 'index' must be 1-D with one entry per row ({rows}), got shape "
                            f"{tuple(index.shape)}")
        if not np.issubdtype(index.dtype, np.integer):
            raise DataError(f"{name}: 'index' must hold integers, got dtype {index.dtype}")
        bad = index[(index < 0) | (index >= n_src)]
        if len(bad):
            raise DataError(f"{name}: 'index' holds {len(bad)} value(s) outside 0..{n_src - 1} (e.g. {int(bad[0])}); "
                            f"the dataset has {n_src} samples")
        uniq, counts = np.unique(index, return_counts=True)
        if len(uniq) != rows:
            raise DataError(f"{name}: 'index' repeats dataset index {int(uniq[counts > 1][0])}; give each sample once")
        pos = np.full(n_src, -1, dtype=np.int64)
        pos[index] = np.arange(rows)
    # Every row is checked, used or not: a NaN anywhere means the export that wrote the table went wrong.
    finite = np.isfinite(logits)
    if not finite.all():
        r = int(np.argwhere(~finite)[0][0])
        sample = r if index is None else int(index[r])
        raise DataError(f"{name}: non-finite logits (inf/NaN) in row {r} (dataset sample {sample}); every value must "
                        f"be a finite number")
    peak = float(np.abs(logits).max())
    if peak > FP16_MAX:
        raise DataError(f"{name}: logits reach {peak:.4g}, beyond float16's range (±65504) that the store keeps; "
                        f"subtract each row's maximum first (softmax is unchanged)")
    wanted = training_source_index(data)
    at = pos[wanted]
    if np.any(at < 0):
        miss = wanted[at < 0]
        raise DataError(f"{name}: no logits for {len(miss)} of the recipe's {len(wanted)} training samples (dataset "
                        f"indices {', '.join(map(str, miss[:5].tolist()))}{', ...' if len(miss) > 5 else ''})")
    return np.asarray(logits[at], dtype=np.float64)


def import_logits(recipe: Recipe, logits: str | Path | np.ndarray | torch.Tensor, index: Any = None, topk: int = 10,
                  out: str | Path | None = None, *, overwrite: bool = False, quiet: bool = False,
                  console: Console | None = None, source: dict[str, Any] | None = None) -> ImportResult:
    """Write a soft-label store from a table of teacher logits, checked against ``recipe``'s dataset.

    Args:
        recipe: an offline distillation recipe whose data does not augment (its ``teachers`` may be empty).
        logits: a file (see the module docstring) or an (N, K) array / tensor.
        index: with an array: the (N,) dataset index of each row (None: rows are in dataset order). With a file the
            index comes from the file.
        topk: k, classes kept per sample (clipped to K); with k = K the store is exact up to fp16 rounding.
        out: the store directory (default: the recipe's ``soft_labels``, else ``OUTPUT_DIR/NAME-softlabels``).
        overwrite: replace an existing store.
        quiet: no summary.
        console: where the summary goes (default: stderr).
        source: recorded in the manifest's ``source`` instead of ``{"kind": "logits-array"}`` (an array only; e.g.
            :func:`kdkit.softlabels.crossfit.cross_fit` records its teachers there).

    Returns:
        :class:`ImportResult`.
    """
    console = console or Console(stderr=True)
    if topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {topk}")
    if not getattr(SCHEMES.get(recipe.scheme.name), "accepts_store", False):
        raise ConfigError(f"kdkit cache --from-logits: scheme '{recipe.scheme.name}' does not read a soft-label store; "
                          f"use the offline scheme")
    aug = recipe.data.augment
    if aug.crop_padding or aug.flip:
        raise ConfigError(f"kdkit cache --from-logits: the logits are of the plain samples, but the recipe augments "
                          f"(data.augment: crop_padding={aug.crop_padding}, flip={aug.flip}); turn it off with --set "
                          f"data.augment.crop_padding=0 --set data.augment.flip=false")
    data = build_data(recipe)
    if not hasattr(data.train, "images") or data.augment is None or not hasattr(data.train_loader, "view_fn"):
        raise ConfigError(f"kdkit cache --from-logits: data '{recipe.data.name}' is not image data read by kdkit's "
                          f"BatchLoader; the soft-label store supports image recipes")
    if isinstance(logits, (str, Path)):
        if index is not None:
            raise ConfigError("import_logits: give the index inside the file (an 'index' array or column), not beside "
                              "it")
        name, source = f"--from-logits '{logits}'", {"kind": "logits-file", "file": str(logits),
                                                     "sha256": _file_sha256(Path(logits))}
        table, index = read_logits_file(logits)
    else:
        table = logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        name, source = "import_logits", dict(source or {"kind": "logits-array"})
    rows = rows_for_training(table, index, data, name)
    n, num_classes = rows.shape
    k = min(topk, num_classes)
    targets = data.train.targets
    agreement = None
    if targets.ndim == 1 and bool((targets >= 0).all()):
        agreement = round(float((rows.argmax(1) == targets.numpy()).mean() * 100), 2)
    path = Path(out) if out is not None else default_store_path(recipe)
    manifest = {
        "format": FORMAT, "version": VERSION, "complete": False,
        "views": 1, "topk": k, "num_classes": num_classes, "num_samples": n,
        "chunk_size": n, "chunks": 1,
        "arrays": SoftLabelStore.array_specs(1, n, k, num_classes),
        "samples": SAMPLES_SPEC | {"shape": [n]},
        "bytes_per_sample_view": bytes_per_row(k, num_classes),
        "reconstruction": "logits: stored value for the top-k classes, `tail` (log-mean-exp of the other K-k "
                          "logits) for every other class",
        "identity": run_identity(recipe, data, None),
        "source": dict(source, label_agreement=agreement),
        "recipe": {"name": recipe.name, "seed": recipe.seed, "soft_labels": recipe.soft_labels},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    if path.exists() and not overwrite:
        raise ConfigError(f"'{path}' already exists; pass --overwrite to replace it, or choose another --out")
    store = SoftLabelStore.create(path, manifest, overwrite=overwrite)
    for s in range(0, n, _CHUNK):
        store.write(0, s, *encode_topk(torch.from_numpy(rows[s:s + _CHUNK]), k))
    write_samples(path, training_source_index(data))
    store.commit_chunks([0])
    store.finalize({"seconds": 0.0})
    size = store.file_bytes()
    if not quiet:
        console.print(f"[bold green]stored[/] {path}: imported logits of {n} training samples, top-{k} of "
                      f"{num_classes} classes, {human_bytes(size)}; distil with `soft_labels: {path}` in the recipe")
        if agreement is not None:
            chance = 100.0 / num_classes
            console.print(f"the imported teacher agrees with the training labels on {agreement:.1f}% of samples "
                          f"(chance {chance:.1f}%)")
            if agreement < 2 * chance:
                console.print("[yellow]warning:[/] that is near chance: are the rows in the dataset's order (or is "
                              "the 'index' right)?")
    return ImportResult(path, store.manifest, agreement, size)


def _file_sha256(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"--from-logits '{path}': file not found")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


__all__ = ["ImportResult", "import_logits", "read_logits_file", "rows_for_training"]
