"""``precision: auto`` / ``channels_last`` for the student, end to end on real digits: the choice and its measurements
are recorded, measuring leaves no trace in the run, forced channels-last trains and saves ordinary weights."""

from __future__ import annotations

import json
import shutil

import pytest

import kdkit


def _recipe(out, name: str, **kw) -> dict:
    return {"name": name, "output_dir": str(out), "epochs": 2, "seed": 0,
            "data": {"name": "mnist_5k", "val_fraction": 0.2, "batch_size": 64, "train_limit": 384},
            "student": {"name": "cnn_student"}, "optim": {"name": "adamw", "lr": 0.003},
            "precision": "auto", "channels_last": "auto", **kw}


def _metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_auto_records_its_choice_and_measuring_leaves_no_trace(tmp_path):
    res = kdkit.train(_recipe(tmp_path, "auto"), quiet=True)
    saved = json.loads((res.run_dir / "student_policy.json").read_text())
    assert {m["mode"] for m in saved["measurements"]} == {"fp32", "fp32+channels_last", "bf16", "bf16+channels_last"}
    assert saved["request"] == {"precision": "auto", "channels_last": "auto"} and saved["reason"]
    chosen = next(m for m in saved["measurements"] if m["mode"] == saved["chosen"])
    assert chosen["grad_cos"] >= saved["tolerance"]["grad_cos"]
    hist = _metrics(res.run_dir)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] and res.best["top1"] > 20.0  # 2 epochs, 384 digits
    # the same run with the choice already recorded (no measurement) trains bit for bit alike
    again = tmp_path / "again"
    again.mkdir()
    shutil.copy(res.run_dir / "student_policy.json", again / "student_policy.json")
    res2 = kdkit.train(_recipe(tmp_path, "again"), quiet=True)
    assert json.loads((res2.run_dir / "student_policy.json").read_text()).get("reused") is True
    strip = ("train_seconds", "images_per_s")
    assert [{k: v for k, v in h.items() if k not in strip} for h in _metrics(res2.run_dir)] == \
        [{k: v for k, v in h.items() if k not in strip} for h in hist]


def test_forced_channels_last_trains(tmp_path):
    res = kdkit.train(_recipe(tmp_path, "cl", precision="no", channels_last=True), quiet=True)
    saved = json.loads((res.run_dir / "student_policy.json").read_text())
    assert saved["chosen"] == "fp32+channels_last" and saved["measurements"] == []
    assert res.best["top1"] > 20.0
    # the weights file is ordinary (contiguous tensors): kdkit eval reads it
    assert kdkit.evaluate(res.run_dir)["top1"] == pytest.approx(res.best["top1"])


def test_auto_compares_crd_steps_from_the_same_state(tmp_path):
    """CRD's step updates its memory bank and draws negatives from its own generator: fp32 measured against itself
    must still be the same step (before the measurement restored both, it gave grad_cos 0.97 on Fashion-MNIST and
    `auto` rejected every mode, bf16 included)."""
    from pathlib import Path

    from kdkit.recipe import load_recipe

    root = Path(__file__).resolve().parents[2]
    r = load_recipe(root / "recipes" / "methods" / "crd.yaml",
                    [f"output_dir={tmp_path}", "epochs=1", "data.train_limit=256", "teachers.0.checkpoint=null",
                     "precision=auto", "channels_last=auto"])
    res = kdkit.distill(r, quiet=True)
    saved = json.loads((res.run_dir / "student_policy.json").read_text())
    fp32 = next(m for m in saved["measurements"] if m["mode"] == "fp32")
    assert fp32["loss_rel"] == 0.0 and fp32["grad_cos"] == pytest.approx(1.0, abs=1e-9)
