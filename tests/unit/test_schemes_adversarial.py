"""Boundary-supporting samples (Heo et al., AAAI 2019): the attack approaches the teacher's boundary."""

from __future__ import annotations

import torch
from torch import nn

from kdkit.schemes.adversarial import BSSModule, boundary_samples, choose_target_class, top2_margin
from kdkit.schemes.base import DistillModule
from kdkit.terms.logits import CrossEntropyTerm
from kdkit.types import ModelOutput, TeacherSignal, TrainState


def _teacher() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 5))
    return net.eval().requires_grad_(False)


def test_attack_shrinks_the_margin_to_the_second_class():
    teacher = _teacher()
    x = torch.randn(64, 1, 4, 4)
    z0 = teacher(x)
    k = choose_target_class(z0, "second")
    b = z0.argmax(1)
    adv = boundary_samples(teacher, x, k, steps=10, step_size=0.3)
    z1 = teacher(adv)
    gap0 = z0.gather(1, b[:, None]) - z0.gather(1, k[:, None])
    gap1 = z1.gather(1, b[:, None]) - z1.gather(1, k[:, None])
    # Every sample moves towards (or across) the boundary between its class and the target class...
    assert bool((gap1 < gap0).all())
    # ...and on average ends much closer to it than it started; the top-2 margin shrinks too.
    assert float(gap1.abs().mean()) < 0.5 * float(gap0.mean())
    assert float(top2_margin(z1).mean()) < float(top2_margin(z0).mean())
    assert not adv.requires_grad and teacher[1].weight.grad is None


def test_clamp_and_sampled_targets():
    teacher = _teacher()
    x = torch.rand(16, 1, 4, 4)
    adv = boundary_samples(teacher, x, choose_target_class(teacher(x), "second"), steps=5, step_size=5.0,
                           lower=0.0, upper=1.0)
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    z = teacher(x)
    g = torch.Generator().manual_seed(0)
    k = choose_target_class(z, "sample", g)
    assert bool((k != z.argmax(1)).all())


def test_bss_weight_decays_to_zero_and_the_term_is_logged():
    teacher = _teacher()
    torch.manual_seed(1)
    student = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    module = BSSModule(DistillModule(student, [CrossEntropyTerm()]), teacher, weight=2.0, stop_fraction=0.5,
                       temperature=3.0, steps=3, step_size=0.3, attack_size=8, target="second", bounds=None, seed=0)
    assert module.weight_at(TrainState(step=0, steps_per_epoch=10, epochs=4)) == 2.0
    assert module.weight_at(TrainState(step=10, steps_per_epoch=10, epochs=4)) == 1.0
    assert module.weight_at(TrainState(step=25, steps_per_epoch=10, epochs=4)) == 0.0
    x = torch.randn(16, 1, 4, 4)
    with torch.no_grad():
        t = teacher(x)
    batch = {"input": x, "target": t.argmax(1)}
    signal = TeacherSignal(ModelOutput(logits=t), [ModelOutput(logits=t)])
    out = module(batch, signal, TrainState(step=0, steps_per_epoch=10, epochs=4))
    assert float(out.terms["bss"]) > 0 and float(out.loss.detach()) > float(out.terms["ce"])
    late = module(batch, TeacherSignal(ModelOutput(logits=t)), TrainState(step=30, steps_per_epoch=10, epochs=4))
    assert float(late.terms["bss"]) == 0.0 and float(late.loss.detach()) == float(late.terms["ce"])
