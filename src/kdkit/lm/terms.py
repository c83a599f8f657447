"""Token-level distillation terms for causal language models (the math: :mod:`kdkit.losses.tokens`).

Each term compares the student's and the teacher's next-token distributions at every token whose target is not -1
(padding and prompt tokens are -1), sums over the vocabulary and averages over those tokens. Logits arrive flattened
to (B·T, V) (a token is a sample, :mod:`kdkit.lm`); the mask is ``batch["target"] >= 0``. Hard-label training is the
ordinary ``ce`` term, which reads the same flattened targets, or ``lm_ce`` -- the same value computed in chunks.

| term | divergence | params |
|---|---|---|
| ``lm_forward_kl`` | KL(p‖q) | temperature |
| ``lm_reverse_kl`` | KL(q‖p) | temperature |
| ``lm_jsd`` | generalised JSD(β), TRL's convention | beta (0.5), temperature |
| ``lm_skew_kl`` | KL(p ‖ αp + (1−α)q), DistiLLM | alpha (0.1), temperature |
| ``lm_skew_reverse_kl`` | KL(q ‖ αq + (1−α)p), DistiLLM | alpha (0.1), temperature |
| ``lm_tvd`` | ½Σ|p − q| | temperature |
| ``lm_hidden_mse`` | Σ MSE(H_S W, H_T) over a layer map of decoder blocks (TinyBERT) | layer_map, shared_map |
| ``lm_hidden_cosine`` | Σ 1 − cos(h_S W, h_T) over a layer map (DistilBERT) | layer_map |
| ``lm_uld`` | Σ|sorted p − sorted q|, any two tokenizers (ULD) | temperature |
| ``lm_sampled_kl`` | KL(p‖q), unbiased estimate from a sampled token store (exact online) | |

Every term also takes ``chunk_tokens`` (token rows per chunk of the loss; default ~4M vocabulary entries).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from kdkit.errors import ConfigError
from kdkit.lm.store import SAMPLED_ENTROPY, SAMPLED_IDS, SAMPLED_RATIOS
from kdkit.losses import tokens
from kdkit.terms.base import LossTerm, TermInputs, check_temperature, register_term
from kdkit.text.terms import DistilBertCosineTerm, TinyBertHiddenTerm


def check_chunk_tokens(chunk_tokens: int | None) -> int | None:
    """``chunk_tokens`` as given, after checking it is ``None`` (no chunking) or a positive integer."""
    if chunk_tokens is not None and (isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int)
                                     or chunk_tokens < 1):
        raise ConfigError(f"chunk_tokens must be a positive integer (or null for no chunking), got {chunk_tokens!r}")
    return chunk_tokens


class TokenTerm(LossTerm):
    """Base of the token-level terms: a divergence ``kind`` of :mod:`kdkit.losses.tokens` over valid tokens."""

    kind: ClassVar[str] = "forward_kl"

    def __init__(self, temperature: float = 1.0, chunk_tokens: int | None = None, beta: float = 0.5,
                 alpha: float = 0.1) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        check_chunk_tokens(chunk_tokens)
        if not 0.0 <= float(beta) <= 1.0:
            raise ConfigError(f"beta must lie in [0, 1], got {beta}")
        if not 0.0 <= float(alpha) < 1.0:
            raise ConfigError(f"alpha must lie in [0, 1), got {alpha}")
        self.chunk_tokens = chunk_tokens
        self.beta = float(beta)
        self.alpha = float(alpha)

    def compute(self, inp: TermInputs) -> Tensor:
        s, t = inp.student.logits, inp.teacher.logits
        target = inp.batch["target"]
        if s.shape != t.shape:
            raise ConfigError(f"loss term '{self.name}': student logits {tuple(s.shape)} and teacher logits "
                              f"{tuple(t.shape)} differ; teacher and student must share the tokenizer (docs/lm.md)")
        if target.dim() != 1 or target.numel() != s.shape[0]:
            raise ConfigError(f"loss term '{self.name}' compares next-token distributions; it needs a language-model "
                              f"dataset (docs/lm.md), got targets of shape {tuple(target.shape)}")
        return tokens.token_divergence(s, t, target >= 0, self.kind, self.temperature, self.beta, self.alpha,
                                       self.chunk_tokens)

    def extra_repr(self) -> str:
        extra = {"generalized_jsd": f", beta={self.beta}", "skew_forward_kl": f", alpha={self.alpha}",
                 "skew_reverse_kl": f", alpha={self.alpha}"}.get(self.kind, "")
        return super().extra_repr() + f", temperature={self.temperature}{extra}"


def _term(name: str, kind: str, description: str, params: str) -> type[TokenTerm]:
    def __init__(self, temperature: float = 1.0, chunk_tokens: int | None = None, **kw: float) -> None:
        allowed = {"beta"} if kind == "generalized_jsd" else {"alpha"} if kind.startswith("skew") else set()
        if set(kw) - allowed:
            raise TypeError(f"unexpected params {sorted(set(kw) - allowed)}")
        TokenTerm.__init__(self, temperature, chunk_tokens, **kw)

    cls = type(f"Token_{kind}", (TokenTerm,), {"kind": kind, "__init__": __init__,
                                               "__doc__": f"{description} ({params})."})
    return register_term(name, description=description)(cls)


@register_term("lm_ce", description="next-token cross-entropy, chunked (= ce on LM data, less memory)")
class LMCrossEntropy(LossTerm):
    """Next-token cross-entropy, mean over tokens whose target is not -1: the value of ``ce`` on language-model data,
    computed in chunks so that no full float32 log-softmax copy of the (B·T, V) logits is held."""

    needs_teacher = False

    def __init__(self, chunk_tokens: int | None = None) -> None:
        super().__init__()
        self.chunk_tokens = check_chunk_tokens(chunk_tokens)

    def compute(self, inp: TermInputs) -> Tensor:
        return tokens.token_cross_entropy(inp.student.logits, inp.batch["target"], -1, self.chunk_tokens)


@register_term("lm_sampled_kl", description="token-level forward KL, unbiased from an importance-sampled token store "
               "(exact with a teacher online)")
class LMSampledKL(LossTerm):
    """Forward KL(p‖q) per token (T = 1) that a *sampled* token store estimates without bias (random-sampling KD,
    :func:`kdkit.losses.tokens.sampled_forward_kl`): with ``soft_labels:`` a store written with ``--sample`` it reads
    the stored draws; with a teacher online (or a top-k store) it is ``lm_forward_kl``."""

    def __init__(self, chunk_tokens: int | None = None) -> None:
        super().__init__()
        self.chunk_tokens = check_chunk_tokens(chunk_tokens)

    def compute(self, inp: TermInputs) -> Tensor:
        s, feats, target = inp.student.logits, inp.teacher.features, inp.batch["target"]
        if target.dim() != 1 or target.numel() != s.shape[0]:
            raise ConfigError(f"loss term '{self.name}' compares next-token distributions; it needs a language-model "
                              f"dataset (docs/lm.md), got targets of shape {tuple(target.shape)}")
        if SAMPLED_IDS in feats:
            return tokens.sampled_forward_kl(s, feats[SAMPLED_IDS], feats[SAMPLED_RATIOS], feats[SAMPLED_ENTROPY],
                                             target >= 0, self.chunk_tokens)
        return tokens.token_divergence(s, inp.teacher.logits, target >= 0, "forward_kl", chunk_tokens=self.chunk_tokens)


@register_term("lm_uld", description="Universal Logit Distillation: sorted-probability distance per token, for a "
               "teacher with another tokenizer (Boizard et al. 2024)")
class LMULD(LossTerm):
    """ULD loss (:func:`kdkit.losses.tokens.universal_logit_distance`): Σ_i |p_(i) − q_(i)| between the teacher's and
    the student's sorted next-token probabilities, mean over the tokens that count. The teacher may use another
    tokenizer (``teachers[i].params.input_tokenizer``, :mod:`kdkit.lm.crosstok`); its vocabulary size then differs,
    and positions its tokenization does not reach (NaN rows) are left out. Used beside ``ce`` in the paper."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)

    def compute(self, inp: TermInputs) -> Tensor:
        s, t, target = inp.student.logits, inp.teacher.logits, inp.batch["target"]
        if target.dim() != 1 or target.numel() != s.shape[0] or t.shape[0] != s.shape[0]:
            raise ConfigError(f"loss term '{self.name}' compares next-token distributions position by position; it "
                              f"needs a language-model dataset (docs/lm.md), got student rows {s.shape[0]}, teacher "
                              f"rows {t.shape[0]}, targets {tuple(target.shape)}")
        reached = ~torch.isnan(t[:, 0])
        return tokens.universal_logit_distance(s, torch.nan_to_num(t), (target >= 0) & reached, self.temperature)


