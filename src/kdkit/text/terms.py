"""TinyBERT- and DistilBERT-style loss terms for transformer (and other) text classifiers.

TinyBERT (Jiao et al., "TinyBERT: Distilling BERT for Natural Language Understanding", Findings of EMNLP 2020)
distils four kinds of knowledge from a teacher with N layers into a student with M layers, pairing student layer m
with teacher layer g(m):

* ``tinybert_embedding`` -- ``MSE(E_S W_e, E_T)`` between embedding-layer outputs (eq. 9);
* ``tinybert_hidden``    -- ``Σ_m MSE(H_S^m W_h, H_T^{g(m)})`` between layer outputs (eq. 8); ``W_h`` is one learnt
  linear map shared by all layers (as in the reference code), created only when the widths differ;
* ``tinybert_attention`` -- ``Σ_m (1/h) Σ_i MSE(A_S^{m,i}, A_T^{g(m),i})`` between attention matrices (eq. 7); by
  default the *unnormalised* scores QKᵀ/√d, which the paper found to converge faster than softmax probabilities;
* ``tinybert_prediction`` -- soft cross-entropy ``−Σ softmax(z_T/T) log softmax(z_S/T)`` (eq. 10), or per-class
  sigmoid BCE against the teacher's probabilities for multi-label data (Hinton KD applied per class).

DistilBERT (Sanh et al., 2019) adds ``distilbert_cosine``: ``1 − cos(h_S, h_T)`` per token on the last hidden states.

The math is :mod:`kdkit.losses.transformer` (and :mod:`kdkit.losses.logits` for multi-label); these terms pick the
tapped tensors, own the learnt maps W, and sum over mapped layers. Conventions (see docs/text.md):

* Padding is masked (the token mask is ``input_ids != pad``): the MSE and cosine terms average over *real* tokens;
  the attention term zeroes every (query, key) entry that touches padding and averages over all entries -- the
  reference code's normalisation, which its weight of 1 assumes.
* Sums over mapped layers, means within a layer (the reference code's ``rep_loss += mse(...)``).
* Soft cross-entropy is ``batchmean`` × T² (kdkit's convention; TinyBERT uses T = 1, the default here).
* Layer maps (``layer_map``), :func:`kdkit.losses.transformer.layer_map`: ``uniform`` -- g(m) = ⌊m·N/M⌋ (1-based,
  TinyBERT's uniform strategy); ``last`` -- the top M teacher layers; an explicit list of M teacher layers
  (1-based); plus ``final`` here -- only the last student layer with the last teacher layer (DistilBERT's cosine).
* Heads: when the student has h_S heads and the teacher h_T = g·h_S, each student head is compared with the mean of
  g consecutive teacher heads (and symmetrically); otherwise both sides are averaged over heads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from kdkit.errors import ConfigError, ShapeError
from kdkit.losses.logits import multilabel_kd
from kdkit.losses.transformer import (
    attention_mse,
    embedding_mse,
    hidden_cosine,
    hidden_mse,
    layer_map,
    prediction_soft_ce,
)
from kdkit.terms.base import LossTerm, SetupContext, TermInputs, check_temperature, register_term
from kdkit.text.layout import TextLayout, text_layout

# ---------------------------------------------------------------------------------------------------- pure math


def sigmoid_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Multi-label KD, :func:`kdkit.losses.logits.multilabel_kd`: ``T² · mean_{b,k} BCE(σ(s/T), σ(t/T))``."""
    return multilabel_kd(student_logits, teacher_logits, temperature)


