"""Logit terms: what the student's logits owe the teacher's (or the labels). The teacher logits may come from frozen
models, a combination of teachers or a soft-label store: a logit term cannot tell, and need not."""

from __future__ import annotations

import torch
from torch import Tensor

from kdkit.errors import ConfigError
from kdkit.losses import logit_relations, logits
from kdkit.terms.base import LossTerm, SetupContext, TermInputs, check_temperature, hard_target, register_term


class LogitTerm(LossTerm):
    """Base of the terms that compare student and teacher logits through a temperature softmax.

    ``standardize: true`` (a param of every such term) applies logit standardisation (Sun et al., CVPR 2024) first:
    each sample's logits, teacher's and student's alike, are z-scored (:func:`kdkit.losses.logit_relations.
    standardize_logits`) and the term's temperature becomes the paper's base temperature. One option, not a copy of
    each term.
    """

    def __init__(self, standardize: bool = False) -> None:
        super().__init__()
        if not isinstance(standardize, bool):
            raise ConfigError(f"standardize must be true or false, got {standardize!r}")
        self.standardize = standardize

    def prepare(self, student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
        """The (student, teacher) logits the loss sees: z-scored per sample when ``standardize`` is on."""
        if not self.standardize:
            return student_logits, teacher_logits
        return (logit_relations.standardize_logits(student_logits),
                logit_relations.standardize_logits(teacher_logits.detach()))

    def logit_pair(self, inp: TermInputs) -> tuple[Tensor, Tensor]:
        return self.prepare(inp.student.logits, inp.teacher.logits)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", standardize=True" if self.standardize else "")


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
        b = inp.batch
        if "lam" in b:  # mixup/cutmix: the two labels weighted by the pixel share of each image
            return logits.mixed_cross_entropy(inp.student.logits, b["target"], b["target_b"], b["lam"],
                                              self.label_smoothing)
        return logits.cross_entropy(inp.student.logits, hard_target(b), self.label_smoothing)


@register_term("kd", description="Hinton KD: T²·KL(softmax(t/T) ‖ softmax(s/T)), batchmean")
class KDTerm(LogitTerm):
    """Soft-target distillation (Hinton et al., 2015) with temperature ``temperature``; ``standardize`` z-scores
    the logits first (Sun et al., CVPR 2024: published with T = 2)."""

    def __init__(self, temperature: float = 4.0, standardize: bool = False) -> None:
        super().__init__(standardize)
        self.temperature = check_temperature(temperature)

    def compute(self, inp: TermInputs) -> Tensor:
        return logits.kd_kl(*self.logit_pair(inp), self.temperature)


@register_term("soft_ce", description="soft-target cross-entropy −Σ p_t log q_s at temperature T, × T²")
class SoftCETerm(LogitTerm):
    """Soft cross-entropy (Hinton et al., 2015); same gradient as ``kd``, offset by the teacher's entropy."""

    def __init__(self, temperature: float = 1.0, standardize: bool = False) -> None:
        super().__init__(standardize)
        self.temperature = check_temperature(temperature)

    def compute(self, inp: TermInputs) -> Tensor:
        return logits.soft_cross_entropy(*self.logit_pair(inp), self.temperature)


@register_term("logit_mse", description="squared error between student and teacher logits (Ba & Caruana, 2014)")
class LogitMSETerm(LossTerm):
    """Mean squared error between logits, averaged over classes and batch."""

    def compute(self, inp: TermInputs) -> Tensor:
        return logits.logit_mse(inp.student.logits, inp.teacher.logits)


@register_term("dkd", description="decoupled KD: α·TCKD + β·NCKD (Zhao et al., CVPR 2022); warm up its weight")
class DKDTerm(LogitTerm):
    """DKD; published CIFAR-100: α=1, β=8 (2 for resnet56→20, 6 for wrn/vgg pairs), T=4, warmup_epochs=20.
    ``standardize`` z-scores the logits first (Sun et al., CVPR 2024)."""

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, standardize: bool = False
                 ) -> None:
        super().__init__(standardize)
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), check_temperature(temperature)

    def compute(self, inp: TermInputs) -> Tensor:
        y = hard_target(inp.batch)
        if y.ndim != 1:
            raise ConfigError(f"loss term '{self.name}': DKD needs single-label class targets")
        keep = y >= 0
        s, t = self.logit_pair(inp)
        if not bool(keep.all()):  # unlabelled samples have no target class to decouple
            if not bool(keep.any()):
                return s.sum() * 0.0
            s, t, y = s[keep], t[keep], y[keep]
        return logits.dkd(s, t, y, self.alpha, self.beta, self.temperature)


@register_term("noisy_kd", description="noisy teacher: Gaussian noise on teacher logits with probability p, then KD "
                                         "or logit MSE (Sau & Balasubramanian, 2016)")
class NoisyKDTerm(LogitTerm):
    """Perturbs the teacher's logits (σ, p, multiplicative/additive) before a ``kd`` (T) or ``mse`` loss;
    ``standardize`` z-scores the student's and the perturbed teacher's logits first."""

    def __init__(self, sigma: float = 0.1,
                 p: float = 0.5, mode: str = "multiplicative", loss: str = "kd", temperature: float = 4.0,
                 seed: int = 0, standardize: bool = False) -> None:
        super().__init__(standardize)
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
        s, noisy = self.prepare(inp.student.logits, noisy)
        if self.loss == "mse":
            return logits.logit_mse(s, noisy)
        return logits.kd_kl(s, noisy, self.temperature)


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


