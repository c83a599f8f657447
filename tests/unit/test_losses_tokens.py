"""Token-level LM losses (kdkit.losses.tokens): values against an independent float64 computation in probability
space, and identities (JSD(0.5) symmetric and 0 at equality, β/α limits, masks exclude tokens exactly, chunking)."""

from __future__ import annotations

import math

import pytest
import torch

from kdkit.losses import tokens as tl


def _probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    z = logits.double() / temperature
    e = torch.exp(z - z.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def _reference(kind: str, s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0,
               beta: float = 0.5, alpha: float = 0.1) -> float:
    """Per-token divergences written out in probability space with Python loops over tokens (float64)."""
    q, p = _probs(s, temperature), _probs(t, temperature)

    def kl(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(sum(ai * math.log(ai / bi) for ai, bi in zip(a.tolist(), b.tolist(), strict=True) if ai > 0))

    total, n = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if not bool(mask[b, i]):
                continue
            pi, qi = p[b, i], q[b, i]
            if kind == "forward_kl":
                d = kl(pi, qi)
            elif kind == "reverse_kl":
                d = kl(qi, pi)
            elif kind == "generalized_jsd":
                m = beta * pi + (1 - beta) * qi
                d = beta * kl(pi, m) + (1 - beta) * kl(qi, m)
            elif kind == "skew_forward_kl":
                d = kl(pi, alpha * pi + (1 - alpha) * qi)
            elif kind == "skew_reverse_kl":
                d = kl(qi, alpha * qi + (1 - alpha) * pi)
            else:
                d = 0.5 * float((pi - qi).abs().sum())
            total += d
            n += 1
    return temperature ** 2 * total / max(n, 1)


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 5, 11, generator=g, dtype=torch.float64) * 2
    t = torch.randn(3, 5, 11, generator=g, dtype=torch.float64) * 2
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, :2] = False  # a prompt
    mask[2, 3:] = False  # padding
    return s, t, mask


