"""Token-level losses for causal language models. Pure functions of tensors; no modules, no state.

Every function compares, at each *valid* token position, the teacher's next-token distribution p with the student's
q (both at temperature T: ``p = softmax(t/T)``, ``q = softmax(s/T)``), sums over the vocabulary and averages over
the valid tokens of the whole batch:

    L = T² · (1 / Σ m) · Σ_{b,t} m_{b,t} · D(p_{b,t} ‖ q_{b,t})

``m`` is the mask (padding and prompt tokens are 0); a batch without a valid token gives 0. T² keeps the gradient
scale independent of T (Hinton et al., 2015; the house convention of :mod:`kdkit.losses.logits`); language-model
distillation normally runs at T = 1, where it is 1. This is TRL's ``reduction="batchmean"`` with labels (sum over the
vocabulary, mean over non-ignored tokens), not a mean over B·T·V elements.

Divergences ``D`` (p = teacher, q = student):

* ``forward_kl``: KL(p‖q) = Σ p (log p − log q) -- mode-covering; Hinton's KD per token (Kim & Rush 2016 word-level).
* ``reverse_kl``: KL(q‖p) = Σ q (log q − log p) -- mode-seeking (MiniLLM, Gu et al. 2024, token-level form).
* ``generalized_jsd`` (β): β·KL(p‖m) + (1−β)·KL(q‖m) with m = β·p + (1−β)·q -- the GKD paper's JSD(β) (Agarwal et al.
  2024, "On-Policy Distillation of Language Models", eq. 1) in TRL's convention (``GKDTrainer.generalized_jsd_loss``):
  β weights the *teacher* in the mixture; β = 0 is defined as KL(p‖q) and β = 1 as KL(q‖p) (the continuous form
  goes to 0 at both ends; JSD(β)/β → KL(p‖q) as β → 0 and JSD(β)/(1−β) → KL(q‖p) as β → 1). β = 0.5 is the usual,
  symmetric Jensen–Shannon divergence.
* ``skew_forward_kl`` (α): KL(p ‖ α·p + (1−α)·q) -- DistiLLM's skew KL (Ko et al., ICML 2024, eq. 4; α = 0.1 there);
  α = 0 is KL(p‖q).
* ``skew_reverse_kl`` (α): KL(q ‖ α·q + (1−α)·p) -- DistiLLM's skew reverse KL; α = 0 is KL(q‖p).
* ``total_variation``: ½ Σ |p − q| (DistillKit's TVD).

Memory: the logits are processed in chunks of ``chunk_tokens`` token rows, and each chunk's gradient with respect to
the student's logits is computed in the forward pass and written into one buffer (:class:`_ChunkedLoss`), so the
float32 log-probabilities, the mixture and the products exist for one chunk at a time and nothing of them is kept for
the backward pass. The only full (B, T, V) tensor a loss holds is that buffer -- the gradient of the student's logits,
which any training step has (benchmarks/lm_memory.py measures it).

A teacher may also be *sparse* (a token logit store): the top-k log-probabilities with their ids and the remaining
mass. :func:`sparse_token_divergence` then compares the two distributions coarsened to k + 1 outcomes (the k teacher
tokens and "any other token"), which is exact for the k listed tokens and never larger than the full divergence
(the data-processing inequality holds for every f-divergence above).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

KINDS = ("forward_kl", "reverse_kl", "generalized_jsd", "skew_forward_kl", "skew_reverse_kl", "total_variation")
_CHUNK_ELEMENTS = 1 << 22  # ~16 MB of float32 per chunk-sized temporary; a chunk holds a handful of them
_LOG_FLOOR = -1e4  # exp() of it is 0 in float32 and float64: a zero-probability teacher entry contributes exactly 0


def _check(kind: str, beta: float, alpha: float, temperature: float) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown token divergence '{kind}'; one of {', '.join(KINDS)}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must lie in [0, 1), got {alpha}")


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """Σ_v a (log a − log b) over the last axis, with 0·log 0 = 0 (``log_a`` holds no −inf: it is floored)."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def _mix(log_a: Tensor, log_b: Tensor, w: float) -> Tensor:
    """log(w·a + (1−w)·b) for 0 < w < 1, computed stably in log space."""
    return torch.logaddexp(log_a + math.log(w), log_b + math.log1p(-w))


