"""Logit terms: what the student's logits owe the teacher's (or the labels). The teacher logits may come from frozen
models, a combination of teachers or a soft-label store: a logit term cannot tell, and need not."""

from __future__ import annotations

import torch
from torch import Tensor

from kdkit.errors import ConfigError
from kdkit.losses import logits
from kdkit.terms.base import LossTerm, TermInputs, check_temperature, hard_target, register_term


@register_term("ce", description="hard-label cross-entropy (optional label smoothing)")
class CrossEntropyTerm(LossTerm):
    """Cross-entropy with the ground-truth labels; ``label_smoothing`` ε mixes ε/K into the target."""

    needs_teacher = False

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def compute(self, inp: TermInputs) -> Tensor:
        return logits.cross_entropy(inp.student.logits, hard_target(inp.batch), self.label_smoothing)


@register_term("kd", description="Hinton KD: T²·KL(softmax(t/T) ‖ softmax(s/T)), batchmean")
class KDTerm(LossTerm):
    """Soft-target distillation (Hinton et al., 2015) with temperature ``temperature``."""

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)

    def compute(self, inp: TermInputs) -> Tensor:
        return logits.kd_kl(inp.student.logits, inp.teacher.logits, self.temperature)


@register_term("soft_ce", description="soft-target cross-entropy −Σ p_t log q_s at temperature T, × T²")
class SoftCETerm(LossTerm):
    """Soft cross-entropy (Hinton et al., 2015); same gradient as ``kd``, offset by the teacher's entropy."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)

    def compute(self, inp: TermInputs) -> Tensor:
        return logits.soft_cross_entropy(inp.student.logits, inp.teacher.logits, self.temperature)


@register_term("logit_mse", description="squared error between student and teacher logits (Ba & Caruana, 2014)")
class LogitMSETerm(LossTerm):
    """Mean squared error between logits, averaged over classes and batch."""

    def compute(self, inp: TermInputs) -> Tensor:
        return logits.logit_mse(inp.student.logits, inp.teacher.logits)


@register_term("dkd", description="decoupled KD: α·TCKD + β·NCKD (Zhao et al., CVPR 2022); warm up its weight")
class DKDTerm(LossTerm):
    """DKD; published CIFAR-100: α=1, β=8 (2 for resnet56→20, 6 for wrn/vgg pairs), T=4, warmup_epochs=20."""

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> None:
        super().__init__()
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), check_temperature(temperature)

    def compute(self, inp: TermInputs) -> Tensor:
        y = hard_target(inp.batch)
        if y.ndim != 1:
            raise ConfigError(f"loss term '{self.name}': DKD needs single-label class targets")
        keep = y >= 0
        s, t = inp.student.logits, inp.teacher.logits
        if not bool(keep.all()):  # unlabelled samples have no target class to decouple
            if not bool(keep.any()):
                return s.sum() * 0.0
            s, t, y = s[keep], t[keep], y[keep]
        return logits.dkd(s, t, y, self.alpha, self.beta, self.temperature)


@register_term("noisy_kd", description="noisy teacher: Gaussian noise on teacher logits with probability p, then KD "
                                         "or logit MSE (Sau & Balasubramanian, 2016)")
class NoisyKDTerm(LossTerm):
    """Perturbs the teacher's logits (σ, p, multiplicative/additive) before a ``kd`` (T) or ``mse`` loss."""

    def __init__(self, sigma: float = 0.1,
                 p: float = 0.5, mode: str = "multiplicative", loss: str = "kd", temperature: float = 4.0,
                 seed: int = 0) -> None:
        super().__init__()
        if loss not in ("kd", "mse"):
            raise ConfigError(f"loss must be 'kd' or 'mse', got '{loss}'")
        if sigma < 0 or not 0 <= p <= 1 or mode not in ("multiplicative", "additive"):
            raise ConfigError("need sigma >= 0, p in [0, 1], mode multiplicative|additive")
        self.sigma, self.p, self.mode, self.loss = float(sigma), float(p), mode, loss
        self.temperature = check_temperature(temperature)
        self.seed = int(seed)
        self._gen: torch.Generator | None = None

    def compute(self, inp: TermInputs) -> Tensor:
        t = inp.teacher.logits
        if self._gen is None or self._gen.device != t.device:
            self._gen = torch.Generator(device=t.device).manual_seed(self.seed)
        noisy = logits.noisy_teacher_logits(t, self.sigma, self.p, self._gen, self.mode)
        if self.loss == "mse":
            return logits.logit_mse(inp.student.logits, noisy)
        return logits.kd_kl(inp.student.logits, noisy, self.temperature)


@register_term("multilabel_kd", description="multi-label KD: per-class sigmoid BCE against σ(teacher/T), × T²")
class MultiLabelKDTerm(LossTerm):
    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)

    def compute(self, inp: TermInputs) -> Tensor:
        return logits.multilabel_kd(inp.student.logits, inp.teacher.logits, self.temperature)


@register_term("bce", description="multi-label hard-label loss: per-class sigmoid BCE against multi-hot targets")
class BCETerm(LossTerm):
    needs_teacher = False

    def compute(self, inp: TermInputs) -> Tensor:
        return logits.multilabel_bce(inp.student.logits, hard_target(inp.batch))
