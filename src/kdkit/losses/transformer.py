"""Transformer distillation losses: TinyBERT (Jiao et al., "TinyBERT: Distilling BERT for Natural Language
Understanding", Findings of EMNLP 2020) and DistilBERT's hidden-state cosine (Sanh et al., 2019).

Shapes use Hugging Face conventions: hidden states (B, L, d) — ``hidden_states[0]`` is the embedding output and
``hidden_states[m]`` the output of layer m — and attentions (B, heads, L, L), ``attentions[m − 1]`` for layer m.
Masks are (B, L) with 1 for real tokens and 0 for padding (``attention_mask``).

TinyBERT's total is ``Σ_m (L_attn + L_hidn)`` over mapped layers ``+ L_embd`` (general and task distillation),
then ``L_pred`` — all weights 1 in the paper; the layer sums are the term's job, :func:`layer_map` gives the pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kdkit.errors import ConfigError, ShapeError
from kdkit.losses.logits import soft_cross_entropy

Projection = Callable[[Tensor], Tensor]


def _masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of (B, L, ...) ``x`` over the positions where ``mask`` (B, L) is 1 (all positions without a mask)."""
    if mask is None:
        return x.mean()
    if mask.shape != x.shape[:2]:
        raise ShapeError(f"mask {tuple(mask.shape)} must be (B, L) = {tuple(x.shape[:2])}")
    m = mask.to(x.dtype).view(*mask.shape, *([1] * (x.ndim - 2)))
    per_pos = math.prod(x.shape[2:]) if x.ndim > 2 else 1
    return (x * m).sum() / (m.sum() * per_pos).clamp_min(1.0)


def _hidden_pair(name: str, s: Tensor, t: Tensor, proj: Projection | None) -> tuple[Tensor, Tensor]:
    s = proj(s) if proj is not None else s
    if s.shape != t.shape:
        hint = "" if proj is not None else "; give a linear projection W (student width -> teacher width)"
        raise ShapeError(f"{name}: student {tuple(s.shape)} and teacher {tuple(t.shape)} states differ{hint}")
    return s.float(), t.detach().float()


def hidden_mse(s_h: Tensor, t_h: Tensor, proj: Projection | None = None, mask: Tensor | None = None) -> Tensor:
    """TinyBERT hidden-state loss ``MSE(H_s W_h, H_t)`` (paper eq. 8).

    Convention: without ``mask``, the mean over all B·L·d elements, padding included — TinyBERT's reference
    (``MSELoss()`` on the full tensors), which its weights of 1 assume. With ``mask``, the mean over real tokens only
    (padding never carries knowledge; the value then does not depend on how much a batch is padded).

    Args:
        s_h: (B, L, d_s) student hidden states.
        t_h: (B, L, d_t) teacher hidden states; no gradient flows into them.
        proj: the learnable ``W_h`` (e.g. ``nn.Linear(d_s, d_t)``), trained with the student; None if d_s = d_t.
        mask: optional (B, L) attention mask.
    """
    s, t = _hidden_pair("hidden_mse", s_h, t_h, proj)
    return _masked_mean((s - t).pow(2), mask)


def embedding_mse(s_emb: Tensor, t_emb: Tensor, proj: Projection | None = None, mask: Tensor | None = None) -> Tensor:
    """TinyBERT embedding-layer loss ``MSE(E_s W_e, E_t)`` (paper eq. 9); same conventions as :func:`hidden_mse`.

    Args:
        s_emb: (B, L, d_s) student embedding output (``hidden_states[0]``).
        t_emb: (B, L, d_t) teacher embedding output; no gradient flows into it.
        proj: the learnable ``W_e``.
        mask: optional (B, L) attention mask.
    """
    s, t = _hidden_pair("embedding_mse", s_emb, t_emb, proj)
    return _masked_mean((s - t).pow(2), mask)


def attention_mse(s_att: Tensor, t_att: Tensor, mask: Tensor | None = None, average_heads: bool = False) -> Tensor:
    """TinyBERT attention loss ``(1/h) Σ_heads MSE(A_s, A_t)`` (paper eq. 7).

    The paper matches *unnormalised* attention scores ``QKᵀ/√d``, in which padded keys carry a large negative
    additive mask (−10000 or −inf). Its reference zeroes every entry ≤ −100 on both sides and averages over all
    B·h·L·L entries. We do the same (so either scores or Hugging Face's post-softmax ``attentions`` can be given — for
    probabilities nothing is ≤ −100 and the masked keys already hold 0); in addition, with ``mask`` every entry whose
    query *or* key is padding is zeroed on both sides, so padding never contributes — the average stays over all
    entries, the reference's normalisation, so the paper's weight of 1 still applies.

    Args:
        s_att: (B, h_s, L, L) student attention scores or probabilities.
        t_att: (B, h_t, L, L) teacher's, the same kind; no gradient flows into them.
        mask: optional (B, L) attention mask.
        average_heads: compare head-averaged maps (B, 1, L, L) — needed when h_s ≠ h_t (TinyBERT requires equal
            head counts; averaging is kdkit's fallback, not the paper's).
    """
    if s_att.ndim != 4 or t_att.ndim != 4:
        raise ShapeError(f"attention_mse expects (B, heads, L, L) maps, got {tuple(s_att.shape)} and "
                         f"{tuple(t_att.shape)}")
    s, t = s_att.float(), t_att.detach().float()
    s = torch.where(s <= -1e2, torch.zeros_like(s), s)
    t = torch.where(t <= -1e2, torch.zeros_like(t), t)
    if average_heads:
        s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
    if s.shape != t.shape:
        raise ShapeError(f"attention_mse: student {tuple(s_att.shape)} and teacher {tuple(t_att.shape)} attentions "
                         f"differ; TinyBERT needs equal head counts and lengths (or pass average_heads=True)")
    if mask is not None:
        if mask.shape != (s.shape[0], s.shape[-1]):
            raise ShapeError(f"attention_mse: mask {tuple(mask.shape)} must be (B, L) = ({s.shape[0]}, {s.shape[-1]})")
        m = mask.to(s.dtype)
        pair = (m[:, :, None] * m[:, None, :])[:, None]  # (B, 1, L, L): query and key both real
        s, t = s * pair, t * pair
    return F.mse_loss(s, t)


