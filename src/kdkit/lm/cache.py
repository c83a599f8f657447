"""``kdkit lm-cache`` (and ``kdkit cache`` on a language-model recipe): run a recipe's teacher once over its training
blocks and write the token logit store (:mod:`kdkit.lm.store`) that ``soft_labels: PATH`` then reads, so that
distillation runs no teacher forward.

The store is checked against the recipe when a run opens it (:func:`kdkit.lm.store.open_token_store_teacher`): the
training blocks' count, length and SHA-256, the vocabulary and the teacher's weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdkit.builder import frozen_teacher_models
from kdkit.data.run import build_data
from kdkit.errors import ConfigError
from kdkit.lm.store import MANIFEST, TokenStore, store_mismatch, write_token_store
from kdkit.recipe import Recipe, as_recipe
from kdkit.utils import seed_everything


def default_token_store_path(recipe: Recipe) -> Path:
    """``recipe.soft_labels`` when set (the same recipe caches and then distils), else OUTPUT_DIR/NAME-tokens."""
    return Path(recipe.soft_labels) if recipe.soft_labels else Path(recipe.output_dir) / f"{recipe.name}-tokens"


def cache_lm_recipe(recipe: Recipe | str | Path | dict[str, Any], k: int = 32, out: str | Path | None = None, *,
                    overrides: list[str] | None = None, batch_size: int | None = None, compress: bool = False,
                    sample: bool = False, proposal_temperature: float = 1.0, overwrite: bool = False) -> TokenStore:
    """Write the token store of a language-model recipe's teacher over the recipe's training blocks.

    Args:
        recipe: a recipe with one teacher and a language-model dataset (a :class:`Recipe`, YAML path or dict).
        k: top-k log-probabilities per token (or, with ``sample``, draws per token).
        out: the store directory (default :func:`default_token_store_path`).
        overrides: ``key.path=value`` recipe overrides.
        batch_size: blocks per teacher forward (default ``data.eval_batch_size``).
        compress: zlib per block (lossless).
        sample: store k importance-sampled token ids per token instead of the top k (unbiased forward KL,
            :func:`kdkit.losses.tokens.sampled_forward_kl`).
        proposal_temperature: with ``sample``, draw from softmax(log p / this) (1: the teacher itself).
        overwrite: replace an existing store made from something else.

    Returns:
        The opened store. An existing complete store made from the same tokens and teacher is kept as it is.
    """
    recipe = as_recipe(recipe, overrides)
    if not recipe.teachers:
        raise ConfigError("kdkit lm-cache: the recipe has no `teachers:`; the store holds a teacher's outputs")
    if len(recipe.teachers) != 1:
        raise ConfigError(f"kdkit lm-cache: a token store holds one teacher; the recipe lists {len(recipe.teachers)}")
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    seed_everything(recipe.seed)
    data = build_data(recipe)
    if getattr(data.train, "blocks", None) is None:
        raise ConfigError(f"kdkit lm-cache: data '{recipe.data.name}' is not a language-model corpus; use `kdkit "
                          f"cache` for classifiers")
    teacher = frozen_teacher_models(recipe, data)[0]
    if recipe.teachers[0].params.get("input_tokenizer") is not None:
        raise ConfigError("kdkit lm-cache: teachers.0 reads its own tokenizer (params.input_tokenizer); a token store "
                          "holds distributions over the data's vocabulary, so run that teacher online (drop "
                          "soft_labels)")
    path = Path(out) if out is not None else default_token_store_path(recipe)
    if (path / MANIFEST).exists():
        try:
            old = TokenStore.open(path)
            diffs = store_mismatch(old, data.train, teacher)
        except ConfigError as err:
            old, diffs = None, [str(err)]
        if old is not None and not diffs and not overwrite:
            return old
        if not overwrite:
            raise ConfigError(f"token store '{path}' exists and was made from something else ({'; '.join(diffs)}); "
                              f"add --overwrite to replace it")
    return write_token_store(teacher, data.train, path, k=k, batch_size=batch_size or recipe.data.eval_batch_size,
                             compress=compress, sample=sample, proposal_temperature=proposal_temperature,
                             seed=recipe.seed, extra={"recipe": recipe.name, "teacher": recipe.teachers[0].name})


__all__ = ["cache_lm_recipe", "default_token_store_path"]
