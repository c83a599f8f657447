"""Evaluate a saved text student on a text source (the text counterpart of :func:`kdkit.api.evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdkit.data.split import evaluation_subset
from kdkit.engine.evaluate import evaluate as run_eval
from kdkit.errors import ConfigError
from kdkit.models.factory import load_model
from kdkit.text.batches import TextBatchLoader
from kdkit.text.data import load_text


def _tokenizer_of(meta: dict[str, Any]) -> str:
    model = meta.get("model", {})
    name = str(model.get("name", ""))
    if name.startswith("hf:"):
        return name
    tok = model.get("params", {}).get("tokenizer")
    if tok:
        return str(tok)
    if name.startswith("textnn:"):
        return "hf:minilm"
    raise ConfigError(f"checkpoint model '{name}' is not a text model; use kdkit.evaluate for images")


def evaluate_text(checkpoint: str | Path, data: str = "rotten_tomatoes", split: str = "val",
                  val_fraction: float = 0.2, split_seed: int = 0, batch_size: int = 128,
                  params: dict[str, Any] | None = None) -> dict[str, float]:
    """Accuracy of a saved text student (a weights file or run directory) on ``data``.

    ``split="val"`` re-creates the recipe's stratified held-out split (same ``val_fraction`` and ``split_seed``),
    ``"all"`` uses every sample. The tokenizer and ``max_length`` come from the checkpoint's metadata unless
    ``params`` sets them.

    Returns:
        ``{"top1", "loss", "n"}`` (and ``"top5"`` for single-label data), as :func:`kdkit.engine.evaluate`.
    """

    model, meta = load_model(checkpoint)
    p = dict(params or {})
    tokenizer = str(p.pop("tokenizer", None) or _tokenizer_of(meta))
    max_length = int(p.pop("max_length", None) or meta.get("image_size", 64))
    p.pop("bucket", None)
    text = load_text(data, tokenizer=tokenizer, max_length=max_length, **p)
    if text.num_classes != meta["num_classes"]:
        raise ConfigError(f"data '{data}' has {text.num_classes} classes, the checkpoint predicts "
                          f"{meta['num_classes']}")
    if meta.get("classes") and list(meta["classes"]) != text.classes:
        raise ConfigError(f"data '{data}' has classes {text.classes[:6]}, the checkpoint {meta['classes'][:6]}; "
                          f"pass params={{'classes': [...]}} in the checkpoint's order")
    text = evaluation_subset(text, split, val_fraction, split_seed)
    loader = TextBatchLoader(text, None, batch_size, shuffle=False, seed=0)
    return run_eval(model, loader)


__all__ = ["evaluate_text"]
