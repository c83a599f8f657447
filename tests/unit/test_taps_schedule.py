import math

import pytest
import torch
from torch import nn

from kdkit.engine.schedule import lr_at
from kdkit.errors import ConfigError
from kdkit.recipe import ScheduleSpec
from kdkit.taps import FeatureTap, probe_shapes


def _net():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 8, 3, stride=2)),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def test_tap_captures_outputs_by_path_and_removes_hooks():
    net = _net()
    x = torch.randn(2, 1, 8, 8)
    tap = FeatureTap(net, ["1", "2.0", "4"])
    net(x)
    feats = tap.pop()
    assert set(feats) == {"1", "2.0", "4"}
    assert feats["1"].shape == (2, 4, 8, 8) and feats["2.0"].shape == (2, 8, 3, 3) and feats["4"].shape == (2, 8)
    assert torch.equal(feats["1"], torch.relu(net[0](x)))
    assert tap.pop() == {}
    tap.remove()
    net(x)
    assert tap.features == {}
    assert all(len(m._forward_hooks) == 0 for m in net.modules())


def test_tap_keeps_graph_unless_detached():
    net = _net()
    tap = FeatureTap(net, ["1"])
    net(torch.randn(2, 1, 8, 8))
    assert tap.pop()["1"].requires_grad
    tap.remove()
    tap = FeatureTap(net, ["1"], detach=True)
    net(torch.randn(2, 1, 8, 8))
    assert not tap.pop()["1"].requires_grad


def test_unknown_path_error_lists_candidates():
    with pytest.raises(ConfigError, match=r"student has no module 'layer9'.*valid paths"):
        FeatureTap(_net(), ["layer9"], role="student")


def test_probe_shapes_restores_training_mode():
    net = _net().train()
    shapes = probe_shapes(net, torch.randn(3, 1, 8, 8), ["2.0", "5"])
    assert shapes == {"2.0": (3, 8, 3, 3), "5": (3, 3)}
    assert net.training


def test_schedules():
    spe, epochs, lr = 10, 10, 0.1
    cos = ScheduleSpec(name="cosine")
    assert lr_at(cos, lr, 0, spe, epochs) == pytest.approx(lr)
    assert lr_at(cos, lr, 50, spe, epochs) == pytest.approx(lr / 2)
    ms = ScheduleSpec(name="multistep", milestones=[3, 6], gamma=0.1)
    assert lr_at(ms, lr, 29, spe, epochs) == pytest.approx(lr)
    assert lr_at(ms, lr, 30, spe, epochs) == pytest.approx(lr * 0.1)
    assert lr_at(ms, lr, 65, spe, epochs) == pytest.approx(lr * 0.01)
    warm = ScheduleSpec(name="constant", warmup_epochs=1)
    assert lr_at(warm, lr, 0, spe, epochs) == pytest.approx(lr / 10)
    assert lr_at(warm, lr, 10, spe, epochs) == pytest.approx(lr)
    oc = ScheduleSpec(name="onecycle", pct_start=0.3)
    assert lr_at(oc, lr, 0, spe, epochs) == pytest.approx(lr / 25)
    assert lr_at(oc, lr, 30, spe, epochs) == pytest.approx(lr)
    assert lr_at(oc, lr, 99, spe, epochs) < lr / 100


def test_onecycle_matches_torch_shape():
    # Our pure function follows torch's OneCycleLR (cosine annealing, div 25, final div 1e4) closely.
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    total = 100
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total, pct_start=0.3,
                                                cycle_momentum=False)
    ours = [lr_at(ScheduleSpec(name="onecycle"), 0.1, s, 10, 10) for s in range(total)]
    theirs = []
    for _ in range(total):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 0.1 * 0.05
    assert math.isclose(max(ours), 0.1, rel_tol=1e-6)
