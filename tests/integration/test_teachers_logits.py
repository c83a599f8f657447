"""Logits-only teachers on real bundled digits: a trained teacher's logits over the whole dataset are written to a file
(as another framework or an API would hand them over), imported with ``kdkit cache --from-logits``, and distilling
from the store equals distilling from the PyTorch teacher they came from, within fp16 storage error."""

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
from kdkit.errors import KdkitError
from kdkit.models.factory import load_model
from kdkit.recipe import recipe_from_dict
from kdkit.softlabels import SoftLabelStore
from kdkit.softlabels.identity import training_source_index

DATA = {"name": "mnist_5k", "val_fraction": 0.2, "batch_size": 64, "train_limit": 512}  # no augmentation
TEACHER = {"name": "mlp", "params": {"hidden": [128]}}
FP16_HALF_ULP = 2.0 ** -11  # round-to-nearest float16 keeps every normal value to this relative error


def _kd(out: Path, name: str, **extra) -> dict:
    r = {"name": name, "output_dir": str(out), "seed": 0, "data": DATA,
         "student": {"name": "mlp", "params": {"hidden": [32]}},
         "terms": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "params": {"temperature": 4}}],
         "optim": {"name": "adamw", "lr": 0.003}, "schedule": {"name": "onecycle"}, "epochs": 2}
    r.update(extra)
    return r


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """The teacher's logits for every one of the 5,000 dataset samples, in dataset order, as an outside tool would
    compute them: the dataset's images, normalised as the recipe normalises them."""
    out = tmp_path_factory.mktemp("logits_teacher")
    run = kdkit.train({"name": "teacher", "output_dir": str(out), "seed": 0, "data": DATA, "student": TEACHER,
                       "terms": [{"name": "ce"}], "optim": {"name": "adamw", "lr": 0.003},
                       "schedule": {"name": "onecycle"}, "epochs": 3}, quiet=True)
    teacher, _ = load_model(run.run_dir)
    data = build_data(recipe_from_dict(_kd(out, "probe")))
    images = load_source("mnist_5k").images
    with torch.no_grad():
        logits = torch.cat([teacher(data.augment.normalize(images[s:s + 1000])) for s in range(0, len(images), 1000)])
    npy = out / "teacher_logits.npy"
    np.save(npy, logits.numpy())
    recipe = out / "kd_imported.yaml"
    recipe.write_text(yaml.safe_dump(_kd(out, "kd_imported", soft_labels=str(out / "store"))))
    cli = CliRunner().invoke(app, ["cache", str(recipe), "--from-logits", str(npy), "--topk", "10"])
    return {"out": out, "run": run, "logits": logits.numpy(), "npy": npy, "recipe": recipe, "cli": cli,
            "data": data, "pt_teacher": dict(TEACHER, checkpoint=str(run.run_dir))}


def test_cli_imports_the_table_into_a_store(table):
    cli = table["cli"]
    assert cli.exit_code == 0, cli.output
    assert "imported logits of" in cli.output and "agrees with the training labels on" in cli.output
    store = SoftLabelStore.open(table["out"] / "store")
    m = store.manifest
    assert m["complete"] and m["views"] == 1 and m["topk"] == 10 and m["num_samples"] == 512
    assert m["source"]["kind"] == "logits-file" and m["source"]["label_agreement"] > 60.0
    # Row p of the store is training position p: dataset sample training_source_index[p], to fp16 rounding.
    rows = np.load(table["out"] / "store" / "samples.npy")  # what an outside tool reads to map rows to samples
    assert m["samples"]["file"] == "samples.npy" and np.array_equal(rows, training_source_index(table["data"]))
    want = table["logits"][rows]
    got = store.teacher_logits(torch.arange(512), 0).numpy()
    assert np.all(np.abs(got - want) <= FP16_HALF_ULP * np.abs(want) + 1e-7)


