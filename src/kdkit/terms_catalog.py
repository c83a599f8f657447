"""The knowledge catalogue as loss terms: each wraps a pure function of :mod:`kdkit.losses` and says what it reads.

Logit terms read ``inp.student.logits`` / ``inp.teacher.logits`` (which may come from a soft-label store). Feature terms
declare module paths to tap — ``pairs: auto`` pairs CNN stages by spatial size using the models' ``kd_stages`` — and
own their connectors g(m), created in ``setup`` by probing both models once. Published default weights are given in
each docstring and in docs/methods.md; the recipe's ``weight`` is what is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kdkit.connectors import make_connector, pair_stages
from kdkit.errors import ConfigError
from kdkit.losses import contrastive, features, ie, logits, regularizers, relational, sobolev
from kdkit.registry import LOSSES
from kdkit.terms import LossTerm, SetupContext, TermInputs, hard_target


def _check_t(name: str, temperature: float) -> float:
    if not temperature > 0:
        raise ConfigError(f"loss term '{name}': temperature must be > 0, got {temperature}")
    return float(temperature)


# ----------------------------------------------------------------------------------------------------------------------
# Logits


@LOSSES.register("soft_ce", description="soft-target cross-entropy −Σ p_t log q_s at temperature T, × T²")
class SoftCETerm(LossTerm):
    """Soft cross-entropy (Hinton et al., 2015); same gradient as ``kd``, offset by the teacher's entropy."""

    def __init__(self, name: str = "soft_ce", weight: float = 1.0, warmup_epochs: float = 0.0,
                 temperature: float = 1.0) -> None:
        super().__init__(name, weight, warmup_epochs)
        self.temperature = _check_t(name, temperature)

    def compute(self, inp: TermInputs) -> Tensor:
        return logits.soft_cross_entropy(inp.student.logits, inp.teacher.logits, self.temperature)


@LOSSES.register("logit_mse", description="squared error between student and teacher logits (Ba & Caruana, 2014)")
class LogitMSETerm(LossTerm):
    """Mean squared error between logits, averaged over classes and batch."""

    def compute(self, inp: TermInputs) -> Tensor:
        return logits.logit_mse(inp.student.logits, inp.teacher.logits)


@LOSSES.register("dkd", description="decoupled KD: α·TCKD + β·NCKD (Zhao et al., CVPR 2022); warm up its weight")
class DKDTerm(LossTerm):
    """DKD; published CIFAR-100: α=1, β=8 (2 for resnet56→20, 6 for wrn/vgg pairs), T=4, warmup_epochs=20."""

    def __init__(self, name: str = "dkd", weight: float = 1.0, warmup_epochs: float = 0.0, alpha: float = 1.0,
                 beta: float = 8.0, temperature: float = 4.0) -> None:
        super().__init__(name, weight, warmup_epochs)
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), _check_t(name, temperature)

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


@LOSSES.register("noisy_kd", description="noisy teacher: Gaussian noise on teacher logits with probability p, then KD "
                                         "or logit MSE (Sau & Balasubramanian, 2016)")
class NoisyKDTerm(LossTerm):
    """Perturbs the teacher's logits (σ, p, multiplicative/additive) before a ``kd`` (T) or ``mse`` loss."""

    def __init__(self, name: str = "noisy_kd", weight: float = 1.0, warmup_epochs: float = 0.0, sigma: float = 0.1,
                 p: float = 0.5, mode: str = "multiplicative", loss: str = "kd", temperature: float = 4.0,
                 seed: int = 0) -> None:
        super().__init__(name, weight, warmup_epochs)
        if loss not in ("kd", "mse"):
            raise ConfigError(f"loss term '{name}': loss must be 'kd' or 'mse', got '{loss}'")
        if sigma < 0 or not 0 <= p <= 1 or mode not in ("multiplicative", "additive"):
            raise ConfigError(f"loss term '{name}': need sigma >= 0, p in [0, 1], mode multiplicative|additive")
        self.sigma, self.p, self.mode, self.loss = float(sigma), float(p), mode, loss
        self.temperature = _check_t(name, temperature)
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


@LOSSES.register("multilabel_kd", description="multi-label KD: per-class sigmoid BCE against σ(teacher/T), × T²")
class MultiLabelKDTerm(LossTerm):
    def __init__(self, name: str = "multilabel_kd", weight: float = 1.0, warmup_epochs: float = 0.0,
                 temperature: float = 1.0) -> None:
        super().__init__(name, weight, warmup_epochs)
        self.temperature = _check_t(name, temperature)

    def compute(self, inp: TermInputs) -> Tensor:
        return logits.multilabel_kd(inp.student.logits, inp.teacher.logits, self.temperature)


