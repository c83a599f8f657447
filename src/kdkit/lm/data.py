"""Language-model data: a corpus's documents split into training and held-out documents, tokenised, joined with
``<eos>`` into one token stream per split and cut into packed blocks of ``block`` + 1 tokens (the GPT-2 recipe).

Datasets (``data.name``; see :mod:`kdkit.lm.corpora`): ``lee_background``, ``enwiki_excerpt``, ``hamlet`` and
``textfile:PATH``. Parameters (``data.params``): ``tokenizer`` (a tokenizer folder or ``hf:PATH``; default: the first
``hf:`` teacher, else the ``hf:`` student), ``block`` (T, tokens a model sees per row; default 128), ``max_docs``
(read only the first documents). ``data.val_fraction`` of the *documents* (drawn with ``data.split_seed``) is held out,
so no held-out text is ever trained on; ``data.train_limit`` keeps the first blocks of the training stream.

Batches (the convention of :mod:`kdkit.lm`: a token is a sample): ``{"input": (B, T) int64 ids, "target": (B·T,)
int64 next-token ids (-1: not counted), "index": (B,) block positions, "view": (B,) zeros}``. Block i holds stream
tokens ``[i·T, i·T + T]``, so every token of the stream is predicted exactly once per epoch.

For :class:`kdkit.data.RunData` an LM run reports ``num_classes = len(tokenizer)`` (the vocabulary, V),
``in_channels = 1`` and ``image_size = T``; mean/std are the identity (ids are never normalised).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kdkit.data.loader import EpochLoader
from kdkit.data.run import RunData
from kdkit.data.sources import resolve_dataset
from kdkit.errors import ConfigError, DataError
from kdkit.lm.corpora import CORPORA, read_corpus
from kdkit.lm.store import open_token_store_teacher
from kdkit.lm.tokenizer import vocabulary_difference
from kdkit.registry import DATASETS
from kdkit.text.tokenizers import load_tokenizer
from kdkit.types import Batch

DEFAULT_BLOCK = 128


@dataclass
class LMData:
    """Packed token blocks of one split.

    Attributes:
        name: the corpus (for messages).
        blocks: (N, T + 1) int64; row i's first T tokens are the input, its last T the targets.
        tokenizer: the tokenizer's name.
        vocab_size: V = len(tokenizer).
        pad_token_id: the tokenizer's padding id.
        eos_token_id: the document separator.
    """

    name: str
    blocks: Tensor
    tokenizer: str
    vocab_size: int
    pad_token_id: int
    eos_token_id: int

    def __len__(self) -> int:
        return int(self.blocks.shape[0])

    @property
    def targets(self) -> Tensor:
        """(N, T) next-token ids (``len(targets)`` is the number of blocks, as for any dataset)."""
        return self.blocks[:, 1:]

    @property
    def block(self) -> int:
        return int(self.blocks.shape[1] - 1)

    @property
    def tokens(self) -> int:
        """Predicted tokens in this split."""
        return int(self.blocks.shape[0] * (self.blocks.shape[1] - 1))

    def subset(self, idx: Tensor) -> LMData:
        return LMData(self.name, self.blocks[torch.as_tensor(idx, dtype=torch.int64)], self.tokenizer,
                      self.vocab_size, self.pad_token_id, self.eos_token_id)


def split_documents(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) document positions: ``round(n·val_fraction)`` (at least 1) documents drawn with ``seed``."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must lie in (0, 1) for a language-model corpus, got {val_fraction}")
    if n < 2:
        raise DataError(f"a language-model corpus needs at least 2 documents to hold one out, got {n}")
    k = min(n - 1, max(1, round(n * val_fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    held = sorted(perm[:k])
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], held


def pack(docs: list[str], tok: Any, block: int) -> Tensor:
    """Tokenise ``docs``, join them with ``<eos>`` (also in front of the first) and cut (N, block + 1) rows."""
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.pad_token_id
    ids: list[int] = []
    for enc in tok(list(docs), add_special_tokens=False)["input_ids"]:
        ids.append(eos)
        ids.extend(enc)
    stream = torch.tensor(ids, dtype=torch.int64)
    n = (stream.numel() - 1) // block
    if n < 1:
        raise DataError(f"the text holds {stream.numel()} tokens, fewer than one block of {block} + 1; lower "
                        f"data.params.block")
    # rows overlap by one token: row i = stream[i*block : i*block + block + 1]
    return stream[: n * block + 1].unfold(0, block + 1, block).contiguous()


def load_lm_split(name: str, tokenizer: str, block: int = DEFAULT_BLOCK, val_fraction: float = 0.1,
                  split_seed: int = 0, max_docs: int | None = None) -> tuple[LMData, LMData, dict[str, Any]]:
    """(train, held-out, split record) of corpus ``name`` (``lee_background`` ... or ``textfile:PATH``)."""
    if not isinstance(block, int) or isinstance(block, bool) or block < 2:
        raise ConfigError(f"data.params.block must be an integer >= 2, got {block!r}")
    kind, _, path = name.partition(":")
    docs = read_corpus(kind, path or None, max_docs)
    tr, va = split_documents(len(docs), val_fraction, split_seed)
    tok = load_tokenizer(tokenizer)
    parts = []
    for which, idx in (("training", tr), ("held-out", va)):
        try:
            blocks = pack([docs[i] for i in idx], tok, block)
        except DataError as err:
            raise DataError(f"dataset '{name}', {which} documents: {err}") from None
        parts.append(LMData(name, blocks, tokenizer, len(tok), int(tok.pad_token_id), int(tok.eos_token_id
                                                                                           or tok.pad_token_id)))
    split = {"source": name, "val_fraction": val_fraction, "split_seed": split_seed, "train_docs": tr,
             "val_docs": va, "tokenizer": tokenizer, "block": block}
    return parts[0], parts[1], split


class LMBatchLoader(EpochLoader):
    """Batches of packed blocks (see the module docstring); the interface of :class:`kdkit.data.BatchLoader`."""

    def __init__(self, data: LMData, batch_size: int, shuffle: bool, seed: int, drop_last: bool = False,
                 num_shards: int = 1, shard: int = 0, device: torch.device | str | None = None) -> None:
        super().__init__(data.name, len(data), None, batch_size, shuffle, seed, drop_last, num_shards, shard,
                         None, device)
        self.data = data

    def default_view(self, epoch: int) -> int:
        return 0  # no augmentation

    def _make_batch(self, pos: Tensor, view: int) -> Batch:
        rows = self.data.blocks[self.indices[pos]]
        batch = {"input": rows[:, :-1].contiguous(), "target": rows[:, 1:].reshape(-1).contiguous(),
                 "index": pos.clone(), "view": torch.full_like(pos, view)}
        if self.device is not None:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        return batch


def _default_tokenizer(recipe: Any) -> str:
    for spec in list(recipe.teachers) + [recipe.student]:
        if spec.name.startswith("hf:"):
            return spec.name
    raise ConfigError("data.params.tokenizer is required when no model is an hf: model (e.g. tokenizer: "
                      "runs/lm/tokenizer, written by `kdkit lm-tokenizer`)")


def check_model_tokenizers(recipe: Any, tokenizer: str) -> None:
    """Every ``hf:`` model must read the data's token ids: the same vocabulary, or a refusal naming the difference."""
    ref = load_tokenizer(tokenizer)
    specs = [("student", recipe.student)] + [(f"teachers.{i}", t) for i, t in enumerate(recipe.teachers)]
    uld = any(t.name == "lm_uld" for t in recipe.terms)
    for field_name, spec in specs:
        if not spec.name.startswith("hf:"):
            continue
        other = spec.params.get("input_tokenizer")
        if other is not None and field_name != "student":  # a cross-tokenizer teacher (kdkit.lm.crosstok)
            if not uld:
                raise ConfigError(f"{field_name}.params.input_tokenizer: a teacher with its own tokenizer is compared "
                                  f"only by the lm_uld term; add {{name: lm_uld}} to terms, or drop input_tokenizer")
            diff = vocabulary_difference(load_tokenizer(str(other)), ref)
            if diff is not None:
                raise ConfigError(f"{field_name}.params.input_tokenizer '{other}' is not data.params.tokenizer "
                                  f"'{tokenizer}' ({diff}); name the data's tokenizer there")
            continue
        diff = vocabulary_difference(load_tokenizer(spec.name), ref)
        if diff is not None:
            hint = (f"; or distil across tokenizers with the lm_uld term and {field_name}.params.input_tokenizer: "
                    f"{tokenizer}") if field_name != "student" else ""
            raise ConfigError(f"{field_name} '{spec.name}' uses another tokenizer than data.params.tokenizer "
                              f"'{tokenizer}' ({diff}); teacher, student and data must share one tokenizer{hint}")


