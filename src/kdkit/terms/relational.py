"""Relational terms: the structure of a batch's embeddings (distances and angles) carried from teacher to student."""

from __future__ import annotations

from torch import Tensor

from kdkit.errors import ConfigError
from kdkit.losses import relational
from kdkit.terms.base import TermInputs, register_term
from kdkit.terms.features import EmbeddingTerm


@register_term("rkd", description="relational KD: distance-wise (Huber) + angle-wise terms on embeddings (Park et "
                                    "al., CVPR 2019)")
class RKDTerm(EmbeddingTerm):
    """``w_d · RKD-D + w_a · RKD-A`` on the embeddings; published w_d = 25, w_a = 50, term weight 1."""

    def __init__(self, w_d: float = 25.0,
                 w_a: float = 50.0, student_layer: str = "embed", teacher_layer: str = "embed", teacher: int = 0
                 ) -> None:
        super().__init__(student_layer, teacher_layer, teacher)
        self.w_d, self.w_a = float(w_d), float(w_a)

    def compute(self, inp: TermInputs) -> Tensor:
        s, t = self.embeddings(inp)
        loss = s.new_zeros(())
        if self.w_d:
            loss = loss + self.w_d * relational.rkd_distance(s, t)
        if self.w_a:
            loss = loss + self.w_a * relational.rkd_angle(s, t)
        return loss


@register_term("pkt", description="probabilistic knowledge transfer: match the batch's cosine-affinity distributions "
                                    "(Passalis & Tefas, ECCV 2018)")
class PKTTerm(EmbeddingTerm):
    """PKT on the penultimate embeddings (widths may differ); published (RepDistiller CIFAR-100) weight 30000 with
    CE weight 1."""

    def compute(self, inp: TermInputs) -> Tensor:
        return relational.pkt_loss(*self.embeddings(inp))


@register_term("cc", description="correlation congruence: match the batch's Gaussian-RBF correlation matrices "
                                   "(Peng et al., ICCV 2019)")
class CCTerm(EmbeddingTerm):
    """CC on the penultimate embeddings with the paper's kernel (Taylor order ``order`` = 2 of exp(−γ‖x−y‖²),
    γ = ``gamma`` = 0.4). No published weight exists for this form (RepDistiller's 0.02 is for its different CC)."""

    def __init__(self, gamma: float = 0.4, order: int = 2, student_layer: str = "embed", teacher_layer: str = "embed",
                 teacher: int = 0) -> None:
        super().__init__(student_layer, teacher_layer, teacher)
        if not gamma > 0 or int(order) != order or order < 0:
            raise ConfigError(f"gamma must be > 0 and order an integer >= 0, got {gamma}, {order}")
        self.gamma, self.order = float(gamma), int(order)

    def compute(self, inp: TermInputs) -> Tensor:
        return relational.cc_loss(*self.embeddings(inp), self.gamma, self.order)