@LOSSES.register("bce", description="multi-label hard-label loss: per-class sigmoid BCE against multi-hot targets")
class BCETerm(LossTerm):
    needs_teacher = False

    def compute(self, inp: TermInputs) -> Tensor:
        return logits.multilabel_bce(inp.student.logits, hard_target(inp.batch))


# ----------------------------------------------------------------------------------------------------------------------
# Regularisers without a teacher


@LOSSES.register("label_smoothing", description="cross-entropy against (1−ε)·one-hot + ε/K (Szegedy et al., 2016)")
class LabelSmoothingTerm(LossTerm):
    needs_teacher = False

    def __init__(self, name: str = "label_smoothing", weight: float = 1.0, warmup_epochs: float = 0.0,
                 eps: float = 0.1) -> None:
        super().__init__(name, weight, warmup_epochs)
        if not 0 <= eps < 1:
            raise ConfigError(f"loss term '{name}': eps must be in [0, 1), got {eps}")
        self.eps = float(eps)

    def compute(self, inp: TermInputs) -> Tensor:
        return logits.cross_entropy(inp.student.logits, hard_target(inp.batch), label_smoothing=self.eps)


@LOSSES.register("confidence_penalty", description="−β·H(p): penalise over-confident outputs (Pereyra et al., 2017)")
class ConfidencePenaltyTerm(LossTerm):
    needs_teacher = False

    def __init__(self, name: str = "confidence_penalty", weight: float = 1.0, warmup_epochs: float = 0.0,
                 beta: float = 0.1) -> None:
        super().__init__(name, weight, warmup_epochs)
        self.beta = float(beta)

    def compute(self, inp: TermInputs) -> Tensor:
        return regularizers.confidence_penalty(inp.student.logits, self.beta)


@LOSSES.register("tf_kd", description="teacher-free KD: KL to a virtual teacher (a on the label, rest uniform), × T² "
                                      "(Yuan et al., CVPR 2020)")
class TeacherFreeKDTerm(LossTerm):
    needs_teacher = False

    def __init__(self, name: str = "tf_kd", weight: float = 1.0, warmup_epochs: float = 0.0, a: float = 0.9,
                 temperature: float = 20.0) -> None:
        super().__init__(name, weight, warmup_epochs)
        if not 0 < a <= 1:
            raise ConfigError(f"loss term '{name}': a (the virtual teacher's correct-class probability) must be in "
                              f"(0, 1], got {a}")
        self.a, self.temperature = float(a), _check_t(name, temperature)

    def compute(self, inp: TermInputs) -> Tensor:
        y = hard_target(inp.batch)
        keep = y >= 0
        if not bool(keep.any()):
            return inp.student.logits.sum() * 0.0
        return regularizers.tf_kd_virtual(inp.student.logits[keep], y[keep], self.a, self.temperature)


# ----------------------------------------------------------------------------------------------------------------------
# Features


PairSpec = str | Sequence[Sequence[str]] | Sequence[str]


def _stage_paths(model: nn.Module, role: str) -> list[str]:
    from kdkit.models import default_stages

    try:
        return default_stages(model)
    except ConfigError as err:
        raise ConfigError(f"{role}: {err}") from None


