"""Feature terms: tapped student and teacher feature maps compared pair by pair.

Terms declare module paths to tap -- ``pairs: auto`` pairs CNN stages by spatial size using the models' ``kd_stages``
-- and own their connectors g(m), created in ``setup`` by probing both models once. Published default weights are
given in each docstring and in docs/methods.md; the recipe's ``weight`` is what is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from kdkit.connectors import KINDS, LAYOUTS, feature_layout, make_connector, pair_stages
from kdkit.errors import ConfigError
from kdkit.losses import features, ie
from kdkit.models.factory import default_stages
from kdkit.terms.base import LossTerm, SetupContext, TermInputs, register_term

PairSpec = str | Sequence[Sequence[str]] | Sequence[str]


def _stage_paths(model: nn.Module, role: str) -> list[str]:
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
    """Base of terms that compare tapped student and teacher features, pair by pair.

    ``layouts`` declares the feature layouts the method's math applies to (``BCHW`` conv maps, ``BCL`` 1-D conv
    maps, ``BTD`` token sequences, ``BD`` vectors; see :func:`kdkit.connectors.feature_layout`); a tapped layer of
    another layout is refused at setup with one line naming the layer, its shape and what the term takes.
    """

    needs_teacher_features = True
    default_pairs: str = "auto"
    layouts: ClassVar[tuple[str, ...]] = ("BCHW", "BCL", "BTD", "BD")

    def __init__(self, pairs: PairSpec | None = None, teacher: int = 0) -> None:
        super().__init__()
        self.pair_spec = pairs if pairs is not None else self.default_pairs
        self.teacher_index = int(teacher)
        self.pairs: list[tuple[str, str]] = []
        self.layout = "BCHW"

    def setup(self, ctx: SetupContext) -> None:
        if not ctx.has_teacher_features:
            raise ConfigError(f"loss term '{self.name}' compares features, which need an online teacher; a soft-label "
                              f"store only has logits — add `teachers:` or drop the term")
        self.pairs = resolve_pairs(self.pair_spec, ctx, self.name, self.teacher_index)
        self.layout = self.check_layouts(ctx)

    def check_layouts(self, ctx: SetupContext) -> str:
        """Probe the paired layers once; every one must have a layout in :attr:`layouts`. Returns the students'."""
        s_shapes = ctx.student_shapes([s for s, _ in self.pairs])
        t_shapes = ctx.teacher_shapes([t for _, t in self.pairs], self.teacher_index)
        found = "BD"
        checks = [("student", s, s_shapes[s], ctx.student) for s, _ in self.pairs]
        checks += [(f"teacher {self.teacher_index}", t, t_shapes[t], ctx.teachers[self.teacher_index])
                   for _, t in self.pairs]
        for role, path, shape, model in checks:
            layout = feature_layout(model, shape)
            if layout not in self.layouts:
                takes = ", ".join(LAYOUTS.get(k, k) for k in self.layouts)
                gives = LAYOUTS.get(layout, layout)
                raise ConfigError(f"loss term '{self.name}': {role} layer '{path}' gives a {gives} feature "
                                  f"{tuple(shape)}; {self.name} takes {takes} -- tap another layer (pairs: "
                                  f"[[student_path, teacher_path]]) or use another term")
            if role == "student":
                found = layout
        return found

    def student_taps(self) -> list[str]:
        return [s for s, _ in self.pairs]

    def teacher_taps(self) -> dict[int, list[str]]:
        return {self.teacher_index: [t for _, t in self.pairs]}

    def features(self, inp: TermInputs) -> list[tuple[Tensor, Tensor]]:
        t_out = inp.teachers[self.teacher_index] if inp.teachers else inp.teacher
        return [(inp.student.features[s], t_out.features[t]) for s, t in self.pairs]

    def build_connectors(self, ctx: SetupContext, kind: str) -> nn.ModuleList:
        """One learnt map g (a ``kind`` connector) per pair, from the student layer's shape to the teacher's."""
        s_shapes = ctx.student_shapes([s for s, _ in self.pairs])
        t_shapes = ctx.teacher_shapes([t for _, t in self.pairs], self.teacher_index)
        return nn.ModuleList(make_connector(kind, s_shapes[s], t_shapes[t], s, t, self.layout) for s, t in self.pairs)

    def mapped_features(self, inp: TermInputs, connectors: nn.ModuleList) -> list[tuple[Tensor, Tensor]]:
        """``(g(student feature), teacher feature)`` per pair."""
        return [(g(fs), ft) for g, (fs, ft) in zip(connectors, self.features(inp), strict=True)]


