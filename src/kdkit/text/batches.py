"""Tokenised text sets (:class:`TextData`) and their dynamic-padding batches (:class:`TextBatchLoader`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from kdkit.data.loader import EpochLoader, epoch_seed
from kdkit.types import Batch


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
