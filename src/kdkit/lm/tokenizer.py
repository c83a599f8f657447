"""Tokenizers for the offline language models: a byte-level BPE trained by Hugging Face ``tokenizers`` on a corpus's
*training* documents, saved as a ``transformers`` tokenizer folder (``AutoTokenizer`` loads it back, and so does every
``tokenizer:``/``hf:`` name in kdkit), and the vocabulary checks between teacher, student and data.

Special tokens: ``<pad>`` (id 0) pads batches and is masked out of attention, ``<eos>`` (id 1) separates documents in
the packed token stream (also BOS). A byte-level BPE never meets an unknown character.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdkit.errors import ConfigError

PAD, EOS = "<pad>", "<eos>"


def train_tokenizer(docs: Sequence[str], out: str | Path, vocab_size: int = 2048, min_frequency: int = 2) -> Path:
    """Train a byte-level BPE on ``docs`` and save it to ``out`` in ``transformers`` format.

    Args:
        docs: the training documents (never the held-out ones).
        out: folder to write (``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``).
        vocab_size: target vocabulary, special tokens and the 256 byte symbols included.
        min_frequency: a merge needs this many occurrences.

    Returns:
        ``out`` as a Path.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not isinstance(vocab_size, int) or vocab_size < 300:
        raise ConfigError(f"vocab_size must be an integer >= 300 (256 bytes + specials + merges), got {vocab_size!r}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[PAD, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(docs), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=EOS)
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(path))
    return path


def vocabulary_difference(a: Any, b: Any) -> str | None:
    """None when tokenizers ``a`` and ``b`` map every token to the same id; else what differs, in a few words."""
    va, vb = a.get_vocab(), b.get_vocab()
    if va == vb:
        return None
    if len(va) != len(vb):
        return f"{len(va)} vs {len(vb)} tokens"
    diff = sorted(set(va.items()) ^ set(vb.items()), key=lambda kv: kv[1])
    tok, idx = diff[0]
    return f"same size {len(va)}, but e.g. token {tok!r} has id {idx} in only one of them"


__all__ = ["EOS", "PAD", "train_tokenizer", "vocabulary_difference"]