def divergence_from_log_probs(kind: str, log_p: Tensor, log_q: Tensor, beta: float = 0.5, alpha: float = 0.1
                              ) -> Tensor:
    """D(p ‖ q) per row from normalised log-distributions over the last axis (see the module docstring).

    Args:
        kind: one of :data:`KINDS`.
        log_p: (N, V) teacher log-probabilities (no gradient expected).
        log_q: (N, V) student log-probabilities.
        beta: JSD(β) mixture weight of the teacher.
        alpha: skew of the skew KLs.

    Returns:
        (N,) divergences.
    """
    log_p = log_p.clamp_min(_LOG_FLOOR)
    if kind == "forward_kl" or (kind == "generalized_jsd" and beta == 0.0) or (kind == "skew_forward_kl"
                                                                               and alpha == 0.0):
        return _kl(log_p, log_q)
    if kind == "reverse_kl" or (kind == "generalized_jsd" and beta == 1.0) or (kind == "skew_reverse_kl"
                                                                               and alpha == 0.0):
        return _kl(log_q, log_p)
    if kind == "generalized_jsd":
        log_m = _mix(log_p, log_q, beta)
        return beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)
    if kind == "skew_forward_kl":
        return _kl(log_p, _mix(log_p, log_q, alpha))
    if kind == "skew_reverse_kl":
        return _kl(log_q, _mix(log_q, log_p, alpha))
    if kind == "total_variation":
        return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)
    raise ValueError(f"unknown token divergence '{kind}'; one of {', '.join(KINDS)}")


def _work_dtype(*tensors: Tensor) -> torch.dtype:
    # float64 inputs (the tests' reference path) stay float64; half/bfloat16 logits are upcast per chunk.
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _rows(x: Tensor, v: int, what: str) -> Tensor:
    if x.shape[-1] != v:
        raise ValueError(f"{what} has {x.shape[-1]} entries in its last axis, expected {v}")
    return x.reshape(-1, v)


def _flat_mask(mask: Tensor | None, n: int, like: Tensor) -> Tensor:
    if mask is None:
        return torch.ones(n, dtype=torch.bool, device=like.device)
    if mask.numel() != n:
        raise ValueError(f"mask has {mask.numel()} entries ({tuple(mask.shape)}) but the logits hold {n} token rows")
    return mask.reshape(n).to(device=like.device, dtype=torch.bool)


