"""Samples with several named inputs from the source itself: an ``.npz`` holding the digits (``x``) and, per
sample, another modality (``x_profile``: the digit's row-intensity profile, a (1, 28) float signal; ``x_neg``: the
negative image). Each model reads its own (``input: profile``), the same crop reaches image arrays, statistics are
the training split's, and the student's checkpoint, eval and export use the array it read. Real digits (mnist_5k)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import kdkit
from kdkit.builder import build_scheme
from kdkit.cli import app
from kdkit.data.run import build_data
from kdkit.data.sources import load_source
from kdkit.errors import DataError
from kdkit.recipe import recipe_from_dict
from kdkit.types import TrainState
from kdkit.weights import read_metadata


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    d = load_source("mnist_5k")
    x = d.images.numpy()[:1200, 0]  # (N, 28, 28) uint8
    profile = (x.astype(np.float32).mean(axis=2) / 255.0)[:, None, :]  # (N, 1, 28): another modality, float
    path = tmp_path_factory.mktemp("modal") / "modal.npz"
    np.savez(path, x=x, y=d.targets.numpy()[:1200], x_profile=profile, x_neg=255 - x)
    return path


def _recipe(out, path, **over):
    r = {"name": "modal", "output_dir": str(out), "seed": 0,
         "data": {"name": f"npz:{path}", "params": {"inputs": ["profile", "neg"]}, "batch_size": 64,
                  "augment": {"crop_padding": 2}},
         "student": {"name": "mlp", "input": "profile", "params": {"hidden": [32]}},
         "teachers": [{"name": "mlp", "params": {"hidden": [64]}}],
         "terms": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5}],
         "optim": {"name": "adamw", "lr": 0.01}, "schedule": {"name": "onecycle"}, "epochs": 3}
    r.update(over)
    return r


def test_the_source_arrays_travel_with_their_samples(npz):
    d = load_source(f"npz:{npz}", inputs=["profile"])
    assert d.inputs["profile"].shape == (1200, 1, 28) and d.inputs["profile"].dtype == torch.float32
    sub = d.subset([5, 2])
    assert torch.equal(sub.inputs["profile"], d.inputs["profile"][[5, 2]])
    assert d.fingerprint() != load_source(f"npz:{npz}").fingerprint()  # the store identity sees the extra array
    with pytest.raises(DataError, match="has no array 'x_depth' for input 'depth'"):
        load_source(f"npz:{npz}", inputs=["depth"])


def test_batches_carry_each_array_normalised_and_image_arrays_get_the_same_crop(npz, tmp_path):
    r = recipe_from_dict(_recipe(tmp_path, npz))
    data = build_data(r)
    assert data.input_names == ["input", "profile", "neg"] and data.shape_of("profile") == (1, 28)
    data.train_loader.set_epoch(3)
    b = next(iter(data.train_loader))
    rows = data.train_loader.indices[b["index"]]
    prof = data.train.inputs["profile"][rows].double()
    st = data.arrays["profile"]
    # the training split's statistics (float64 reference; tolerance: two float32 ops on values |x| < 10)
    assert st["mean"][0] == pytest.approx(float(data.train.inputs["profile"].double().mean()), rel=1e-6)
    assert torch.allclose(b["input.profile"].double(), (prof - st["mean"][0]) / st["std"][0], atol=1e-5)
    # the negative image got the very crop of the main image: un-normalised, it is 255 minus the main pixels
    # wherever the crop window lies inside the image, and 0 in both where it lies in the zero padding
    main_px = data.augment.geometric(data.train.images[rows], b["index"], 3).double()
    neg = (b["input.neg"].double() * (255 * data.arrays["neg"]["std"][0]) + 255 * data.arrays["neg"]["mean"][0]).round()
    padding = (neg == 0) & (main_px == 0)
    assert bool(padding.any()) and bool(((neg + main_px == 255) | padding).all())


def test_a_student_on_another_modality_trains_and_eval_export_read_that_array(npz, tmp_path):
    r = _recipe(tmp_path, npz)
    scheme = build_scheme(recipe_from_dict(r), build_data(recipe_from_dict(r)))
    assert scheme.module.student.in_features == 28 and scheme.teachers.models[0].in_features == 28 * 28
    out = scheme.step(scheme.trainable(), next(iter(build_data(recipe_from_dict(r)).train_loader)), TrainState())
    assert torch.isfinite(out.loss)
    res = kdkit.distill(r, quiet=True)
    hist = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] and res.best["top1"] > 20.0  # a 28-value profile: chance 10
    meta = read_metadata(res.best_path)
    assert meta["input_shape"] == [1, 28] and meta["input_dtype"] == "float32" and meta["in_channels"] == 1
    assert meta["input"]["array"] == "profile" and len(meta["mean"]) == 1
    assert kdkit.evaluate(res.run_dir)["top1"] == pytest.approx(res.best["top1"], abs=1e-9)
    cli = CliRunner().invoke(app, ["export", str(res.run_dir)])
    assert cli.exit_code == 0, cli.output
    summary = json.loads((res.run_dir / "export" / "export.json").read_text())
    assert summary["onnx"]["input_shape"][1:] == [1, 28]
    assert summary["accuracy"]["pytorch"] == pytest.approx(res.best["top1"], abs=1e-9)


def test_a_teacher_on_the_array_feeds_the_cache(npz, tmp_path):
    """kdkit cache gathers each sample's own array rows for a teacher that reads one."""
    from kdkit.softlabels.cache import build_cache

    r = _recipe(tmp_path, npz, teachers=[{"name": "mlp", "input": "profile", "params": {"hidden": [16]}}],
                student={"name": "mlp", "params": {"hidden": [16]}}, soft_labels=str(tmp_path / "store"), epochs=1)
    build_cache(recipe_from_dict(r), views=1, topk=10, quiet=True)
    res = kdkit.distill(r, quiet=True)
    assert res.best["top1"] > 0