def prediction_soft_ce(s_logits: Tensor, t_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """TinyBERT prediction-layer loss: soft cross-entropy with temperature (paper eq. 10, T = 1 in the paper).

    This is :func:`kdkit.losses.logits.soft_cross_entropy` (``batchmean``, × T²). The TinyBERT reference averages
    over B·K elements instead (``(−p·log q).mean()``), i.e. its value is ours divided by K (÷2 for binary tasks);
    we keep kdkit's one convention for distribution losses, so weights are comparable with the ``kd`` term.
    """
    return soft_cross_entropy(s_logits, t_logits, temperature)


def hidden_cosine(s_h: Tensor, t_h: Tensor, mask: Tensor | None = None, proj: Projection | None = None) -> Tensor:
    """DistilBERT's cosine loss on the last hidden states: ``mean over real tokens of 1 − cos(h_s, h_t)``.

    DistilBERT (Sanh et al., 2019, "DistilBERT, a distilled version of BERT") selects the non-padding tokens and applies
    ``CosineEmbeddingLoss`` with target 1 (mean), weight α_cos = 1 next to α_ce = 5 and α_mlm = 2. Matches that.

    Args:
        s_h: (B, L, d) student hidden states (d must equal the teacher's unless ``proj`` maps it).
        t_h: (B, L, d) teacher hidden states; no gradient flows into them.
        mask: optional (B, L) attention mask; all tokens count without it.
        proj: optional projection of the student states.

    Returns:
        Scalar in [0, 2], 0 when every student vector points the same way as the teacher's (invariant to scaling).
    """
    s, t = _hidden_pair("hidden_cosine", s_h, t_h, proj)
    cos = F.cosine_similarity(s, t, dim=-1, eps=1e-8)  # (B, L)
    return _masked_mean(1.0 - cos, mask)


def layer_map(n_student: int, n_teacher: int, strategy: str | Sequence[int] = "uniform",
              with_embeddings: bool = False) -> list[tuple[int, int]]:
    """Which teacher layer each student layer learns from: pairs ``(m, g(m))`` for m = 1..M (1-based layers).

    * ``"uniform"`` — TinyBERT's ``g(m) = m·N/M`` (every (N/M)-th teacher layer; floored when M does not divide N,
      which stays strictly increasing because N ≥ M). Same as the reference's 0-based ``(i+1)·k − 1``.
    * ``"last"`` — the top M teacher layers, ``g(m) = N − M + m``.
    * an explicit list of M teacher layers (1-based).

    With ``with_embeddings`` the pair (0, 0) — embedding outputs — comes first, so the indices address HF
    ``hidden_states`` directly; for ``attentions`` use index − 1.
    """
    if n_student < 1 or n_teacher < 1:
        raise ConfigError(f"layer_map: layer counts must be >= 1, got student {n_student}, teacher {n_teacher}")
    if isinstance(strategy, str):
        if n_student > n_teacher:
            raise ConfigError(f"layer_map: the student has more layers ({n_student}) than the teacher ({n_teacher}); "
                              f"give an explicit list of {n_student} teacher layers")
        if strategy == "uniform":
            targets = [m * n_teacher // n_student for m in range(1, n_student + 1)]
        elif strategy == "last":
            targets = [n_teacher - n_student + m for m in range(1, n_student + 1)]
        else:
            raise ConfigError(f"layer_map: strategy must be 'uniform', 'last' or a list of teacher layers, "
                              f"got {strategy!r}")
    else:
        targets = [int(x) for x in strategy]
        if len(targets) != n_student:
            raise ConfigError(f"layer_map: explicit map has {len(targets)} entries, the student has {n_student} layers")
        bad = [x for x in targets if not 1 <= x <= n_teacher]
        if bad:
            raise ConfigError(f"layer_map: teacher layers {bad} outside 1..{n_teacher} (1-based; 0 is the embeddings)")
    pairs = list(zip(range(1, n_student + 1), targets, strict=True))
    return [(0, 0), *pairs] if with_embeddings else pairs
