"""``teacher_policy`` end to end on real digits: ``auto`` records its choice and measurements in the run directory, the
forced modes train, and ``kdkit cache`` with a bf16 teacher stores logits close to the fp32 ones (and says how it ran).
Which mode ``auto`` picks depends on the CPU and is never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kdkit
from kdkit.errors import ConfigError
from kdkit.softlabels import SoftLabelStore

DATA = {"name": "mnist_5k", "val_fraction": 0.2, "batch_size": 64, "train_limit": 384}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    return kdkit.train({"name": "teacher", "output_dir": str(out), "data": DATA, "student": {"name": "cnn_teacher"},
                        "optim": {"name": "adamw", "lr": 0.003}, "epochs": 1}, quiet=True).run_dir


def _kd(out: Path, teacher: Path, policy: dict, name: str) -> dict:
    return {"name": name, "output_dir": str(out), "data": DATA, "student": {"name": "cnn_student"},
            "teachers": [{"name": "cnn_teacher", "checkpoint": str(teacher)}],
            "terms": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "params": {"temperature": 4}},
                      {"name": "fitnet", "weight": 1.0}],
            "optim": {"name": "adamw", "lr": 0.003}, "teacher_policy": policy, "epochs": 2}


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_auto_records_choice_and_measurements(teacher, tmp_path):
    res = kdkit.distill(_kd(tmp_path, teacher, {"precision": "auto", "channels_last": "auto"}, "auto"), quiet=True)
    saved = json.loads((res.run_dir / "teacher_policy.json").read_text())["teachers"]
    assert len(saved) == 1 and saved[0]["request"]["precision"] == "auto"
    modes = {m["mode"]: m for m in saved[0]["measurements"]}
    assert set(modes) == {"fp32", "fp32+channels_last", "bf16", "bf16+channels_last"}
    chosen = modes[saved[0]["chosen"]]
    assert chosen["error"] is None and chosen["kl"] <= saved[0]["tolerance"]["kl"]
    assert saved[0]["batch_shape"] == [64, 1, 28, 28]
    hist = _metrics(res.run_dir)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] and "train_fitnet" in hist[0]
    # resuming keeps the recorded choice (no second measurement)
    kdkit.distill(_kd(tmp_path, teacher, {"precision": "auto", "channels_last": "auto"}, "auto") | {"epochs": 3},
                  resume=True, quiet=True)
    again = json.loads((res.run_dir / "teacher_policy.json").read_text())["teachers"]
    assert again[0]["chosen"] == saved[0]["chosen"] and again[0].get("reused") is True


@pytest.mark.parametrize("policy", [{"precision": "bf16", "channels_last": True}, {"precision": "fp32",
                                                                                     "channels_last": True}])
def test_forced_modes_train(teacher, tmp_path, policy):
    res = kdkit.distill(_kd(tmp_path, teacher, policy, "forced"), quiet=True)
    saved = json.loads((res.run_dir / "teacher_policy.json").read_text())["teachers"][0]
    assert saved["precision"] == policy["precision"] and saved["channels_last"] is True and saved["measurements"] == []
    hist = _metrics(res.run_dir)
    # 2 epochs on 384 digits from a 1-epoch teacher: well above chance (10%), not more
    assert hist[-1]["train_kd"] < hist[0]["train_kd"] and res.best["top1"] > 15.0


def test_cache_with_a_bf16_teacher_is_close_to_fp32(teacher, tmp_path):
    base = {"name": "c", "output_dir": str(tmp_path), "data": DATA, "student": {"name": "mlp"},
            "teachers": [{"name": "cnn_teacher", "checkpoint": str(teacher)}]}
    fp32 = kdkit.cache(base, topk=10, out=tmp_path / "fp32", quiet=True)
    bf16 = kdkit.cache(base | {"teacher_policy": {"precision": "bf16", "channels_last": True}}, topk=10,
                       out=tmp_path / "bf16", quiet=True)
    assert "teacher_policy" not in fp32.manifest
    assert bf16.manifest["teacher_policy"][0]["chosen"] == "bf16+channels_last"
    n = fp32.manifest["num_samples"]
    a = SoftLabelStore.open(tmp_path / "fp32").teacher_logits(torch.arange(n), 0).float()
    b = SoftLabelStore.open(tmp_path / "bf16").teacher_logits(torch.arange(n), 0).float()
    # fp16 storage rounds each logit to 2^-11 of its size; the bf16 forward adds ~2^-9 relative per rounding step
    err = float((a - b).abs().max() / a.abs().max())
    assert err < 0.02, err
    assert np.mean((a.argmax(1) == b.argmax(1)).numpy()) >= 0.99


def test_eval_runs_the_checkpoint_under_the_policy(teacher):
    """``kdkit eval --precision/--channels-last``: the model runs in the requested (or measured) mode and the accuracy
    stays that of fp32 within the policy's tolerance."""
    ref = kdkit.evaluate(teacher)
    assert "mode" not in ref  # the default is plain fp32, the exact reference
    bf = kdkit.evaluate(teacher, precision="bf16", channels_last=True)
    assert bf["mode"] == "bf16+channels_last" and bf["n"] == ref["n"] == 1000
    assert bf["loss"] != ref["loss"]  # it really ran in bf16
    # bf16 keeps 8 mantissa bits (~0.4% per rounding): only near-tied logits can flip their argmax, and the policy
    # demands >= 99% agreement, so top-1 moves by at most 1 point on these 1,000 digits; the mean CE by well under 2%
    assert abs(bf["top1"] - ref["top1"]) <= 1.0 and abs(bf["loss"] - ref["loss"]) <= 0.02 * ref["loss"]
    auto = kdkit.evaluate(teacher, precision="auto", channels_last="auto")
    assert auto["mode"] == auto["policy"]["chosen"] and len(auto["policy"]["measurements"]) == 4
    assert abs(auto["top1"] - ref["top1"]) <= 1.0
    # the command line: the same options, the mode in the JSON and a clear line for a wrong value
    cmd = [sys.executable, "-m", "kdkit.cli", "eval", str(teacher)]
    out = subprocess.run(cmd + ["--precision", "bf16", "--channels-last", "true", "--json"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["mode"] == "bf16+channels_last" and got["top1"] == bf["top1"]
    with pytest.raises(ConfigError, match="--precision: 'half' is not one of"):
        kdkit.evaluate(teacher, precision="half")
