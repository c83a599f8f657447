"""Regularisers without a teacher: label smoothing, the confidence penalty and teacher-free KD."""

from __future__ import annotations

from torch import Tensor

from kdkit.errors import ConfigError
from kdkit.losses import regularizers
from kdkit.terms.base import LossTerm, TermInputs, check_temperature, hard_target, register_term
from kdkit.terms.logits import CrossEntropyTerm


@register_term("label_smoothing", description="cross-entropy against (1−ε)·one-hot + ε/K (Szegedy et al., 2016)")
class LabelSmoothingTerm(CrossEntropyTerm):
    """The ``ce`` term with ``label_smoothing: eps`` (default 0.1), under its own name so that recipes and reports
    can say "label smoothing"; one computation, not a copy."""

    def __init__(self, eps: float = 0.1) -> None:
        if not 0 <= eps < 1:
            raise ConfigError(f"eps must be in [0, 1), got {eps}")
        super().__init__(label_smoothing=eps)
        self.eps = float(eps)


@register_term("confidence_penalty", description="−β·H(p): penalise over-confident outputs (Pereyra et al., 2017)")
class ConfidencePenaltyTerm(LossTerm):
    needs_teacher = False

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        self.beta = float(beta)

    def compute(self, inp: TermInputs) -> Tensor:
        return regularizers.confidence_penalty(inp.student.logits, self.beta)


@register_term("tf_kd", description="teacher-free KD: KL to a virtual teacher (a on the label, rest uniform), × T² "
                                      "(Yuan et al., CVPR 2020)")
class TeacherFreeKDTerm(LossTerm):
    needs_teacher = False

    def __init__(self, a: float = 0.9, temperature: float = 20.0) -> None:
        super().__init__()
        if not 0 < a <= 1:
            raise ConfigError(f"a (the virtual teacher's correct-class probability) must be in "
                              f"(0, 1], got {a}")
        self.a, self.temperature = float(a), check_temperature(temperature)

    def compute(self, inp: TermInputs) -> Tensor:
        y = hard_target(inp.batch)
        keep = y >= 0
        if not bool(keep.any()):
            return inp.student.logits.sum() * 0.0
        return regularizers.tf_kd_virtual(inp.student.logits[keep], y[keep], self.a, self.temperature)