@register_term("lm_hidden_mse", description="decoder hidden-state MSE per mapped layer, learnt linear map when widths "
               "differ (TinyBERT eq. 8 for causal LMs)")
class LMHiddenMSE(TinyBertHiddenTerm):
    """``Σ_(m, n) MSE(H_S^m W, H_T^n)`` over the pairs of ``layer_map`` between decoder block outputs (B, T, D): the
    TinyBERT hidden-state loss (Jiao et al., EMNLP 2020, eq. 8) generalised to causal LMs, means over the tokens that
    are not padding. ``layer_map``: ``{student layer: teacher layer}`` 0-based (``{0: 0, 1: 5}``), or ``uniform``
    (default), ``last``, ``final`` (:func:`kdkit.text.terms.layer_pairs`); W is learnt with the student when the
    widths differ (one shared, or one per pair with ``shared_map: false``)."""


@register_term("lm_hidden_cosine", description="decoder hidden-state cosine 1 - cos(h_S W, h_T) per mapped layer "
               "(DistilBERT's cosine for causal LMs)")
class LMHiddenCosine(DistilBertCosineTerm):
    """``Σ_(m, n) mean_t (1 − cos(h_S^m W, h_T^n))`` over the pairs of ``layer_map`` (DistilBERT's cosine loss, Sanh et
    al. 2019, on decoder block outputs), means over the tokens that are not padding; ``layer_map`` as
    ``lm_hidden_mse`` (default ``final``: the last block of each)."""


