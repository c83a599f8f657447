"""Teacher and student read different inputs of the same sample, end to end on real bundled digits: the bundled
recipes/teachers/mnist_cross_resolution.yaml (a CNN teacher on 28x28, a CNN student on the same digit at 14x14) trains
and learns, its checkpoint records the student's 14x14 input, ``kdkit eval`` and ``kdkit export --int8`` feed the
student 14x14 again, and ``kdkit cache`` runs each teacher on its own input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import kdkit
from kdkit.cli import app
from kdkit.weights import read_metadata

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "teachers" / "mnist_cross_resolution.yaml"
LIMIT = 1000


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("xres")
    teacher = kdkit.train("recipes/mnist_teacher.yaml", quiet=True, overrides=[
        f"output_dir={out}", "epochs=2", f"data.train_limit={LIMIT}"])
    student = kdkit.distill(RECIPE, quiet=True, overrides=[
        f"output_dir={out}", "epochs=3", f"data.train_limit={LIMIT}", f"teachers.0.checkpoint={teacher.run_dir}"])
    return {"out": out, "teacher": teacher, "student": student}


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_cross_resolution_student_learns_and_records_its_14x14_input(runs):
    res = runs["student"]
    hist = _lines(res.run_dir)
    assert len(hist) == 3 and {"train_ce", "train_kd"} <= set(hist[0])
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert res.best["top1"] > 30.0  # far above chance (10 %) after 3 short epochs on 1000 digits (measured: 49 %)
    meta = read_metadata(res.run_dir / "checkpoints" / "best.safetensors")
    assert meta["input_shape"] == [1, 14, 14] and meta["image_size"] == 14
    assert meta["input"] == {"name": "small", "view": {"resize": [14, 14], "mean": None, "std": None},
                             "source_shape": [1, 28, 28], "source_dtype": "uint8"}
    tmeta = read_metadata(runs["teacher"].run_dir / "checkpoints" / "best.safetensors")
    assert tmeta["input_shape"] == [1, 28, 28] and tmeta["input"]["name"] == "input"


def test_eval_feeds_the_student_its_own_input(runs):
    res = runs["student"]
    cli = CliRunner().invoke(app, ["eval", str(res.run_dir)])
    assert cli.exit_code == 0, cli.output
    scored = kdkit.evaluate(res.run_dir)
    assert scored["top1"] == pytest.approx(res.best["top1"], abs=1e-9)  # the very split and inputs of training


def test_export_int8_of_the_14x14_student(runs):
    import onnxruntime as ort

    res = runs["student"]
    cli = CliRunner().invoke(app, ["export", str(res.run_dir), "--int8"])
    assert cli.exit_code == 0, cli.output
    exp = res.run_dir / "export"
    summary = json.loads((exp / "export.json").read_text())
    assert summary["onnx"]["input_shape"][1:] == [1, 14, 14]
    sess = ort.InferenceSession(str(exp / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[1:] == [1, 14, 14]
    acc = summary["accuracy"]
    # int8 of a tiny CNN keeps accuracy within a few points (measured: < 1 point); a wrong input would sit at chance
    assert acc["ort-fp32"] == pytest.approx(acc["pytorch"], abs=0.5) and acc["ort-int8"] > acc["pytorch"] - 5.0


def test_cache_runs_each_teacher_on_its_own_input(runs, tmp_path):
    """A teacher reading a 20x20 view (here the trained 14x14 student, whose CNN pools to a fixed grid and so takes
    any size): ``kdkit cache`` feeds it that view, so the store holds its logits on the 20x20 input of each sample."""
    from kdkit.builder import frozen_teacher_models
    from kdkit.data.run import build_data
    from kdkit.recipe import load_recipe
    from kdkit.softlabels.store import SoftLabelStore

    d = yaml.safe_load(RECIPE.read_text())
    d.update(output_dir=str(tmp_path), soft_labels=str(tmp_path / "store"))
    d["data"].update(train_limit=300, inputs={"small": {"resize": [14, 14]}, "mid": {"resize": [20, 20]}})
    d["teachers"] = [{"name": "cnn_student", "input": "mid", "checkpoint": str(runs["student"].run_dir)}]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(d))
    cli = CliRunner().invoke(app, ["cache", str(path), "--views", "1", "--topk", "10"])
    assert cli.exit_code == 0, cli.output
    r = load_recipe(path)
    data = build_data(r.model_copy(update={"soft_labels": None}))
    teacher = frozen_teacher_models(r, data)[0].eval()
    pos = torch.arange(50)
    x = data.make_inputs(data.train.images[pos], pos, 0)
    with torch.no_grad():
        want = teacher(x["input.mid"])
    stored = SoftLabelStore.open(tmp_path / "store").teacher_logits(pos, torch.zeros(50, dtype=torch.int64))
    # fp16 storage: relative 2^-10 plus a small absolute floor for logits near 0
    assert torch.allclose(stored, want, rtol=2**-10, atol=1e-3)
    with torch.no_grad():  # and not the logits of the main (28x28) input
        assert not torch.allclose(stored, teacher(x["input"]), rtol=2**-10, atol=1e-3)
    res = kdkit.distill(path, quiet=True, overrides=["epochs=1"])
    assert res.best["top1"] > 0 and read_metadata(res.run_dir / "checkpoints" / "best.safetensors")["input_shape"] \
        == [1, 14, 14]


def test_an_onnx_teacher_reads_its_named_input_online_and_in_the_cache(runs, tmp_path):
    """The 14x14 student exported to ONNX teaches a 28x28 MLP student from the `small` view: the store holds the ONNX
    model's logits on each sample's 14x14 input."""
    pytest.importorskip("onnxruntime")
    from kdkit.builder import frozen_teacher_models
    from kdkit.data.run import build_data
    from kdkit.deploy.export import export_onnx
    from kdkit.models.factory import load_model
    from kdkit.recipe import recipe_from_dict
    from kdkit.softlabels.store import SoftLabelStore

    model, _ = load_model(runs["student"].run_dir)
    onnx_path = tmp_path / "small.onnx"
    export_onnx(model, torch.zeros(2, 1, 14, 14), onnx_path)
    r = {"name": "onnx_small", "output_dir": str(tmp_path), "seed": 0,
         "data": {"name": "mnist_5k", "train_limit": 300, "inputs": {"small": {"resize": [14, 14]}}},
         "student": {"name": "mlp", "params": {"hidden": [32]}},
         "teachers": [{"name": f"onnx:{onnx_path}", "input": "small"}],
         "terms": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5}], "epochs": 1,
         "soft_labels": str(tmp_path / "store")}
    from kdkit.softlabels.cache import build_cache

    build_cache(recipe_from_dict(r), views=1, topk=10, quiet=True)
    data = build_data(recipe_from_dict(dict(r, soft_labels=None)))
    teacher = frozen_teacher_models(recipe_from_dict(r), data)[0]
    pos = torch.arange(40)
    x = data.make_inputs(data.train.images[pos], pos, 0)["input.small"]
    with torch.no_grad():
        want = teacher(x)
    stored = SoftLabelStore.open(tmp_path / "store").teacher_logits(pos, torch.zeros(40, dtype=torch.int64))
    assert torch.allclose(stored, want, rtol=2**-10, atol=1e-3)  # fp16 storage, as above
    online = kdkit.distill(dict(r, soft_labels=None, name="onnx_small_online"), quiet=True)
    assert online.best["top1"] > 0
