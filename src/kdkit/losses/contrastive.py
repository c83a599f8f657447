"""Contrastive representation distillation, CRD (Tian, Krishnan & Isola, ICLR 2020).

Pieces:

* :class:`CRDHead` — the embedding head ``g``: linear map to ``feat_dim`` then L2 normalisation (one for the student,
  one for the teacher; both are trained, the teacher *network* is not).
* :class:`MemoryBank` — two memories of size ``n_data × feat_dim`` (one of student, one of teacher embeddings, unit-norm
  rows, momentum 0.5), the negative sampler, and the normalising constants Z estimated once on the first batch.
* :func:`crd_nce_loss` — the NCE loss on (B, 1+N) scores (the paper's eq. 18 with ``P_n = 1/n_data``).
* :func:`crd_loss` — both directions (student anchored on the teacher memory and vice versa), then the bank update.

Cost of a step (B anchors, N negatives, D = feat_dim): the scores ``⟨memory[idx_ij], v_i⟩`` are either gathered
(B·(1+N) random rows) or taken from a dense (B, n_data) matmul, whichever the computed cost says is cheaper
(:meth:`MemoryBank.paths`); the anchors' gradient ``Σ_j w_ij · memory[idx_ij]`` is computed in the forward, by one
``embedding_bag`` over the sampled rows or a dense matmul, again by cost. No (B, 1+N, D), (B, n_data) gradient or
(n_data, D) gradient is materialised for the backward, and the memory is updated in place (B rows written).

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


_EPS = 1e-7  # ε of crd_nce_loss (the reference implementation's)

# Cost of the gather path relative to the dense matmul against the whole memory, per element of a memory row, on the
# CPU it was measured on (AMD EPYC, AVX-512, one thread; `benchmarks/crd_step.py --crossover`, docs/benchmarks.md):
# C = (n_data / (1 + N)) · t_gather / t_full at five shapes (n_data 20k-200k, B 64-128, N 4,096 / 16,384). Fetching
# a row at a random position and taking its dot product with the anchor costs C = 12-24 multiply-adds of a dense
# matmul; a weighted row sum through embedding_bag (the gradient) C = 2.4-11 (cheaper while the memory fits the
# caches). The gather is used when C · (1 + N) < n_data; with 20 and 4 every one of the five shapes gets its faster
# evaluation (the scores gather for N = 4,096 once n_data > ~82,000, the gradient once n_data > ~16,400).
GATHER_FWD_COST = 20
GATHER_BWD_COST = 4
_FULL_CHUNK = 1 << 23  # floats of one (anchors × n_data) block on the full path (32 MB)
_GATHER_ROWS = 4096  # rows gathered at once on the gather path (2 MB at D = 128: stays in cache for the product)


def _block(memory: Tensor, rows: int, workspace: list[Tensor] | None) -> Tensor:
    """A (rows, n_data) scratch block for the full path: a slice of ``workspace[0]`` (allocated on first use, kept by
    the caller: a fresh 30 MB block a step costs page faults, ~10 ms a direction on the benchmark's CPU) or a new
    tensor without one."""
    n = memory.shape[0]
    if workspace is None:
        return memory.new_empty((rows, n))
    ws = workspace[0] if workspace else None
    if ws is None or ws.shape[1] != n or ws.shape[0] < rows or ws.dtype != memory.dtype or ws.device != memory.device:
        ws = memory.new_empty((max(rows, 1), n))
        workspace[:] = [ws]
    return ws[:rows]


def _logits(anchor: Tensor, memory: Tensor, idx: Tensor, path: str, workspace: list[Tensor] | None = None) -> Tensor:
    """(B, K) ``⟨memory[idx_ij], anchor_i⟩`` without autograd. ``"gather"``: each anchor's rows are gathered, at
    most 4,096 at a time, into one reused buffer and multiplied with it (never B × K × D at once); ``"full"``:
    anchors against the whole memory by a matmul, blocks of anchors so that one block's scores stay under 32 MB,
    then the sampled columns."""
    b, k = idx.shape
    out = anchor.new_empty((b, k))
    if path == "gather":
        rows = min(k, _GATHER_ROWS)
        buf = memory.new_empty((rows, memory.shape[1]))
        for i in range(b):
            for j in range(0, k, rows):
                part = buf[:min(rows, k - j)]
                torch.index_select(memory, 0, idx[i, j:j + rows], out=part)
                torch.mv(part, anchor[i], out=out[i, j:j + rows])
    else:
        step = max(1, _FULL_CHUNK // memory.shape[0])
        for i in range(0, b, step):
            block = torch.mm(anchor[i:i + step], memory.t(), out=_block(memory, min(step, b - i), workspace))
            torch.gather(block, 1, idx[i:i + step], out=out[i:i + step])
    return out


def _weighted_rows(memory: Tensor, idx: Tensor, w: Tensor, path: str,
                   workspace: list[Tensor] | None = None) -> Tensor:
    """(B, D) ``Σ_j w_ij · memory[idx_ij]`` — the anchors' gradient given ``w = ∂L/∂logit``. ``"gather"``: one
    ``embedding_bag`` (a weighted sum over the sampled rows only); ``"full"``: ``w`` scattered into (anchors × n_data)
    blocks times the memory."""
    if path == "gather":
        return F.embedding_bag(idx, memory, per_sample_weights=w.to(memory.dtype), mode="sum")
    out = memory.new_empty((idx.shape[0], memory.shape[1]))
    step = max(1, _FULL_CHUNK // memory.shape[0])
    for i in range(0, idx.shape[0], step):
        dense = _block(memory, idx[i:i + step].shape[0], workspace).zero_()
        torch.mm(dense.scatter_add_(1, idx[i:i + step], w[i:i + step].to(memory.dtype)), memory, out=out[i:i + step])
    return out


class _MemoryLogits(torch.autograd.Function):
    """``⟨memory[idx_ij], anchor_i⟩`` with a gradient for the anchors only (the memory is a buffer)."""

    @staticmethod
    def forward(ctx, anchor: Tensor, memory: Tensor, idx: Tensor, fwd: str, bwd: str) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(memory, idx)
        ctx.bwd = bwd
        return _logits(anchor.float(), memory, idx, fwd)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        try:
            memory, idx = ctx.saved_tensors
        except RuntimeError as err:
            raise RuntimeError("MemoryBank.scores: the memory was updated (MemoryBank.update or load_state_dict) "
                               "between these scores and their backward, which needs the rows they were computed "
                               "from; call backward before the update, or use crd_loss, whose gradient does not "
                               "depend on the memory after the call") from err
        return _weighted_rows(memory, idx, grad, ctx.bwd).to(grad.dtype), None, None, None, None


class _WithGrad(torch.autograd.Function):
    """A scalar ``value`` of ``x`` whose gradient ``grad = ∂value/∂x`` was computed already: backward = g · grad."""

    @staticmethod
    def forward(ctx, x: Tensor, value: Tensor, grad: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(grad)
        return value.clone()

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return g.to(grad.dtype) * grad, None, None


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
        scoring: ``"auto"`` (default: per batch, the cheaper of the gather and the full-matmul evaluation by computed
            cost, :meth:`paths`), ``"gather"`` or ``"full"``; the same maths either way.

    Under data parallelism every process updates its bank with the rows of *all* processes' shards (gathered in
    rank order), so the banks stay identical and cover every sample, as one process's bank would.
    """

    memory_s: Tensor
    memory_t: Tensor
    z_s: Tensor
    z_t: Tensor
    labels: Tensor

    def __init__(self, n_data: int, feat_dim: int = 128, momentum: float = 0.5, temperature: float = 0.07,
                 labels: Tensor | None = None, generator: torch.Generator | None = None,
                 scoring: str = "auto") -> None:
        super().__init__()
        if scoring not in ("auto", "gather", "full"):
            raise ValueError(f"MemoryBank: scoring must be 'auto', 'gather' or 'full', got {scoring!r}")
        self.scoring = scoring
        self._workspace: list[Tensor] = []  # the full path's scratch block (not state: rebuilt on use)
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
        out = torch.empty((index.shape[0], 1 + n_neg), dtype=torch.long, device=dev)
        out[:, 0] = index
        labelled = self.labels[index] >= 0 if self.labels.numel() else None
        if labelled is None or not bool(labelled.all()):
            # every sample but the anchor: a uniform position among n_data − 1, shifted past the anchor
            other = (u * (self.n_data - 1)).long().clamp_(max=self.n_data - 2)
            neg = other + (other >= index[:, None]).long()
        if labelled is not None:
            start = self.neg_start[index][:, None]
            count = self.neg_count[index][:, None]
            pool = self.n_data - self.n_unlabelled - count  # labelled samples of the other classes
            pos = (u * pool).long().clamp_(max=pool - 1).clamp_(min=0) + self.n_unlabelled
            pos = torch.where(pos >= start, pos + count, pos)  # skip the anchor's class block
            drawn = self.neg_order[pos.clamp_(max=self.n_data - 1)]
            neg = drawn if bool(labelled.all()) else torch.where(labelled[:, None], drawn, neg)
        out[:, 1:] = neg
        return out

    def paths(self, n_cols: int) -> tuple[str, str]:
        """How the scores (forward) and the anchors' gradient (backward) are evaluated for ``n_cols = 1 + N`` rows
        per anchor: ``"gather"`` (touch only the sampled rows) or ``"full"`` (a dense matmul against all ``n_data``
        rows). ``scoring = "auto"`` compares the computed costs (:data:`GATHER_FWD_COST`, :data:`GATHER_BWD_COST`);
        ``"gather"`` / ``"full"`` force both."""
        if self.scoring == "auto":
            return ("gather" if GATHER_FWD_COST * n_cols < self.n_data else "full",
                    "gather" if GATHER_BWD_COST * n_cols < self.n_data else "full")
        if self.scoring in ("gather", "full"):
            return self.scoring, self.scoring
        raise ValueError(f"MemoryBank.scoring must be 'auto', 'gather' or 'full', got {self.scoring!r}")

    def scores(self, anchor: Tensor, memory: Tensor, idx: Tensor) -> Tensor:
        """``exp(⟨memory[idx_ij], anchor_i⟩ / τ)``, (B, D) × (B, 1+N) -> (B, 1+N); differentiable in ``anchor``, no
        gradient into the memory (its backward touches only the sampled rows on the gather path).

        The memory must not change before the backward (an in-place update raises a clear error there);
        :func:`crd_loss` does not use this function and has no such constraint.
        """
        fwd, bwd = self.paths(idx.shape[1])
        return torch.exp(_MemoryLogits.apply(anchor, memory.detach(), idx, fwd, bwd) / self.temperature)

    def nce(self, anchor: Tensor, memory: Tensor, idx: Tensor, z: Tensor) -> Tensor:
        """One direction of CRD: ``crd_nce_loss(exp(⟨memory[idx], anchor⟩/τ) / Z, n_data)``, differentiable in
        ``anchor``; sets ``z`` (a (), −1 = unset buffer) from this batch's scores on first use.

        The loss is a function of the (B, D) anchors alone (the memory and Z are constants), so its gradient is
        computed here, in the forward, as ``Σ_j w_ij · memory[idx_ij]`` with the closed-form
        ``w = ∂L/∂logit`` (positive: ``−k/(x_0 + k)``, negatives: ``x_j/(x_j + k)``, both over ``τ·B``, where
        ``x = exp(logit/τ)/Z`` and ``k = N/n_data + ε``); the backward only scales the saved (B, D) gradient. Nothing
        of size B × n_data or n_data × D is kept for the backward, and the memory may be updated in place before it.
        """
        a = anchor.detach().float()
        fwd, bwd = self.paths(idx.shape[1])
        want_grad = torch.is_grad_enabled() and anchor.requires_grad
        with torch.no_grad():
            x = _logits(a, memory, idx, fwd, self._workspace).div_(self.temperature).exp_()
            if float(z) < 0:
                z.fill_(float(x.mean()) * self.n_data)
            x.div_(z)
            value = crd_nce_loss(x, self.n_data)
            if not want_grad:
                return value
            k = (idx.shape[1] - 1) / float(self.n_data) + _EPS
            w = x.div_(x + k)
            w[:, 0] -= 1.0
            w /= self.temperature * idx.shape[0]
            grad = _weighted_rows(memory, idx, w, bwd, self._workspace).to(anchor.dtype)
        return _WithGrad.apply(anchor, value, grad)

    @torch.no_grad()
    def update(self, index: Tensor, embed_s: Tensor, embed_t: Tensor) -> None:
        """Momentum update of the rows of this batch, then re-normalisation, in place (only the batch's rows are
        written; no copy of the memory).

        :func:`crd_loss`'s graph holds no memory rows (its gradient is computed in the forward), so updating before
        its backward is safe; a graph of :meth:`scores` does hold the memory and refuses its backward after an
        update, with an error saying so.
        """
        index = index.to(self.memory_s.device).long()
        index, embed_s, embed_t = _gather_rows(index, embed_s.detach(), embed_t.detach())
        for mem, v in ((self.memory_s, embed_s), (self.memory_t, embed_t)):
            rows = mem.index_select(0, index) * self.momentum + v.to(mem.dtype) * (1.0 - self.momentum)
            mem.index_copy_(0, index, F.normalize(rows, p=2, dim=1))

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
    Each direction's gradient is computed during this call (:meth:`MemoryBank.nce`), so the in-place bank update at
    the end cannot disturb the backward, however late it runs.

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
    loss = bank.nce(embed_s, bank.memory_t, idx, bank.z_s) + bank.nce(embed_t, bank.memory_s, idx, bank.z_t)
    bank.update(index, embed_s, embed_t)
    return loss