def resolve_pairs(spec: PairSpec, ctx: SetupContext, term: str, teacher: int = 0) -> list[tuple[str, str]]:
    """Turn a ``pairs`` param into [(student_path, teacher_path)], using the models' stages (``kd_stages``).

    * ``"auto"`` — every stage pair of equal spatial size, deepest with deepest (``connectors.pair_stages``);
    * ``"index"`` — stage i with stage i from the shallow end, as far as the shorter list goes (RepDistiller's
      ``zip(feat_s[1:-1], feat_t[1:-1])``; the published AT runs, including cross-architecture pairs);
    * ``"last"`` — the deepest stage of each model (SP, IE); ``"stage:K"`` — stage K of each (0-based; FitNets'
      published hint is stage 1, RepDistiller's ``hint_layer=2``);
    * an explicit list of ``[student_path, teacher_path]`` (or ``"student_path:teacher_path"`` strings).
    """
    if isinstance(spec, str) and (spec in ("auto", "index", "last") or spec.startswith("stage:")):
        if teacher >= len(ctx.teachers):
            raise ConfigError(f"loss term '{term}' reads teacher {teacher}'s features, but there is no online teacher "
                              f"(a soft-label store has logits only)")
        s_paths = _stage_paths(ctx.student, "student")
        t_paths = _stage_paths(ctx.teachers[teacher], f"teacher {teacher}")
        if spec == "auto":
            return pair_stages(ctx.student_shapes(s_paths), ctx.teacher_shapes(t_paths, teacher))
        if spec == "index":
            return list(zip(s_paths, t_paths, strict=False))  # RepDistiller: pairs as far as the shorter goes
        if spec == "last":
            return [(s_paths[-1], t_paths[-1])]
        try:
            k = int(spec.split(":", 1)[1])
            return [(s_paths[k], t_paths[k])]
        except (ValueError, IndexError):
            raise ConfigError(f"loss term '{term}': pairs '{spec}' needs a stage index below "
                              f"{min(len(s_paths), len(t_paths))} (student stages {s_paths}, teacher stages "
                              f"{t_paths})") from None
    if isinstance(spec, str) and ":" not in spec:
        raise ConfigError(f"loss term '{term}': pairs '{spec}' is not one of auto, index, last, stage:K or a list of "
                          f"[student_path, teacher_path]")
    out = []
    for item in spec if not isinstance(spec, str) else [spec]:
        if isinstance(item, str):
            if ":" not in item:
                raise ConfigError(f"loss term '{term}': pair '{item}' must be 'student_path:teacher_path'")
            s, t = item.split(":", 1)
        elif len(item) == 2:
            s, t = item
        else:
            raise ConfigError(f"loss term '{term}': each pair must be [student_path, teacher_path], got {item!r}")
        out.append((str(s), str(t)))
    if not out:
        raise ConfigError(f"loss term '{term}': pairs is empty")
    return out


class FeatureTerm(LossTerm):
    """Base of terms that compare tapped student and teacher features, pair by pair."""

    needs_teacher_features = True
    default_pairs: str = "auto"

    def __init__(self, name: str, weight: float = 1.0, warmup_epochs: float = 0.0, pairs: PairSpec | None = None,
                 teacher: int = 0) -> None:
        super().__init__(name, weight, warmup_epochs)
        self.pair_spec = pairs if pairs is not None else self.default_pairs
        self.teacher_index = int(teacher)
        self.pairs: list[tuple[str, str]] = []

    def setup(self, ctx: SetupContext) -> None:
        if not ctx.has_teacher_features:
            raise ConfigError(f"loss term '{self.name}' compares features, which need an online teacher; a soft-label "
                              f"store only has logits — add `teachers:` or drop the term")
        self.pairs = resolve_pairs(self.pair_spec, ctx, self.name, self.teacher_index)

    def student_taps(self) -> list[str]:
        return [s for s, _ in self.pairs]

    def teacher_taps(self) -> dict[int, list[str]]:
        return {self.teacher_index: [t for _, t in self.pairs]}

    def features(self, inp: TermInputs) -> list[tuple[Tensor, Tensor]]:
        t_out = inp.teachers[self.teacher_index] if inp.teachers else inp.teacher
        return [(inp.student.features[s], t_out.features[t]) for s, t in self.pairs]


@LOSSES.register("fitnet", description="FitNets hint: MSE between g(student feature) and the teacher's (Romero et al., "
                                       "ICLR 2015)")
class FitNetTerm(FeatureTerm):
    """FitNets hint with a learned regressor g(m) per pair (``connector``: conv_bn_relu, the published ConvReg).
    Published (RepDistiller): stage 1 of each model (``pairs: stage:1``, its ``hint_layer=2``), weight 100. The
    paper's two stages are a recipe with ``stop_epoch`` on this term and ``start_epoch`` on the others
    (recipes/fitnet_two_stage.yaml)."""

    default_pairs = "stage:1"

    def __init__(self, name: str = "fitnet", weight: float = 1.0, warmup_epochs: float = 0.0,
                 pairs: PairSpec | None = None, teacher: int = 0, connector: str = "conv_bn_relu") -> None:
        super().__init__(name, weight, warmup_epochs, pairs, teacher)
        self.connector_kind = connector
        self.connectors = nn.ModuleList()

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        s_shapes = ctx.student_shapes([s for s, _ in self.pairs])
        t_shapes = ctx.teacher_shapes([t for _, t in self.pairs], self.teacher_index)
        for s, t in self.pairs:
            self.connectors.append(make_connector(self.connector_kind, s_shapes[s], t_shapes[t], s, t))

    def compute(self, inp: TermInputs) -> Tensor:
        pairs = zip(self.connectors, self.features(inp), strict=True)
        losses = [features.fitnet_hint(g(fs), ft) for g, (fs, ft) in pairs]
        return torch.stack(losses).sum()


