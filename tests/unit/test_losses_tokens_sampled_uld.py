"""Two token losses beyond the dense divergences: the importance-sampled forward KL of a sampled token store
(random-sampling KD; unbiased, checked by averaging many independent draws against the full-logit KL, with the
Monte-Carlo error stated) and the ULD loss for different tokenizers (sorted-probability distance; float64 identities
and an independent per-row computation)."""

from __future__ import annotations

import math

import pytest
import torch

from kdkit.lm.store import sample_tokens
from kdkit.losses import tokens as tl


def _teacher_student(n_tok=6, v=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a peaked teacher (like a language model's: a few likely tokens and a long tail) and a different student
    t = torch.randn(n_tok, v, generator=g, dtype=torch.float64) * 2.5
    s = torch.randn(n_tok, v, generator=g, dtype=torch.float64)
    return torch.log_softmax(t, -1), s


def _full_kl(log_p, s):
    log_q = torch.log_softmax(s, -1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


def test_every_token_once_with_exact_ratios_is_the_exact_kl():
    """Identity: ids = the whole vocabulary, drawn from a uniform proposal (ratio V·p(v)): the estimate is the KL."""
    log_p, s = _teacher_student()
    n, v = log_p.shape
    ids = torch.arange(v).expand(n, v)
    ratios = log_p.exp() * v
    entropy = -(log_p.exp() * log_p).sum(-1)
    got = tl.sampled_forward_kl(s, ids, ratios, entropy)
    assert float(got) == pytest.approx(_full_kl(log_p, s), rel=1e-12)  # float64 throughout


@pytest.mark.parametrize("proposal_temperature", [1.0, 2.0])
def test_sampled_estimate_and_gradient_are_unbiased(proposal_temperature):
    log_p, s = _teacher_student()
    n_tok, v = log_p.shape
    gen = torch.Generator().manual_seed(1)
    draws, n = 3000, 4
    ids, ratios, entropy = sample_tokens(log_p.expand(draws, n_tok, v), n, proposal_temperature, gen)
    if proposal_temperature == 1.0:
        assert torch.equal(ratios, torch.ones_like(ratios))  # r = p: every ratio is exactly 1
    torch.testing.assert_close(entropy[0], -(log_p.exp() * log_p).sum(-1))
    sv = s.clone().requires_grad_(True)
    values, grads = [], []
    for d in range(draws):
        est = tl.sampled_forward_kl(sv, ids[d], ratios[d], entropy[d])
        (g,) = torch.autograd.grad(est, sv)
        values.append(float(est.detach()))
        grads.append(g)
    values_t = torch.tensor(values, dtype=torch.float64)
    mc = float(values_t.std()) / math.sqrt(draws)  # the Monte-Carlo standard error of the mean
    assert abs(float(values_t.mean()) - _full_kl(log_p, s)) < 4 * mc  # 4 standard errors: fails ~1 in 16,000 runs
    assert float(values_t.std()) > 0  # it is a random estimate, not the KL itself
    # gradient of KL(p‖q) w.r.t. the student's logits: (q − p) / tokens
    want = (torch.softmax(s, -1) - log_p.exp()) / n_tok
    g = torch.stack(grads)
    se = g.std(0) / math.sqrt(draws)
    # Every entry within 5 standard errors; a token so unlikely that it is drawn < 5 times in all the draws has no
    # usable sample standard error (0 when never drawn), and its mean gradient can be off by at most p/tokens.
    r = torch.softmax(log_p / proposal_temperature, -1)
    rare = torch.where(r * draws * n < 5, log_p.exp() / n_tok, torch.zeros_like(want))
    assert bool(((g.mean(0) - want).abs() <= 5 * se + rare + 1e-12).all())


def test_sampled_kl_mask_and_bad_ids():
    log_p, s = _teacher_student()
    ids, ratios, entropy = sample_tokens(log_p, 3, 1.0, torch.Generator().manual_seed(0))
    mask = torch.tensor([True, False, True, True, False, True])
    want = tl.sampled_forward_kl(s[mask], ids[mask], ratios[mask], entropy[mask])
    torch.testing.assert_close(tl.sampled_forward_kl(s, ids, ratios, entropy, mask), want)
    assert float(tl.sampled_forward_kl(s, ids, ratios, entropy, torch.zeros(6, dtype=torch.bool))) == 0.0
    with pytest.raises(ValueError, match="outside the student's vocabulary"):
        tl.sampled_forward_kl(s[:, :10], ids.clamp_min(10), ratios, entropy)


def _uld_reference(s, t):
    """Independent float64 computation, row by row: sort each distribution, pad with zeros, sum |difference|."""
    out = []
    for srow, trow in zip(s.tolist(), t.tolist(), strict=True):
        q = sorted((math.exp(x - max(srow)) / sum(math.exp(y - max(srow)) for y in srow) for x in srow), reverse=True)
        p = sorted((math.exp(x - max(trow)) / sum(math.exp(y - max(trow)) for y in trow) for x in trow), reverse=True)
        width = max(len(p), len(q))
        p += [0.0] * (width - len(p))
        q += [0.0] * (width - len(q))
        out.append(sum(abs(a - b) for a, b in zip(p, q, strict=True)))
    return sum(out) / len(out)


def test_uld_against_reference_and_identities():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(5, 11, generator=g, dtype=torch.float64)  # student vocabulary 11
    t = torch.randn(5, 7, generator=g, dtype=torch.float64) * 2  # teacher vocabulary 7
    got = tl.universal_logit_distance(s, t)
    assert float(got) == pytest.approx(_uld_reference(s, t), rel=1e-12)
    # permutation invariance, of either vocabulary
    assert float(tl.universal_logit_distance(s[:, torch.randperm(11, generator=g)],
                                             t[:, torch.randperm(7, generator=g)])) == pytest.approx(float(got),
                                                                                                     rel=1e-12)
    # 0 when the sorted distributions are equal: the student holds the teacher's probabilities, shuffled, plus four
    # tokens of probability 0 (exp(-1e4) is 0 in float64)
    same = torch.cat([t[:, torch.randperm(7, generator=g)], torch.full((5, 4), -1e4, dtype=torch.float64)], -1)
    assert float(tl.universal_logit_distance(same, t)) == pytest.approx(0.0, abs=1e-15)
    # symmetric on one vocabulary size, bounded by 2, masked rows ignored
    u = torch.randn(5, 11, generator=g, dtype=torch.float64)
    assert float(tl.universal_logit_distance(s, u)) == pytest.approx(float(tl.universal_logit_distance(u, s)))
    assert 0 < float(got) <= 2
    mask = torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool)
    assert float(tl.universal_logit_distance(s, t, mask)) == pytest.approx(_uld_reference(s[mask], t[mask]), rel=1e-12)


def test_uld_gradient_flows_to_the_student_only():
    s = torch.randn(4, 9, requires_grad=True)
    t = torch.randn(4, 6, requires_grad=True)
    tl.universal_logit_distance(s, t).backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0 and t.grad is None
