"""``kdkit tune`` with a shared soft-label store: a real KD search (a small MLP teacher trained on 300 real MNIST
digits, an MLP student, random-crop augmentation) whose search changes only student-side fields fills one store for
the study, and then no trial runs the teacher — counted at the one place teachers run (``FrozenTeachers.outputs``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytest.importorskip("optuna")

from kdkit.errors import ConfigError  # noqa: E402
from kdkit.recipe import recipe_from_dict  # noqa: E402
from kdkit.runs import run  # noqa: E402
from kdkit.softlabels.store import SoftLabelStore  # noqa: E402
from kdkit.study.tune import run_tune, store_blocker  # noqa: E402
from kdkit.teachers.frozen import FrozenTeachers  # noqa: E402

SEARCH = {"terms.1.params.temperature": {"log_uniform": [1.0, 8.0]}, "terms.1.weight": {"uniform": [0.2, 1.0]},
          "optim.lr": {"log_uniform": [0.001, 0.01]}}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    run(recipe_from_dict({"name": "teacher", "output_dir": str(out), "epochs": 1,
                          "data": {"name": "mnist_5k", "val_fraction": 0.2, "batch_size": 64, "train_limit": 300},
                          "student": {"name": "mlp", "params": {"hidden": [32]}}}), quiet=True)
    return out / "teacher"


def _recipe(out: Path, teacher: Path, name: str) -> dict:
    return {"name": name, "output_dir": str(out), "seed": 0, "epochs": 2,
            "data": {"name": "mnist_5k", "val_fraction": 0.2, "batch_size": 64, "train_limit": 300,
                     "augment": {"crop_padding": 2}},
            "student": {"name": "mlp", "params": {"hidden": [16]}},
            "teachers": [{"name": "mlp", "params": {"hidden": [32]}, "checkpoint": str(teacher)}],
            "terms": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "params": {"temperature": 4.0}}],
            "optim": {"name": "adamw", "lr": 0.003}, "search": SEARCH}


@pytest.fixture
def teacher_calls(monkeypatch):
    calls = {"n": 0}
    real = FrozenTeachers.outputs

    def counted(self, batch):
        calls["n"] += 1
        return real(self, batch)

    monkeypatch.setattr(FrozenTeachers, "outputs", counted)
    return calls


def test_trials_share_one_store_and_the_teacher_runs_once(tmp_path, teacher, teacher_calls):
    recipe = _recipe(tmp_path / "runs", teacher, "kdstore")
    result = run_tune(recipe, trials=3, seed=0, pruner="none", quiet=True)
    store = tmp_path / "runs" / "kdstore-tune" / "softlabels"
    assert result.store == str(store) and result.ran == 3
    manifest = SoftLabelStore.open(store).manifest
    assert manifest["views"] == 2 and manifest["topk"] == 10  # views = epochs (random crops); every class kept
    # the teacher ran once per batch of the cache pass (240 training digits × 2 views, eval batches of 256: 1 + 1
    # per view), and never in a trial
    after_fill = teacher_calls["n"]
    assert 0 < after_fill <= 2 * 2
    for k in range(3):
        saved = yaml.safe_load((result.study_dir / f"trial-{k}" / "config.yaml").read_text())
        assert saved["soft_labels"] == str(store)
    # more trials later (another worker, or a restart): the store is reused, still no teacher pass
    again = run_tune(recipe, trials=2, seed=1, pruner="none", quiet=True)
    assert again.n_trials == 5 and teacher_calls["n"] == after_fill


def test_without_the_store_every_trial_runs_the_teacher(tmp_path, teacher, teacher_calls):
    recipe = _recipe(tmp_path / "runs", teacher, "kdonline")
    result = run_tune(recipe, trials=2, seed=0, pruner="none", quiet=True, store=False)
    assert result.store is None and not (result.study_dir / "softlabels").exists()
    # every training batch of every epoch of every trial: 240 digits / 64 = 4 batches × 2 epochs × 2 trials (plus
    # the set-up's shape probes of each trial)
    assert teacher_calls["n"] >= 4 * 2 * 2


def test_teacher_side_searches_and_feature_terms_do_not_share_a_store(tmp_path, teacher):
    base = _recipe(tmp_path, teacher, "x")
    assert store_blocker(recipe_from_dict(base)) is None
    by_data = recipe_from_dict(base | {"search": {"data.augment.crop_padding": {"int": [0, 4]}}})
    assert "teacher-side field(s) data.augment.crop_padding" in store_blocker(by_data)
    fitnet = {"choice": [[{"name": "ce"}, {"name": "kd"}], [{"name": "ce"}, {"name": "fitnet"}]]}
    by_terms = recipe_from_dict(base | {"search": {"terms": fitnet}})
    assert "teacher features" in store_blocker(by_terms)
    assert store_blocker(recipe_from_dict(base | {"teachers": [], "terms": [{"name": "ce"}],
                                                  "search": {"optim.lr": {"uniform": [0.001, 0.01]}}})) \
        == "the recipe has no teachers"


def test_several_trial_seeds_with_random_crops_share_one_store_per_seed(tmp_path, teacher, teacher_calls):
    # random crops are drawn from the seed, so a store's views belong to one seed: each trial seed gets its own store,
    # and each seed's runs read the store of their seed (a store of another seed is refused by its identity check)
    recipe = _recipe(tmp_path / "runs", teacher, "kdseeds")
    result = run_tune(recipe, trials=2, seed=0, pruner="none", quiet=True, trial_seeds=[0, 3])
    stores = {s: tmp_path / "runs" / "kdseeds-tune" / f"softlabels-seed{s}" for s in (0, 3)}
    assert result.store == str(stores[0]) and not (result.study_dir / "softlabels").exists()
    for s, store in stores.items():
        assert SoftLabelStore.open(store).manifest["recipe"]["seed"] == s
    after_fill = teacher_calls["n"]
    assert 0 < after_fill <= 2 * 2 * 2  # the cache passes of two stores, none in a trial
    for k in range(2):
        for s in (0, 3):
            saved = yaml.safe_load((result.study_dir / f"trial-{k}-seed{s}" / "config.yaml").read_text())
            assert saved["seed"] == s and saved["soft_labels"] == str(stores[s])
    with pytest.raises(ConfigError, match="augmentation seed"):  # why one store per seed: the other seed's is refused
        bad = yaml.safe_load((result.study_dir / "trial-0-seed3" / "config.yaml").read_text())
        run(recipe_from_dict({**bad, "name": "wrong-store", "soft_labels": str(stores[0])}), quiet=True)
