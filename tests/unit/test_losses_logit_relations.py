"""Logit standardisation (Sun et al., CVPR 2024) and DIST (Huang et al., NeurIPS 2022): independent float64 numpy
references of the papers' formulas, identities and invariances, and the ``standardize`` option on the logit terms.

Tolerances: the functions run in float32 on float32 input; the references in float64. Softmax, means and norms over
K <= 100 classes accumulate a relative error of a few float32 eps (1.2e-7) per element, so rel=1e-5 (~100 eps) and
abs=1e-6 for values that should be 0 leave a wide margin without hiding a formula error (which shows at 1e-2 and up).
"""

import numpy as np
import pytest
import torch

from kdkit.errors import ConfigError, ShapeError
from kdkit.losses.logit_relations import (
    ctkd_lambda,
    ctkd_loss,
    ctkd_temperature,
    dist_loss,
    dist_terms,
    gradient_reversal,
    kd_kl_tensor_t,
    pearson_rows,
    standardize_logits,
)
from kdkit.losses.logits import dkd, kd_kl
from kdkit.recipe import TermSpec
from kdkit.terms.base import TermInputs, build_term
from kdkit.types import ModelOutput, TrainState


def _softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _np_pearson(u, v, eps=0.0):
    u, v = u - u.mean(), v - v.mean()
    return float(u @ v / (np.sqrt(u @ u) * np.sqrt(v @ v) + eps))


def _np_dist(s, t, beta, gamma, T, eps=0.0):
    ys, yt = _softmax(s / T), _softmax(t / T)
    inter = 1 - np.mean([_np_pearson(ys[i], yt[i], eps) for i in range(ys.shape[0])])
    intra = 1 - np.mean([_np_pearson(ys[:, k], yt[:, k], eps) for k in range(ys.shape[1])])
    return T * T * (beta * inter + gamma * intra), T * T * inter, T * T * intra


def _np_zscore(z):
    return (z - z.mean(1, keepdims=True)) / (z.std(1, ddof=1, keepdims=True) + 1e-7)


def _logits(b=16, k=10, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g) * scale, torch.randn(b, k, generator=g) * scale


# -- DIST --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("beta", "gamma", "T"), [(2.0, 2.0, 4.0), (1.0, 1.0, 1.0), (1.0, 3.0, 2.0)])
def test_dist_matches_numpy(beta, gamma, T):
    s, t = _logits(b=16, k=10)
    ref, ref_inter, ref_intra = _np_dist(s.double().numpy(), t.double().numpy(), beta, gamma, T)
    assert float(dist_loss(s, t, beta, gamma, T)) == pytest.approx(ref, rel=1e-5)
    inter, intra = dist_terms(s, t, T)
    assert float(inter) == pytest.approx(ref_inter, rel=1e-5)
    assert float(intra) == pytest.approx(ref_intra, rel=1e-5)


def test_dist_float64_in_float64_out_is_exact():
    s, t = _logits(b=8, k=100, seed=3)
    # With K = 100 classes a column of 8 probabilities has a norm near 1e-3, where DIST's eps (1e-8) shows at 1e-6
    # relative: the exact comparison includes it.
    ref, _, _ = _np_dist(s.double().numpy(), t.double().numpy(), 2.0, 2.0, 4.0, eps=1e-8)
    out = dist_loss(s.double(), t.double(), 2.0, 2.0, 4.0)
    assert out.dtype == torch.float64
    assert float(out) == pytest.approx(ref, rel=1e-12)  # float64 throughout: agreement to ~1e4 float64 eps


def test_dist_zero_for_identical_logits_and_invariant_to_row_shifts():
    s, t = _logits()
    # Identical logits: ρ = ‖u‖²/(‖u‖² + eps) per row/column, so the loss is not exactly 0 but T²·(β+γ)·eps/‖u‖²
    # (~1.7e-5 here: a column of 16 probabilities at T = 4 has ‖u‖² ~ 4e-2) -- the reference's eps, reproduced
    # exactly in float64; in float32 the same value to 1e-4 relative (1 − ρ cancels ~1e3 eps of the 1-scale terms).
    ref, _, _ = _np_dist(t.double().numpy(), t.double().numpy(), 2.0, 2.0, 4.0, eps=1e-8)
    assert 0 < ref < 1e-4
    assert float(dist_loss(t.double(), t.double(), 2.0, 2.0, 4.0)) == pytest.approx(ref, rel=1e-9)
    assert float(dist_loss(t.clone(), t, 2.0, 2.0, 4.0)) == pytest.approx(0.0, abs=1e-4)
    shift = torch.randn(16, 1) * 5  # softmax ignores a per-sample constant added to the logits
    assert float(dist_loss(s + shift, t, 2.0, 2.0, 4.0)) == pytest.approx(float(dist_loss(s, t, 2.0, 2.0, 4.0)),
                                                                          rel=1e-5)
    assert float(dist_loss(s, t, 2.0, 2.0, 4.0)) > 0.1


