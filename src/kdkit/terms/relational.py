"""Relational terms: the structure of a batch's embeddings (distances and angles) carried from teacher to student."""

from __future__ import annotations

from torch import Tensor

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