def chunk_rows(vocab: int, chunk_tokens: int | None) -> int:
    """Token rows per chunk: ``chunk_tokens``, or ~4M elements' worth (128 rows at V = 32k)."""
    if chunk_tokens is not None:
        if int(chunk_tokens) < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        return int(chunk_tokens)
    return max(1, _CHUNK_ELEMENTS // max(1, vocab))


class _ChunkedLoss(torch.autograd.Function):
    """Σ_chunks fn(chunk) whose gradient w.r.t. the first tensor (the student's logits) is computed chunk by chunk
    during the forward pass, into one buffer of the logits' shape and dtype, which the backward pass scales and hands
    on (the fused-loss pattern of Liger-Kernel's chunked losses, here in plain PyTorch).

    Why not autograd over the loop (or ``torch.utils.checkpoint`` per chunk): slicing's backward materialises a
    full-size zero tensor per chunk, and plain autograd keeps every chunk's float32 temporaries until the backward
    pass; both add whole (B, T, V) copies. The buffer *is* the logits' gradient, which any training step holds.
    """

    @staticmethod
    def forward(ctx: Any, fn: Callable[..., Tensor], rows: int, s: Tensor, *others: Tensor) -> Tensor:
        grad = torch.empty_like(s)
        total = torch.zeros((), dtype=torch.float64 if s.dtype == torch.float64 else torch.float32, device=s.device)
        for a in range(0, s.shape[0], rows):
            with torch.enable_grad():
                sc = s[a : a + rows].detach().requires_grad_(True)
                val = fn(sc, *(o[a : a + rows] for o in others))
                (g,) = torch.autograd.grad(val, sc)
            grad[a : a + rows] = g
            total = total + val.detach().to(total.dtype)
        ctx.save_for_backward(grad)
        ctx.n_others = len(others)
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return (None, None, grad * grad_out.to(grad.dtype)) + (None,) * ctx.n_others


def _chunked_sum(fn: Callable[..., Tensor], tensors: list[Tensor], mask: Tensor, rows: int) -> Tensor:
    """Σ over rows of ``fn(*chunk, mask_chunk)``, chunk by chunk; only ``tensors[0]`` (the student) gets a gradient."""
    if mask.numel() == 0:  # no token at all
        return tensors[0].sum() * 0.0
    if torch.is_grad_enabled() and tensors[0].requires_grad:
        return _ChunkedLoss.apply(fn, rows, tensors[0], *[t.detach() for t in tensors[1:]], mask)
    parts = [fn(*(t[a : a + rows] for t in tensors), mask[a : a + rows]) for a in range(0, mask.numel(), rows)]
    return torch.stack(parts).sum()


def token_divergence(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None,
                     kind: str = "forward_kl", temperature: float = 1.0, beta: float = 0.5, alpha: float = 0.1,
                     chunk_tokens: int | None = None) -> Tensor:
    """Mean per valid token of D(softmax(t/T) ‖ softmax(s/T)), × T² (see the module docstring for D and why).

    Args:
        student_logits: (B, T, V) or (N, V) student logits (any float dtype; computed in float32, or float64 when an
            input is float64).
        teacher_logits: same shape; a constant (no gradient flows into it).
        mask: (B, T) or (N,) bool/0-1, True at the tokens that count (not padding, not prompt); None = all.
        kind: one of :data:`KINDS`.
        temperature: T > 0.
        beta: JSD(β) weight of the teacher in the mixture (``generalized_jsd``).
        alpha: skew α (``skew_forward_kl``, ``skew_reverse_kl``).
        chunk_tokens: token rows per chunk (None: ~4M vocabulary entries per chunk).

    Returns:
        Scalar loss; 0 when no token is valid, and 0 when the two distributions are equal.
    """
    _check(kind, beta, alpha, temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"token_divergence: student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ; teacher and student must share the vocabulary")
    v = student_logits.shape[-1]
    s = _rows(student_logits, v, "student_logits")
    t = _rows(teacher_logits.detach(), v, "teacher_logits")
    m = _flat_mask(mask, s.shape[0], s)
    dtype = _work_dtype(s, t)

    def per_chunk(sc: Tensor, tc: Tensor, mc: Tensor) -> Tensor:
        log_q = F.log_softmax(sc.to(dtype) / temperature, dim=-1)
        log_p = F.log_softmax(tc.to(dtype) / temperature, dim=-1)
        d = divergence_from_log_probs(kind, log_p, log_q, beta, alpha)
        return torch.where(mc, d, torch.zeros((), dtype=d.dtype, device=d.device)).sum()

    total = _chunked_sum(per_chunk, [s, t], m, chunk_rows(v, chunk_tokens))
    return total * (temperature ** 2) / m.sum().clamp_min(1)


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None, temperature: float = 1.0,
               chunk_tokens: int | None = None) -> Tensor:
    """Token-level forward KL(p‖q), mean over valid tokens, × T² (see :func:`token_divergence`)."""
    return token_divergence(student_logits, teacher_logits, mask, "forward_kl", temperature,
                            chunk_tokens=chunk_tokens)


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None, temperature: float = 1.0,
               chunk_tokens: int | None = None) -> Tensor:
    """Token-level reverse KL(q‖p), mean over valid tokens, × T² (see :func:`token_divergence`)."""
    return token_divergence(student_logits, teacher_logits, mask, "reverse_kl", temperature,
                            chunk_tokens=chunk_tokens)


def generalized_jsd(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None, beta: float = 0.5,
                    temperature: float = 1.0, chunk_tokens: int | None = None) -> Tensor:
    """Token-level generalised JSD(β) in TRL's convention, mean over valid tokens, × T² (see
    :func:`token_divergence`)."""
    return token_divergence(student_logits, teacher_logits, mask, "generalized_jsd", temperature, beta=beta,
                            chunk_tokens=chunk_tokens)


def skew_forward_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None, alpha: float = 0.1,
                    temperature: float = 1.0, chunk_tokens: int | None = None) -> Tensor:
    """DistiLLM skew KL(p ‖ αp + (1−α)q), mean over valid tokens, × T² (see :func:`token_divergence`)."""
    return token_divergence(student_logits, teacher_logits, mask, "skew_forward_kl", temperature, alpha=alpha,
                            chunk_tokens=chunk_tokens)


