"""Arrays of any shape: float data stays float in its units, uint8 images stay uint8, per-channel statistics,
image augmentation refused on non-image data, and the real input shape recorded and used by export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdkit.data import as_data, build_data, dataset_stats, from_arrays, load_source
from kdkit.errors import ConfigError, DataError
from kdkit.recipe import recipe_from_dict


def test_npz_keeps_float_data_of_any_shape_exactly(tmp_path: Path):
    rng = np.random.default_rng(0)
    cases = {
        "tab": rng.normal(100.0, 30.0, (9, 40)),  # (N, D) tabular, far outside [0, 1]
        "sig": rng.normal(0, 1e-3, (9, 2, 17)),  # (N, C, L) signals, tiny values
        "img": rng.random((9, 3, 5, 11)),  # (N, C, H, W) float images, non-square
    }
    y = np.arange(9) % 3
    for name, x in cases.items():
        np.savez(tmp_path / f"{name}.npz", x=x.astype(np.float32), y=y)
        d = load_source(f"npz:{tmp_path / name}.npz")
        assert d.images.dtype == torch.float32 and d.input_dtype == "float32"
        assert d.input_shape == x.shape[1:] and d.is_image == (x.ndim == 4)
        assert np.array_equal(d.images.numpy(), x.astype(np.float32))  # not rescaled, not quantised
    np.savez(tmp_path / "ints.npz", x=rng.integers(-5, 500, (9, 6)), y=y)  # integers other than uint8: float
    assert load_source(f"npz:{tmp_path / 'ints.npz'}").images.dtype == torch.float32
    np.savez(tmp_path / "nlc.npz", x=cases["sig"].transpose(0, 2, 1).astype(np.float32), y=y)
    d = load_source(f"npz:{tmp_path / 'nlc.npz'}", layout="NLC")  # channels last -> (N, C, L)
    assert d.input_shape == (2, 17) and np.array_equal(d.images.numpy(), cases["sig"].astype(np.float32))
    u8 = rng.integers(0, 256, (9, 7, 4), dtype=np.uint8)
    np.savez(tmp_path / "u8.npz", x=u8, y=y)
    assert load_source(f"npz:{tmp_path / 'u8.npz'}").images.dtype == torch.uint8  # uint8 (N, H, W): gray images
    with pytest.raises(DataError, match=r"inputs must have a sample axis"):
        from_arrays(np.zeros(4, np.float32), np.zeros(4, int), name="vec")
    with pytest.raises(ConfigError, match="layout must be one of"):
        from_arrays(np.zeros((4, 2), np.float32), layout="NWC")


def test_per_channel_statistics_match_float64_reference():
    """Channel = axis 1; (N, D) gets one mean/std per feature. float64 accumulation: exact to 1e-12 relative."""
    rng = np.random.default_rng(1)
    for shape in [(50, 4), (50, 3, 9), (50, 2, 5, 7)]:
        x = (rng.normal(0, 1, shape) * np.arange(1, shape[1] + 1).reshape((1, -1) + (1,) * (len(shape) - 2))
             + 1000).astype(np.float32)
        mean, std = dataset_stats(torch.from_numpy(x))
        axes = tuple(a for a in range(len(shape)) if a != 1)
        x64 = x.astype(np.float64)
        assert np.allclose(mean, x64.mean(axes), rtol=1e-12, atol=0)
        assert np.allclose(std, x64.std(axes), rtol=1e-9, atol=0)  # E[x^2]-mean^2 at mean 1000: ~1e-10 relative


def _recipe(tmp_path: Path, **data) -> dict:
    return {"name": "r", "output_dir": str(tmp_path / "runs"), "student": {"name": "mlp", "params": {"hidden": [8]}},
            "data": {"batch_size": 16, "val_fraction": 0.25, **data}, "epochs": 1}


def test_run_data_normalises_float_data_per_channel_and_refuses_image_augmentation(tmp_path: Path):
    rng = np.random.default_rng(2)
    x = rng.normal([[10.0], [-3.0]], [[5.0], [0.1]], (80, 2, 30)).astype(np.float32)
    np.savez(tmp_path / "s.npz", x=x, y=np.arange(80) % 4)
    d = build_data(recipe_from_dict(_recipe(tmp_path, name=f"npz:{tmp_path / 's.npz'}")))
    assert d.input_shape == (2, 30) and d.input_dtype == "float32" and d.augment.mean[0] == pytest.approx(10, abs=1)
    batch = next(iter(d.train_loader))["input"]
    assert batch.shape == (16, 2, 30) and batch.dtype == torch.float32
    whole = d.augment.normalize(d.train.images)
    assert torch.allclose(whole.mean((0, 2)), torch.zeros(2), atol=1e-4)  # float32 sums of 1,800 values
    assert torch.allclose(whole.std((0, 2), unbiased=False), torch.ones(2), atol=1e-4)
    with pytest.raises(ConfigError, match=r"data.augment: crop and flip are image augmentations, but .* holds "
                                          r"samples of shape \(2, 30\)"):
        build_data(recipe_from_dict(_recipe(tmp_path, name=f"npz:{tmp_path / 's.npz'}", augment={"flip": True})))


def test_python_objects_become_data():
    x, y = torch.randn(12, 5), torch.arange(12) % 3
    from torch.utils.data import DataLoader, TensorDataset

    for obj in [(x, y), {"x": x, "y": y}, TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=5)]:
        d = as_data(obj, "obj")
        assert torch.equal(d.images, x) and d.targets.tolist() == y.tolist() and d.num_classes == 3
    with pytest.raises(ConfigError, match="expected a Dataset, a DataLoader"):
        as_data(42, "train")
    with pytest.raises(DataError, match=r"train: item 0 is Tensor; expected an \(input, label\) pair"):
        as_data([torch.zeros(3)], "train")


def test_non_square_float_images_train_and_export_with_their_real_shape(tmp_path: Path):
    """The checkpoint records (C, H, W) = (1, 6, 10); export builds its probe from it (no square/1x1 guess) and the
    ONNX model agrees with PyTorch."""
    pytest.importorskip("onnxruntime")
    import kdkit
    from kdkit.deploy.commands import export_command, load_run
    from kdkit.weights import input_shape_of, read_metadata

    rng = np.random.default_rng(3)
    y = np.arange(120) % 2
    x = (rng.random((120, 1, 6, 10)) + y[:, None, None, None] * np.linspace(0, 1, 10)).astype(np.float32)
    np.savez(tmp_path / "img.npz", x=x, y=y)
    res = kdkit.train(_recipe(tmp_path, name=f"npz:{tmp_path / 'img.npz'}", augment={"crop_padding": 1}),
                      quiet=True)
    meta = read_metadata(res.best_path)
    assert meta["input_shape"] == [1, 6, 10] and input_shape_of(meta) == (1, 6, 10)
    model, meta, calib, evals = load_run(res.run_dir)
    s = export_command(model, input_shape_of(meta), tmp_path / "exp", int8=True, calibration_batches=calib,
                       eval_batches=evals)
    assert s["onnx"]["max_abs_diff"] < 1e-4  # float32 ONNX vs PyTorch on a 60-wide MLP
    assert abs(s["accuracy"]["ort-fp32"] - s["accuracy"]["pytorch"]) < 1e-6
    np.savez(tmp_path / "other.npz", x=x[:, :, :, :8], y=y)  # another shape: one line, not a traceback
    with pytest.raises(ConfigError, match=r"--data '.*other.npz' holds float32 samples of shape \(1, 6, 8\), but "
                                          r"the model was trained on float32 \(1, 6, 10\)"):
        kdkit.evaluate(res.run_dir, data=f"npz:{tmp_path / 'other.npz'}")