def test_pearson_is_affine_invariant_where_kl_is_not():
    # DIST's premise: matching relations, not values. A positive affine map of the teacher's probabilities leaves
    # the correlation at 1 (loss 0) although KL between the two would not be 0.
    g = torch.Generator().manual_seed(5)
    a = torch.rand(6, 10, generator=g)
    b = 3.0 * a + 0.7
    assert torch.allclose(pearson_rows(a, b), torch.ones(6), atol=1e-6)
    assert torch.allclose(pearson_rows(a, -b), -torch.ones(6), atol=1e-6)
    assert float(pearson_rows(torch.ones(1, 4), a[:1, :4])) == 0.0  # a constant row correlates 0 (eps), not NaN


def test_dist_gradients_and_errors():
    s, t = _logits()
    s.requires_grad_(True)
    t.requires_grad_(True)
    dist_loss(s, t).backward()
    assert s.grad is not None and bool(torch.isfinite(s.grad).all()) and t.grad is None
    with pytest.raises(ShapeError):
        dist_loss(torch.randn(4, 10), torch.randn(4, 9))
    with pytest.raises(ValueError):
        dist_loss(torch.randn(4, 10), torch.randn(4, 10), temperature=0.0)


# -- logit standardisation ---------------------------------------------------------------------------------------------

def test_standardize_matches_numpy_and_invariances():
    s, _ = _logits(b=12, k=7)
    z = standardize_logits(s)
    assert np.allclose(z.double().numpy(), _np_zscore(s.double().numpy()), rtol=1e-5, atol=1e-6)
    assert torch.allclose(z.mean(1), torch.zeros(12), atol=1e-6)
    assert torch.allclose(z.std(1), torch.ones(12), atol=1e-5)  # Bessel-corrected, as the authors' code
    scale = torch.rand(12, 1) * 10 + 0.1
    shift = torch.randn(12, 1) * 100
    assert torch.allclose(standardize_logits(s * scale + shift), z, atol=1e-4)  # float32 of |x| ~ 300: ~3e-5 abs
    assert torch.equal(standardize_logits(torch.full((2, 5), 3.0)), torch.zeros(2, 5))  # constant rows -> 0
    with pytest.raises(ShapeError):
        standardize_logits(torch.randn(4, 1))


def _inputs(s, t, y=None):
    return TermInputs(student=ModelOutput(s), teacher=ModelOutput(t), batch={"target": y}, state=TrainState())


@pytest.mark.parametrize("name", ["kd", "soft_ce", "dkd", "dist", "noisy_kd", "ctkd"])
def test_standardize_is_an_option_on_every_logit_term(name):
    s, t = _logits(b=16, k=10, seed=7)
    y = torch.arange(16) % 10
    params = {"temperature": 2.0}
    if name == "noisy_kd":  # without noise it is KD on the (z-scored) logits
        params["sigma"] = 0.0
    if name == "ctkd":  # a temperature pinned at 2 (range 0)
        params = {"t_start": 2.0, "t_range": 0.0}
    plain = build_term(TermSpec(name=name, params=params))
    std = build_term(TermSpec(name=name, params={**params, "standardize": True}))
    zs, zt = standardize_logits(s), standardize_logits(t)

    def val(x: torch.Tensor) -> float:  # CTKD's learnable temperature gives its value a grad: read it detached
        return float(x.detach())

    # The standardised term equals the plain term on z-scored logits ...
    assert val(std(_inputs(s, t, y))) == pytest.approx(val(plain(_inputs(zs, zt, y))), rel=1e-5)
    # ... so it ignores the student's logit scale and offset, which the plain term does not.
    s2 = s * 5.0 + 2.0
    assert val(std(_inputs(s2, t, y))) == pytest.approx(val(std(_inputs(s, t, y))), rel=1e-4)
    assert abs(val(plain(_inputs(s2, t, y))) - val(plain(_inputs(s, t, y)))) > 1e-3