def skew_reverse_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None, alpha: float = 0.1,
                    temperature: float = 1.0, chunk_tokens: int | None = None) -> Tensor:
    """DistiLLM skew reverse KL(q ‖ αq + (1−α)p), mean over valid tokens, × T² (see :func:`token_divergence`)."""
    return token_divergence(student_logits, teacher_logits, mask, "skew_reverse_kl", temperature, alpha=alpha,
                            chunk_tokens=chunk_tokens)


def total_variation(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None,
                    temperature: float = 1.0, chunk_tokens: int | None = None) -> Tensor:
    """Token-level total variation ½Σ|p − q|, mean over valid tokens, × T² (see :func:`token_divergence`)."""
    return token_divergence(student_logits, teacher_logits, mask, "total_variation", temperature,
                            chunk_tokens=chunk_tokens)


def token_cross_entropy(student_logits: Tensor, target: Tensor, ignore_index: int = -1,
                        chunk_tokens: int | None = None) -> Tensor:
    """Next-token cross-entropy −log q(y), mean over tokens whose target is not ``ignore_index``, chunked like the
    divergences (same value as ``F.cross_entropy(..., ignore_index=...)``, without its full float32 log-softmax copy).

    Args:
        student_logits: (B, T, V) or (N, V).
        target: (B, T) or (N,) int64 next-token ids; ``ignore_index`` marks padding and prompt tokens.
        ignore_index: the id that does not count.
        chunk_tokens: token rows per chunk (None: ~4M vocabulary entries per chunk).

    Returns:
        Scalar loss (nats per token; exp of it is the perplexity); 0 when no token counts.
    """
    v = student_logits.shape[-1]
    s = _rows(student_logits, v, "student_logits")
    y = target.reshape(-1).to(device=s.device, dtype=torch.int64)
    if y.numel() != s.shape[0]:
        raise ValueError(f"target has {y.numel()} entries but the logits hold {s.shape[0]} token rows")
    m = y != ignore_index
    dtype = _work_dtype(s)

    def per_chunk(sc: Tensor, yc: Tensor, mc: Tensor) -> Tensor:
        return F.cross_entropy(sc.to(dtype), torch.where(mc, yc, 0), reduction="none").masked_fill(~mc, 0.0).sum()

    return _chunked_sum(per_chunk, [s, y], m, chunk_rows(v, chunk_tokens)) / m.sum().clamp_min(1)


def coarsen_student(log_q: Tensor, ids: Tensor) -> Tensor:
    """The student's log-distribution over k + 1 outcomes: the k teacher tokens ``ids`` and "any other token".

    Args:
        log_q: (N, V) student log-probabilities.
        ids: (N, k) int64 token ids (distinct per row).

    Returns:
        (N, k + 1): ``log q[ids]`` and ``log(1 − Σ q[ids])`` (computed as log1p(−exp(logsumexp)), floored).
    """
    top = log_q.gather(-1, ids)
    covered = torch.logsumexp(top, dim=-1, keepdim=True).clamp_max(0.0)
    # log(1 - e^c) for c <= 0; -expm1(c) underflows to 0 when the k tokens hold all the mass: floor it.
    tail = torch.log((-torch.expm1(covered)).clamp_min(torch.finfo(log_q.dtype).tiny))
    return torch.cat([top, tail], dim=-1)