@register_term("dist", description="DIST: inter- and intra-class Pearson relations of the softened predictions "
                                     "(Huang et al., NeurIPS 2022)")
class DISTTerm(LogitTerm):
    """DIST, ``T²·(β·L_inter + γ·L_intra)``; published CIFAR-100: β = γ = 2, T = 4, term weight 1 with CE weight 1
    (ImageNet: β = γ = 1, T = 1). ``standardize`` z-scores the logits first (Sun et al., CVPR 2024)."""

    def __init__(self, beta: float = 2.0, gamma: float = 2.0, temperature: float = 4.0, standardize: bool = False
                 ) -> None:
        super().__init__(standardize)
        if beta < 0 or gamma < 0:
            raise ConfigError(f"beta and gamma must be >= 0, got {beta}, {gamma}")
        self.beta, self.gamma, self.temperature = float(beta), float(gamma), check_temperature(temperature)

    def compute(self, inp: TermInputs) -> Tensor:
        s, t = self.logit_pair(inp)
        if s.shape[0] < 2:  # one sample has no intra-class relation (a last batch of one)
            return s.sum() * 0.0
        return logit_relations.dist_loss(s, t, self.beta, self.gamma, self.temperature)


@register_term("ctkd", description="curriculum temperature KD: a learnable temperature trained adversarially through "
                                     "gradient reversal (Li et al., AAAI 2023)")
class CTKDTerm(LogitTerm):
    """KD at a learnable global temperature τ = ``t_start`` + ``t_range``·σ(θ) (θ starts at ``init`` = 1, τ ≈ 15.6,
    the authors' initialisation), which *maximises* the KD loss through a gradient-reversal layer whose strength λ
    ramps from 0 to ``lam_max`` over ``ramp_epochs`` epochs (cosine). Published (CIFAR-100, on top of KD): KD weight
    0.9, CE weight 0.1, t_start 1, t_range 20, ramp 10 epochs. θ is trained and checkpointed with the student.

    ``mode: instance`` is the paper's instance-wise temperature: θ_i = MLP(cat(t_i, s_i)) per sample (a
    ``2K → hidden → 1`` network with ReLU on the detached logits; its output layer starts at weight 0, bias ``init``,
    so every τ_i starts at the global mode's τ), then KD with each sample at its own τ_i."""

    def __init__(self, t_start: float = 1.0, t_range: float = 20.0, ramp_epochs: float = 10.0, lam_max: float = 1.0,
                 init: float = 1.0, standardize: bool = False, mode: str = "global", hidden: int = 256) -> None:
        super().__init__(standardize)
        if not (t_start > 0 and t_range >= 0 and ramp_epochs >= 0 and lam_max >= 0):
            raise ConfigError(f"need t_start > 0, t_range >= 0, ramp_epochs >= 0 and lam_max >= 0, got {t_start}, "
                              f"{t_range}, {ramp_epochs}, {lam_max}")
        if mode not in ("global", "instance") or int(hidden) < 1:
            raise ConfigError(f"loss term 'ctkd': mode must be 'global' or 'instance' and hidden >= 1, got mode "
                              f"{mode!r}, hidden {hidden!r}")
        self.t_start, self.t_range = float(t_start), float(t_range)
        self.ramp_epochs, self.lam_max = float(ramp_epochs), float(lam_max)
        self.mode, self.hidden, self.init = mode, int(hidden), float(init)
        # Instance mode predicts θ per sample; the global θ then takes no gradient (DDP must not wait for one).
        self.theta = torch.nn.Parameter(torch.full((1,), float(init)), requires_grad=mode == "global")
        self.temp_net: torch.nn.Module | None = None
        self._last_tau: float | None = None

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        if self.mode == "instance":
            k = int(ctx.num_classes)
            out = torch.nn.Linear(self.hidden, 1)
            torch.nn.init.zeros_(out.weight)
            torch.nn.init.constant_(out.bias, self.init)
            self.temp_net = torch.nn.Sequential(torch.nn.Linear(2 * k, self.hidden), torch.nn.ReLU(), out)

    def temperature(self) -> float:
        """The current τ (instance mode: the mean τ_i of the last batch)."""
        if self.mode == "instance":
            return float("nan") if self._last_tau is None else self._last_tau
        return float(logit_relations.ctkd_temperature(self.theta.detach(), self.t_start, self.t_range))

    def compute(self, inp: TermInputs) -> Tensor:
        lam = logit_relations.ctkd_lambda(inp.state.progress, self.ramp_epochs, self.lam_max)
        s, t = self.logit_pair(inp)
        theta = self.theta
        if self.temp_net is not None:
            # The temperature network reads the logits but sends no gradient into the student (or the teacher).
            theta = self.temp_net(torch.cat([t.detach(), s.detach()], dim=1).float()).squeeze(1)
            self._last_tau = float(logit_relations.ctkd_temperature(theta.detach(), self.t_start,
                                                                    self.t_range).mean())
        return logit_relations.ctkd_loss(s, t, theta, lam, self.t_start, self.t_range)
