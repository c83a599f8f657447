"""ReviewKD (Chen et al., CVPR 2021): the hierarchical context loss against an independent float64 computation, its
identities, the attention fusion, and the term's ABF blocks sized by probing real zoo models and trained by it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kdkit.errors import ConfigError, ShapeError
from kdkit.losses.features import hcl_loss, review_fuse
from kdkit.models.small import cnn, cnn_teacher, mlp
from kdkit.recipe import TermSpec
from kdkit.schemes.base import DistillModule
from kdkit.teachers.frozen import FrozenTeachers
from kdkit.terms.base import SetupContext, build_term
from kdkit.terms.features import ABF
from kdkit.types import TrainState


def _pool(a: np.ndarray, size: int) -> np.ndarray:
    """Average pooling of (B, C, H, W) to size × size by block means (H, W divisible by size)."""
    b, c, h, w = a.shape
    return a.reshape(b, c, size, h // size, size, w // size).mean(axis=(3, 5))


def _hcl_numpy(s: list[np.ndarray], t: list[np.ndarray]) -> float:
    """The reference's hcl_loss written out: weights 1, 1/2, 1/4, 1/8 over the full map and the 4, 2, 1 pools that
    shrink it, divided by their sum; summed over levels."""
    total = 0.0
    for a, b in zip(s, t, strict=True):
        h = a.shape[2]
        num, den, w = ((a - b) ** 2).mean(), 1.0, 1.0
        for size in (4, 2, 1):
            if size >= h:
                continue
            w /= 2.0
            num += w * ((_pool(a, size) - _pool(b, size)) ** 2).mean()
            den += w
        total += num / den
    return float(total)


def test_hcl_matches_the_reference_formula_in_float64():
    rng = np.random.default_rng(0)
    shapes = [(3, 5, 8, 8), (3, 6, 4, 4), (3, 7, 2, 2), (3, 9, 1, 1)]  # levels 8x8 (4 pools), 4x4 (2), 2x2 (1), 1x1
    s = [rng.normal(size=sh) for sh in shapes]
    t = [rng.normal(size=sh) for sh in shapes]
    got = hcl_loss([torch.from_numpy(a) for a in s], [torch.from_numpy(b) for b in t])
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(_hcl_numpy(s, t), rel=1e-12)  # float64 throughout: only rounding differs


def test_hcl_identities():
    torch.manual_seed(0)
    f = [torch.randn(4, 3, 8, 8), torch.randn(4, 5, 1, 1)]
    assert float(hcl_loss(f, [x.clone() for x in f])) == 0.0
    # A 1x1 level is plain MSE; a 2x2 level with equal means per channel sees only its full-resolution term (weight
    # 1 of 1.5): the 1x1 pools agree.
    a, b = torch.randn(4, 5, 1, 1, dtype=torch.float64), torch.randn(4, 5, 1, 1, dtype=torch.float64)
    assert float(hcl_loss([a], [b])) == pytest.approx(float(((a - b) ** 2).mean()), rel=1e-12)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    y = x + torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)  # a zero-mean change: pools agree
    assert float(hcl_loss([x], [y])) == pytest.approx(1.0 / 1.5, rel=1e-12)  # MSE 1 at full size, 0 pooled
    # decay 1 weighs the pyramid equally; the teacher gets no gradient
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, requires_grad=True)
    hcl_loss([s], [t], decay=1.0).backward()
    assert s.grad is not None and t.grad is None


def test_hcl_shape_errors():
    with pytest.raises(ShapeError, match="level 0 student map"):
        hcl_loss([torch.zeros(2, 3, 4, 4)], [torch.zeros(2, 4, 4, 4)])
    with pytest.raises(ShapeError, match="as many student as teacher levels"):
        hcl_loss([], [])


def test_review_fuse_is_the_attention_weighted_sum():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    r = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    up = r.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest upsampling by 2, written out
    a = torch.rand(2, 2, 4, 4, dtype=torch.float64)
    assert torch.allclose(review_fuse(x, r, a), x * a[:, :1] + up * a[:, 1:], rtol=0, atol=1e-15)
    ones = torch.ones(2, 2, 4, 4, dtype=torch.float64)
    assert torch.equal(review_fuse(x, up, ones), x + up)
    with pytest.raises(ShapeError, match="do not fit"):
        review_fuse(x, r, a[:, :1])


def test_abf_with_a_neutral_attention_averages_the_levels():
    torch.manual_seed(0)
    abf = ABF(c_in=4, c_mid=6, c_out=5, fuse=True).eval()
    nn.init.zeros_(abf.att[0].weight)
    nn.init.zeros_(abf.att[0].bias)  # sigmoid(0) = 1/2 for both maps
    x, res = torch.randn(2, 4, 4, 4), torch.randn(2, 6, 2, 2)
    out, fused = abf(x, res, (8, 8))
    mid = abf.conv1(x)
    expect = 0.5 * mid + 0.5 * nn.functional.interpolate(res, size=(4, 4), mode="nearest")
    expect = nn.functional.interpolate(expect, size=(8, 8), mode="nearest")
    assert out.shape == (2, 5, 8, 8) and torch.allclose(fused, expect, atol=1e-6)  # float32 conv sums


def _distill(spec: TermSpec, student: nn.Module, teacher: nn.Module, x: torch.Tensor):
    term = build_term(spec, "terms.0")
    setup = SetupContext(student=student, teachers=[teacher], example=x[:4], num_classes=10, num_train=len(x))
    module = DistillModule(student, [term], setup)
    source = FrozenTeachers([teacher], module.teacher_taps, "mean_logits", None, 0)
    batch = {"input": x, "target": torch.zeros(len(x), dtype=torch.int64), "index": torch.arange(len(x))}
    return module, lambda: module(batch, source.outputs(batch), TrainState(steps_per_epoch=1, epochs=1))


def test_reviewkd_term_sizes_abfs_by_probing_and_learns():
    torch.manual_seed(0)
    student = cnn(10, 1, 28, channels=[[12], [24], [32]])
    teacher = cnn_teacher(10, 1, 28, convs_per_stage=2).eval()
    x = torch.randn(16, 1, 28, 28)
    module, step = _distill(TermSpec(name="reviewkd"), student, teacher, x)
    term = module.terms[0]
    # levels: three stages (28, 14, 7 px) and the embeddings (student 32 pooled channels, teacher 256 hidden units)
    assert term.pairs[-1] == ("embed", "embed") and term.out_sizes == [(28, 28), (14, 14), (7, 7), (1, 1)]
    assert [a.conv2[0].out_channels for a in term.abfs] == [32, 64, 128, 256]
    assert all(a.conv1[0].out_channels == 32 for a in term.abfs)  # min(512, the student's deepest width)
    assert term.abfs[-1].att is None and all(a.att is not None for a in term.abfs[:-1])
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    first = None
    for _ in range(15):
        out = step()
        value = out.terms["reviewkd"]
        first = float(value) if first is None else first
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert float(step().terms["reviewkd"]) < 0.7 * first  # the student and its ABFs move toward the teacher


def test_reviewkd_takes_an_mlp_student_and_refuses_bad_params():
    torch.manual_seed(0)
    student, teacher = mlp(10, 1, 28, hidden=[64]), cnn_teacher(10, 1, 28).eval()
    x = torch.randn(8, 1, 28, 28)
    module, step = _distill(TermSpec(name="reviewkd", params={"pairs": "last"}), student, teacher, x)
    assert torch.isfinite(step().terms["reviewkd"])  # (B, 64) levels are 1x1 maps
    with pytest.raises(ConfigError, match="loss term 'reviewkd'"):
        build_term(TermSpec(name="reviewkd", params={"decay": 0.0}))
