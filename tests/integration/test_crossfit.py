"""Cross-fitted soft labels (``kdkit cache RECIPE --cross-fit RUN --cross-fit RUN``) on real bundled digits: two
teachers, each trained on one half of the training split, and a store in which every training image's target is the
teacher that never saw it -- checked against an independent float64 computation from the two teacher models, then
distilled from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import kdkit
from kdkit.cli import app
from kdkit.data import load_source
from kdkit.data.run import build_data
from kdkit.errors import ConfigError
from kdkit.models.factory import load_model
from kdkit.recipe import recipe_from_dict
from kdkit.softlabels import SoftLabelStore
from kdkit.softlabels.crossfit import combine_logits, cross_fit, trained_on

DATA = {"name": "mnist_5k", "val_fraction": 0.2, "batch_size": 64}  # 4,000 training images, no augmentation
HALF = 2000
FP16_HALF_ULP = 2.0 ** -11  # round-to-nearest float16 keeps every normal value to this relative error


def _recipe(out: Path, name: str, data: dict, **extra) -> dict:
    r = {"name": name, "output_dir": str(out), "seed": 0, "data": data,
         "student": {"name": "mlp", "params": {"hidden": [32]}},
         "terms": [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "params": {"temperature": 1.0}}],
         "optim": {"name": "adamw", "lr": 0.003}, "schedule": {"name": "onecycle"}, "epochs": 2, "threads": 1}
    r.update(extra)
    return r


@pytest.fixture(scope="module")
def folds(tmp_path_factory):
    """Two teachers (MLP 784-128-10, 2 epochs) on the two halves of the student's 4,000 training images, and the
    cross-fitted store written by the CLI."""
    out = tmp_path_factory.mktemp("crossfit")
    runs = []
    for name, held_out in (("teacher_a", False), ("teacher_b", True)):
        r = _recipe(out, name, {**DATA, "train_limit": HALF, "held_out": held_out}, terms=[{"name": "ce"}])
        r["student"] = {"name": "mlp", "params": {"hidden": [128]}}
        runs.append(kdkit.train(r, quiet=True).run_dir)
    recipe = out / "kd_oof.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(out, "kd_oof", DATA, soft_labels=str(out / "oof_store"))))
    cli = CliRunner().invoke(app, ["cache", str(recipe), "--cross-fit", str(runs[0]), "--cross-fit", str(runs[1])])
    return {"out": out, "runs": runs, "recipe": recipe, "cli": cli}


def _reference(folds) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Independently: each teacher's float64 log-probabilities on the dataset images (normalised with the teacher's
    own statistics -- its half's mean and std, saved with its weights -- as a frozen teacher sees them), and the
    dataset indices each teacher trained on."""
    data = build_data(recipe_from_dict(_recipe(folds["out"], "probe", DATA)))
    x = load_source("mnist_5k").images.double() / 255
    lps, zmax = [], []
    for run in folds["runs"]:
        model, meta = load_model(run)
        model = model.double()
        with torch.no_grad():
            z = model((x - meta["mean"][0]) / meta["std"][0])
        lps.append(torch.log_softmax(z.double(), dim=1).numpy())
        zmax.append(z.abs().amax(1).numpy())
    seen = [trained_on(run) for run in folds["runs"]]
    return np.stack(lps), np.stack(zmax), np.asarray(data.split["train_idx"]), seen


def _tolerance(want: np.ndarray, zmax: np.ndarray) -> np.ndarray:
    """Two float16 roundings: each teacher's raw logits in its store (error ≤ 2^-11·max|z| per logit, which moves a
    log-softmax by at most twice that), then the combined log-probabilities (≤ 2^-11·|value|)."""
    return FP16_HALF_ULP * (np.abs(want) + 2 * zmax[:, None]) + 1e-6