def build_lm_data(recipe: Any, num_shards: int = 1, shard: int = 0) -> RunData:
    """The ``run_data`` builder of the LM corpora: :class:`kdkit.data.RunData` of packed blocks."""
    d = recipe.data
    if d.val:
        raise ConfigError("data.val: a language-model corpus holds out data.val_fraction of its own documents; "
                          "drop data.val (or use textfile:PATH for another corpus)")
    if d.augment.crop_padding or d.augment.flip:
        raise ConfigError("data.augment (crop_padding, flip) applies to images; drop it for text data")
    params = dict(d.params)
    tokenizer = str(params.pop("tokenizer", None) or _default_tokenizer(recipe))
    block = params.pop("block", DEFAULT_BLOCK)
    max_docs = params.pop("max_docs", None)
    if params:
        raise ConfigError(f"data.params {sorted(params)} unknown for corpus '{d.name}'; allowed: tokenizer, block, "
                          f"max_docs")
    check_model_tokenizers(recipe, tokenizer)
    entry, path = resolve_dataset(d.name)  # a bare path to a .txt file is textfile:PATH
    name = entry.name if path is None else f"{entry.name}:{path}"
    train, val, split = load_lm_split(name, tokenizer, block, d.val_fraction, d.split_seed, max_docs)
    if d.train_limit is not None and d.train_limit < len(train):
        train = train.subset(torch.arange(d.train_limit))
        split["train_limit"] = d.train_limit
    split.update(train_tokens=train.tokens, val_tokens=val.tokens)
    train_loader = LMBatchLoader(train, d.batch_size, shuffle=True, seed=recipe.seed, num_shards=num_shards,
                                 shard=shard)
    val_loader = LMBatchLoader(val, d.eval_batch_size, shuffle=False, seed=recipe.seed)
    return RunData(train, val, train_loader, val_loader, None, train.vocab_size, 1, int(block), [0.0], [1.0], [],
                   split, input_shape=(int(block),), input_dtype="int64")