@pytest.mark.parametrize("kind", tl.KINDS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_values_match_float64_reference(logits, kind, temperature):
    s, t, mask = logits
    got = tl.token_divergence(s, t, mask, kind, temperature, beta=0.3, alpha=0.2)
    want = _reference(kind, s, t, mask, temperature, beta=0.3, alpha=0.2)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(want, rel=1e-10, abs=1e-12)  # both float64; only summation order differs


@pytest.mark.parametrize("kind", tl.KINDS)
def test_float32_path_close_to_reference(logits, kind):
    s, t, mask = logits
    got = tl.token_divergence(s.float(), t.float(), mask, kind, beta=0.3, alpha=0.2)
    assert got.dtype == torch.float32
    # float32 log-softmax over 11 entries: ~1e-6 relative rounding per term
    assert float(got) == pytest.approx(_reference(kind, s, t, mask, beta=0.3, alpha=0.2), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("kind", tl.KINDS)
def test_zero_at_equality(logits, kind):
    s, _, mask = logits
    assert float(tl.token_divergence(s, s.clone(), mask, kind)) == pytest.approx(0.0, abs=1e-12)


def test_jsd_half_is_symmetric(logits):
    s, t, mask = logits
    a = tl.generalized_jsd(s, t, mask, beta=0.5)
    b = tl.generalized_jsd(t, s, mask, beta=0.5)
    assert float(a) == pytest.approx(float(b), rel=1e-12)
    assert 0 < float(a) <= math.log(2) + 1e-12  # JSD is bounded by log 2


def test_jsd_limits(logits):
    s, t, mask = logits
    fkl, rkl = tl.forward_kl(s, t, mask), tl.reverse_kl(s, t, mask)
    # endpoints are defined as the KL forms (TRL's convention)
    assert float(tl.generalized_jsd(s, t, mask, beta=0.0)) == pytest.approx(float(fkl), rel=1e-12)
    assert float(tl.generalized_jsd(s, t, mask, beta=1.0)) == pytest.approx(float(rkl), rel=1e-12)
    # the continuous form: JSD(β)/β → KL(p‖q) as β → 0 and JSD(β)/(1−β) → KL(q‖p) as β → 1; the error is O(β)
    eps = 1e-6
    assert float(tl.generalized_jsd(s, t, mask, beta=eps)) / eps == pytest.approx(float(fkl), rel=1e-4)
    assert float(tl.generalized_jsd(s, t, mask, beta=1 - eps)) / eps == pytest.approx(float(rkl), rel=1e-4)


def test_skew_alpha_zero_is_kl_and_skew_is_smaller(logits):
    s, t, mask = logits
    fkl, rkl = tl.forward_kl(s, t, mask), tl.reverse_kl(s, t, mask)
    assert float(tl.skew_forward_kl(s, t, mask, alpha=0.0)) == pytest.approx(float(fkl), rel=1e-12)
    assert float(tl.skew_reverse_kl(s, t, mask, alpha=0.0)) == pytest.approx(float(rkl), rel=1e-12)
    # the continuous form at a tiny alpha meets the alpha = 0 branch
    assert float(tl.skew_forward_kl(s, t, mask, alpha=1e-9)) == pytest.approx(float(fkl), rel=1e-6)
    # skewing toward p bounds the divergence: KL(p‖αp+(1−α)q) ≤ (1−α)KL(p‖q) by convexity
    assert float(tl.skew_forward_kl(s, t, mask, alpha=0.3)) <= 0.7 * float(fkl) + 1e-12


def test_mask_excludes_tokens_exactly(logits):
    s, t, mask = logits
    for kind in tl.KINDS:
        base = tl.token_divergence(s, t, mask, kind)
        s2, t2 = s.clone(), t.clone()
        s2[~mask] = torch.randn_like(s2[~mask]) * 50  # garbage at masked positions changes nothing
        t2[~mask] = float("-1e30")
        assert float(tl.token_divergence(s2, t2, mask, kind)) == float(base)
    # the mean is over valid tokens of the whole batch, not per sequence
    one = tl.forward_kl(s[1:2], t[1:2])
    only = torch.zeros_like(mask)
    only[1] = True
    assert float(tl.forward_kl(s, t, only)) == pytest.approx(float(one), rel=1e-12)


def test_no_valid_token_gives_zero_with_graph(logits):
    s, t, mask = logits
    s = s.clone().requires_grad_(True)
    loss = tl.reverse_kl(s, t, torch.zeros_like(mask))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert float(s.grad.abs().sum()) == 0.0


@pytest.mark.parametrize("kind", tl.KINDS)
def test_chunking_changes_nothing_including_gradients(logits, kind):
    s, t, mask = logits
    grads = []
    values = []
    for chunk in (1, 4, None):
        x = s.clone().requires_grad_(True)
        v = tl.token_divergence(x, t, mask, kind, 1.5, beta=0.3, alpha=0.2, chunk_tokens=chunk)
        v.backward()
        values.append(float(v.detach()))
        grads.append(x.grad)
    assert values[0] == pytest.approx(values[2], rel=1e-12) and values[1] == pytest.approx(values[2], rel=1e-12)
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-10, atol=1e-12)  # float64: only summation order differs
    torch.testing.assert_close(grads[1], grads[2], rtol=1e-10, atol=1e-12)


def test_forward_kl_gradient_is_q_minus_p(logits):
    s, t, mask = logits
    x = s.clone().requires_grad_(True)
    tl.forward_kl(x, t, mask).backward()
    want = (_probs(s, 1.0) - _probs(t, 1.0)) * mask[..., None] / mask.sum()
    torch.testing.assert_close(x.grad, want, rtol=1e-10, atol=1e-13)


def test_teacher_gets_no_gradient(logits):
    s, t, mask = logits
    tt = t.clone().requires_grad_(True)
    tl.generalized_jsd(s.clone().requires_grad_(True), tt, mask).backward()
    assert tt.grad is None


def test_bad_arguments_name_the_problem(logits):
    s, t, mask = logits
    with pytest.raises(ValueError, match="share the vocabulary"):
        tl.forward_kl(s, t[..., :7])
    with pytest.raises(ValueError, match="beta"):
        tl.generalized_jsd(s, t, mask, beta=1.5)
    with pytest.raises(ValueError, match="mask has"):
        tl.forward_kl(s, t, mask[:, :2])
    with pytest.raises(ValueError, match="unknown token divergence"):
        tl.token_divergence(s, t, mask, "kl")


# ------------------------------------------------------------------------------------------------- sparse teacher


def _sparse(t: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lp = torch.log_softmax(t, -1)
    top = lp.topk(k, -1)
    tail = 1 - top.values.exp().sum(-1)
    return top.values, top.indices, tail


@pytest.mark.parametrize("kind", tl.KINDS)
def test_sparse_with_full_vocabulary_equals_dense(logits, kind):
    s, t, mask = logits
    lp, ids, tail = _sparse(t, t.shape[-1])  # k = V: nothing is lost
    got = tl.sparse_token_divergence(s, lp, ids, tail.clamp_min(0), mask, kind, beta=0.3, alpha=0.2)
    want = tl.token_divergence(s, t, mask, kind, beta=0.3, alpha=0.2)
    assert float(got) == pytest.approx(float(want), rel=1e-9, abs=1e-12)


def test_sparse_matches_coarsened_reference_and_lower_bounds(logits):
    s, t, mask = logits
    lp, ids, tail = _sparse(t, 3)
    got = tl.sparse_token_divergence(s, lp, ids, tail, mask, "forward_kl")
    q, p = _probs(s, 1.0), _probs(t, 1.0)
    total = 0.0
    for b, i in mask.nonzero().tolist():
        qi = q[b, i, ids[b, i]]
        pi = p[b, i, ids[b, i]]
        pc = torch.cat([pi, (1 - pi.sum()).reshape(1)])
        qc = torch.cat([qi, (1 - qi.sum()).reshape(1)])
        total += float((pc * (pc / qc).log()).sum())
    assert float(got) == pytest.approx(total / int(mask.sum()), rel=1e-9)
    assert float(got) <= float(tl.forward_kl(s, t, mask)) + 1e-12  # data-processing inequality


def test_sparse_fp16_store_is_zero_at_equality(logits):
    s, t, mask = logits
    lp, ids, tail = _sparse(s, 4)
    got = tl.sparse_token_divergence(s, lp.half(), ids.int(), tail.half(), mask, "forward_kl")
    assert float(got) == pytest.approx(0.0, abs=2e-3)  # fp16 log-probs carry ~1e-3 relative rounding


def test_token_cross_entropy_matches_torch_and_chunks(logits):
    s, _, mask = logits
    y = torch.randint(0, 11, mask.shape, generator=torch.Generator().manual_seed(1))
    y[~mask] = -1
    want = torch.nn.functional.cross_entropy(s.reshape(-1, 11), y.reshape(-1), ignore_index=-1)
    grads = []
    for chunk in (1, 4, None):
        x = s.clone().requires_grad_(True)
        got = tl.token_cross_entropy(x, y, chunk_tokens=chunk)
        assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-12)  # float64 both ways
        got.backward()
        grads.append(x.grad)
    x = s.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(x.reshape(-1, 11), y.reshape(-1), ignore_index=-1).backward()
    for g in grads:
        torch.testing.assert_close(g, x.grad, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("term", ["lm_forward_kl", "lm_ce", "lm_sampled_kl"])
@pytest.mark.parametrize("bad", [0, -4, True, 2.5, "64"])
def test_token_terms_refuse_a_bad_chunk_size_by_name(term, bad):
    from kdkit.errors import ConfigError
    from kdkit.recipe import TermSpec
    from kdkit.terms.base import build_term

    with pytest.raises(ConfigError, match=rf"loss term '{term}': chunk_tokens must be a positive integer"):
        build_term(TermSpec(name=term, params={"chunk_tokens": bad}))
    assert build_term(TermSpec(name=term, params={"chunk_tokens": 64})).chunk_tokens == 64