@LOSSES.register("at", description="attention transfer: L2-normalised spatial maps Σ_c |f|^p (Zagoruyko & Komodakis, "
                                   "ICLR 2017)")
class AttentionTransferTerm(FeatureTerm):
    """AT over stage i ↔ stage i (``pairs: index``; a larger map is pooled to the smaller), summed over pairs;
    published weight β = 1000, p = 2."""

    default_pairs = "index"

    def __init__(self, name: str = "at", weight: float = 1.0, warmup_epochs: float = 0.0,
                 pairs: PairSpec | None = None, teacher: int = 0, p: float = 2.0) -> None:
        super().__init__(name, weight, warmup_epochs, pairs, teacher)
        self.p = float(p)

    def compute(self, inp: TermInputs) -> Tensor:
        feats = self.features(inp)
        return features.attention_transfer([f for f, _ in feats], [g for _, g in feats], self.p)


@LOSSES.register("sp", description="similarity-preserving KD: match batch similarity matrices (Tung & Mori, ICCV 2019)")
class SimilarityPreservingTerm(FeatureTerm):
    """SP on the deepest stage of each model (``pairs: last``; sizes may differ); published weight γ = 3000."""

    default_pairs = "last"

    def compute(self, inp: TermInputs) -> Tensor:
        return torch.stack([features.similarity_preserving(fs, ft) for fs, ft in self.features(inp)]).sum()


class EmbeddingTerm(FeatureTerm):
    """Terms on the penultimate embeddings ((B, D) output of the ``embed`` module) of student and teacher."""

    def __init__(self, name: str, weight: float = 1.0, warmup_epochs: float = 0.0, student_layer: str = "embed",
                 teacher_layer: str = "embed", teacher: int = 0) -> None:
        super().__init__(name, weight, warmup_epochs, [[student_layer, teacher_layer]], teacher)

    def embeddings(self, inp: TermInputs) -> tuple[Tensor, Tensor]:
        (fs, ft), = self.features(inp)
        return fs.flatten(1), ft.flatten(1)


@LOSSES.register("rkd", description="relational KD: distance-wise (Huber) + angle-wise terms on embeddings (Park et "
                                    "al., CVPR 2019)")
class RKDTerm(EmbeddingTerm):
    """``w_d · RKD-D + w_a · RKD-A`` on the embeddings; published w_d = 25, w_a = 50, term weight 1."""

    def __init__(self, name: str = "rkd", weight: float = 1.0, warmup_epochs: float = 0.0, w_d: float = 25.0,
                 w_a: float = 50.0, student_layer: str = "embed", teacher_layer: str = "embed", teacher: int = 0
                 ) -> None:
        super().__init__(name, weight, warmup_epochs, student_layer, teacher_layer, teacher)
        self.w_d, self.w_a = float(w_d), float(w_a)

    def compute(self, inp: TermInputs) -> Tensor:
        s, t = self.embeddings(inp)
        loss = s.new_zeros(())
        if self.w_d:
            loss = loss + self.w_d * relational.rkd_distance(s, t)
        if self.w_a:
            loss = loss + self.w_a * relational.rkd_angle(s, t)
        return loss


@LOSSES.register("crd", description="contrastive representation distillation: NCE with a memory bank (Tian et al., "
                                    "ICLR 2020)")
class CRDTerm(EmbeddingTerm):
    """CRD with the paper's constants: embedding heads to 128-d, τ = 0.07, N = 16384 negatives, memory momentum 0.5.
    Needs ``batch["index"]`` (the data pipeline provides it); the memory bank is sized to the training split.
    Published: weight β = 0.8 with CE weight 1 (and KD 0)."""

    def __init__(self, name: str = "crd", weight: float = 1.0, warmup_epochs: float = 0.0, feat_dim: int = 128,
                 n_neg: int = 16384, temperature: float = 0.07, momentum: float = 0.5, student_layer: str = "embed",
                 teacher_layer: str = "embed", teacher: int = 0, seed: int = 0) -> None:
        super().__init__(name, weight, warmup_epochs, student_layer, teacher_layer, teacher)
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


@LOSSES.register("ie", description="inheritance & exploration KD: student halves pulled to / pushed from the teacher "
                                   "factor (Huang et al., CVPR 2021)")
