"""Connectors g(m) and automatic stage pairing: output shapes, the linear algebra they claim, trainability, and
errors that name both layers and shapes. The last test pairs the real zoo models of the published table."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdkit.connectors import make_connector, pair_stages
from kdkit.errors import ShapeError


@pytest.mark.parametrize(
    "kind,s_shape,t_shape",
    [
        ("auto", (2, 8, 6, 6), (2, 8, 6, 6)),
        ("auto", (2, 8, 6, 6), (2, 16, 6, 6)),
        ("auto", (2, 8, 8, 8), (2, 16, 4, 4)),
        ("auto", (2, 32), (2, 64)),
        ("auto", (2, 5, 32), (2, 5, 48)),
        ("linear", (2, 8, 6, 6), (2, 16, 3, 3)),
        ("conv1x1", (2, 8, 6, 6), (2, 16, 6, 6)),
        ("conv_bn_relu", (2, 8, 6, 6), (2, 16, 6, 6)),
        ("conv_bn_relu", (2, 8, 8, 8), (2, 16, 4, 4)),  # 3x3 stride 2
        ("conv_bn_relu", (2, 8, 4, 4), (2, 16, 8, 8)),  # transposed conv
        ("conv_bn_relu", (2, 8, 7, 7), (2, 16, 5, 5)),  # valid 3x3 conv
        ("identity", (2, 8, 6, 6), (2, 8, 6, 6)),
    ],
)
def test_connector_maps_to_teacher_shape(kind, s_shape, t_shape):
    conn = make_connector(kind, s_shape, t_shape)
    out = conn(torch.randn(*s_shape))
    assert tuple(out.shape) == t_shape


def test_auto_picks_identity_only_for_equal_shapes():
    assert isinstance(make_connector("auto", (4, 8, 6, 6), (2, 8, 6, 6)), nn.Identity)  # batch dim may differ
    assert not isinstance(make_connector("auto", (4, 8, 6, 6), (4, 8, 3, 3)), nn.Identity)


def test_linear_map_connector_is_pooling_then_1x1_conv_and_they_commute():
    torch.manual_seed(0)
    conn = make_connector("linear", (2, 4, 8, 8), (2, 6, 4, 4))
    pool, conv = conn[0], conn[1]
    assert isinstance(pool, nn.AdaptiveAvgPool2d) and conv.kernel_size == (1, 1)
    x = torch.randn(2, 4, 8, 8)
    w, b = conv.weight[:, :, 0, 0], conv.bias
    manual = torch.einsum("oc,bchw->bohw", w, F.adaptive_avg_pool2d(x, 4)) + b[None, :, None, None]
    torch.testing.assert_close(conn(x), manual)
    torch.testing.assert_close(conn(x), F.adaptive_avg_pool2d(conv(x), 4), rtol=1e-5, atol=1e-6)


def test_vector_and_sequence_linear_connectors_are_nn_linear_on_last_dim():
    conn = make_connector("linear", (3, 5, 8), (3, 5, 4))
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(conn(x), x @ conn.linear.weight.t() + conn.linear.bias)


def test_connectors_are_trainable():
    conn = make_connector("conv_bn_relu", (2, 4, 8, 8), (2, 6, 4, 4))
    out = conn(torch.randn(2, 4, 8, 8))
    out.sum().backward()
    params = [p for p in conn.parameters()]
    assert params and all(p.requires_grad and p.grad is not None for p in params)


def test_connector_errors_name_layers_and_shapes():
    with pytest.raises(ShapeError, match=r"student layer2 \(2, 8, 4, 4\).*teacher layer3 \(2, 16, 8, 8\)"):
        make_connector("conv1x1", (2, 8, 4, 4), (2, 16, 8, 8), s_name="layer2", t_name="layer3")
    with pytest.raises(ShapeError, match="smaller"):
        make_connector("conv_bn_relu", (2, 8, 3, 3), (2, 16, 8, 8))
    with pytest.raises(ShapeError, match="same rank"):
        make_connector("auto", (2, 64), (2, 16, 8, 8), s_name="embed", t_name="layer3")
    with pytest.raises(ShapeError, match="identity"):
        make_connector("identity", (2, 8, 4, 4), (2, 16, 4, 4))
    with pytest.raises(ShapeError, match="unknown connector"):
        make_connector("mlp", (2, 8), (2, 8))
    with pytest.raises(ShapeError, match="vectors"):
        make_connector("conv1x1", (2, 8), (2, 16))
    with pytest.raises(ShapeError, match="sequence lengths"):
        make_connector("linear", (2, 5, 8), (2, 7, 8))


def test_pair_stages_equal_depths_and_extra_teacher_stages():
    s = {"s1": (1, 16, 32, 32), "s2": (1, 32, 16, 16), "s3": (1, 64, 8, 8)}
    t = {"t0": (1, 8, 32, 32), "t1": (1, 64, 32, 32), "t2": (1, 128, 16, 16), "t3": (1, 256, 8, 8),
         "t4": (1, 512, 4, 4)}
    # Deepest-to-deepest: among the two 32x32 teacher stages the deeper one (t1) is used.
    assert pair_stages(s, t) == [("s1", "t1"), ("s2", "t2"), ("s3", "t3")]


def test_pair_stages_skips_unmatched_student_stage_or_raises_when_strict():
    s = {"a": (1, 12, 16, 16), "b": (1, 16, 8, 8), "c": (1, 160, 2, 2)}
    t = {"x": (1, 128, 16, 16), "y": (1, 256, 8, 8), "z": (1, 512, 4, 4)}
    assert pair_stages(s, t) == [("a", "x"), ("b", "y")]
    with pytest.raises(ShapeError, match=r"c \(1, 160, 2, 2\)"):
        pair_stages(s, t, strict=True)


def test_pair_stages_errors_list_every_layer():
    with pytest.raises(ShapeError, match=r"student stages: a \(1, 8, 5, 5\).*teacher stages: x \(1, 8, 4, 4\)"):
        pair_stages({"a": (1, 8, 5, 5)}, {"x": (1, 8, 4, 4)})
    with pytest.raises(ShapeError, match="'fc'"):
        pair_stages({"fc": (1, 10)}, {"x": (1, 8, 4, 4)})


@pytest.mark.parametrize(
    "teacher,student,expected",
    [
        ("resnet32x4", "resnet8x4", [("layer1", "layer1"), ("layer2", "layer2"), ("layer3", "layer3")]),
        ("vgg13", "mobilenetv2", [("blocks.1", "block1"), ("blocks.2", "block2"), ("blocks.4", "block4")]),
        ("resnet32x4", "shufflenetv2", [("layer1", "layer2"), ("layer2", "layer3")]),
        ("cnn_teacher", "cnn_student", [("stage1", "stage1"), ("stage2", "stage2"), ("stage3", "stage3")]),
    ],
)
def test_pair_stages_on_zoo_models(teacher, student, expected):
    models = pytest.importorskip("kdkit.models")
    from kdkit.taps import probe_shapes

    small = teacher.startswith("cnn")
    ch, size = (1, 28) if small else (3, 32)
    mt = models.create_model(teacher, 10, ch, size)
    ms = models.create_model(student, 10, ch, size)
    x = torch.randn(2, ch, size, size)
    ts = probe_shapes(mt, x, models.default_stages(mt))
    ss = probe_shapes(ms, x, models.default_stages(ms))
    pairs = pair_stages(ss, ts)
    assert pairs == expected
    for s_path, t_path in pairs:  # and every pair gets a working connector
        conn = make_connector("auto", ss[s_path], ts[t_path], s_path, t_path)
        assert tuple(conn(torch.randn(*ss[s_path])).shape) == ts[t_path]
