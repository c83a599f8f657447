"""The student's precision / memory-format policy: the one-step "trains as well" check, that measuring leaves no
trace in the run, and the engine's record of the choice (which mode wins on this CPU is never asserted)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdkit.engine.precision import FP32, Measurement, Mode, StudentTolerance, choose, measure_student
from kdkit.types import StepOutput

BF16 = Mode("bf16")


def test_student_tolerance_rejects_a_step_that_trains_differently():
    tol = StudentTolerance()
    ref = Measurement(FP32, 1.0, {"loss_rel": 0.0, "grad_cos": 1.0})
    assert choose([ref, Measurement(BF16, 0.5, {"loss_rel": 0.003, "grad_cos": 0.999})], tol.agrees)[0] == BF16
    assert choose([ref, Measurement(BF16, 0.5, {"loss_rel": 0.003, "grad_cos": 0.95})], tol.agrees)[0] == FP32
    assert choose([ref, Measurement(BF16, 0.5, {"loss_rel": 0.05, "grad_cos": 0.999})], tol.agrees)[0] == FP32
    assert choose([ref, Measurement(BF16, 1.2, {"loss_rel": 0.0, "grad_cos": 1.0})], tol.agrees)[0] == FP32


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.2), nn.Flatten(),
                         nn.Linear(8 * 6 * 6, 10))


def test_measure_student_restores_weights_buffers_rng_and_grads():
    net = _net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batch = {"input": torch.randn(16, 1, 8, 8), "target": torch.randint(0, 10, (16,))}

    def step(b):
        logits = net(b["input"])
        return StepOutput(loss=nn.functional.cross_entropy(logits, b["target"]), logits=logits, terms={})

    rng = torch.get_rng_state()
    modes = [FP32, Mode("fp32", True), BF16, Mode("bf16", True)]
    mode, why, measured, _ = measure_student(step, net, batch, modes, torch.device("cpu"), repeats=1)
    assert mode in modes and why
    assert [m.mode for m in measured] == modes
    ref = measured[0].agree
    assert ref["loss_rel"] == 0.0 and ref["grad_cos"] == pytest.approx(1.0, abs=1e-12)  # fp32 against itself
    for m in measured:  # bf16 is close: one small net's step
        assert m.error is None and m.seconds > 0 and m.agree["grad_cos"] > 0.9
    for k, v in net.state_dict().items():  # BatchNorm's running statistics too
        assert torch.equal(v, before[k]), k
    assert torch.equal(torch.get_rng_state(), rng)  # dropout drew from a forked generator
    assert all(p.grad is None for p in net.parameters())
