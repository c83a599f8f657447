"""Contrastive representation distillation, CRD (Tian, Krishnan & Isola, ICLR 2020).

Pieces:

* :class:`CRDHead` — the embedding head ``g``: linear map to ``feat_dim`` then L2 normalisation (one for the student,
  one for the teacher; both are trained, the teacher *network* is not).
* :class:`MemoryBank` — two memories of size ``n_data × feat_dim`` (one of student, one of teacher embeddings, unit-norm
  rows, momentum 0.5), the negative sampler, and the normalising constants Z estimated once on the first batch.
* :func:`crd_nce_loss` — the NCE loss on (B, 1+N) scores (the paper's eq. 18 with ``P_n = 1/n_data``).
* :func:`crd_loss` — both directions (student anchored on the teacher memory and vice versa), then the bank update.

Published (RepDistiller/mdistiller CIFAR-100): ``feat_dim = 128``, ``N = 16384`` negatives, ``τ = 0.07``, momentum
0.5, weight β = 0.8 (CE weight 1; KD weight 0 for "CRD", 1 for "CRD+KD"), negatives drawn from *other classes*
("exact" mode) — pass the training labels to :class:`MemoryBank` for that.

The bank needs each sample's position in the training split (``batch["index"]``) and the split size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdkit.errors import ShapeError


def crd_nce_loss(x: Tensor, n_data: int, eps: float = 1e-7) -> Tensor:
    """NCE loss of CRD (Tian et al., ICLR 2020, eq. 18; RepDistiller ``ContrastLoss``).

    Column 0 of ``x`` holds the positive pair's score, columns 1..N the negatives', each already normalised,
    ``x = exp(v·v'/τ) / Z``. With the noise distribution ``P_n = 1/n_data`` and ``m = N``:

    ``L = −(1/B) Σ_i [ log x_i0/(x_i0 + m·P_n + ε) + Σ_{j≥1} log m·P_n/(x_ij + m·P_n + ε) ]``

    i.e. the posterior ``h = x/(x + m P_n)`` that a pair came from the data rather than the noise distribution is
    pushed to 1 for the positive and to 0 for the negatives.

    Args:
        x: (B, 1+N) positive scores (must be > 0).
        n_data: size of the training set the memory covers.
        eps: ε of the reference implementation.

    Returns:
        Scalar, summed over pairs and averaged over the batch.
    """
    if x.ndim != 2 or x.shape[1] < 2:
        raise ShapeError(f"crd_nce_loss expects (B, 1+N) scores with N >= 1, got {tuple(x.shape)}")
    m = x.shape[1] - 1
    mpn = m / float(n_data)
    pos, neg = x[:, 0], x[:, 1:]
    log_d1 = torch.log(pos / (pos + mpn + eps))
    log_d0 = torch.log(mpn / (neg + mpn + eps))
    return -(log_d1.sum() + log_d0.sum()) / x.shape[0]


class CRDHead(nn.Module):
    """Embedding head ``g(h) = normalize(W·flatten(h) + b)`` (RepDistiller ``Embed``).

    Args:
        dim_in: flattened input width (e.g. the penultimate embedding's D).
        feat_dim: output width (128 published).
    """

    def __init__(self, dim_in: int, feat_dim: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, feat_dim)

    def forward(self, h: Tensor) -> Tensor:
        return F.normalize(self.linear(h.flatten(1)), p=2, dim=1)


def _gather_rows(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Concatenate each (B_r, ...) tensor over the data-parallel processes, in rank order (shards may differ in B_r).
    Unchanged outside ``torch.distributed``."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    world = dist.get_world_size()
    n = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes_i = [int(s) for s in sizes]
    top = max(sizes_i)
    out = []
    for t in tensors:
        pad = t.new_zeros((top - t.shape[0], *t.shape[1:]))
        parts = [t.new_empty((top, *t.shape[1:])) for _ in range(world)]
        dist.all_gather(parts, torch.cat([t, pad]).contiguous())
        out.append(torch.cat([p[:k] for p, k in zip(parts, sizes_i, strict=True)]))
    return tuple(out)


class MemoryBank(nn.Module):
    """Two memories of past embeddings plus CRD's normalising constants (state of the CRD term, checkpointed).

    ``memory_s`` stores student embeddings, ``memory_t`` teacher embeddings, one unit-norm row per training sample.
    After each step row ``i`` of a batch becomes ``normalize(m·row + (1 − m)·v_i)`` (momentum ``m = 0.5``).
    ``z_s``/``z_t`` (−1 = not set) are set once, from the first batch, to ``mean(exp(v·v'/τ)) · n_data`` — the
    reference's Monte-Carlo estimate of the partition function — and kept fixed afterwards.

    Rows start uniform in ±√(3/feat_dim) (the reference's init, whose expected row norm is 1) and are normalised at
    once, so every row is unit-norm at all times.

    Args:
        n_data: number of training samples (``batch["index"]`` ranges over ``[0, n_data)``).
        feat_dim: embedding width.
        momentum: m.
        temperature: τ.
        labels: optional (n_data,) int64 training labels (−1 = unlabelled). With them, a labelled anchor's negatives
            are drawn from the other classes only (RepDistiller's default "exact" mode); an unlabelled anchor's, or
            any anchor's without labels, from every sample but itself.
        generator: optional generator for the initial memory.

    Under data parallelism every process updates its bank with the rows of *all* processes' shards (gathered in
    rank order), so the banks stay identical and cover every sample, as one process's bank would.
    """

    memory_s: Tensor
    memory_t: Tensor
    z_s: Tensor
    z_t: Tensor
    labels: Tensor

    def __init__(self, n_data: int, feat_dim: int = 128, momentum: float = 0.5, temperature: float = 0.07,
                 labels: Tensor | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if n_data < 2:
            raise ValueError(f"MemoryBank: n_data must be >= 2, got {n_data}")
        if not 0.0 <= momentum < 1.0 or temperature <= 0:
            raise ValueError(f"MemoryBank: need momentum in [0, 1) and temperature > 0, got {momentum}, {temperature}")
        self.n_data = int(n_data)
        self.feat_dim = int(feat_dim)
        self.momentum = float(momentum)
        self.temperature = float(temperature)
        stdv = (3.0 / feat_dim) ** 0.5
        for name in ("memory_s", "memory_t"):
            init = (torch.rand(n_data, feat_dim, generator=generator) * 2.0 - 1.0) * stdv
            self.register_buffer(name, F.normalize(init, p=2, dim=1))
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long)
            if labels.ndim != 1 or labels.shape[0] != n_data:
                raise ShapeError(f"MemoryBank: labels must be (n_data,) = ({n_data},) class indices, got "
                                 f"{tuple(labels.shape)}")
        else:
            labels = torch.empty(0, dtype=torch.long)
        self.register_buffer("labels", labels, persistent=False)
        # The negative sampler's tables (rebuilt from the labels, not checkpointed): sample ids sorted by label
        # (unlabelled -1 first), and per sample the start and size of its class's block in that order.
        order = torch.argsort(labels, stable=True) if labels.numel() else torch.empty(0, dtype=torch.long)
        start = torch.empty(0, dtype=torch.long)
        count = torch.empty(0, dtype=torch.long)
        n_unlabelled = int((labels < 0).sum())
        if labels.numel():
            classes, counts = torch.unique(labels[order], return_counts=True)
            starts = torch.cumsum(counts, 0) - counts
            pos = torch.searchsorted(classes, labels)
            start, count = starts[pos], counts[pos]
            n_labelled = n_data - n_unlabelled
            lonely = (labels >= 0) & (count >= n_labelled)
            if bool(lonely.any()):
                raise ValueError(f"MemoryBank: negatives are drawn from other classes, but every labelled training "
                                 f"sample has class {int(labels[lonely][0])}; CRD needs at least two classes")
        self.register_buffer("neg_order", order, persistent=False)
        self.register_buffer("neg_start", start, persistent=False)
        self.register_buffer("neg_count", count, persistent=False)
        self.n_unlabelled = n_unlabelled

    def sample_indices(self, index: Tensor, n_neg: int, generator: torch.Generator | None = None) -> Tensor:
        """(B, 1+N) memory rows to score: column 0 = the sample itself, columns 1..N = its negatives.

        Negatives are drawn uniformly with replacement from the samples that are certainly *not* the anchor's
        class, exactly (no redraw loop that may leave a clash):

        * with labels and a labelled anchor (class c): from the labelled samples of every class but c
          (RepDistiller's and mdistiller's default "exact" mode, ``cls_negative[c]``); unlabelled samples are not
          drawn, their class being unknown;
        * with an unlabelled anchor (label −1), or without labels: from every sample but the anchor itself.

        One uniform number per negative is mapped onto the allowed pool: a position in the label-sorted order
        that skips the anchor's own block (or the anchor itself).
        """
        if n_neg < 1:
            raise ValueError(f"MemoryBank: n_neg must be >= 1, got {n_neg}")
        dev = self.memory_s.device
        index = index.to(dev).long()
        u = torch.rand((index.shape[0], n_neg), generator=generator, device=dev, dtype=torch.float64)
        # every sample but the anchor: a uniform position among n_data − 1, shifted past the anchor
        other = (u * (self.n_data - 1)).long().clamp_(max=self.n_data - 2)
        neg = other + (other >= index[:, None]).long()
        if self.labels.numel():
            labelled = self.labels[index] >= 0
            start = self.neg_start[index][:, None]
            count = self.neg_count[index][:, None]
            pool = self.n_data - self.n_unlabelled - count  # labelled samples of the other classes
            pos = (u * pool).long().clamp_(max=pool - 1).clamp_(min=0) + self.n_unlabelled
            pos = torch.where(pos >= start, pos + count, pos)  # skip the anchor's class block
            neg = torch.where(labelled[:, None], self.neg_order[pos.clamp_(max=self.n_data - 1)], neg)
        return torch.cat([index[:, None], neg], dim=1)

    def scores(self, anchor: Tensor, memory: Tensor, idx: Tensor) -> Tensor:
        """``exp(⟨memory[idx_ij], anchor_i⟩ / τ)``, (B, D) × (B, 1+N) -> (B, 1+N); no gradient into the memory.

        Two equivalent evaluations; the one with the smaller intermediate is used: gather rows (B·(1+N)·D floats), or
        score against the whole memory and gather scores (B·n_data floats — usually far smaller: 64×16385×128 floats
        is 0.5 GB, 64×50000 is 13 MB).
        """
        mem = memory.detach()
        if idx.shape[1] * mem.shape[1] < mem.shape[0]:
            logits = torch.bmm(mem[idx], anchor[:, :, None]).squeeze(2)
        else:
            logits = (anchor @ mem.t()).gather(1, idx)
        return torch.exp(logits / self.temperature)

    @torch.no_grad()
    def update(self, index: Tensor, embed_s: Tensor, embed_t: Tensor) -> None:
        """Momentum update of the rows of this batch, then re-normalisation.

        Out of place (the buffer is replaced by an updated copy): the scores of this step may have saved the old
        memory for their backward pass, which an in-place write would invalidate.
        """
        index = index.to(self.memory_s.device).long()
        index, embed_s, embed_t = _gather_rows(index, embed_s.detach(), embed_t.detach())
        for name, v in (("memory_s", embed_s), ("memory_t", embed_t)):
            mem = getattr(self, name)
            rows = mem[index] * self.momentum + v.detach().to(mem.dtype) * (1.0 - self.momentum)
            setattr(self, name, mem.index_copy(0, index, F.normalize(rows, p=2, dim=1)))

    def extra_repr(self) -> str:
        return (f"n_data={self.n_data}, feat_dim={self.feat_dim}, momentum={self.momentum}, "
                f"temperature={self.temperature}, z_s={float(self.z_s):.4g}, z_t={float(self.z_t):.4g}")


def crd_loss(embed_s: Tensor, embed_t: Tensor, index: Tensor, bank: MemoryBank, n_neg: int = 16384,
             generator: torch.Generator | None = None, contrast_index: Tensor | None = None) -> Tensor:
    """CRD loss for one batch, both directions, followed by the memory update.

    * student anchored on the teacher memory: ``x_s = exp(⟨memory_t[idx], v_s⟩/τ) / Z_s``;
    * teacher anchored on the student memory: ``x_t = exp(⟨memory_s[idx], v_t⟩/τ) / Z_t``;
    * ``L = crd_nce_loss(x_s) + crd_nce_loss(x_t)``; then ``memory_s[index] ← v_s``, ``memory_t[index] ← v_t`` with
      momentum (after the scores are computed, so a sample's positive is its *previous* memory row).

    The gradient reaches both embeddings (and so both heads); it never reaches the memories. The teacher network
    itself gets nothing as long as the features fed to its head are detached (the taps detach teacher features).

    Args:
        embed_s: (B, feat_dim) unit-norm student embedding (``CRDHead`` output).
        embed_t: (B, feat_dim) unit-norm teacher embedding.
        index: (B,) int64 positions of the batch's samples in the training split.
        bank: the :class:`MemoryBank` (mutated: Z on first use, rows every call).
        n_neg: N, negatives per anchor (16384 published).
        generator: for reproducible negatives.
        contrast_index: optional explicit (B, 1+N) rows to score (column 0 must be ``index``), e.g. from a sampler in
            the data pipeline; overrides ``n_neg``/``generator``.

    Returns:
        Scalar loss.
    """
    if embed_s.ndim != 2 or embed_s.shape != embed_t.shape or embed_s.shape[1] != bank.feat_dim:
        raise ShapeError(f"crd_loss: student {tuple(embed_s.shape)} and teacher {tuple(embed_t.shape)} embeddings must "
                         f"both be (B, {bank.feat_dim}); put a CRDHead on each side")
    if index.shape != (embed_s.shape[0],):
        raise ShapeError(f"crd_loss: index must be (B,) = ({embed_s.shape[0]},), got {tuple(index.shape)}; CRD needs "
                         f"batch['index'] from the data pipeline")
    lo, hi = int(index.min()), int(index.max())
    if lo < 0 or hi >= bank.n_data:
        raise ShapeError(f"crd_loss: sample index range [{lo}, {hi}] outside the memory bank's [0, {bank.n_data}); "
                         f"size the bank with the training split's length")
    idx = contrast_index if contrast_index is not None else bank.sample_indices(index, n_neg, generator)
    idx = idx.to(bank.memory_s.device).long()
    out_s = bank.scores(embed_s.float(), bank.memory_t, idx)
    out_t = bank.scores(embed_t.float(), bank.memory_s, idx)
    with torch.no_grad():
        if float(bank.z_s) < 0:
            bank.z_s.fill_(float(out_s.mean()) * bank.n_data)
        if float(bank.z_t) < 0:
            bank.z_t.fill_(float(out_t.mean()) * bank.n_data)
    loss = crd_nce_loss(out_s / bank.z_s, bank.n_data) + crd_nce_loss(out_t / bank.z_t, bank.n_data)
    bank.update(index, embed_s, embed_t)
    return loss
