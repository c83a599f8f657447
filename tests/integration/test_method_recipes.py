"""Every recipe in recipes/methods/ (one per loss term) builds and trains on real MNIST digits; the generator and the
committed files agree."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import kdkit
from kdkit.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
NAMES = sorted(p.name for p in (ROOT / "recipes" / "methods").glob("*.yaml"))
# recipes whose first term trains alone before the others start (term 0 stop_epoch, terms 1-2 start_epoch)
TWO_STAGE = {"fitnet_two_stage.yaml": "fitnet", "ab.yaml": "ab"}


def test_method_recipes_match_generator():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_method_recipes as gen
    finally:
        sys.path.pop(0)
    files = gen.all_files()
    assert sorted(files) == NAMES
    for name, text in files.items():
        assert (ROOT / "recipes" / "methods" / name).read_text() == text, f"{name} is stale; rerun the script"


def test_every_registered_term_has_a_recipe():
    from kdkit.registry import LOSSES

    used = set()
    for path in sorted((ROOT / "recipes").rglob("*.yaml")):
        r = load_recipe(path)
        used |= {t.name for t in r.terms}
        for stage in r.stages:
            used |= {t["name"] for t in stage.get("terms", [])}
    missing = set(LOSSES.names()) - used - {"bce", "multilabel_kd"}  # multi-label terms: tested in tests/*text*
    assert not missing, f"terms without a recipe: {sorted(missing)}"


@pytest.mark.parametrize("name", NAMES)
def test_method_recipe_trains(name, tmp_path):
    overrides = [f"output_dir={tmp_path}", "epochs=2", "data.train_limit=256"]
    if name in TWO_STAGE:  # compress the two stages into the two epochs
        overrides += ["terms.0.stop_epoch=1", "terms.1.start_epoch=1", "terms.2.start_epoch=1"]
    r = load_recipe(ROOT / "recipes" / "methods" / name, overrides)
    if r.teachers:
        r = load_recipe(ROOT / "recipes" / "methods" / name, [*overrides, "teachers.0.checkpoint=null"])
    res = (kdkit.distill if r.teachers else kdkit.train)(r, quiet=True)
    hist = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == 2 and all(np.isfinite(h["train_loss"]) for h in hist)
    if name in TWO_STAGE:  # epoch 1 logs only the hint (or AB), epoch 2 only CE and KD
        first = f"train_{TWO_STAGE[name]}"
        assert first in hist[0] and "train_kd" not in hist[0]
        assert first not in hist[1] and "train_kd" in hist[1]
    # A smoke test: the recipe builds, trains and logs every term. Two epochs of 256 digits from a random teacher say
    # nothing about accuracy (a heavy feature weight, SP 3000 or RKD 25/50, holds the student at chance that long);
    # test_method_recipe_learns_from_a_trained_teacher (slow) checks that each method really teaches.
    terms = {f"train_{t.name}" for t in r.terms}
    assert terms <= set(hist[0]) | set(hist[1]), sorted(terms - set(hist[0]) - set(hist[1]))


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory):
    """recipes/mnist_teacher.yaml shrunk: 2 epochs on 1,024 digits (74.8% validation top-1 measured)."""
    out = tmp_path_factory.mktemp("teacher")
    r = load_recipe(ROOT / "recipes" / "mnist_teacher.yaml", [f"output_dir={out}", "epochs=2", "data.train_limit=1024",
                                                             "data.batch_size=64", "data.augment.crop_padding=0"])
    res = kdkit.train(r, quiet=True)
    assert res.best["top1"] > 50.0
    return res.run_dir


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_method_recipe_learns_from_a_trained_teacher(name, tmp_path, trained_teacher):
    """Each method, from a trained teacher, 5 epochs on 2,048 digits (160 steps): the student is far above chance.
    Measured (Intel Xeon, 2026-12-03): CRD 86.5%, RKD 92.4%; at 16 steps the feature methods were still at chance,
    which is why this is slow and the smoke test above makes no accuracy claim."""
    overrides = [f"output_dir={tmp_path}", "epochs=5", "data.train_limit=2048", "data.batch_size=64"]
    if name in TWO_STAGE:
        overrides += ["terms.0.stop_epoch=2", "terms.1.start_epoch=2", "terms.2.start_epoch=2"]
    r = load_recipe(ROOT / "recipes" / "methods" / name, overrides)
    if r.teachers:
        r = load_recipe(ROOT / "recipes" / "methods" / name, [*overrides, f"teachers.0.checkpoint={trained_teacher}"])
    res = (kdkit.distill if r.teachers else kdkit.train)(r, quiet=True)
    hist = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    # Training accuracy rises (the total loss need not fall: DKD's weight warms up over the epochs).
    assert hist[-1]["train_top1"] > hist[0]["train_top1"], [h["train_top1"] for h in hist]
    assert res.best["top1"] > 60.0, res.best  # chance is 10%; a student that learned nothing stays near it
