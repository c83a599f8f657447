"""End to end on a streamed folder of JPEGs of varied sizes: a teacher trains from the folder (decoded in 2 worker
processes, random resized crop + flip + colour jitter), a student distils with mixup/cutmix (function matching: the
teacher sees the mixed image), and a soft-label store caches the mixed views and serves them back exactly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import kdkit
from kdkit.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_stream import write_jpeg_folder  # noqa: E402


def _data(root: Path, **augment) -> dict:
    return {"name": f"imagefolder:{root}", "params": {"stream": True, "image_size": 32, "workers": 2},
            "batch_size": 16, "val_fraction": 0.25,
            "augment": {"resized_crop": True, "crop_scale": [0.35, 1.0], "flip": True, "jitter": [0.3, 0.3, 0.3],
                        **augment}}


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = write_jpeg_folder(tmp_path_factory.mktemp("jpegs"), per_class=40, classes=3)
    out = tmp_path_factory.mktemp("runs")
    res = kdkit.train({"name": "teacher", "output_dir": str(out), "data": _data(root),
                       "student": {"name": "cnn", "params": {"width": 16}},
                       "optim": {"name": "adamw", "lr": 0.003}, "epochs": 3}, quiet=True)
    return {"root": root, "out": out, "run": res}


def _student(t: dict, name: str, **extra) -> dict:
    return {"name": name, "output_dir": str(t["out"]), "data": _data(t["root"], mixup=0.4, cutmix=1.0),
            "student": {"name": "cnn", "params": {"width": 8}},
            "teachers": [{"name": "cnn", "params": {"width": 16}, "checkpoint": str(t["run"].run_dir)}],
            "terms": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "params": {"temperature": 1.0}}],
            "optim": {"name": "adamw", "lr": 0.003}, "epochs": 3, **extra}


def test_teacher_trains_from_a_streamed_jpeg_folder(teacher):
    hist = _lines(teacher["run"].run_dir)
    assert len(hist) == 3 and hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["val_top1"] > 60.0  # 3 colour classes, chance 33 %
    assert (teacher["run"].run_dir / "last.safetensors").exists()


def test_student_distils_on_mixed_views_and_logs_both_terms(teacher):
    res = kdkit.distill(_student(teacher, "mixed_kd"), quiet=True)
    hist = _lines(res.run_dir)
    assert {"train_ce", "train_kd"} <= set(hist[0]) and hist[-1]["train_loss"] < hist[0]["train_loss"]


def test_store_caches_mixed_streamed_views_exactly(teacher):
    """Every stored row is the teacher's output on the mixed view the loader gives for (index, view)."""
    from kdkit.builder import frozen_teacher_models
    from kdkit.data.run import build_data
    from kdkit.recipe import recipe_from_dict
    from kdkit.softlabels.cache import build_cache
    from kdkit.softlabels.store import SoftLabelStore

    store = teacher["out"] / "store"
    recipe = _student(teacher, "cached", soft_labels=str(store))
    build_cache(recipe, views=2, topk=3, quiet=True)
    r = recipe_from_dict(recipe)
    data = build_data(r)
    model = frozen_teacher_models(r, data)[0].eval()
    st = SoftLabelStore.open(store)
    pos = torch.tensor([0, 5, 17])
    for v in (0, 1):
        with torch.no_grad():
            want = model(data.train_loader.batch_at(pos, v)["input"]).float()
        got = st.teacher_logits(pos, torch.full_like(pos, v))
        # top-3 of 3 classes: the store keeps every logit in fp16 (relative rounding 2^-11).
        assert torch.allclose(got, want, rtol=2e-3, atol=2e-3)
    res = kdkit.distill(recipe, quiet=True)
    hist = _lines(res.run_dir)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]


def test_specialists_scheme_on_a_streamed_folder_says_what_to_change(teacher):
    """The specialists are found and trained on in-memory images; on a streamed folder the run stops before
    training with one line naming the field and the fix."""
    with pytest.raises(ConfigError, match=r"scheme 'specialists' needs its training images in memory.*stream: false"):
        kdkit.distill(_student(teacher, "spec", scheme={"name": "specialists"}), quiet=True)
