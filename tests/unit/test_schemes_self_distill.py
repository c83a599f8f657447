"""Self-distillation exits (Be Your Own Teacher): shapes, early exits, the loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdkit.errors import ConfigError
from kdkit.models import create_model
from kdkit.models.exits import ExitView, MultiExitNet, make_multi_exit
from kdkit.schemes.self_distill import SelfDistillModule, exit_losses
from kdkit.types import TrainState


@pytest.fixture(scope="module")
def net() -> MultiExitNet:
    torch.manual_seed(0)
    backbone = create_model("cnn_student", num_classes=10, in_channels=1, image_size=28)
    return make_multi_exit(backbone, 10, 1, 28).eval()


def test_exits_map_every_tap_onto_the_deepest_feature(net):
    x = torch.randn(3, 1, 28, 28)
    logits, hints, deep = net.forward_all(x)
    assert net.num_exits == 3 and net.exit_paths == ["stage1", "stage2"] and net.deep_path == "stage3"
    assert [tuple(z.shape) for z in logits] == [(3, 10)] * 3
    assert deep.shape == (3, 64, 7, 7)
    assert all(h.shape == deep.shape for h in hints)
    assert torch.allclose(logits[-1], net.backbone(x), atol=1e-6)


def test_each_exit_alone_equals_the_joint_forward(net):
    x = torch.randn(2, 1, 28, 28)
    logits, _, _ = net.forward_all(x)
    for k in range(1, net.num_exits + 1):
        assert torch.allclose(ExitView(net, k)(x), logits[k - 1], atol=1e-5)


def test_a_shallow_exit_runs_no_deeper_layer(net):
    calls = []
    h = net.backbone.stage3.register_forward_hook(lambda *a: calls.append(1))
    try:
        net.exit_logits(torch.randn(1, 1, 28, 28), 1)
        assert calls == []
        net.exit_logits(torch.randn(1, 1, 28, 28), 3)
        assert calls == [1]
    finally:
        h.remove()


def test_exported_exit_and_mlp_backbone():
    m = create_model("exits:cnn_student", num_classes=10, in_channels=1, image_size=28, export_exit=2)
    assert isinstance(m, MultiExitNet) and m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    mlp = create_model("exits:mlp", num_classes=10, in_channels=1, image_size=28, hidden=[32, 16])
    logits, hints, deep = mlp.forward_all(torch.randn(2, 1, 28, 28))
    assert deep.shape == (2, 16) and hints[0].shape == (2, 16) and len(logits) == 2
    with pytest.raises(ConfigError, match="export_exit"):
        create_model("exits:cnn_student", num_classes=10, in_channels=1, image_size=28, export_exit=4)


def test_byot_loss_matches_the_formula(net):
    torch.manual_seed(3)
    module = SelfDistillModule(net, kd_weight=0.3, feature_weight=0.03, temperature=3.0, kd_t_squared=False).train()
    batch = {"input": torch.randn(4, 1, 28, 28), "target": torch.tensor([1, 2, 3, 4])}
    out = module(batch, TrainState())
    t = out.terms
    expected = t["ce_exit3"] + sum(0.7 * t[f"ce_exit{i}"] + 0.3 * t[f"kd_exit{i}"] + 0.03 * t[f"feat_exit{i}"]
                                   for i in (1, 2))
    assert float(out.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    # The deepest exit teaches: no shallow term sends gradient into its logits or features.
    logits = [torch.randn(4, 10, requires_grad=True) for _ in range(3)]
    deep = torch.randn(4, 8, requires_grad=True)
    hints = [torch.randn(4, 8, requires_grad=True) for _ in range(2)]
    terms = exit_losses(logits, hints, deep, batch["target"], 3.0)
    shallow = sum(v for k, v in terms.items() if not k.endswith("exit3"))
    g = torch.autograd.grad(shallow, [logits[-1], deep, logits[0], hints[0]], allow_unused=True)
    assert g[0] is None and g[1] is None and g[2] is not None and g[3] is not None
    ref = F.kl_div(F.log_softmax(logits[0] / 3, 1), F.softmax(logits[2] / 3, 1), reduction="batchmean")
    assert float(terms["kd_exit1"].detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    assert float(terms["feat_exit1"].detach()) == pytest.approx(float((hints[0] - deep).pow(2).sum().sqrt().detach()),
                                                               rel=1e-5)