def test_standardized_kd_matches_the_papers_formula():
    # Sun et al., Algorithm 1: q(Z(z)/tau) for both sides, KL batchmean x tau^2; numpy in float64.
    s, t = _logits(b=16, k=10, seed=11)
    tau = 2.0
    ps = _softmax(_np_zscore(s.double().numpy()) / tau)
    pt = _softmax(_np_zscore(t.double().numpy()) / tau)
    ref = tau * tau * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1))
    term = build_term(TermSpec(name="kd", params={"temperature": tau, "standardize": True}))
    assert float(term(_inputs(s, t))) == pytest.approx(ref, rel=1e-5)
    assert float(kd_kl(standardize_logits(s), standardize_logits(t), tau)) == pytest.approx(ref, rel=1e-5)
    y = torch.arange(16) % 10
    assert float(build_term(TermSpec(name="dkd", params={"standardize": True}))(_inputs(s, t, y))) == pytest.approx(
        float(dkd(standardize_logits(s), standardize_logits(t), y, 1.0, 8.0, 4.0)), rel=1e-5)


def test_standardize_param_errors_name_the_term():
    with pytest.raises(ConfigError, match="kd.*standardize must be true or false"):
        build_term(TermSpec(name="kd", params={"standardize": "yes"}))
    with pytest.raises(ConfigError, match="allowed params"):
        build_term(TermSpec(name="logit_mse", params={"standardize": True}))


# -- CTKD --------------------------------------------------------------------------------------------------------------

def test_ctkd_lambda_curriculum():
    assert ctkd_lambda(0.0, 10.0) == 0.0
    assert ctkd_lambda(10.0, 10.0) == pytest.approx(1.0)
    assert ctkd_lambda(25.0, 10.0, lam_max=0.5) == pytest.approx(0.5)  # constant after the ramp
    assert ctkd_lambda(5.0, 10.0) == pytest.approx(0.5)  # cosine: halfway at half the ramp
    vals = [ctkd_lambda(e / 4, 10.0) for e in range(41)]
    assert all(b >= a for a, b in zip(vals, vals[1:], strict=False))
    assert ctkd_lambda(2.5, 10.0) == pytest.approx(0.5 * (1 + np.cos(np.pi * 1.25)))  # paper eq. 9
    assert ctkd_lambda(3.0, 0.0) == 1.0


def test_ctkd_value_is_kd_at_the_learned_temperature():
    s, t = _logits(seed=4)
    theta = torch.tensor([0.3])
    tau = 1.0 + 20.0 / (1.0 + np.exp(-0.3))
    ps, pt = _softmax(s.double().numpy() / tau), _softmax(t.double().numpy() / tau)
    ref = tau * tau * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1))
    assert float(ctkd_loss(s, t, theta, 0.7)) == pytest.approx(ref, rel=1e-5)
    assert float(kd_kl_tensor_t(s, t, torch.tensor(tau))) == pytest.approx(float(kd_kl(s, t, tau)), rel=1e-5)


def test_ctkd_gradient_reversal_student_minimises_temperature_maximises():
    s, t = _logits(seed=5)
    lam = 0.6
    # reference gradients without reversal (float64, so the comparison is exact to ~1e-12)
    s64, th64 = s.double().requires_grad_(True), torch.tensor([0.2], dtype=torch.float64, requires_grad=True)
    kd_kl_tensor_t(s64, t.double(), ctkd_temperature(th64)).backward()
    s_r, th_r = s.double().requires_grad_(True), torch.tensor([0.2], dtype=torch.float64, requires_grad=True)
    ctkd_loss(s_r, t.double(), th_r, lam).backward()
    assert torch.allclose(s_r.grad, s64.grad, rtol=1e-12, atol=0)  # the student sees plain KD at τ
    assert float(th_r.grad) == pytest.approx(-lam * float(th64.grad), rel=1e-12)  # θ's gradient reversed, × λ
    # one SGD step on θ raises the loss (the adversary), a step on the student lowers it
    before = float(ctkd_loss(s.double(), t.double(), th_r.detach(), lam))
    after = float(ctkd_loss(s.double(), t.double(), th_r.detach() - 0.5 * th_r.grad, lam))
    assert after > before
    assert gradient_reversal(torch.ones(3), 2.0).equal(torch.ones(3))


