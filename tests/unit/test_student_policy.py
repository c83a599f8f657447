"""The student's precision / memory-format policy: the one-step "trains as well" check, that measuring leaves no
trace in the run, and the engine's record of the choice (which mode wins on this CPU is never asserted)."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from kdkit.engine import precision
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


class _Bank(nn.Module):
    """A step like CRD's: it draws from its own generator (one created up front, one lazily on the first step) and
    updates a buffer in the forward pass, so two steps in a row differ unless each starts from the same state."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(8, 10)
        self.register_buffer("memory", torch.randn(64, 10))
        self.gen = torch.Generator().manual_seed(1)
        self.lazy: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lazy is None:
            self.lazy = torch.Generator().manual_seed(2)
        z = self.net(x)
        rows = torch.randint(0, 64, (x.shape[0], 16), generator=self.gen)
        noise = torch.rand(z.shape, generator=self.lazy)
        loss = (z.unsqueeze(1) * self.memory[rows]).sum(-1).logsumexp(-1).mean() + (z * noise).mean()
        with torch.no_grad():
            self.memory[rows[:, 0]] = 0.5 * self.memory[rows[:, 0]] + 0.5 * z.float()
        return loss


def test_measure_student_compares_the_same_step_for_a_stateful_stochastic_term():
    bank = _Bank().train()
    memory, gen_state = bank.memory.clone(), bank.gen.get_state()
    x = torch.randn(16, 8)

    def step(b):
        return StepOutput(loss=bank(b["input"]), logits=None, terms={})

    _, _, measured, _ = measure_student(step, bank, {"input": x}, [FP32, BF16], torch.device("cpu"), repeats=2)
    ref = measured[0].agree  # fp32 against itself: the same weights, memory and draws -> the same step exactly
    assert ref["loss_rel"] == 0.0 and ref["grad_cos"] == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(bank.memory, memory)  # the buffer the steps wrote to
    assert torch.equal(bank.gen.get_state(), gen_state)  # a generator held from the start: its state
    assert bank.lazy is None  # a generator the measuring steps created: gone, the first real step creates it


# --- timing rounds: rotation, enough rounds for a cheap step, and a gain the rounds must agree on ---

MODES4 = [FP32, Mode("fp32", True), BF16, Mode("bf16", True)]
AGREE = {"loss_rel": 0.0, "grad_cos": 1.0}


def _first_in_round_costs_more(monkeypatch, first: float = 3e-3, rest: float = 1e-3):
    """A virtual clock and a ``run`` whose first timed call of every round costs ``first`` seconds and the others
    ``rest``: the same arithmetic in every mode, only the position in the round differs (what was measured on the
    MLP: fp32, always first, ~10 % slower than the byte-identical fp32 + channels-last)."""
    now = [0.0]
    calls: list[Mode] = []

    def run(mode: Mode) -> Mode:
        calls.append(mode)
        k = len(calls) - 1 - len(MODES4)  # the first len(MODES4) calls are the untimed warm-ups
        now[0] += first if k >= 0 and k % len(MODES4) == 0 else rest
        return mode

    monkeypatch.setattr(precision, "clock", lambda: ("virtual", lambda: now[0]))
    return run


def test_rounds_rotate_so_running_first_costs_every_mode_alike(monkeypatch):
    run = _first_in_round_costs_more(monkeypatch)
    _, times, name = precision.timed_interleaved(run, MODES4, 2, torch.device("cpu"), min_seconds=0.02, max_rounds=8)
    assert name == "virtual" and all(len(t) == 8 for t in times.values())  # 12 ms a mode after 8 rounds: < 0.02 s
    for m, t in times.items():  # each mode ran first in 2 of the 8 rounds, so every median is the plain cost
        assert sorted(t) == pytest.approx([1e-3] * 6 + [3e-3] * 2, abs=1e-12), m
    ms = [Measurement(m, statistics.median(t), AGREE, rounds=tuple(t)) for m, t in times.items()]
    assert choose(ms, StudentTolerance().agrees)[0] == FP32  # nothing is faster: the exact reference stays


def test_without_rotation_the_first_mode_looks_slower(monkeypatch):
    # what the old fixed order measured: fp32 always first, 3x the others, and fp32 + channels-last "won"
    run = _first_in_round_costs_more(monkeypatch)
    _, times, _ = precision.timed_interleaved(run, MODES4, 2, torch.device("cpu"), min_seconds=0.02, max_rounds=8,
                                              rotate=False)
    assert statistics.median(times[FP32]) == pytest.approx(3e-3)
    assert statistics.median(times[BF16]) == pytest.approx(1e-3)


def test_a_cheap_step_gets_more_rounds_and_an_expensive_one_the_minimum(monkeypatch):
    now = [0.0]
    cost = [1e-3]

    def run(mode: Mode) -> Mode:
        now[0] += cost[0]
        return mode

    monkeypatch.setattr(precision, "clock", lambda: ("virtual", lambda: now[0]))
    _, times, _ = precision.timed_interleaved(run, MODES4, 2, torch.device("cpu"))  # defaults: 0.2 s, 25 rounds
    assert {len(t) for t in times.values()} == {25}
    cost[0] = 0.5
    _, times, _ = precision.timed_interleaved(run, MODES4, 2, torch.device("cpu"))
    assert {len(t) for t in times.values()} == {2}
    cost[0] = 0.06  # 0.2 s reached after 4 rounds (0.24 s)
    _, times, _ = precision.timed_interleaved(run, MODES4, 2, torch.device("cpu"))
    assert {len(t) for t in times.values()} == {4}


def test_a_median_gain_the_rounds_contradict_keeps_fp32():
    agrees = StudentTolerance().agrees
    ref = Measurement(FP32, 1.0, AGREE, rounds=(1.0, 1.0, 1.0, 1.0))
    noisy = Measurement(BF16, 0.9, AGREE, rounds=(0.5, 0.8, 1.1, 1.2))  # faster in 2 of the 4 rounds
    mode, why = choose([ref, noisy], agrees)
    assert mode == FP32 and "only 2 of 4 rounds" in why, why
    steady = Measurement(BF16, 0.9, AGREE, rounds=(0.85, 0.9, 0.9, 1.01))  # faster in 3 of 4
    mode, why = choose([ref, steady], agrees)
    assert mode == BF16 and "3 of 4 rounds" in why, why
    # measurements without rounds (an older record, a caller that times otherwise): the median alone decides
    assert choose([Measurement(FP32, 1.0, AGREE), Measurement(BF16, 0.9, AGREE)], agrees)[0] == BF16
    assert precision.faster_rounds(steady, ref) == (3, 4)
