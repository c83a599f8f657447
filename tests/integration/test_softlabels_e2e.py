"""End to end on real bundled digits: train a (small, fast: an MLP) teacher, `kdkit cache` it through the CLI, distil
from the store without a single teacher forward, and get one-line errors for a store that does not fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import kdkit
from kdkit.cli import app
from kdkit.errors import ConfigError
from kdkit.teachers.frozen import FrozenTeacher

DATA = {"name": "mnist_5k", "val_fraction": 0.2, "batch_size": 64, "train_limit": 512,
        "augment": {"crop_padding": 2, "flip": False}}


def _kd_recipe(out: Path, teacher: Path, store: Path) -> dict:
    return {"name": "cached_kd", "output_dir": str(out), "seed": 0, "data": DATA,
            "student": {"name": "mlp", "params": {"hidden": [32]}},
            "teachers": [{"name": "mlp", "params": {"hidden": [128]}, "checkpoint": str(teacher)}],
            "terms": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "params": {"temperature": 4}}],
            "optim": {"name": "adamw", "lr": 0.003}, "schedule": {"name": "onecycle"}, "epochs": 2,
            "soft_labels": str(store)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    teacher = kdkit.train({"name": "teacher", "output_dir": str(out), "seed": 0, "data": DATA,
                           "student": {"name": "mlp", "params": {"hidden": [128]}}, "terms": [{"name": "ce"}],
                           "optim": {"name": "adamw", "lr": 0.003}, "schedule": {"name": "onecycle"}, "epochs": 2},
                          quiet=True)
    store = out / "store"
    recipe = out / "kd.yaml"
    recipe.write_text(yaml.safe_dump(_kd_recipe(out, teacher.run_dir, store)))
    # In-process through the Typer app (the command is registered by kdkit.softlabels.commands.register_cli).
    cli = CliRunner().invoke(app, ["cache", str(recipe), "--views", "2", "--topk", "5", "--chunk-size", "200"])
    return {"out": out, "teacher": teacher.run_dir, "store": store, "recipe": recipe, "cli": cli}


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_cli_cache_writes_the_store_and_reports_disk_use(setup):
    cli = setup["cli"]
    assert cli.exit_code == 0, cli.output
    assert "disk use" in cli.output and "22 B per sample-view" in cli.output  # 5·2 + 5·2 + 2
    m = json.loads((setup["store"] / "manifest.json").read_text())
    n = m["num_samples"]
    assert m["complete"] and m["views"] == 2 and m["topk"] == 5 and 500 <= n <= 512 and m["chunks"] == 2 * -(-n // 200)
    assert "--topk" in CliRunner().invoke(app, ["cache", "--help"]).output


def test_cached_distillation_learns_without_running_the_teacher(setup, monkeypatch):
    def no_teacher(self, x):
        raise AssertionError("the teacher ran although the recipe reads a soft-label store")

    monkeypatch.setattr(FrozenTeacher, "forward", no_teacher)
    res = kdkit.distill(yaml.safe_load(setup["recipe"].read_text()), quiet=True)
    hist = _lines(res.run_dir)
    assert len(hist) == 2 and {"train_ce", "train_kd"} <= set(hist[0])
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["train_top1"] > hist[0]["train_top1"]
    assert res.best["top1"] > 25.0  # well above chance (10 %) after 2 epochs on ~512 digits


def test_cached_kd_term_equals_online_kd_on_the_same_view(setup):
    """On one batch, the KD term read from the store equals the KD term of the online teacher on the same samples and
    view, once the online logits go through the same top-5 compression (to fp16 rounding)."""
    from kdkit.builder import build_scheme
    from kdkit.data.run import build_data
    from kdkit.recipe import recipe_from_dict
    from kdkit.softlabels import decode_topk, encode_topk
    from kdkit.types import ModelOutput, TrainState

    d = yaml.safe_load(setup["recipe"].read_text())
    d["terms"] = [{"name": "kd", "params": {"temperature": 4}}]
    cached = recipe_from_dict(d)
    online = recipe_from_dict(dict(d, soft_labels=None))
    data_c, data_o = build_data(cached), build_data(online)
    scheme_c, scheme_o = build_scheme(cached, data_c), build_scheme(online, data_o)
    # the store replaces the teacher: none is loaded
    assert scheme_c.teachers.models == [] and len(scheme_o.teachers.models) == 1
    state = TrainState()
    for epoch in (1, 2):  # view 1, then view 0 again (2 mod 2)
        data_c.train_loader.set_epoch(epoch)
        bc = next(iter(data_c.train_loader))
        assert torch.all(bc["view"] == epoch % 2)
        # the same samples and view as the online loader makes them in an epoch with that view
        x = data_o.augment(data_o.train.images[bc["index"]], bc["index"], epoch % 2)
        assert torch.equal(x, bc["input"])
        bo = dict(bc)
        z = scheme_o.teachers.outputs(bo).combined.logits
        stored = scheme_c.teachers.outputs(bc).combined.logits
        top = z.topk(5, 1).indices
        assert torch.allclose(stored.gather(1, top), z.gather(1, top), rtol=2**-10, atol=1e-5)
        rebuilt = decode_topk(*encode_topk(z, 5), 10)
        assert torch.allclose(stored, rebuilt, rtol=2**-9, atol=1e-4)
        student = scheme_c.trainable().student  # the same student for both terms
        term = scheme_c.trainable().terms[0]
        with torch.no_grad():
            s = ModelOutput(student(x))
        from kdkit.terms.base import TermInputs

        lc = term(TermInputs(student=s, teacher=ModelOutput(stored), batch=bc, state=state))
        lo = term(TermInputs(student=s, teacher=ModelOutput(rebuilt), batch=bo, state=state))
        assert float(lc) == pytest.approx(float(lo), rel=1e-2, abs=1e-4)
        assert float(scheme_c.step(scheme_c.trainable(), bc, state).terms["kd"]) == pytest.approx(float(lc), rel=1e-5)


def test_a_store_for_another_seed_is_refused_in_one_line(setup):
    d = yaml.safe_load(setup["recipe"].read_text())
    with pytest.raises(ConfigError) as err:
        kdkit.distill(d, ["seed=5", "name=other"], quiet=True)
    msg = str(err.value)
    assert "augmentation seed (store 0, recipe 5)" in msg and "\n" not in msg


def test_sobolev_with_a_store_still_loads_the_teacher_it_differentiates(setup):
    """Logits come from the store, but Sobolev matches input gradients of the teacher model: that teacher is loaded
    (and only that use of it runs)."""
    from kdkit.builder import build_context, build_scheme
    from kdkit.data.run import build_data
    from kdkit.recipe import recipe_from_dict
    from kdkit.types import TrainState

    d = yaml.safe_load(setup["recipe"].read_text())
    d["terms"] = d["terms"] + [{"name": "sobolev", "weight": 1.0}]
    r = recipe_from_dict(d)
    data = build_data(r)
    build_context(r, data)
    scheme = build_scheme(r, data)
    assert len(scheme.teachers.models) == 1
    batch = next(iter(data.train_loader))
    out = scheme.step(scheme.trainable(), batch, TrainState())
    assert {"ce", "kd", "sobolev"} <= set(out.terms) and torch.isfinite(out.loss)
    out.loss.backward()
