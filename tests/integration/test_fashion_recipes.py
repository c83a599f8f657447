"""Every recipe in recipes/fashion/ (the teacher and the winning rows of docs/benchmarks.md's Fashion-MNIST table)
validates and trains on real Fashion-MNIST images: two epochs on 512 training images, scored on the official test
split; the loss falls and a checkpoint appears. Distilled recipes read the run of another recipe here (``runs/NAME``:
a teacher recipe's, or a distilled one's when it is a teacher assistant); in this test they get an untrained teacher
of the recipe's architecture (``teachers.0.checkpoint=null``): what is checked is that the recipe runs, not the
teacher's accuracy (the benchmark measures that)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import kdkit
from kdkit.data.sources import FASHION_MNIST_DIR
from kdkit.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
NAMES = sorted(p.name for p in (ROOT / "recipes" / "fashion").glob("*.yaml"))

pytestmark = pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                                reason="apt-get install dataset-fashion-mnist (scripts/install_debian.sh)")


def test_the_table_has_recipes():
    assert "fashion_teacher.yaml" in NAMES and len(NAMES) > 1, NAMES


@pytest.mark.parametrize("name", NAMES)
def test_fashion_recipe_trains(name, tmp_path):
    path = ROOT / "recipes" / "fashion" / name
    overrides = [f"output_dir={tmp_path}", "epochs=2", "data.train_limit=512", "threads=1"]
    r = load_recipe(path, overrides)
    assert r.data.name == "fashion_mnist" and r.data.val == "fashion_mnist"  # scored on the official test split
    if r.teachers:
        # a teacher recipe's run, or another distilled recipe's (a teacher assistant), never the recipe's own
        runs = {f"runs/{load_recipe(ROOT / 'recipes' / 'fashion' / n).name}" for n in NAMES if n != name}
        assert r.teachers[0].checkpoint in runs, "distilled recipes read the run of another recipe here"
        r = load_recipe(path, [*overrides, "teachers.0.checkpoint=null"])
    res = (kdkit.distill if r.teachers else kdkit.train)(r, quiet=True)
    hist = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == 2 and all(np.isfinite(h["train_loss"]) for h in hist)
    assert hist[1]["train_loss"] < hist[0]["train_loss"], [h["train_loss"] for h in hist]
    assert (res.run_dir / "checkpoints" / "best.safetensors").is_file()