@register_term("fitnet", description="FitNets hint: MSE between g(student feature) and the teacher's (Romero et al., "
                                       "ICLR 2015)")
class FitNetTerm(FeatureTerm):
    """FitNets hint with a learned regressor g(m) per pair (``connector``: conv_bn_relu, the published ConvReg).
    Published (RepDistiller): stage 1 of each model (``pairs: stage:1``, its ``hint_layer=2``), weight 100. The
    paper's two stages are a recipe with ``stop_epoch`` on this term and ``start_epoch`` on the others
    (recipes/fitnet_two_stage.yaml)."""

    default_pairs = "stage:1"

    def __init__(self, pairs: PairSpec | None = None, teacher: int = 0, connector: str = "conv_bn_relu") -> None:
        super().__init__(pairs, teacher)
        self.connector_kind = connector
        self.connectors = nn.ModuleList()

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        self.connectors = self.build_connectors(ctx, self.connector_kind)

    def compute(self, inp: TermInputs) -> Tensor:
        losses = [features.fitnet_hint(gs, ft) for gs, ft in self.mapped_features(inp, self.connectors)]
        return torch.stack(losses).sum()


@register_term("at", description="attention transfer: L2-normalised spatial maps Σ_c |f|^p (Zagoruyko & Komodakis, "
                                   "ICLR 2017)")
class AttentionTransferTerm(FeatureTerm):
    """AT over stage i ↔ stage i (``pairs: index``; a larger map is pooled to the smaller), summed over pairs;
    published weight β = 1000, p = 2."""

    default_pairs = "index"
    layouts = ("BCHW", "BCL")

    def __init__(self, pairs: PairSpec | None = None, teacher: int = 0, p: float = 2.0) -> None:
        super().__init__(pairs, teacher)
        self.p = float(p)

    def compute(self, inp: TermInputs) -> Tensor:
        feats = self.features(inp)
        return features.attention_transfer([f for f, _ in feats], [g for _, g in feats], self.p)


@register_term("sp", description="similarity-preserving KD: match batch similarity matrices (Tung & Mori, ICCV 2019)")
class SimilarityPreservingTerm(FeatureTerm):
    """SP on the deepest stage of each model (``pairs: last``; sizes may differ); published weight γ = 3000."""

    default_pairs = "last"

    def compute(self, inp: TermInputs) -> Tensor:
        return torch.stack([features.similarity_preserving(fs, ft) for fs, ft in self.features(inp)]).sum()


class EmbeddingTerm(FeatureTerm):
    """Terms on the penultimate embeddings ((B, D) output of the ``embed`` module) of student and teacher."""

    def __init__(self, student_layer: str = "embed", teacher_layer: str = "embed", teacher: int = 0) -> None:
        super().__init__([[student_layer, teacher_layer]], teacher)

    def embeddings(self, inp: TermInputs) -> tuple[Tensor, Tensor]:
        (fs, ft), = self.features(inp)
        return fs.flatten(1), ft.flatten(1)


@register_term("ie", description="inheritance & exploration KD: student halves pulled to / pushed from the teacher "
                                   "factor (Huang et al., CVPR 2021)")
class IETerm(FeatureTerm):
    """IE-KD on one stage pair (deepest by default). The teacher auto-encoder trains jointly on the detached teacher
    feature (reconstruction loss, included in this term) — the official code pre-trains it for 30 epochs first; set
    ``ae_epochs`` to stop its reconstruction loss after that many epochs. Official λ_inh = λ_exp = 1."""

    default_pairs = "last"
    layouts = ("BCHW",)

    def __init__(self, pairs: PairSpec | None = None, teacher: int = 0, factor_ratio: float = 0.5, inherit: float = 1.0,
                 explore: float = 1.0, recon: float = 1.0, metric: str = "ft", p: float = 1.0) -> None:
        super().__init__(pairs, teacher)
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


@register_term("nst", description="neuron selectivity transfer: MMD of normalised channel maps, polynomial kernel "
                                    "(Huang & Wang, 2017)")
