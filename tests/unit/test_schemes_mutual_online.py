"""Mutual learning and online distillation: loss directions, gradients, the ensemble."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdkit.schemes.base import DistillModule
from kdkit.schemes.mutual import MutualModule, ProbabilityEnsemble, mutual_kl
from kdkit.schemes.online import OnlineModule
from kdkit.terms.logits import CrossEntropyTerm, KDTerm
from kdkit.types import TrainState


def _kl(p_logits, q_logits):
    """KL(softmax(p) ‖ softmax(q)) per batch mean, written out independently."""
    p = torch.softmax(p_logits, 1)
    return (p * (torch.log(p) - torch.log_softmax(q_logits, 1))).sum(1).mean()


def test_mutual_kl_points_from_each_other_peer_to_the_learner():
    g = torch.Generator().manual_seed(0)
    z = [torch.randn(6, 5, generator=g).requires_grad_(True) for _ in range(3)]
    losses = mutual_kl(z, temperature=1.0)
    for k in range(3):
        ref = sum(_kl(z[j].detach(), z[k].detach()) for j in range(3) if j != k) / 2
        assert float(losses[k].detach()) == pytest.approx(float(ref), rel=1e-5)
    # Peer 0's loss moves peer 0 only: the others are detached targets.
    grads = torch.autograd.grad(losses[0], z, allow_unused=True)
    assert grads[0] is not None and float(grads[0].abs().sum()) > 0
    assert grads[1] is None and grads[2] is None


def test_mutual_module_logs_each_peer_and_matches_dml_loss():
    torch.manual_seed(0)
    peers = [nn.Linear(4, 3), nn.Linear(4, 3)]
    terms = [[CrossEntropyTerm(), KDTerm(temperature=1.0)] for _ in peers]
    module = MutualModule(peers, terms)
    batch = {"input": torch.randn(8, 4), "target": torch.randint(0, 3, (8,))}
    out = module(batch, TrainState())
    z0, z1 = peers[0](batch["input"]), peers[1](batch["input"])
    expected = (F.cross_entropy(z0, batch["target"]) + _kl(z1, z0) + F.cross_entropy(z1, batch["target"]) +
                _kl(z0, z1))
    assert float(out.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert set(out.terms) == {"peer0_ce", "peer0_kd", "peer1_ce", "peer1_kd"}
    assert torch.equal(out.logits, z0)
    out.loss.backward()  # one step trains both peers
    assert all(p.weight.grad is not None and float(p.weight.grad.abs().sum()) > 0 for p in peers)


def test_probability_ensemble_averages_probabilities():
    torch.manual_seed(1)
    peers = [nn.Linear(4, 3), nn.Linear(4, 3)]
    x = torch.randn(5, 4)
    ens = ProbabilityEnsemble(peers)(x)
    avg = (torch.softmax(peers[0](x), 1) + torch.softmax(peers[1](x), 1)) / 2
    assert torch.allclose(torch.softmax(ens, 1), avg, atol=1e-6)
    assert torch.allclose(ens.exp().sum(1), torch.ones(5), atol=1e-5)


def test_online_teacher_gets_ce_and_a_small_pull_from_the_detached_student():
    torch.manual_seed(2)
    teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    module = OnlineModule(teacher, DistillModule(student, [CrossEntropyTerm(), KDTerm(temperature=2.0)]),
                          teacher_kd_weight=0.1, temperature=2.0)
    batch = {"input": torch.randn(8, 4), "target": torch.randint(0, 3, (8,))}
    out = module(batch, TrainState())
    zt, zs = teacher(batch["input"]), student(batch["input"])
    y = batch["target"]
    t_kd = 4.0 * F.kl_div(F.log_softmax(zt / 2, 1), F.log_softmax(zs / 2, 1), reduction="batchmean", log_target=True)
    s_kd = 4.0 * F.kl_div(F.log_softmax(zs / 2, 1), F.log_softmax(zt / 2, 1), reduction="batchmean", log_target=True)
    expected = F.cross_entropy(zs, y) + s_kd + F.cross_entropy(zt, y) + 0.1 * t_kd
    assert float(out.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert {"ce", "kd", "teacher_ce", "teacher_kd"} == set(out.terms)
    # The student's terms do not reach the teacher: its gradient equals that of CE + 0.1 KD(student detached) alone.
    out.loss.backward()
    g_full = teacher.weight.grad.clone()
    teacher.zero_grad()
    (F.cross_entropy(teacher(batch["input"]), y) + 0.1 * 4.0 * F.kl_div(
        F.log_softmax(teacher(batch["input"]) / 2, 1), F.log_softmax(zs.detach() / 2, 1), reduction="batchmean",
        log_target=True)).backward()
    assert torch.allclose(g_full, teacher.weight.grad, atol=1e-6)


def _z(z):
    return (z - z.mean(1, keepdim=True)) / (z.std(1, keepdim=True) + 1e-7)  # std with K−1, as standardize_logits


def test_mutual_with_standardized_kd_mimics_z_scored_peers():
    torch.manual_seed(3)
    peers = [nn.Linear(4, 5), nn.Linear(4, 5)]
    terms = [[CrossEntropyTerm(), KDTerm(temperature=2.0, standardize=True)] for _ in peers]
    batch = {"input": torch.randn(8, 4), "target": torch.randint(0, 5, (8,))}
    out = MutualModule(peers, terms)(batch, TrainState())
    z0, z1 = peers[0](batch["input"]), peers[1](batch["input"])
    expect0 = 4.0 * _kl(_z(z1) / 2, _z(z0) / 2)  # T² · KL(p1 ‖ p0) on z-scored logits
    assert float(out.terms["peer0_kd"]) == pytest.approx(float(expect0.detach()), rel=1e-5)
    assert float(out.terms["peer1_kd"]) == pytest.approx(float(4.0 * _kl(_z(z0) / 2, _z(z1) / 2).detach()), rel=1e-5)
    # a peer whose logits are an affine copy of the other's (scale 3, shift 1) has nothing left to learn
    peers[1].weight.data, peers[1].bias.data = 3 * peers[0].weight.data, 3 * peers[0].bias.data + 1
    out = MutualModule(peers, terms)(batch, TrainState())
    assert float(out.terms["peer0_kd"]) == pytest.approx(0.0, abs=1e-5)


def test_online_teacher_kd_standardize_param():
    torch.manual_seed(4)
    teacher, student = nn.Linear(4, 5), nn.Linear(4, 5)
    batch = {"input": torch.randn(8, 4), "target": torch.randint(0, 5, (8,))}
    module = OnlineModule(teacher, DistillModule(student, [CrossEntropyTerm(), KDTerm(temperature=2.0,
                                                                                     standardize=True)]),
                          teacher_kd_weight=0.1, temperature=2.0, standardize=True)
    out = module(batch, TrainState())
    zt, zs = teacher(batch["input"]), student(batch["input"])
    assert float(out.terms["teacher_kd"]) == pytest.approx(float(4.0 * _kl(_z(zs) / 2, _z(zt) / 2).detach()), rel=1e-5)
    assert float(out.terms["kd"]) == pytest.approx(float(4.0 * _kl(_z(zt) / 2, _z(zs) / 2).detach()), rel=1e-5)
    plain = OnlineModule(teacher, DistillModule(student, [CrossEntropyTerm()]), 0.1, 2.0)(batch, TrainState())
    assert abs(float(plain.terms["teacher_kd"]) - float(out.terms["teacher_kd"])) > 1e-3  # the option changes it