def test_distilling_from_imported_logits_equals_distilling_from_the_teacher(table):
    """Tolerance: the store keeps every logit to fp16's half-ulp (2^-11 ≈ 4.9e-4 relative; k = K, so nothing else is
    approximated), and every logged figure is a smooth function of the teacher logits, so it may move by that
    relative amount: rel 4.9e-4 (measured after 16 AdamW steps: at most 4e-5). The accuracies may differ by a sample
    or two (measured: identical). Weights are not compared one by one: Adam's normalised update moves a weight whose
    gradient is near zero by ~lr whichever way rounding tips it, so the function (val loss) is what is compared."""
    a = kdkit.distill(_kd(table["out"], "kd_online", teachers=[table["pt_teacher"]]), quiet=True)
    b = kdkit.distill(yaml.safe_load(table["recipe"].read_text()), quiet=True)
    ha = [json.loads(x) for x in (a.run_dir / "metrics.jsonl").read_text().splitlines()]
    hb = [json.loads(x) for x in (b.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(ha) == len(hb) == 2 and ha[-1]["train_kd"] > 0
    for ra, rb in zip(ha, hb, strict=True):
        for key in ("train_loss", "train_kd", "train_ce", "val_loss"):
            assert rb[key] == pytest.approx(ra[key], rel=FP16_HALF_ULP), key
        assert abs(rb["val_top1"] - ra["val_top1"]) <= 0.2  # at most 2 of the 1,000 validation digits


def test_index_and_csv_forms_give_the_same_store(table, tmp_path):
    """(index, logits) in any order with extra rows, and a CSV with an index column, store the same bytes."""
    logits = table["logits"]
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(logits))
    npz = tmp_path / "shuffled.npz"
    np.savez(npz, logits=logits[perm], index=perm)
    csv = tmp_path / "table.csv"
    rows = ["index," + ",".join(f"c{j}" for j in range(10))]
    needed = set(training_source_index(table["data"]).tolist())  # the training samples suffice, in any order
    rows += [f"{i}," + ",".join(repr(float(v)) for v in logits[i]) for i in perm if i in needed or i % 7 == 0]
    csv.write_text("\n".join(rows) + "\n")
    r = recipe_from_dict(_kd(tmp_path, "kd_forms"))
    ref = {n: np.load(table["out"] / "store" / f"{n}.npy") for n in ("values", "indices", "tail")}
    for src, out in ((npz, tmp_path / "s_npz"), (csv, tmp_path / "s_csv")):
        kdkit.cache(r, from_logits=src, topk=10, out=out, quiet=True)
        for n, arr in ref.items():
            assert np.array_equal(np.load(out / f"{n}.npy"), arr), (src.suffix, n)
    kdkit.cache(r, from_logits=torch.from_numpy(logits[perm]), index=torch.from_numpy(perm), topk=3,
                out=tmp_path / "s_arr", quiet=True)
    assert np.array_equal(np.load(tmp_path / "s_arr" / "indices.npy"), ref["indices"][..., :3])


def test_bad_tables_are_refused_in_one_line(table, tmp_path):
    logits = table["logits"]
    r = recipe_from_dict(_kd(tmp_path, "kd_bad"))
    nan = logits.copy()
    nan[7, 3] = np.nan
    holes = np.arange(len(logits))[::2]
    cases = [
        (logits[:4000], None, "4000 rows of logits, the dataset has 5000 samples"),
        (logits[:, :9], None, "logits have 9 classes, the dataset has 10"),
        (nan, None, "non-finite logits"),
        (logits * 1e5, None, "beyond float16's range"),
        (logits[holes], holes, "no logits for .* of the recipe's 512 training samples"),
        (logits[:3], np.array([0, 1, 1]), "repeats dataset index 1"),
        (logits[:2], np.array([0, 5000]), "outside 0..4999"),
    ]
    for i, (arr, index, match) in enumerate(cases):
        with pytest.raises(KdkitError, match=match) as err:
            kdkit.cache(r, from_logits=arr, index=index, out=tmp_path / f"s{i}", quiet=True)
        assert "\n" not in str(err.value)
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(KdkitError, match="could not be read"):
        kdkit.cache(r, from_logits=pickled, out=tmp_path / "sp", quiet=True)
    with pytest.raises(KdkitError, match="name the \\(N, K\\) array 'logits'"):
        np.savez(tmp_path / "x.npz", z=logits)
        kdkit.cache(r, from_logits=tmp_path / "x.npz", out=tmp_path / "sx", quiet=True)
    aug = recipe_from_dict(_kd(tmp_path, "kd_aug", data=dict(DATA, augment={"crop_padding": 2})))
    with pytest.raises(KdkitError, match="data.augment.crop_padding=0"):
        kdkit.cache(aug, from_logits=table["npy"], out=tmp_path / "sa", quiet=True)
    cli = CliRunner().invoke(app, ["cache", str(table["recipe"]), "--from-logits", str(table["npy"]),
                                   "--views", "2", "--out", str(tmp_path / "sv")])
    assert cli.exit_code != 0 and "one view; drop --views" in str(cli.exception)


def test_the_bundled_logits_recipe_runs(table, tmp_path):
    """recipes/teachers/mnist_kd_logits.yaml as shipped: import the table, then distil (one epoch, 512 samples)."""
    over = [f"output_dir={tmp_path}", f"soft_labels={tmp_path / 'store'}", "data.train_limit=512", "epochs=1"]
    kdkit.cache("recipes/teachers/mnist_kd_logits.yaml", overrides=over, from_logits=table["npy"], quiet=True)
    res = kdkit.distill("recipes/teachers/mnist_kd_logits.yaml", overrides=over, quiet=True)
    assert res.best["top1"] > 25.0
