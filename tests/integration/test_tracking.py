"""Experiment trackers (``track:``): a real 2-epoch distillation on 300 real MNIST digits logs to TensorBoard and MLflow
offline, and what they wrote is read back — TensorBoard's event files with its ``EventAccumulator``, MLflow's local
store with its client — and compared with the run's own ``metrics.jsonl``.

Values are compared with rel 1e-6: TensorBoard stores scalars as float32 (about 7 significant digits); MLflow keeps
float64, so there they must be equal.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdkit.engine.tracking import flat_config, teacher_policy
from kdkit.errors import ConfigError
from kdkit.recipe import recipe_from_dict
from kdkit.runs import run


def _recipe(out: Path, track: list[str], teacher_dir: Path | None = None, name: str = "tracked") -> dict:
    r = {"name": name, "output_dir": str(out), "seed": 0,
         "data": {"name": "mnist_5k", "val_fraction": 0.2, "batch_size": 64, "train_limit": 300},
         "student": {"name": "mlp", "params": {"hidden": [16]}},
         "terms": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "params": {"temperature": 4.0}}],
         "optim": {"name": "adamw", "lr": 0.003}, "epochs": 2, "track": track}
    if teacher_dir is None:
        r["terms"] = [{"name": "ce"}]
    else:
        r["teachers"] = [{"name": "mlp", "params": {"hidden": [32]}, "checkpoint": str(teacher_dir)}]
    return r


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    r = _recipe(out, [], name="teacher")
    r.update(student={"name": "mlp", "params": {"hidden": [32]}}, terms=[{"name": "ce"}], epochs=1)
    run(recipe_from_dict(r), quiet=True)
    return out / "teacher"


def test_tensorboard_and_mlflow_receive_terms_metrics_lr_recipe_and_teacher_policy(tmp_path, teacher, monkeypatch):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses its file store unless told
    recipe = recipe_from_dict(_recipe(tmp_path / "runs", ["tensorboard", "mlflow"], teacher))
    run(recipe, quiet=True)
    records = _metrics(recipe.run_dir)
    assert len(records) == 2

    # TensorBoard: one scalar series per numeric field of the metrics records, one point per epoch
    events = list((recipe.run_dir / "track").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file was written"
    scalars: dict[str, list] = {}
    for ev in {e.parent for e in events}:
        acc = EventAccumulator(str(ev))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(acc.Scalars(tag))
    for key in ("train_loss", "train_ce", "train_kd", "lr", "val_top1", "train_top1", "images_per_s"):
        assert key in scalars, f"TensorBoard lacks {key}: {sorted(scalars)}"
        points = sorted((s.step, s.value) for s in scalars[key])
        assert [p[0] for p in points] == [1, 2]
        assert [p[1] for p in points] == pytest.approx([r[key] for r in records], rel=1e-6)
    hparams = next((recipe.run_dir / "track").rglob("hparams.yml")).read_text()
    assert "terms.1.params.temperature: 4.0" in hparams and "teacher_policy.source: frozen teachers" in hparams

    # MLflow: the experiment is the project (the recipe's name), the run holds params, metric history, recipe.yaml
    client = mlflow.tracking.MlflowClient(store)
    exp = client.get_experiment_by_name("tracked")
    (found,) = client.search_runs([exp.experiment_id])
    params = found.data.params
    assert params["terms.1.params.temperature"] == "4.0" and params["optim.lr"] == "0.003"
    assert params["teacher_policy.source"] == "frozen teachers"
    assert params["teacher_policy.teachers.0"] == f"mlp@{teacher}"
    for key in ("train_kd", "train_ce", "lr", "val_top1"):
        hist = sorted((m.step, m.value) for m in client.get_metric_history(found.info.run_id, key))
        assert hist == [(r["epoch"], r[key]) for r in records]
    assert found.info.status == "FINISHED"
    art = Path(found.info.artifact_uri.removeprefix("file://").removeprefix("file:")) / "recipe.yaml"
    assert "temperature: 4.0" in art.read_text()


def test_wandb_offline_writes_a_local_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    recipe = recipe_from_dict(_recipe(tmp_path / "runs", ["wandb"]) | {"epochs": 1})
    run(recipe, quiet=True)
    offline = list((recipe.run_dir / "track" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb")), "no offline W&B run file"


def test_unknown_or_missing_tracker_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(Exception) as err:
        recipe_from_dict(_recipe(tmp_path, ["neptune"]))
    assert "track" in str(err.value)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else real(n, *a))
    with pytest.raises(ConfigError, match=r"recipe field 'track': tensorboard needs .*kdkit\[track\]"):
        run(recipe_from_dict(_recipe(tmp_path, ["tensorboard"])), quiet=True)


def test_flat_config_and_teacher_policy():
    r = recipe_from_dict(_recipe(Path("runs"), [], Path("runs/t")) | {"soft_labels": "runs/store"})
    flat = flat_config(json.loads(json.dumps(r.model_dump(mode="json"))))
    assert flat["terms.1.params.temperature"] == 4.0 and flat["student.params.hidden.0"] == 16
    assert flat["track"] == "none" and all(isinstance(v, (str, int, float, bool)) for v in flat.values())
    assert teacher_policy(r)["source"] == "soft-label store" and teacher_policy(r)["store"] == "runs/store"