def test_ctkd_term_trains_its_temperature_against_the_loss():
    s, t = _logits(seed=6)
    term = build_term(TermSpec(name="ctkd", params={"ramp_epochs": 2.0}))
    assert term.temperature() == pytest.approx(1 + 20 / (1 + np.exp(-1.0)))  # the authors' init: θ = 1
    late = TrainState(step=10, steps_per_epoch=1)  # past the ramp: λ = 1
    opt = torch.optim.SGD(term.parameters(), lr=0.5)
    values = []
    for _ in range(5):
        loss = term(TermInputs(student=ModelOutput(s), teacher=ModelOutput(t), batch={}, state=late))
        values.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert values[-1] > values[0]  # the temperature moved to make distillation harder
    early = TermInputs(student=ModelOutput(s), teacher=ModelOutput(t), batch={}, state=TrainState())
    term.zero_grad()
    term(early).backward()
    assert float(term.theta.grad.abs()) == 0.0  # λ = 0 at the start of the curriculum
    with pytest.raises(ConfigError, match="ctkd"):
        build_term(TermSpec(name="ctkd", params={"t_start": 0.0}))


def test_kd_with_one_temperature_per_sample_matches_numpy():
    s, t = _logits(b=6, seed=7)
    tau = torch.tensor([1.0, 2.0, 4.0, 8.0, 1.5, 20.0], dtype=torch.float64)
    sn, tn, taun = s.double().numpy(), t.double().numpy(), tau.numpy()
    ref = np.mean([taun[i] ** 2 * np.sum(_softmax(tn[i:i + 1] / taun[i]) * (np.log(_softmax(tn[i:i + 1] / taun[i]))
                                                                           - np.log(_softmax(sn[i:i + 1] / taun[i]))))
                   for i in range(6)])
    got = kd_kl_tensor_t(s.double(), t.double(), tau)
    assert float(got) == pytest.approx(ref, rel=1e-12)  # float64 throughout
    same = torch.full((16,), 3.0)
    s, t = _logits(seed=8)
    assert float(kd_kl_tensor_t(s, t, same)) == pytest.approx(float(kd_kl(s, t, 3.0)), rel=1e-5)  # float32 sums
    with pytest.raises(ShapeError, match="one per sample"):
        kd_kl_tensor_t(s, t, torch.ones(3))


def test_ctkd_instance_mode_predicts_a_temperature_per_sample_against_the_loss():
    from kdkit.terms.base import SetupContext

    s, t = _logits(seed=9)
    term = build_term(TermSpec(name="ctkd", params={"mode": "instance", "ramp_epochs": 2.0, "hidden": 16}))
    term.setup(SetupContext(student=torch.nn.Identity(), teachers=[], example=torch.zeros(1), num_classes=10,
                            num_train=16, has_teacher_features=False))
    late = TrainState(step=10, steps_per_epoch=1)  # λ = 1
    s_req = s.clone().requires_grad_(True)
    loss = term(TermInputs(student=ModelOutput(s_req), teacher=ModelOutput(t), batch={}, state=late))
    tau0 = 1 + 20 / (1 + np.exp(-1.0))
    assert term.temperature() == pytest.approx(tau0, rel=1e-6)  # every τ_i starts at the global mode's init
    assert float(loss.detach()) == pytest.approx(float(kd_kl(s, t, tau0)), rel=1e-5)
    loss.backward()
    s_ref = s.clone().requires_grad_(True)
    kd_kl(s_ref, t, tau0).backward()
    assert torch.allclose(s_req.grad, s_ref.grad, rtol=1e-4, atol=1e-7)  # the student sees KD at τ_i, nothing else
    opt = torch.optim.SGD(term.parameters(), lr=0.5)
    values = []
    for _ in range(5):
        loss = term(TermInputs(student=ModelOutput(s), teacher=ModelOutput(t), batch={}, state=late))
        values.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert values[-1] > values[0]  # the temperature network moved to make distillation harder
    theta = term.temp_net(torch.cat([t, s], 1)).squeeze(1)
    assert float(theta.detach().std()) > 0  # and the temperatures now differ between samples
    with pytest.raises(ConfigError, match="mode must be 'global' or 'instance'"):
        build_term(TermSpec(name="ctkd", params={"mode": "sample"}))
