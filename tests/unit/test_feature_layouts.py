"""Feature terms on 1-D conv maps (B, C, L): AT, FitNets, SP and RKD apply; the others refuse in one line naming the
layer and its layout. Math checked against float64 references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdkit.connectors import feature_layout, make_connector
from kdkit.errors import ConfigError, ShapeError
from kdkit.losses.features import at_map, attention_transfer
from kdkit.recipe import TermSpec
from kdkit.schemes.base import DistillModule
from kdkit.teachers.frozen import FrozenTeachers
from kdkit.terms.base import SetupContext, build_term
from kdkit.types import TrainState

EPS32 = torch.finfo(torch.float32).eps


class Conv1dNet(nn.Module):
    """(B, 2, L) -> two Conv1d stages (the second halves L) -> embedding -> logits."""

    def __init__(self, width: int, num_classes: int = 3) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv1d(2, width, 3, padding=1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv1d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.embed = nn.Flatten(1)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(self.embed(self.pool(self.stage2(self.stage1(x)))))


def test_at_map_and_attention_transfer_on_1d_maps_match_float64_reference():
    """Q = normalise(mean_c |f|^p) over positions; unequal lengths: the longer map is average-pooled to the shorter.
    Tolerance: float32 pow/mean/normalise of O(1) values, 64 eps32."""
    g = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(4, 3, 12, generator=g), torch.randn(4, 5, 6, generator=g)

    def q64(f, p=2.0):
        a = f.double().abs().pow(p).mean(1)
        return a / a.norm(dim=1, keepdim=True)

    assert torch.allclose(at_map(fs).double(), q64(fs), atol=64 * EPS32, rtol=0)
    pooled = fs.double().reshape(4, 3, 6, 2).mean(-1)  # adaptive pooling 12 -> 6 = mean of neighbouring pairs
    ref = (q64(pooled) - q64(ft)).pow(2).mean()
    got = attention_transfer([fs], [ft])
    assert abs(float(got) - float(ref)) < 64 * EPS32
    assert float(attention_transfer([fs], [fs * 3.0])) < 64 * EPS32  # a positive multiple transfers exactly
    with pytest.raises(ShapeError, match=r"\(B, C, L\)"):
        attention_transfer([fs], [torch.randn(4, 5, 6, 6)])


@pytest.mark.parametrize("kind", ["conv_bn_relu", "conv1x1", "linear", "auto"])
@pytest.mark.parametrize("ls,lt", [(12, 12), (12, 6), (6, 12), (12, 5)])
def test_1d_connectors_map_student_maps_to_the_teachers_shape(kind, ls, lt):
    if lt > ls and not (kind == "conv_bn_relu" and lt == 2 * ls):
        with pytest.raises(ShapeError, match="shorter"):
            make_connector(kind, (2, 4, ls), (2, 8, lt), "s.l", "t.l", layout="BCL")
        return
    g = make_connector(kind, (2, 4, ls), (2, 8, lt), "s.l", "t.l", layout="BCL")
    assert g(torch.randn(2, 4, ls)).shape == (2, 8, lt)
    assert any(isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)) for m in g.modules())


def test_layout_of_a_3_axis_feature_follows_the_model():
    assert feature_layout(Conv1dNet(4), (2, 4, 12)) == "BCL"
    seq = nn.Sequential(nn.Embedding(10, 8), nn.TransformerEncoderLayer(8, 2, 16, batch_first=True))
    assert feature_layout(seq, (2, 5, 8)) == "BTD"
    assert feature_layout(seq, (2, 8)) == "BD" and feature_layout(Conv1dNet(4), (2, 4, 3, 3)) == "BCHW"


def _distill(term_spec: TermSpec, student: nn.Module, teacher: nn.Module, x: torch.Tensor):
    term = build_term(term_spec, "terms.0")
    setup = SetupContext(student=student, teachers=[teacher], example=x[:4], num_classes=3, num_train=len(x))
    module = DistillModule(student, [term], setup)
    source = FrozenTeachers([teacher], module.teacher_taps, "mean_logits", None, 0)
    batch = {"input": x, "target": torch.zeros(len(x), dtype=torch.int64), "index": torch.arange(len(x))}
    return module, module(batch, source.outputs(batch), TrainState(steps_per_epoch=1, epochs=1))


@pytest.mark.parametrize("spec", [
    TermSpec(name="at", params={"pairs": [["stage1", "stage1"], ["stage2", "stage2"]]}),
    TermSpec(name="fitnet", params={"pairs": [["stage1", "stage2"]]}),
    TermSpec(name="sp", params={"pairs": [["stage2", "stage2"]]}),
    TermSpec(name="rkd"),
])
def test_at_fitnet_sp_rkd_train_a_conv1d_student(spec):
    torch.manual_seed(0)
    student, teacher = Conv1dNet(4), Conv1dNet(8).eval()
    x = torch.randn(8, 2, 16)
    module, out = _distill(spec, student, teacher, x)
    value = out.terms[spec.name]
    assert torch.isfinite(value) and float(value) > 0
    out.loss.backward()
    assert student.stage1[0].weight.grad is not None and float(student.stage1[0].weight.grad.abs().sum()) > 0
    if spec.name == "fitnet":  # stage1 (L=16) regressed onto the teacher's stage2 (L=8, 16 channels) by Conv1d
        (g,) = module.terms[0].connectors
        assert isinstance(g[0], nn.Conv1d) and g[0].stride == (2,) and g[0].out_channels == 16


def test_terms_whose_math_needs_images_refuse_1d_maps_in_one_line():
    student, teacher = Conv1dNet(4), Conv1dNet(8).eval()
    x = torch.randn(8, 2, 16)
    with pytest.raises(ConfigError, match=r"loss term 'ie': student layer 'stage2' gives a \(B, C, L\) feature "
                                          r"\(4, 8, 8\); ie takes \(B, C, H, W\)") as err:
        _distill(TermSpec(name="ie", params={"pairs": [["stage2", "stage2"]]}), student, teacher, x)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"loss term 'at': student layer 'embed' gives a \(B, D\) feature"):
        _distill(TermSpec(name="at", params={"pairs": [["embed", "embed"]]}), student, teacher, x)
