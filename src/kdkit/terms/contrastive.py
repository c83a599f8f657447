"""Contrastive representation distillation (CRD): NCE against a memory bank of teacher and student embeddings."""

from __future__ import annotations

import torch
from torch import Tensor

from kdkit.losses import contrastive
from kdkit.terms.base import SetupContext, TermInputs, register_term
from kdkit.terms.features import EmbeddingTerm


@register_term("crd", description="contrastive representation distillation: NCE with a memory bank (Tian et al., "
                                    "ICLR 2020)")
class CRDTerm(EmbeddingTerm):
    """CRD with the paper's constants: embedding heads to 128-d, τ = 0.07, N = 16384 negatives, memory momentum 0.5.
    Needs ``batch["index"]`` (the data pipeline provides it); the memory bank is sized to the training split.
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
                                           generator=torch.Generator().manual_seed(self.seed))
        self.n_neg = min(self.n_neg, ctx.num_train - 1)

    def compute(self, inp: TermInputs) -> Tensor:
        s, t = self.embeddings(inp)
        device = s.device
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device).manual_seed(self.seed)
        return contrastive.crd_loss(self.head_s(s), self.head_t(t), inp.batch["index"], self.bank, self.n_neg,
                                    self._gen)