def sparse_token_divergence(student_logits: Tensor, teacher_log_probs: Tensor, teacher_ids: Tensor,
                            teacher_tail: Tensor, mask: Tensor | None = None, kind: str = "forward_kl",
                            beta: float = 0.5, alpha: float = 0.1, chunk_tokens: int | None = None) -> Tensor:
    """Mean per valid token of D(p̃ ‖ q̃) between the teacher and the student coarsened to k + 1 outcomes.

    The teacher is what a token logit store keeps (:mod:`kdkit.lm.store`): its top-k log-probabilities (at T = 1)
    with their ids, and the remaining mass ``1 − Σ_k p``. The student's distribution is coarsened the same way
    (:func:`coarsen_student`), so the comparison is between two proper distributions over k + 1 outcomes; it is
    exact when the teacher puts no mass outside its k tokens and otherwise a lower bound of the full divergence.

    Args:
        student_logits: (B, T, V) or (N, V).
        teacher_log_probs: (B, T, k) or (N, k) log-probabilities (fp16 in a store; upcast here).
        teacher_ids: same leading shape, (…, k) int token ids.
        teacher_tail: (B, T) or (N,) remaining probability mass of the teacher outside its k tokens.
        mask, kind, beta, alpha, chunk_tokens: as :func:`token_divergence` (temperature is 1: a store keeps T = 1).

    Returns:
        Scalar loss; 0 when no token is valid.
    """
    _check(kind, beta, alpha, 1.0)
    v = student_logits.shape[-1]
    k = teacher_log_probs.shape[-1]
    s = _rows(student_logits, v, "student_logits")
    lp = _rows(teacher_log_probs.detach(), k, "teacher_log_probs")
    ids = _rows(teacher_ids, k, "teacher_ids").to(torch.int64)
    tail = teacher_tail.detach().reshape(-1)
    if not (lp.shape[0] == ids.shape[0] == tail.shape[0] == s.shape[0]):
        raise ValueError(f"sparse teacher rows ({lp.shape[0]}, {ids.shape[0]}, {tail.shape[0]}) do not match the "
                         f"student's {s.shape[0]} token rows")
    if ids.numel() and int(ids.max()) >= v:
        raise ValueError(f"teacher token id {int(ids.max())} is outside the student's vocabulary of {v}")
    m = _flat_mask(mask, s.shape[0], s)
    dtype = _work_dtype(s)

    def per_chunk(sc: Tensor, lpc: Tensor, idc: Tensor, tc: Tensor, mc: Tensor) -> Tensor:
        log_q = coarsen_student(F.log_softmax(sc.to(dtype), dim=-1), idc)
        log_tail = torch.log(tc.to(dtype).clamp_min(0.0)).unsqueeze(-1)
        log_p = torch.cat([lpc.to(dtype), log_tail], dim=-1)
        # fp16 rounding leaves Σ p̃ a little off 1: renormalise so that D(p̃‖p̃) = 0 exactly.
        log_p = log_p - torch.logsumexp(log_p.clamp_min(_LOG_FLOOR), dim=-1, keepdim=True)
        d = divergence_from_log_probs(kind, log_p, log_q, beta, alpha)
        return torch.where(mc, d, torch.zeros((), dtype=d.dtype, device=d.device)).sum()

    total = _chunked_sum(per_chunk, [s, lp, ids, tail], m, chunk_rows(v, chunk_tokens))
    return total / m.sum().clamp_min(1)


def sampled_forward_kl(student_logits: Tensor, sample_ids: Tensor, sample_weights: Tensor, teacher_entropy: Tensor,
                       mask: Tensor | None = None, chunk_tokens: int | None = None) -> Tensor:
    """Unbiased importance-sampled estimate of the mean per valid token of KL(p ‖ q), from n sampled teacher tokens.

    Random-sampling KD (Anshumann et al., ACL 2025, "Sparse Logit Sampling: Accelerating Knowledge Distillation in
    LLMs"): per token, n ids x_1..x_n are drawn i.i.d. from a proposal r (the teacher p itself, or p tempered) and
    stored with importance ratios ρ_j = p(x_j) / r(x_j). Then, with q = softmax(student logits),

        K̂ = −H(p) − (1/n) Σ_j ρ_j · log q(x_j),     H(p) = −Σ_v p(v) log p(v)  (stored per token)

    and E_r[K̂] = −H(p) − Σ_v p(v) log q(v) = KL(p ‖ q): the estimate and its gradient with respect to the student
    are unbiased (not the top-k store's coarsening, :func:`sparse_token_divergence`, which is biased low). Only
    losses linear in p have such an estimator: forward KL and cross-entropy against the teacher (reverse KL, JSD and
    TVD do not). Temperature 1 (the store keeps the teacher at T = 1).

    Args:
        student_logits: (B, T, V) or (N, V).
        sample_ids: (B, T, n) or (N, n) int sampled token ids.
        sample_weights: same shape, the ratios ρ_j = p(x_j)/r(x_j) (1 when r = p); upcast here.
        teacher_entropy: (B, T) or (N,) H(p) in nats.
        mask: (B, T) or (N,) True at the tokens that count; None = all.
        chunk_tokens: token rows per chunk.

    Returns:
        Scalar estimate; 0 when no token is valid.
    """
    v = student_logits.shape[-1]
    n = sample_ids.shape[-1]
    s = _rows(student_logits, v, "student_logits")
    ids = _rows(sample_ids, n, "sample_ids").to(torch.int64)
    w = _rows(sample_weights.detach(), n, "sample_weights")
    h = teacher_entropy.detach().reshape(-1)
    if not (ids.shape[0] == w.shape[0] == h.shape[0] == s.shape[0]):
        raise ValueError(f"sampled teacher rows ({ids.shape[0]}, {w.shape[0]}, {h.shape[0]}) do not match the "
                         f"student's {s.shape[0]} token rows")
    if ids.numel() and (int(ids.max()) >= v or int(ids.min()) < 0):
        raise ValueError(f"sampled token id {int(ids.max())} is outside the student's vocabulary of {v}")
    m = _flat_mask(mask, s.shape[0], s)
    dtype = _work_dtype(s)

    def per_chunk(sc: Tensor, idc: Tensor, wc: Tensor, hc: Tensor, mc: Tensor) -> Tensor:
        log_q = F.log_softmax(sc.to(dtype), dim=-1).gather(-1, idc)
        d = -hc.to(dtype) - (wc.to(dtype) * log_q).sum(-1) / n
        return torch.where(mc, d, torch.zeros((), dtype=d.dtype, device=d.device)).sum()

    total = _chunked_sum(per_chunk, [s, ids, w, h], m, chunk_rows(v, chunk_tokens))
    return total / m.sum().clamp_min(1)