class NSTTerm(FeatureTerm):
    """NST over stage i ↔ stage i (``pairs: index``, RepDistiller's ``feat[1:-1]``; a larger map is pooled to the
    smaller; channel counts may differ), summed over pairs; published (RepDistiller CIFAR-100) weight 50, CE 1."""

    default_pairs = "index"
    layouts = ("BCHW", "BCL")

    def compute(self, inp: TermInputs) -> Tensor:
        return torch.stack([features.nst_loss(fs, ft) for fs, ft in self.features(inp)]).sum()


class VIDRegressor(nn.Module):
    """VID's mean predictor μ(s): 1×1 conv → ReLU → 1×1 conv → ReLU → 1×1 conv, no biases (the reference's), from
    the student's channels to the teacher's through the teacher's width; a larger student map is average-pooled to
    the teacher's size first."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, size: tuple[int, ...]) -> None:
        super().__init__()
        conv = nn.Conv2d if len(size) == 2 else nn.Conv1d
        self.size = size
        self.net = nn.Sequential(conv(c_in, c_mid, 1, bias=False), nn.ReLU(), conv(c_mid, c_mid, 1, bias=False),
                                 nn.ReLU(), conv(c_mid, c_out, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[2:]) != self.size:
            pool = nn.functional.adaptive_avg_pool2d if x.ndim == 4 else nn.functional.adaptive_avg_pool1d
            x = pool(x, self.size)
        return self.net(x)


@register_term("vid", description="variational information distillation: Gaussian likelihood of the teacher's "
                                    "features given the student's (Ahn et al., CVPR 2019)")
class VIDTerm(FeatureTerm):
    """VID over stage i ↔ stage i (``pairs: index``), summed over pairs: per pair a regressor μ (1×1 convs) and a
    learned per-channel variance (initial ``init_var`` = 5); published (RepDistiller CIFAR-100) weight 1, CE 1.
    The student map must be at least the teacher's size (a larger one is pooled); otherwise tap other layers."""

    default_pairs = "index"
    layouts = ("BCHW", "BCL")

    def __init__(self, pairs: PairSpec | None = None, teacher: int = 0, init_var: float = 5.0, eps: float = 1e-5
                 ) -> None:
        super().__init__(pairs, teacher)
        if not (init_var > eps > 0):
            raise ConfigError(f"need init_var > eps > 0, got init_var={init_var}, eps={eps}")
        self.init_var, self.eps = float(init_var), float(eps)
        self.regressors = nn.ModuleList()
        self.log_scales = nn.ParameterList()

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        s_shapes = ctx.student_shapes([s for s, _ in self.pairs])
        t_shapes = ctx.teacher_shapes([t for _, t in self.pairs], self.teacher_index)
        for s, t in self.pairs:
            cs, ct = s_shapes[s], t_shapes[t]
            if len(cs) != len(ct) or any(a < b for a, b in zip(cs[2:], ct[2:], strict=True)):
                raise ConfigError(f"loss term '{self.name}': student layer '{s}' {tuple(cs)} must be at least the size "
                                  f"of teacher layer '{t}' {tuple(ct)} (a larger map is pooled); pair other layers")
            self.regressors.append(VIDRegressor(cs[1], ct[1], ct[1], tuple(ct[2:])))
            self.log_scales.append(nn.Parameter(torch.full((ct[1],), features.vid_log_scale_init(self.init_var,
                                                                                                  self.eps))))

    def compute(self, inp: TermInputs) -> Tensor:
        parts = zip(self.regressors, self.log_scales, self.features(inp), strict=True)
        return torch.stack([features.vid_nll(g(fs), ft, a, self.eps) for g, a, (fs, ft) in parts]).sum()


@register_term("fsp", description="flow of solution procedure: match Gram matrices between consecutive layers (Yim et "
                                    "al., CVPR 2017)")
