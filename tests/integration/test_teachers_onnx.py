"""ONNX teachers on real bundled digits: train a small (MLP, fast) teacher, export it with kdkit's exporter, then
distil from ``onnx:teacher.onnx`` and from the PyTorch teacher it came from -- online and through ``kdkit cache`` --
and get one line for everything an ONNX teacher cannot do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")

import kdkit  # noqa: E402
from kdkit.cli import app  # noqa: E402
from kdkit.deploy.export import export_onnx  # noqa: E402
from kdkit.errors import KdkitError  # noqa: E402
from kdkit.models.factory import create_model, load_model  # noqa: E402

DATA = {"name": "mnist_5k", "val_fraction": 0.2, "batch_size": 64, "train_limit": 512,
        "augment": {"crop_padding": 2, "flip": False}}
TEACHER = {"name": "mlp", "params": {"hidden": [128]}}
EPS32 = float(torch.finfo(torch.float32).eps)


def _kd(out: Path, name: str, teacher: dict, **extra) -> dict:
    r = {"name": name, "output_dir": str(out), "seed": 0, "data": DATA,
         "student": {"name": "mlp", "params": {"hidden": [32]}}, "teachers": [teacher],
         "terms": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "params": {"temperature": 4}}],
         "optim": {"name": "adamw", "lr": 0.003}, "schedule": {"name": "onecycle"}, "epochs": 2}
    r.update(extra)
    return r


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx_teacher")
    res = kdkit.train({"name": "teacher", "output_dir": str(out), "seed": 0, "data": DATA, "student": TEACHER,
                       "terms": [{"name": "ce"}], "optim": {"name": "adamw", "lr": 0.003},
                       "schedule": {"name": "onecycle"}, "epochs": 3}, quiet=True)
    model, meta = load_model(res.run_dir)
    onnx_path = out / "teacher.onnx"
    export_onnx(model, torch.zeros(2, meta["in_channels"], meta["image_size"], meta["image_size"]), onnx_path)
    pt_teacher = dict(TEACHER, checkpoint=str(res.run_dir))
    return {"out": out, "run": res, "model": model, "onnx": onnx_path, "pt": pt_teacher,
            "onnx_teacher": {"name": f"onnx:{onnx_path}"}}


def test_onnx_teacher_gives_the_pytorch_logits(exported):
    """Tolerance: ORT and PyTorch sum the same float32 products in another order; 64·eps32 relative to the logits'
    scale bounds that rounding for layers of a few hundred terms (measured: ~1e-7 absolute)."""
    assert exported["run"].best["top1"] > 60.0  # a real, trained teacher, not chance (10 %)
    onnx_model = create_model(f"onnx:{exported['onnx']}", num_classes=10, in_channels=1, image_size=28)
    x = torch.randn(37, 1, 28, 28)  # a batch size the export never saw: the batch axis is dynamic
    with torch.no_grad():
        ref = exported["model"](x)
    got = onnx_model(x)
    assert got.shape == (37, 10) and got.dtype == torch.float32
    assert float((got - ref).abs().max()) <= 64 * EPS32 * float(ref.abs().max())
    assert not onnx_model.training and not list(onnx_model.parameters())


def test_distilling_from_onnx_equals_distilling_from_pytorch(exported):
    """Same seed, same data, the same teacher as a .onnx file or as PyTorch weights: every logged figure agrees.
    Tolerance: the teacher logits differ by float32 rounding only (test above); every figure is a smooth function of
    them, so 1e-5 relative (~80·eps32) is ample (measured: at most 3e-6, on train_kd). Weights are not compared one
    by one: Adam's normalised update moves a weight whose gradient is near zero by ~lr whichever way rounding tips
    it."""
    a = kdkit.distill(_kd(exported["out"], "kd_pt", exported["pt"]), quiet=True)
    b = kdkit.distill(_kd(exported["out"], "kd_onnx", exported["onnx_teacher"]), quiet=True)
    ha = [json.loads(x) for x in (a.run_dir / "metrics.jsonl").read_text().splitlines()]
    hb = [json.loads(x) for x in (b.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(ha) == len(hb) == 2
    for ra, rb in zip(ha, hb, strict=True):
        for key in ("train_loss", "train_kd", "train_ce", "val_loss"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5), key
        assert rb["val_top1"] == ra["val_top1"] and rb["train_top1"] == ra["train_top1"]
    assert ha[-1]["train_kd"] > 0  # the KD term was really computed against a teacher


def test_kdkit_cache_runs_an_onnx_teacher(exported):
    """`kdkit cache` with an onnx: teacher stores what the PyTorch teacher's cache stores: the same top-k classes
    and fp16 values equal to one fp16 rounding step (the float32 inputs differ by a few ulps, which can flip a
    rounding). Distilling from that store then runs no teacher at all."""
    out = exported["out"]
    stores = {}
    for tag, teacher in (("pt", exported["pt"]), ("onnx", exported["onnx_teacher"])):
        recipe = out / f"cache_{tag}.yaml"
        recipe.write_text(yaml.safe_dump(_kd(out, f"cache_{tag}", teacher, soft_labels=str(out / f"store_{tag}"))))
        cli = CliRunner().invoke(app, ["cache", str(recipe), "--views", "2", "--topk", "4", "-q"])
        assert cli.exit_code == 0, cli.output
        stores[tag] = {n: np.load(out / f"store_{tag}" / f"{n}.npy") for n in ("values", "indices", "tail")}
    m = json.loads((out / "store_onnx" / "manifest.json").read_text())
    assert m["complete"] and m["identity"]["teachers"][0]["name"].startswith("onnx:")
    assert np.load(out / "store_onnx" / "samples.npy").shape == (m["num_samples"],)  # row -> dataset sample
    assert (stores["onnx"]["indices"] == stores["pt"]["indices"]).mean() > 0.999  # near-ties may swap order
    for n in ("values", "tail"):
        a, b = stores["pt"][n].astype(np.float32), stores["onnx"][n].astype(np.float32)
        ulp = np.spacing(np.abs(a).astype(np.float16)).astype(np.float32)  # one fp16 step at each value
        assert np.all(np.abs(a - b) <= ulp), n
    res = kdkit.distill(_kd(out, "kd_store", exported["onnx_teacher"], soft_labels=str(out / "store_onnx")),
                        quiet=True)
    assert res.best["top1"] > 25.0


def test_a_changed_onnx_file_no_longer_matches_its_store(exported, tmp_path):
    """The file's SHA-256 is part of the teacher's identity: a store made from one ONNX file refuses another."""
    other = tmp_path / "other.onnx"
    model = create_model("mlp", 10, 1, 28, hidden=[128])
    export_onnx(model, torch.zeros(2, 1, 28, 28), other)
    with pytest.raises(KdkitError, match="teacher 0 weights"):
        kdkit.distill(_kd(exported["out"], "kd_other", {"name": f"onnx:{other}"},
                          soft_labels=str(exported["out"] / "store_onnx")), quiet=True)


@pytest.mark.parametrize("term,match", [
    ({"name": "fitnet", "weight": 1.0}, "loss term 'fitnet' reads features of teacher 0.*gives logits only"),
    ({"name": "at", "weight": 1.0}, "loss term 'at' reads features of teacher 0.*gives logits only"),
])
def test_a_feature_term_on_an_onnx_teacher_is_refused_in_one_line(exported, term, match):
    r = _kd(exported["out"], "kd_feat", exported["onnx_teacher"])
    r["terms"].append(term)
    with pytest.raises(KdkitError, match=match) as err:
        kdkit.distill(r, quiet=True)
    assert "\n" not in str(err.value) and "logit terms" in str(err.value)


def test_onnx_teacher_refusals_are_one_line(exported, tmp_path):
    onnx = exported["onnx_teacher"]
    cases = [
        (_kd(exported["out"], "kd_online", onnx, scheme={"name": "online"}), "cannot train"),
        (_kd(exported["out"], "kd_bss", onnx, scheme={"name": "bss"}), "scheme 'bss' .* gives logits only"),
        (_kd(exported["out"], "kd_missing", {"name": f"onnx:{tmp_path / 'nope.onnx'}"}), "file not found"),
        (_kd(exported["out"], "kd_ckpt", dict(onnx, checkpoint=str(exported["run"].run_dir))),
         "teachers.0.checkpoint: model 'onnx:.*' carries its own weights; drop `checkpoint`"),
        (dict(_kd(exported["out"], "kd_k", onnx), data=dict(DATA, name="digits")), "input .*declare|classes"),
    ]
    for recipe, match in cases:
        with pytest.raises(KdkitError, match=match) as err:
            kdkit.distill(recipe, quiet=True)
        assert "\n" not in str(err.value)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(KdkitError, match="ONNX Runtime cannot load"):
        create_model(f"onnx:{bad}", 10, 1, 28)
    with pytest.raises(KdkitError, match="outputs 10 classes, the data has 7"):
        create_model(f"onnx:{exported['onnx']}", 7, 1, 28)
    with pytest.raises(KdkitError, match="takes input \\(batch, 1, 28, 28\\).*teacher_inputs"):
        create_model(f"onnx:{exported['onnx']}", 10, 3, 32)


def test_the_bundled_onnx_recipe_runs(exported):
    """recipes/teachers/mnist_kd_onnx.yaml as shipped, its teacher path pointed at the exported file."""
    res = kdkit.distill("recipes/teachers/mnist_kd_onnx.yaml", quiet=True, overrides=[
        f"teachers.0.name=onnx:{exported['onnx']}", "epochs=1", "data.train_limit=512",
        f"output_dir={exported['out']}"])
    assert res.best["top1"] > 25.0


def test_an_onnx_teacher_of_another_input_gets_an_adapter(exported, tmp_path):
    """An ONNX file that takes (B, 3, 32, 32) inputs normalised to [-1, 1] teaches the 1x28x28 student once
    `teacher_inputs` says so: the grey digits are resized, repeated to RGB and re-normalised before ORT sees them."""
    model = create_model("cnn", 10, 3, 32, width=8, num_stages=2)
    rgb = tmp_path / "rgb32.onnx"
    export_onnx(model, torch.zeros(2, 3, 32, 32), rgb)
    want = {"image_size": 32, "in_channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}
    r = _kd(exported["out"], "kd_rgb", {"name": f"onnx:{rgb}"}, epochs=1,
            scheme={"name": "offline", "params": {"teacher_inputs": [want]}})
    res = kdkit.distill(r, quiet=True)
    assert res.best["top1"] > 0  # it ran end to end; the teacher's own accuracy is not the point here
    with pytest.raises(KdkitError, match="takes input \\(batch, 3, 32, 32\\), the data gives \\(B, 1, 28, 28\\)"):
        kdkit.distill(_kd(exported["out"], "kd_rgb_plain", {"name": f"onnx:{rgb}"}, epochs=1), quiet=True)


def test_the_cli_prints_an_onnx_refusal_as_one_line(exported, tmp_path):
    import subprocess
    import sys

    r = _kd(exported["out"], "kd_cli", exported["onnx_teacher"])
    r["terms"].append({"name": "at", "weight": 1.0})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(r))
    out = subprocess.run([sys.executable, "-m", "kdkit.cli", "distill", str(recipe)], capture_output=True, text=True,
                         timeout=600)
    err = out.stderr.strip()
    assert out.returncode != 0 and "Traceback" not in err and len(err.splitlines()) == 1
    assert "loss term 'at' reads features of teacher 0" in err and "gives logits only" in err
