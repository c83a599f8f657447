"""``kdkit tune``: real Optuna studies over a real recipe (an MLP on 300 real MNIST digits, 2 epochs a trial).

A tiny search of 3 trials: each trial is a normal run directory whose recipe holds the sampled values and whose best
``val_top1`` is the trial's value; resuming adds trials to the same journal study; a trial that trails at epoch 1 is
pruned through the engine's epoch callback; two worker processes share one journal. Values are compared exactly: the
objective is the very float read back from the run (no arithmetic in between).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import kdkit

optuna = pytest.importorskip("optuna")

from kdkit.errors import ConfigError  # noqa: E402
from kdkit.recipe import recipe_from_dict  # noqa: E402
from kdkit.study.tune import best_trials, load_study, run_tune  # noqa: E402

SEARCH = {"optim.lr": {"log_uniform": [0.001, 0.03]}, "terms.0.params.label_smoothing": {"uniform": [0.0, 0.3]}}


def _recipe(out: Path, name: str = "tiny") -> dict:
    return {"name": name, "output_dir": str(out),
            "data": {"name": "mnist_5k", "val_fraction": 0.2, "batch_size": 64, "train_limit": 300},
            "student": {"name": "mlp", "params": {"hidden": [32]}},
            "terms": [{"name": "ce", "params": {"label_smoothing": 0.0}}],
            "optim": {"name": "adamw", "lr": 0.003}, "schedule": {"name": "onecycle"}, "epochs": 2, "search": SEARCH}


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "runs"
    recipe = _recipe(out)
    result = run_tune(recipe, trials=3, seed=0, pruner="none", quiet=True)  # the resume test prunes
    return out, recipe, result


def test_a_tiny_search_runs_trials_as_run_directories(tiny):
    out, recipe, result = tiny
    assert result.ran == 3 and result.n_trials == 3
    assert result.study_dir == out / "tiny-tune" and (result.study_dir / "journal.log").is_file()
    study = load_study(recipe)
    assert study.user_attrs["objective"].startswith("best-epoch validation top-1")
    assert "validation" in study.user_attrs["split"]
    for t in study.trials:
        run = Path(t.user_attrs["run_dir"])
        assert run == out / "tiny-tune" / f"trial-{t.number}" and (run / "checkpoints/best.safetensors").is_file()
        assert t.value == max(m["val_top1"] for m in _metrics(run))  # the objective: best-epoch val top-1
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert saved["optim"]["lr"] == t.params["optim.lr"] and 0.001 <= saved["optim"]["lr"] <= 0.03
        assert saved["terms"][0]["params"]["label_smoothing"] == t.params["terms.0.params.label_smoothing"]
        assert saved["search"] == {}
    assert len({t.params["optim.lr"] for t in study.trials}) == 3  # really sampled
    best = best_trials(study, 1)[0]
    assert best["value"] == result.best_value == max(t.value for t in study.trials)


@pytest.mark.filterwarnings("ignore:Fixed parameter optim.lr")  # the enqueued lr lies outside the search range
def test_resume_adds_trials_and_a_trailing_trial_is_pruned(tiny):
    out, recipe, _ = tiny
    study = load_study(recipe)
    # a learning rate far too small to learn anything in one epoch: chance level (~10%) at epoch 1, far below the
    # median of the finished trials there, so the median pruner stops it after its first epoch
    study.enqueue_trial({"optim.lr": 1e-9, "terms.0.params.label_smoothing": 0.0}, skip_if_exists=False)
    again = kdkit.tune(recipe, trials=2, sampler_seed=1, quiet=True)  # the Python API, the same study
    study = load_study(recipe)
    assert again.ran == 2 and len(study.trials) == 5  # the same study, two more trials
    pruned = study.trials[3]
    assert pruned.params["optim.lr"] == 1e-9 and pruned.state == optuna.trial.TrialState.PRUNED
    assert len(_metrics(Path(pruned.user_attrs["run_dir"]))) == 1  # stopped after epoch 1 of 2
    assert study.trials[4].state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def test_two_worker_processes_share_one_journal(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(_recipe(tmp_path / "runs", "two")))
    kdkit_bin = Path(sys.executable).parent / "kdkit"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [str(kdkit_bin), "tune", str(path), "--trials", "2", "-q", "--pruner", "none"]  # all 4 trials must finish
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    study = load_study(str(path))
    assert len(study.trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    dirs = {t.user_attrs["run_dir"] for t in study.trials}
    assert len(dirs) == 4 and all((Path(d) / "summary.json").is_file() for d in dirs)
    shown = subprocess.run([str(kdkit_bin), "tune", str(path), "--show"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "4 trials (4 complete)" in shown.stdout
    assert f"| {best_trials(study, 1)[0]['trial']} | " in shown.stdout
    from matplotlib.image import imread

    for name in ("history.png", "slices.png", "importance.png"):  # real pictures, not empty files
        img = imread(tmp_path / "runs" / "two-tune" / "plots" / name)
        assert img.shape[0] > 200 and img.shape[1] > 300 and img[..., :3].std() > 0.05
    # the study in the report: its best trials, the parameter importances (Optuna's, read back here) and the figures
    show = json.loads((tmp_path / "runs" / "two-tune" / "plots" / "show.json").read_text())
    assert show["importances"] == pytest.approx(optuna.importance.get_param_importances(study), abs=1e-12)
    assert sum(show["importances"].values()) == pytest.approx(1.0, abs=1e-9)  # fANOVA shares
    page = (tmp_path / "runs" / "two-tune" / "report" / "report.html").read_text()
    assert "Tuning study &#x27;two&#x27;" in page or "Tuning study 'two'" in page
    best = best_trials(study, 1)[0]
    assert f"<td>{best['trial']}</td>" in page.replace(' class="num"', "") and f"{best['value']:.2f}" in page
    assert "terms.0.params.label_smoothing" in page and "optim.lr" in page
    assert page.count("data:image/png;base64,") >= 3 + 1  # the study's 3 figures besides the runs' own
    md = (tmp_path / "runs" / "two-tune" / "report" / "summary.md").read_text()
    assert "importance.png" in md and (tmp_path / "runs" / "two-tune" / "report" / "tune-two-importance.png").is_file()


def test_search_block_is_validated_in_one_line(tmp_path):
    base = _recipe(tmp_path)
    for search, says in [({"optim.lrx": {"uniform": [0, 1]}}, "optim has no field 'lrx'"),
                         ({"terms.3.weight": {"uniform": [0, 1]}}, "'3' is not an index of terms"),
                         ({"optim.lr": {"log_uniform": [0, 1]}}, "log_uniform needs 0 < low"),
                         ({"optim.lr": {"normal": [0, 1]}}, "give one distribution"),
                         ({"epochs": {"int": [1.5, 3]}}, "int needs two integers"),
                         ({"epochs": {"int": [0, 3]}}, "search 'epochs': the value 0 does not fit"),
                         ({"optim.lr": {"uniform": [0.1, 0.01]}}, "low < high")]:
        with pytest.raises(ConfigError, match=says):
            recipe_from_dict(dict(base, search=search))
    with pytest.raises(ConfigError, match="has no `search:` block"):
        run_tune(dict(base, search={}), trials=1)
    bad = subprocess.run([str(Path(sys.executable).parent / "kdkit"), "tune", "nothing-here.yaml", "--show"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_several_seeds_per_trial_score_their_mean(tmp_path):
    """``trial_seeds``: every trial trains once per seed (its own run directory and seed) and its value is the mean of
    those runs' best validation top-1; the study keeps its seeds (a resume with other seeds is refused)."""
    recipe = _recipe(tmp_path / "runs", "seeded")
    result = run_tune(recipe, trials=2, seed=0, pruner="none", quiet=True, trial_seeds=[0, 1])
    study = load_study(recipe)
    assert result.ran == 2 and study.user_attrs["trial_seeds"] == [0, 1]
    assert study.user_attrs["objective"].startswith("mean over seeds 0, 1 of each run's best-epoch validation top-1")
    for t in study.trials:
        runs = [Path(d) for d in t.user_attrs["run_dirs"]]
        assert runs == [tmp_path / "runs" / "seeded-tune" / f"trial-{t.number}-seed{s}" for s in (0, 1)]
        assert t.user_attrs["run_dir"] == str(runs[0])
        best = [max(m["val_top1"] for m in _metrics(run)) for run in runs]
        assert [yaml.safe_load((run / "config.yaml").read_text())["seed"] for run in runs] == [0, 1]
        # the seed reached the training: the two runs of one trial differ epoch by epoch (same values otherwise)
        assert [m["train_loss"] for m in _metrics(runs[0])] != [m["train_loss"] for m in _metrics(runs[1])]
        assert t.user_attrs["seed_values"] == {"0": best[0], "1": best[1]}
        assert t.value == pytest.approx((best[0] + best[1]) / 2, rel=1e-12)  # the mean, not one seed's value
    with pytest.raises(ConfigError, match="was made with --trial-seeds 0 1; add trials the same way"):
        run_tune(recipe, trials=1, quiet=True)  # one run per trial would mix two objectives in one study
    with pytest.raises(ConfigError, match="give each seed once"):
        run_tune(recipe, trials=1, quiet=True, trial_seeds=[1, 1])
    bad = subprocess.run([str(Path(sys.executable).parent / "kdkit"), "tune", "x.yaml", "--trial-seeds", "0,a"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode != 0 and "--trial-seeds: give integers" in bad.stderr and "Traceback" not in bad.stderr