def test_every_target_comes_from_the_teacher_that_never_saw_the_image(folds):
    assert folds["cli"].exit_code == 0, folds["cli"].output
    store = SoftLabelStore.open(folds["out"] / "oof_store")
    m = store.manifest
    assert m["source"]["kind"] == "cross-fit" and m["source"]["combine"] == "oof"
    assert [t["targets"] for t in m["source"]["teachers"]] == [HALF, HALF]  # each teacher labels the other half
    lps, zmax, train_idx, seen = _reference(folds)
    a, b = set(seen[0].tolist()), set(seen[1].tolist())
    assert len(a) == len(b) == HALF and not a & b and a | b == set(train_idx.tolist())  # disjoint halves
    rows = np.load(folds["out"] / "oof_store" / "samples.npy")
    in_a = np.isin(rows, seen[0])
    want = np.where(in_a[:, None], lps[1][rows], lps[0][rows])  # the other teacher's log-probabilities
    got = store.teacher_logits(torch.arange(len(rows)), 0).double().numpy()
    assert np.all(np.abs(got - want) <= _tolerance(want, np.where(in_a, zmax[1][rows], zmax[0][rows])))
    # not the in-fold teacher's targets: those are sharper on the images it trained on
    own = np.where(np.isin(rows, seen[0])[:, None], lps[0][rows], lps[1][rows])
    ent = lambda lp: -(np.exp(lp) * lp).sum(1).mean()  # noqa: E731
    assert ent(want) > ent(own)


def test_mean_combine_is_the_log_of_the_mean_probability(folds, tmp_path):
    res = cross_fit(recipe_from_dict(_recipe(folds["out"], "kd_mean", DATA)), folds["runs"], combine="mean",
                    out=tmp_path / "mean_store", quiet=True)
    store = SoftLabelStore.open(res.path)
    lps, zmax, _, _ = _reference(folds)
    rows = np.load(res.path / "samples.npy")
    want = np.log(0.5 * np.exp(lps[0][rows]) + 0.5 * np.exp(lps[1][rows]))
    got = store.teacher_logits(torch.arange(len(rows)), 0).double().numpy()
    assert np.all(np.abs(got - want) <= _tolerance(want, zmax.max(0)[rows]))
    assert [t["targets"] for t in store.manifest["source"]["teachers"]] == [len(rows), len(rows)]


def test_combine_logits_identities():
    lp = torch.log_softmax(torch.randn(3, 5, 4, dtype=torch.float64), dim=2)
    one = torch.zeros(3, 5, dtype=torch.bool)
    one[1] = True
    assert torch.allclose(combine_logits(lp, one), lp[1])  # one eligible teacher: its own log-probabilities
    every = torch.ones(3, 5, dtype=torch.bool)
    assert torch.allclose(combine_logits(lp, every), torch.log(lp.exp().mean(0)))
    assert torch.allclose(combine_logits(lp, every).exp().sum(1), torch.ones(5, dtype=torch.float64))


def test_a_teacher_that_saw_every_image_is_refused(folds, tmp_path):
    both = folds["out"] / "teacher_all"
    if not both.is_dir():
        r = _recipe(folds["out"], "teacher_all", DATA, terms=[{"name": "ce"}], epochs=1)
        both = kdkit.train(r, quiet=True).run_dir
    with pytest.raises(ConfigError, match=r"4000 of 4000 training images were in every teacher's training set"):
        cross_fit(recipe_from_dict(_recipe(folds["out"], "kd_bad", DATA)), [both, both], out=tmp_path / "s",
                  quiet=True)
    with pytest.raises(ConfigError, match="two or more teacher runs"):
        cross_fit(recipe_from_dict(_recipe(folds["out"], "kd_bad", DATA)), [both], out=tmp_path / "s", quiet=True)


def test_distilling_from_the_cross_fitted_store_learns(folds):
    res = kdkit.distill(folds["recipe"], quiet=True)
    hist = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == 2 and hist[1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["val_top1"] > 80.0  # MNIST digits after 2 epochs: a student that learnt from the targets
    assert (res.run_dir / "checkpoints" / "best.safetensors").is_file()