class FSPTerm(FeatureTerm):
    """FSP between consecutive tapped stages (``pairs: index``: stage i of each model, at least two pairs), summed
    over the consecutive pairs; published (RepDistiller CIFAR-100) weight 50, as an initialisation stage. Paired
    stages must have equal channel counts (the paper's premise, e.g. resnet56 → resnet20); ``connector: conv1x1``
    (or ``linear``) maps each student stage to its teacher's channels first — a kdkit extension for pairs of other
    widths."""

    default_pairs = "index"
    layouts = ("BCHW", "BCL")

    def __init__(self, pairs: PairSpec | None = None, teacher: int = 0, connector: str = "none") -> None:
        super().__init__(pairs, teacher)
        if connector not in ("none", *KINDS):
            raise ConfigError(f"connector must be one of none, {', '.join(KINDS)}; got '{connector}'")
        self.connector_kind = connector
        self.connectors = nn.ModuleList()

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        if len(self.pairs) < 2:
            raise ConfigError(f"loss term '{self.name}': FSP relates consecutive layers and needs at least two pairs, "
                              f"got {self.pairs}")
        if self.connector_kind != "none":
            self.connectors = self.build_connectors(ctx, self.connector_kind)
            return
        s_shapes = ctx.student_shapes([s for s, _ in self.pairs])
        t_shapes = ctx.teacher_shapes([t for _, t in self.pairs], self.teacher_index)
        for s, t in self.pairs:
            if s_shapes[s][1] != t_shapes[t][1]:
                raise ConfigError(f"loss term '{self.name}': student layer '{s}' has {s_shapes[s][1]} channels, "
                                  f"teacher layer '{t}' {t_shapes[t][1]}; FSP compares equal widths -- pair other "
                                  f"layers or set params: {{connector: conv1x1}}")
        self.connectors = nn.ModuleList(nn.Identity() for _ in self.pairs)

    def compute(self, inp: TermInputs) -> Tensor:
        mapped = self.mapped_features(inp, self.connectors)
        return features.fsp_loss([gs for gs, _ in mapped], [ft for _, ft in mapped])


@register_term("ab", description="activation boundaries: the student's mapped neurons on the teacher's side of zero, "
                                   "with a margin (Heo et al., AAAI 2019)")
class ABTerm(FeatureTerm):
    """AB over stage i ↔ stage i (``pairs: index``) with a 1×1 conv + BatchNorm connector per pair (RepDistiller's
    ``Connector``), margin μ = 1, deeper layers weighted more (2^{i−n+1}). The paper and RepDistiller use AB alone as
    an initialisation (30 epochs) before training with CE (+KD): give the term a ``stop_epoch`` and the others a
    ``start_epoch`` (recipes/methods/ab.yaml)."""

    default_pairs = "index"
    layouts = ("BCHW", "BCL")

    def __init__(self, pairs: PairSpec | None = None, teacher: int = 0, margin: float = 1.0,
                 connector: str = "conv1x1") -> None:
        super().__init__(pairs, teacher)
        if margin < 0:
            raise ConfigError(f"margin must be >= 0, got {margin}")
        self.margin, self.connector_kind = float(margin), connector
        self.connectors = nn.ModuleList()

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        self.connectors = self.build_connectors(ctx, self.connector_kind)

    def compute(self, inp: TermInputs) -> Tensor:
        mapped = self.mapped_features(inp, self.connectors)
        return features.ab_loss([gs for gs, _ in mapped], [ft for _, ft in mapped], self.margin)