def map_heads(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Bring (B, h_S, L, L) and (B, h_T, L, L) to the same head count (group means, or the mean over all heads)."""
    hs, ht = student.shape[1], teacher.shape[1]
    if hs == ht:
        return student, teacher
    b, _, lq, lk = teacher.shape
    if ht % hs == 0:
        return student, teacher.reshape(b, hs, ht // hs, lq, lk).mean(2)
    if hs % ht == 0:
        return student.reshape(b, ht, hs // ht, lq, lk).mean(2), teacher
    return student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)


def layer_pairs(n_student: int, n_teacher: int, strategy: str | Sequence[int] = "uniform") -> list[tuple[int, int]]:
    """0-based (student layer, teacher layer) pairs for a layer mapping.

    ``uniform``, ``last`` and explicit lists (M teacher layers, 1-based) are :func:`kdkit.losses.transformer.layer_map`;
    ``final`` pairs only the last student layer with the last teacher layer (DistilBERT's cosine on the output); a dict
    ``{student layer: teacher layer}`` names the pairs, 0-based (``{0: 0, 1: 5}``).
    """
    if isinstance(strategy, dict):  # {student layer: teacher layer}, 0-based (e.g. {0: 0, 1: 5})
        try:
            pairs = sorted((int(a), int(b)) for a, b in strategy.items())
        except (TypeError, ValueError):
            raise ConfigError(f"layer_map {strategy!r} must map student layer numbers to teacher layer numbers "
                              f"(0-based integers)") from None
        bad = [(a, b) for a, b in pairs if not (0 <= a < n_student and 0 <= b < n_teacher)]
        if bad or not pairs:
            raise ConfigError(f"layer_map {strategy!r}: layers are 0-based, student 0..{n_student - 1}, teacher "
                              f"0..{n_teacher - 1}")
        return pairs
    if strategy == "final":
        if n_student < 1 or n_teacher < 1:
            raise ConfigError(f"layer_map: layer counts must be >= 1, got student {n_student}, teacher {n_teacher}")
        return [(n_student - 1, n_teacher - 1)]
    if not isinstance(strategy, str) and not all(isinstance(x, int) and not isinstance(x, bool) for x in strategy):
        raise ConfigError(f"layer_map list {list(strategy)} must hold {n_student} teacher layer numbers (1-based)")
    return [(m - 1, t - 1) for m, t in layer_map(n_student, n_teacher, strategy)]


# ---------------------------------------------------------------------------------------------------- terms


class _TextFeatureTerm(LossTerm):
    """Shared plumbing: layouts of student and teacher, the layer pairs, the token mask."""

    needs_teacher_features = True

    def __init__(self, layer_map: Any = "uniform", teacher: int = 0) -> None:
        super().__init__()
        if not isinstance(teacher, int) or teacher < 0:
            raise ConfigError(f"teacher must be a teacher index >= 0, got {teacher!r}")
        self.layer_map = layer_map
        self.teacher = teacher
        self.pad_token_id = 0
        self._s_paths: list[str] = []
        self._t_paths: list[str] = []
        self.pairs: list[tuple[int, int]] = []

    def _layouts(self, ctx: SetupContext) -> tuple[TextLayout, TextLayout]:
        if not ctx.has_teacher_features:
            raise ConfigError(f"loss term '{self.name}' reads teacher features, which a soft-label store does not "
                              f"keep; run the teacher (drop soft_labels) or use tinybert_prediction only")
        if self.teacher >= len(ctx.teachers):
            raise ConfigError(f"loss term '{self.name}' reads teacher {self.teacher}, but the recipe has "
                              f"{len(ctx.teachers)} teacher(s)")
        s = text_layout(ctx.student, "student")
        t = text_layout(ctx.teachers[self.teacher], f"teacher {self.teacher}")
        self.pad_token_id = s.pad_token_id
        return s, t

    def student_taps(self) -> list[str]:
        return list(dict.fromkeys(self._s_paths))

    def teacher_taps(self) -> dict[int, list[str]]:
        return {self.teacher: list(dict.fromkeys(self._t_paths))}

    def _mask(self, inp: TermInputs) -> Tensor:
        return inp.batch["input"] != self.pad_token_id

    def _feats(self, inp: TermInputs) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        if self.teacher >= len(inp.teachers):
            raise ConfigError(f"loss term '{self.name}' needs teacher {self.teacher}'s features; they are missing "
                              f"(a soft-label store keeps logits only)")
        return inp.student.features, inp.teachers[self.teacher].features

    def _pairwise_sum(self, inp: TermInputs, loss: Callable[[int, Tensor, Tensor, Tensor], Tensor]) -> Tensor:
        """``Σ_k loss(k, student[s_k], teacher[t_k], mask)`` over the mapped layer pairs (``_s_paths`` /
        ``_t_paths``, set by ``setup``); the mask marks real (non-padding) tokens."""
        sf, tf = self._feats(inp)
        mask = self._mask(inp)
        total = None
        for k, (a, b) in enumerate(zip(self._s_paths, self._t_paths, strict=True)):
            v = loss(k, sf[a], tf[b], mask)
            total = v if total is None else total + v
        assert total is not None
        return total


def _linear_map(d_in: int, d_out: int) -> nn.Module:
    """TinyBERT's W: a learnt linear map from student to teacher width (identity when they agree)."""
    return nn.Identity() if d_in == d_out else nn.Linear(d_in, d_out)


@register_term("tinybert_embedding", description="TinyBERT embedding-layer MSE(E_S·W_e, E_T), pads masked")
class TinyBertEmbeddingTerm(_TextFeatureTerm):
    """``MSE(E_S W_e, E_T)`` between embedding-layer outputs (B, L, D) (TinyBERT eq. 9)."""

    def __init__(self, teacher: int = 0) -> None:
        super().__init__("uniform", teacher)
        self.proj: nn.Module = nn.Identity()

    def setup(self, ctx: SetupContext) -> None:
        s, t = self._layouts(ctx)
        self._s_paths, self._t_paths = [s.embedding], [t.embedding]
        ds = ctx.student_shapes([s.embedding])[s.embedding][-1]
        dt = ctx.teacher_shapes([t.embedding], self.teacher)[t.embedding][-1]
        self.proj = _linear_map(ds, dt)

    def compute(self, inp: TermInputs) -> Tensor:
        sf, tf = self._feats(inp)
        return embedding_mse(sf[self._s_paths[0]], tf[self._t_paths[0]], self.proj, self._mask(inp))


@register_term("tinybert_hidden", description="TinyBERT hidden-state MSE via a learnt linear map, per mapped layer")
class TinyBertHiddenTerm(_TextFeatureTerm):
    """``Σ_m MSE(H_S^m W_h, H_T^{g(m)})`` over mapped layers (TinyBERT eq. 8).

    Args:
        layer_map: ``uniform`` (default), ``last``, ``final`` or a list of teacher layers (module docstring).
        shared_map: one ``W_h`` for all layers (TinyBERT's code) or one per mapped layer.
        teacher: teacher index.
    """

    def __init__(self, layer_map: Any = "uniform", shared_map: bool = True, teacher: int = 0) -> None:
        super().__init__(layer_map, teacher)
        self.shared_map = bool(shared_map)
        self.proj = nn.ModuleList()

    def setup(self, ctx: SetupContext) -> None:
        s, t = self._layouts(ctx)
        self.pairs = layer_pairs(s.num_layers, t.num_layers, self.layer_map)
        self._s_paths = [s.hidden[i] for i, _ in self.pairs]
        self._t_paths = [t.hidden[j] for _, j in self.pairs]
        s_shapes = ctx.student_shapes(list(dict.fromkeys(self._s_paths)))
        t_shapes = ctx.teacher_shapes(list(dict.fromkeys(self._t_paths)), self.teacher)
        widths = [(s_shapes[a][-1], t_shapes[b][-1]) for a, b in zip(self._s_paths, self._t_paths, strict=True)]
        if self.shared_map:
            if len(set(widths)) != 1:
                raise ConfigError(f"loss term '{self.name}': mapped layers have different widths {sorted(set(widths))}"
                                  f"; set shared_map: false")
            self.proj = nn.ModuleList([_linear_map(*widths[0])])
        else:
            self.proj = nn.ModuleList(_linear_map(a, b) for a, b in widths)

    def compute(self, inp: TermInputs) -> Tensor:
        return self._pairwise_sum(inp, lambda k, s, t, mask: hidden_mse(
            s, t, self.proj[0 if self.shared_map else k], mask))


@register_term("tinybert_attention", description="TinyBERT attention-matrix MSE per head over mapped layers")
class TinyBertAttentionTerm(_TextFeatureTerm):
    """``Σ_m (1/h) Σ_i MSE(A_S^{m,i}, A_T^{g(m),i})`` (TinyBERT eq. 7), real (query, key) pairs only.

    Args:
        layer_map: as for ``tinybert_hidden``.
        attention: ``scores`` (QKᵀ/√d before the mask and softmax, the TinyBERT code's choice) or ``probs``.
        teacher: teacher index.
    """

    def __init__(self, layer_map: Any = "uniform", attention: str = "scores", teacher: int = 0) -> None:
        super().__init__(layer_map, teacher)
        if attention not in ("scores", "probs"):
            raise ConfigError(f"attention must be 'scores' or 'probs', got {attention!r}")
        self.attention = attention

    def setup(self, ctx: SetupContext) -> None:
        s, t = self._layouts(ctx)
        for role, lay in (("student", s), (f"teacher {self.teacher}", t)):
            if lay.attention_scores is None:
                raise ConfigError(f"loss term '{self.name}': the {role} has no attention maps (a non-transformer); "
                                  f"drop the term or use a transformer {role}")
        self.pairs = layer_pairs(s.num_layers, t.num_layers, self.layer_map)
        s_list = s.attention_scores if self.attention == "scores" else s.attention_probs
        t_list = t.attention_scores if self.attention == "scores" else t.attention_probs
        assert s_list is not None and t_list is not None
        self._s_paths = [s_list[i] for i, _ in self.pairs]
        self._t_paths = [t_list[j] for _, j in self.pairs]

    def compute(self, inp: TermInputs) -> Tensor:
        return self._pairwise_sum(inp, lambda k, s, t, mask: attention_mse(*map_heads(s, t), mask))


@register_term("distilbert_cosine", description="DistilBERT cosine loss 1 − cos(h_S, h_T) on (last) hidden states")
class DistilBertCosineTerm(_TextFeatureTerm):
    """Mean over real tokens of ``1 − cos(h_S W, h_T)`` (Sanh et al., 2019), summed over mapped layers.

    Args:
        layer_map: ``final`` (default: the output hidden states, as DistilBERT) or any mapping of ``tinybert_hidden``.
        teacher: teacher index.
    """

    def __init__(self, layer_map: Any = "final", teacher: int = 0) -> None:
        super().__init__(layer_map, teacher)
        self.proj: nn.Module = nn.Identity()

    def setup(self, ctx: SetupContext) -> None:
        s, t = self._layouts(ctx)
        self.pairs = layer_pairs(s.num_layers, t.num_layers, self.layer_map)
        self._s_paths = [s.hidden[i] for i, _ in self.pairs]
        self._t_paths = [t.hidden[j] for _, j in self.pairs]
        ds = ctx.student_shapes(self._s_paths[:1])[self._s_paths[0]][-1]
        dt = ctx.teacher_shapes(self._t_paths[:1], self.teacher)[self._t_paths[0]][-1]
        self.proj = _linear_map(ds, dt)

    def compute(self, inp: TermInputs) -> Tensor:
        return self._pairwise_sum(inp, lambda k, s, t, mask: hidden_cosine(s, t, mask, self.proj))


@register_term("tinybert_prediction", description="TinyBERT prediction-layer soft CE with T (sigmoid BCE for "
                                                     "multi-label)")
class TinyBertPredictionTerm(LossTerm):
    """Soft cross-entropy between teacher and student predictions (TinyBERT eq. 10), × T².

    Single-label: ``T²·mean_b −Σ_k softmax(z_T/T)_k log softmax(z_S/T)_k``. Multi-label targets ((B, K) in the batch,
    or ``multilabel: true``): per-class sigmoid BCE against ``σ(z_T/T)``. Works with a soft-label store (logits only).

    Args:
        temperature: T > 0 (TinyBERT uses 1).
        multilabel: ``auto`` (from the target's shape), true or false.
    """

    def __init__(self, temperature: float = 1.0, multilabel: bool | str = "auto") -> None:
        super().__init__()
        if multilabel not in ("auto", True, False):
            raise ConfigError(f"multilabel must be auto, true or false, got {multilabel!r}")
        self.temperature = check_temperature(temperature)
        self.multilabel = multilabel

    def compute(self, inp: TermInputs) -> Tensor:
        assert inp.teacher is not None
        s, t = inp.student.logits, inp.teacher.logits
        if s.shape != t.shape:
            raise ShapeError(f"loss term '{self.name}': student logits {tuple(s.shape)} and teacher logits "
                             f"{tuple(t.shape)} differ; both must predict the same classes")
        ml = inp.batch["target"].dim() == 2 if self.multilabel == "auto" else bool(self.multilabel)
        if ml:
            return sigmoid_kd(s, t, self.temperature)
        return prediction_soft_ce(s, t, self.temperature)


# Terms that read features of kdkit text models (hf:, textnn:); image contract tests must give them text models.
TEXT_FEATURE_TERMS = ("tinybert_embedding", "tinybert_hidden", "tinybert_attention", "distilbert_cosine")

__all__ = ["TEXT_FEATURE_TERMS", "TinyBertEmbeddingTerm", "TinyBertHiddenTerm", "TinyBertAttentionTerm",
           "TinyBertPredictionTerm", "DistilBertCosineTerm", "layer_pairs", "map_heads", "sigmoid_kd"]
