"""Contrastive representation distillation (CRD): NCE against a memory bank of teacher and student embeddings."""

from __future__ import annotations

import torch
from torch import Tensor

from kdkit.errors import ConfigError
from kdkit.losses import contrastive
from kdkit.terms.base import SetupContext, TermInputs, register_term
from kdkit.terms.features import EmbeddingTerm


@register_term("crd", description="contrastive representation distillation: NCE with a memory bank (Tian et al., "
                                    "ICLR 2020)")
class CRDTerm(EmbeddingTerm):
    """CRD with the paper's constants: embedding heads to 128-d, τ = 0.07, N = 16384 negatives, memory momentum 0.5.
    Needs ``batch["index"]`` (the data pipeline provides it); the memory bank is sized to the training split, and
    negatives are drawn from the other classes of the training labels (never the anchor's class, never the anchor;
    an unlabelled anchor's from every sample but itself).
    Published: weight β = 0.8 with CE weight 1 (and KD 0)."""

    def __init__(self, feat_dim: int = 128,
                 n_neg: int = 16384, temperature: float = 0.07, momentum: float = 0.5, student_layer: str = "embed",
                 teacher_layer: str = "embed", teacher: int = 0, seed: int = 0) -> None:
        super().__init__(student_layer, teacher_layer, teacher)
        self.feat_dim, self.n_neg, self.tau, self.momentum = int(feat_dim), int(n_neg), float(temperature), momentum
        self.seed = int(seed)
        self._gen: torch.Generator | None = None

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        (s, t), = self.pairs
        ds = ctx.student_shapes([s])[s]
        dt = ctx.teacher_shapes([t], self.teacher_index)[t]
        self.head_s = contrastive.CRDHead(int(torch.tensor(ds[1:]).prod()), self.feat_dim)
        self.head_t = contrastive.CRDHead(int(torch.tensor(dt[1:]).prod()), self.feat_dim)
        self.bank = contrastive.MemoryBank(ctx.num_train, self.feat_dim, self.momentum, self.tau,
                                           labels=self.negative_labels(ctx),
                                           generator=torch.Generator().manual_seed(self.seed))
        self.n_neg = min(self.n_neg, ctx.num_train - 1)

    def negative_labels(self, ctx: SetupContext) -> torch.Tensor | None:
        """The training labels that steer negative sampling (other classes only), or None -- then negatives are
        every sample but the anchor. Multi-label targets have no single class to avoid."""
        y = ctx.targets
        if y is None or y.ndim != 1 or y.dtype.is_floating_point:
            return None
        if y.shape[0] != ctx.num_train:
            raise ConfigError(f"loss term '{self.name}': {y.shape[0]} training labels for a memory bank of "
                              f"{ctx.num_train} samples")
        labelled = y[y >= 0]
        if labelled.numel() and int(torch.unique(labelled).numel()) < 2:
            raise ConfigError(f"loss term '{self.name}': every labelled training sample has class "
                              f"{int(labelled[0])}; CRD draws negatives from other classes and needs at least two")
        return y.detach().cpu().long()

    def compute(self, inp: TermInputs) -> Tensor:
        s, t = self.embeddings(inp)
        device = s.device
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device).manual_seed(self.seed)
        return contrastive.crd_loss(self.head_s(s), self.head_t(t), inp.batch["index"], self.bank, self.n_neg,
                                    self._gen)