def universal_logit_distance(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None,
                             temperature: float = 1.0) -> Tensor:
    """ULD loss: mean per valid token of the sorted-probability distance between teacher and student distributions
    over *different* vocabularies (Boizard et al., 2024, "Towards Cross-Tokenizer Distillation: the Universal Logit
    Distillation Loss for LLMs", eq. 5-6).

    With p = softmax(t/T) over the teacher's V_t tokens and q = softmax(s/T) over the student's V_s, both sorted in
    decreasing order and padded with zeros to V = max(V_t, V_s),

        ULD(p, q) = Σ_{i=1..V} | p_(i) − q_(i) |

    -- the closed form the paper uses for the Wasserstein-1 distance between the two distributions when the token
    supports are matched by rank (uniform transport cost). It needs no shared vocabulary, is 0 when the sorted
    distributions are equal, and is invariant under any permutation of either vocabulary. Position t of the student
    is compared with position t of the teacher (responses aligned by position; the caller masks positions one side
    does not have).

    Args:
        student_logits: (B, T, V_s) or (N, V_s).
        teacher_logits: (B, T, V_t) or (N, V_t), same leading shape (no gradient flows into it).
        mask: (B, T) or (N,) True at the positions that count; None = all.
        temperature: T > 0 (scales both; the result is not multiplied by T²: it is not a KL).

    Returns:
        Scalar loss in [0, 2]; 0 when no position is valid.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    s = student_logits.reshape(-1, student_logits.shape[-1])
    t = teacher_logits.detach().reshape(-1, teacher_logits.shape[-1])
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"universal_logit_distance: {s.shape[0]} student token rows vs {t.shape[0]} teacher rows; "
                         f"align the two sequences by position first")
    m = _flat_mask(mask, s.shape[0], s)
    dtype = _work_dtype(s, t)
    q = torch.softmax(s.to(dtype) / temperature, dim=-1).sort(dim=-1, descending=True).values
    p = torch.softmax(t.to(dtype) / temperature, dim=-1).sort(dim=-1, descending=True).values
    width = max(p.shape[-1], q.shape[-1])
    q = F.pad(q, (0, width - q.shape[-1]))
    p = F.pad(p, (0, width - p.shape[-1]))
    d = (p - q).abs().sum(-1)
    return torch.where(m, d, torch.zeros((), dtype=d.dtype, device=d.device)).sum() / m.sum().clamp_min(1)


__all__ = ["KINDS", "chunk_rows", "coarsen_student", "divergence_from_log_probs", "forward_kl", "generalized_jsd",
           "reverse_kl", "sampled_forward_kl", "skew_forward_kl", "skew_reverse_kl", "sparse_token_divergence",
           "token_cross_entropy", "token_divergence", "total_variation", "universal_logit_distance"]