def _corpus(kind: str) -> Any:
    def load(path: str | None = None, tokenizer: str | None = None, block: int = DEFAULT_BLOCK,
             val_fraction: float = 0.1, split_seed: int = 0, max_docs: int | None = None) -> LMData:
        if tokenizer is None:
            raise ConfigError(f"dataset '{kind}' needs tokenizer=FOLDER (a tokenizer folder or hf:PATH)")
        return load_lm_split(kind if path is None else f"{kind}:{path}", tokenizer, block, val_fraction,
                             split_seed, max_docs)[0]

    load.__name__ = f"load_{kind}"
    return load


_WHAT = {"lee_background": "300 news documents (gensim test data), for language models (text extra)",
         "enwiki_excerpt": "a Wikipedia excerpt, ~6 M characters (gensim test data), for language models (text extra)",
         "hamlet": "Shakespeare's Hamlet (scattertext data), for language models (text extra)"}
for _name in CORPORA:
    DATASETS.add(_name, _corpus(_name), _WHAT[_name], run_data=build_lm_data, task="causal_lm",
                 store_teacher=open_token_store_teacher, cache_command="lm-cache")
DATASETS.add("textfile", _corpus("textfile"), "textfile:PATH, your own UTF-8 text for a language model (passages "
             "separated by blank lines; text extra)", run_data=build_lm_data, takes_path=True, task="causal_lm",
             store_teacher=open_token_store_teacher, cache_command="lm-cache",
             detect_priority=0, detect=lambda p: p.is_file() and p.suffix.lower() == ".txt")

__all__ = ["LMBatchLoader", "LMData", "build_lm_data", "load_lm_split", "pack", "split_documents"]