class ABF(nn.Module):
    """ReviewKD's attention-based fusion block for one level (Chen et al., CVPR 2021, sec. 3.2; the reference's
    ``ABF``): the student map through a 1×1 conv + BN to ``c_mid`` channels; fused with the next deeper level's
    output by two per-pixel attention maps (a 1×1 conv + sigmoid over both, :func:`kdkit.losses.features.review_fuse`)
    unless it is the deepest level; resized (nearest) to the teacher's map; a 3×3 conv + BN to the teacher's channels.
    """

    def __init__(self, c_in: int, c_mid: int, c_out: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(c_in, c_mid, 1, bias=False), nn.BatchNorm2d(c_mid))
        self.conv2 = nn.Sequential(nn.Conv2d(c_mid, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.att = nn.Sequential(nn.Conv2d(2 * c_mid, 2, 1), nn.Sigmoid()) if fuse else None
        for conv in (self.conv1[0], self.conv2[0]):  # the reference's initialisation
            nn.init.kaiming_uniform_(conv.weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(B, c_in, H, W), the deeper level's fused (B, c_mid, h, w) or None -> (output (B, c_out, *out_size), the
        fused map handed to the next shallower level)."""
        x = self.conv1(x)
        if self.att is not None:
            if residual is None:
                raise ConfigError("ABF: a fusing level needs the deeper level's output")
            up = nn.functional.interpolate(residual, size=tuple(x.shape[2:]), mode="nearest")
            x = features.review_fuse(x, up, self.att(torch.cat([x, up], dim=1)))
        if tuple(x.shape[2:]) != tuple(out_size):
            x = nn.functional.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


def _as_map(f: Tensor) -> Tensor:
    """(B, C, H, W) as is; a (B, D) vector (the pooled embedding) as a (B, D, 1, 1) map."""
    return f[:, :, None, None] if f.ndim == 2 else f


@register_term("reviewkd", description="knowledge review: student stages fused deep-to-shallow by attention (ABF), "
                                         "hierarchical context loss to the teacher's (Chen et al., CVPR 2021)")
class ReviewKDTerm(FeatureTerm):
    """ReviewKD: every student level (stage i ↔ stage i, ``pairs: index``, then the pooled embeddings ``embed``) is
    fused with the deeper ones by ABF blocks (trainable, sized by probing: 1×1 conv to ``min(max_mid_channels,
    C_deepest_student)`` channels, a 3×3 conv to each teacher level's channels, resized to its map) and compared with
    the teacher's level by the hierarchical context loss (pyramid 4, 2, 1; weights 1, ½, ¼, ⅛ normalised), summed
    over levels. Published (reference, CIFAR-100): weight 1, CE 1, the weight warmed up over the first 20 of 240
    epochs (``warmup_epochs``). ``embed: false`` drops the embedding level."""

    default_pairs = "index"
    layouts = ("BCHW", "BD")

    def __init__(self, pairs: PairSpec | None = None, teacher: int = 0, embed: bool = True,
                 max_mid_channels: int = 512, pool_sizes: Sequence[int] = (4, 2, 1), decay: float = 0.5) -> None:
        super().__init__(pairs, teacher)
        if max_mid_channels < 1 or not pool_sizes or any(int(p) < 1 for p in pool_sizes) or not 0 < decay <= 1:
            raise ConfigError(f"loss term 'reviewkd': need max_mid_channels >= 1, pool_sizes of positive ints and "
                              f"0 < decay <= 1, got {max_mid_channels}, {list(pool_sizes)}, {decay}")
        self.embed, self.max_mid = bool(embed), int(max_mid_channels)
        self.pool_sizes, self.decay = tuple(int(p) for p in pool_sizes), float(decay)
        self.abfs = nn.ModuleList()
        self.out_sizes: list[tuple[int, int]] = []

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        if self.embed and ("embed", "embed") not in self.pairs:
            self.pairs.append(("embed", "embed"))
            self.check_layouts(ctx)
        s_shapes = ctx.student_shapes([s for s, _ in self.pairs])
        t_shapes = ctx.teacher_shapes([t for _, t in self.pairs], self.teacher_index)
        shapes = [(tuple(s_shapes[s]) + (1, 1))[:4] if len(s_shapes[s]) == 2 else tuple(s_shapes[s])
                  for s, _ in self.pairs]
        t4 = [(tuple(t_shapes[t]) + (1, 1))[:4] if len(t_shapes[t]) == 2 else tuple(t_shapes[t]) for _, t in self.pairs]
        mid = min(self.max_mid, shapes[-1][1])
        n = len(self.pairs)
        self.abfs = nn.ModuleList(ABF(cs[1], mid, ct[1], fuse=i < n - 1) for i, (cs, ct) in enumerate(zip(shapes, t4,
                                                                                                        strict=True)))
        self.out_sizes = [(int(ct[2]), int(ct[3])) for ct in t4]

    def compute(self, inp: TermInputs) -> Tensor:
        feats = [(_as_map(fs), _as_map(ft)) for fs, ft in self.features(inp)]
        outs: list[Tensor] = [feats[0][0]] * len(feats)
        residual: Tensor | None = None
        for i in reversed(range(len(feats))):  # deepest level first: each shallower one reviews the deeper ones
            outs[i], residual = self.abfs[i](feats[i][0], residual, self.out_sizes[i])
        return features.hcl_loss(outs, [ft for _, ft in feats], self.pool_sizes, self.decay)