class IETerm(FeatureTerm):
    """IE-KD on one stage pair (deepest by default). The teacher auto-encoder trains jointly on the detached teacher
    feature (reconstruction loss, included in this term) — the official code pre-trains it for 30 epochs first; set
    ``ae_epochs`` to stop its reconstruction loss after that many epochs. Official λ_inh = λ_exp = 1."""

    default_pairs = "last"

    def __init__(self, name: str = "ie", weight: float = 1.0, warmup_epochs: float = 0.0,
                 pairs: PairSpec | None = None, teacher: int = 0, factor_ratio: float = 0.5, inherit: float = 1.0,
                 explore: float = 1.0, recon: float = 1.0, metric: str = "ft", p: float = 1.0) -> None:
        super().__init__(name, weight, warmup_epochs, pairs, teacher)
        self.factor_ratio, self.inherit, self.explore, self.recon = factor_ratio, inherit, explore, recon
        self.metric, self.p = metric, p

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        if len(self.pairs) != 1:
            raise ConfigError(f"loss term '{self.name}' uses one stage pair, got {len(self.pairs)}")
        (s, t), = self.pairs
        cs = ctx.student_shapes([s])[s]
        ct = ctx.teacher_shapes([t], self.teacher_index)[t]
        if len(cs) != 4 or len(ct) != 4:
            raise ConfigError(f"loss term '{self.name}': needs (B, C, H, W) maps, got student {s} {cs}, "
                              f"teacher {t} {ct}")
        cf = max(1, int(ct[1] * self.factor_ratio))
        self.autoencoder = ie.FactorAutoEncoder(ct[1], cf)
        self.enc_inh = ie.FactorEncoder(cs[1] // 2, cf)
        self.enc_exp = ie.FactorEncoder(cs[1] - cs[1] // 2, cf)
        self.resize = nn.AdaptiveAvgPool2d(tuple(ct[2:])) if tuple(cs[2:]) != tuple(ct[2:]) else nn.Identity()

    def compute(self, inp: TermInputs) -> Tensor:
        (fs, ft), = self.features(inp)
        factor_t, recon_t = self.autoencoder(ft.detach())
        inh, exp = ie.split_channels(self.resize(fs))
        loss = self.inherit * ie.ie_inheritance_loss(self.enc_inh(inh), factor_t.detach(), self.p, self.metric)
        loss = loss + self.explore * ie.ie_exploration_loss(self.enc_exp(exp), factor_t.detach(), self.p, self.metric)
        return loss + self.recon * ie.ie_reconstruction_loss(ft, recon_t, self.p)


# ----------------------------------------------------------------------------------------------------------------------
# Derivatives


@LOSSES.register("sobolev", description="Sobolev training: match projections of input gradients of log-probabilities "
                                        "(Czarnecki et al., NeurIPS 2017); ~(1+2P)× backward cost")
class SobolevTerm(LossTerm):
    """Stochastic Sobolev term with ``projections`` random (class, direction) draws per step. The teacher is run again
    with autograd on the input (its weights stay frozen), so this term costs an extra teacher forward and backward
    and a double backward of the student."""

    needs_input_grad = True

    def __init__(self, name: str = "sobolev", weight: float = 1.0, warmup_epochs: float = 0.0, projections: int = 1,
                 teacher: int = 0, seed: int = 0) -> None:
        super().__init__(name, weight, warmup_epochs)
        if projections < 1:
            raise ConfigError(f"loss term '{name}': projections must be >= 1, got {projections}")
        self.projections, self.teacher_index, self.seed = int(projections), int(teacher), int(seed)
        self._teacher: list[nn.Module] = []  # a list, so the frozen teacher is not registered as a submodule
        self._gen: torch.Generator | None = None

    def setup(self, ctx: SetupContext) -> None:
        if self.teacher_index >= len(ctx.teachers):
            raise ConfigError(f"loss term '{self.name}' needs an online teacher (it differentiates the teacher)")
        self._teacher = [ctx.teachers[self.teacher_index]]

    def compute(self, inp: TermInputs) -> Tensor:
        x = inp.batch["input"]
        if "teacher_input" in inp.batch:
            raise ConfigError(f"loss term '{self.name}' needs teacher and student to see the same input")
        if not x.requires_grad:
            raise ConfigError(f"loss term '{self.name}': the scheme did not enable input gradients")
        teacher = self._teacher[0]
        with torch.enable_grad():
            t_out = teacher(x)
        t_logits = t_out if isinstance(t_out, Tensor) else t_out.logits
        if self._gen is None or self._gen.device != x.device:
            self._gen = torch.Generator(device=x.device).manual_seed(self.seed)
        return sobolev.sobolev_loss(inp.student.logits, t_logits, x, self.projections, self._gen)


__all__ = ["resolve_pairs", "FeatureTerm", "EmbeddingTerm", "Any"]