LMForwardKL = _term("lm_forward_kl", "forward_kl", "token-level forward KL(p_teacher ‖ q_student), mean per token",
                    "temperature")
LMReverseKL = _term("lm_reverse_kl", "reverse_kl", "token-level reverse KL(q_student ‖ p_teacher), mean per token",
                    "temperature")
LMJSD = _term("lm_jsd", "generalized_jsd", "token-level generalised JSD(beta) (GKD; TRL convention), mean per token",
              "beta, temperature")
LMSkewKL = _term("lm_skew_kl", "skew_forward_kl", "token-level skew KL(p ‖ a·p + (1-a)·q) (DistiLLM), mean per token",
                 "alpha, temperature")
LMSkewReverseKL = _term("lm_skew_reverse_kl", "skew_reverse_kl", "token-level skew reverse KL(q ‖ a·q + (1-a)·p) "
                        "(DistiLLM), mean per token", "alpha, temperature")
LMTVD = _term("lm_tvd", "total_variation", "token-level total variation 1/2·Σ|p − q|, mean per token", "temperature")

__all__ = ["LMCrossEntropy", "LMForwardKL", "LMHiddenCosine", "LMHiddenMSE", "LMJSD", "LMReverseKL", "LMSampledKL",
           "LMSkewKL", "LMSkewReverseKL", "LMTVD", "LMULD", "TokenTerm"]
