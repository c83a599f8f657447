"""kdkit.deploy.export / quantize on tiny real modules: ONNX matches PyTorch, int8 runs, errors name the file."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from kdkit.deploy.export import export_onnx, ort_session, run_onnx, verify_onnx  # noqa: E402
from kdkit.deploy.quantize import (  # noqa: E402
    gemm_to_matmul,
    onnx_accuracy,
    quantize_dynamic_onnx,
    quantize_static_onnx,
)
from kdkit.errors import KdkitError, ShapeError  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread for PyTorch and (through the default) ONNX Runtime. On a 2-core machine shared with other
    jobs, two spinning OpenMP threads make tiny ops 20-40x slower in CPU time; one thread keeps these tests fast."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


class _CNN(nn.Module):
    """Conv-BN-ReLU, pool, conv, global pool, linear: the op mix of the zoo's small CNNs."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.body(x))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    m = _CNN()
    # Non-trivial BatchNorm statistics, so folding BN into the conv at export is actually exercised.
    with torch.no_grad():
        m.body[1].running_mean.uniform_(-0.5, 0.5)
        m.body[1].running_var.uniform_(0.5, 2.0)
        m.body[1].weight.uniform_(0.5, 1.5)
    return m.eval()


class _HFStyle(nn.Module):
    """Returns an object with ``.logits``, like Hugging Face models."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp()

    def forward(self, x):
        return type("Out", (), {"logits": self.net(x)})()


@pytest.mark.parametrize("make,shape", [(_mlp, (1, 8, 8)), (_cnn, (1, 12, 12))])
def test_fp32_export_matches_pytorch_at_any_batch_size(tmp_path, make, shape):
    model = make().train()  # export must switch to eval mode (BN running stats) and restore the flag
    res = export_onnx(model, torch.randn(2, *shape), tmp_path / "sub" / "m.onnx")
    assert model.training
    assert res.path.is_file() and res.exporter == "torchscript" and res.opset == 17
    assert res.max_abs_diff is not None and res.max_abs_diff < 1e-4
    assert res.size_mb == pytest.approx(os.path.getsize(res.path) / 1e6)
    # No temp files are left behind by the atomic write.
    assert sorted(p.name for p in res.path.parent.iterdir()) == ["m.onnx"]

    sess = ort_session(res.path)
    model.eval()
    for bs in (1, 7, 33):  # the batch axis is dynamic
        x = torch.randn(bs, *shape)
        with torch.no_grad():
            ref = model(x).numpy()
        got = run_onnx(sess, x)
        assert got.shape == (bs, 10)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_static_batch_export_and_logits_object(tmp_path):
    res = export_onnx(_HFStyle(), torch.randn(4, 1, 8, 8), tmp_path / "hf.onnx", dynamic_batch=False)
    dims = onnx.load(str(res.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 1, 8, 8]
    assert res.max_abs_diff < 1e-4


def test_dynamo_exporter_also_matches(tmp_path):
    res = export_onnx(_cnn(), torch.randn(1, 1, 12, 12), tmp_path / "d.onnx", exporter="dynamo")
    assert res.exporter == "dynamo" and res.opset >= 18
    assert res.max_abs_diff < 1e-4


def test_verify_onnx_catches_a_wrong_model(tmp_path):
    res = export_onnx(_mlp(0), torch.randn(2, 1, 8, 8), tmp_path / "a.onnx")
    x = torch.randn(5, 1, 8, 8)
    assert verify_onnx(res.path, _mlp(0), [x, x[:1]]) < 1e-4
    with pytest.raises(KdkitError, match="a.onnx"):
        verify_onnx(res.path, _mlp(1), x)  # same architecture, other weights


def test_export_errors_name_the_path(tmp_path):
    with pytest.raises(KdkitError, match="model.pt"):
        export_onnx(_mlp(), torch.randn(1, 1, 8, 8), tmp_path / "model.pt")
    missing = tmp_path / "nope" / "missing.onnx"
    with pytest.raises(KdkitError, match="missing.onnx"):
        ort_session(missing)
    with pytest.raises(KdkitError, match="missing.onnx"):
        quantize_dynamic_onnx(missing, tmp_path / "q.onnx")
    with pytest.raises(KdkitError, match="missing.onnx"):
        onnx_accuracy(missing, [(np.zeros((1, 1, 8, 8), np.float32), np.zeros(1, np.int64))])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(KdkitError, match="garbage.onnx"):
        ort_session(garbage)
    # A shape the model cannot take fails as a KdkitError too, not a raw tracer traceback.
    with pytest.raises(KdkitError, match="bad.onnx"):
        export_onnx(_mlp(), torch.randn(1, 1, 5, 5), tmp_path / "bad.onnx", exporter="torchscript")
    assert not list(tmp_path.glob(".bad*")), "the temp file of a failed export is removed"

    class Picky(nn.Module):
        def forward(self, x):
            raise ShapeError("picky wants 8x8 inputs")

    # A kdkit error raised by the model reaches the user as it is (no fallback to the other exporter).
    with pytest.raises(ShapeError, match="picky"):
        export_onnx(Picky(), torch.randn(1, 1, 5, 5), tmp_path / "picky.onnx")


def test_gemm_to_matmul_is_the_same_function(tmp_path):
    res = export_onnx(_mlp(), torch.randn(2, 1, 8, 8), tmp_path / "g.onnx")
    proto = onnx.load(str(res.path))
    assert [n.op_type for n in proto.graph.node].count("Gemm") == 2
    assert gemm_to_matmul(proto) == 2
    ops = [n.op_type for n in proto.graph.node]
    assert "Gemm" not in ops and ops.count("MatMul") == 2 and ops.count("Add") == 2
    out = tmp_path / "mm.onnx"
    onnx.save(proto, str(out))
    x = np.random.default_rng(0).standard_normal((6, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(ort_session(out), x), run_onnx(ort_session(res.path), x), atol=1e-5)


def test_quantised_models_run_and_stay_close(tmp_path):
    model = _cnn()
    res = export_onnx(model, torch.randn(1, 1, 12, 12), tmp_path / "c.onnx")
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((16, 1, 12, 12)).astype(np.float32) for _ in range(4)]
    st = quantize_static_onnx(res.path, tmp_path / "c.static.onnx", calib)
    dy = quantize_dynamic_onnx(res.path, tmp_path / "c.dynamic.onnx")
    assert st.calibration_batches == 4 and st.mode == "static"
    ops = {n.op_type for n in onnx.load(str(st.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    assert "MatMulInteger" in {n.op_type for n in onnx.load(str(dy.path)).graph.node}  # the fc, via Gemm→MatMul

    x = rng.standard_normal((8, 1, 12, 12)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    scale = np.abs(ref).max()
    for q in (st, dy):
        got = run_onnx(ort_session(q.path), x)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() < 0.1 * scale  # int8 error: small against the logits' range

    # The calibration iterable may be a one-shot generator, (input, target) pairs or Batch dicts.
    gen = ({"input": torch.from_numpy(b), "target": torch.zeros(16, dtype=torch.long)} for b in calib)
    assert quantize_static_onnx(res.path, tmp_path / "c.s2.onnx", gen, max_batches=2).calibration_batches == 2


def test_quantise_errors(tmp_path):
    res = export_onnx(_mlp(), torch.randn(1, 1, 8, 8), tmp_path / "m.onnx")
    with pytest.raises(KdkitError, match="calibration"):
        quantize_static_onnx(res.path, tmp_path / "q.onnx", [])
    with pytest.raises(KdkitError, match="overwrite"):
        quantize_dynamic_onnx(res.path, res.path)
    with pytest.raises(KdkitError, match="q.bin"):
        quantize_dynamic_onnx(res.path, tmp_path / "q.bin")
    assert not (tmp_path / "q.onnx").exists()


def test_onnx_accuracy_counts_top1_and_skips_unlabelled(tmp_path):
    model = _mlp()
    res = export_onnx(model, torch.randn(1, 1, 8, 8), tmp_path / "m.onnx")
    x = torch.randn(20, 1, 8, 8)
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = pred.clone()
    y[:5] = (pred[:5] + 1) % 10  # 5 wrong
    y[5:10] = -1  # 5 unlabelled
    # 10 labelled-and-right out of 15 labelled.
    assert onnx_accuracy(res.path, [(x[:12], y[:12]), {"input": x[12:], "target": y[12:]}]) == pytest.approx(
        100 * 10 / 15
    )
    with pytest.raises(KdkitError):
        onnx_accuracy(res.path, [(x, torch.full((20,), -1))])
