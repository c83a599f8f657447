"""Held-out perplexity and next-token accuracy of a saved language model (a run directory, a weights file, or an
``hf:`` folder)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kdkit.engine.evaluate import evaluate as run_eval
from kdkit.errors import ConfigError
from kdkit.lm.data import DEFAULT_BLOCK, LMBatchLoader, load_lm_split
from kdkit.lm.models import CausalLM, build_causal_lm
from kdkit.models.factory import load_model
from kdkit.text.tokenizers import load_tokenizer


def perplexity_of(metrics: dict[str, float]) -> float:
    """exp(mean token cross-entropy) of an ``evaluate`` result (``loss`` is in nats per token)."""
    return math.exp(min(float(metrics["loss"]), 700.0))


def evaluate_lm(model: str | Path, data: str | None = None, tokenizer: str | None = None, block: int | None = None,
                val_fraction: float | None = None, split_seed: int | None = None, split: str = "val",
                batch_size: int = 64, max_docs: int | None = None) -> dict[str, float]:
    """Perplexity of a language model on a corpus's held-out documents (``split="val"``) or its training documents.

    ``model`` is a run directory or weights file written by kdkit (the data, tokenizer, block and split come from its
    metadata unless given), or ``hf:PATH`` (then ``data`` is required; the tokenizer is the folder's).

    Returns:
        ``{"perplexity", "loss" (nats/token), "top1" (next-token accuracy %), "top5", "n" (tokens)}``.
    """
    if str(model).startswith("hf:"):
        name = str(model)
        tok = tokenizer or name
        vocab = len(load_tokenizer(tok))
        net = build_causal_lm(name[3:], vocab, image_size=block or DEFAULT_BLOCK)
        d: dict[str, Any] = {"name": data, "params": {}}
    else:
        net, meta = load_model(model)
        d = dict(meta.get("data") or {})
        if not isinstance(net, CausalLM):
            raise ConfigError(f"'{model}' is not a causal language model ({meta.get('model', {}).get('name')}); use "
                              f"`kdkit eval` for classifiers")
    params = dict(d.get("params") or {})
    data = data or d.get("name")
    if not data:
        raise ConfigError("evaluate_lm: name the corpus (data=..., e.g. lee_background)")
    tok = tokenizer or params.get("tokenizer") or (str(model) if str(model).startswith("hf:") else None)
    if tok is None:
        raise ConfigError("evaluate_lm: the tokenizer is unknown; pass tokenizer=FOLDER")
    block = int(block or params.get("block") or DEFAULT_BLOCK)
    vf = float(val_fraction if val_fraction is not None else d.get("val_fraction", 0.1))
    seed = int(split_seed if split_seed is not None else d.get("split_seed", 0))
    train, val, _ = load_lm_split(data, str(tok), block, vf, seed, max_docs if max_docs is not None
                                  else params.get("max_docs"))
    if split not in ("val", "train"):
        raise ConfigError(f"split must be 'val' or 'train', got {split!r}")
    part = val if split == "val" else train
    if part.vocab_size != net.vocab_size:
        raise ConfigError(f"the tokenizer '{tok}' has {part.vocab_size} tokens, the model predicts {net.vocab_size}")
    metrics = run_eval(net, LMBatchLoader(part, batch_size, shuffle=False, seed=0))
    return dict(metrics, perplexity=perplexity_of(metrics))


__all__ = ["evaluate_lm", "perplexity_of"]
