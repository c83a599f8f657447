"""The `kdkit` command: listings, one-line errors, train/distill/eval through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

KDKIT = [sys.executable, "-m", "kdkit.cli"]


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*KDKIT, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_help_and_listings():
    out = _run("--help")
    assert out.returncode == 0
    for cmd in ("train", "distill", "eval", "models", "datasets", "losses", "quickstart"):
        assert cmd in out.stdout
    assert "resnet8x4" in _run("models").stdout
    assert "mnist_5k" in _run("datasets").stdout
    rows = {ln.strip().strip("│┃").split("│")[0].strip() for ln in _run("losses").stdout.splitlines()}
    assert {"kd", "ce", "dkd", "tinybert_hidden"} <= rows  # exact names in the first column, text terms included
    assert "--resume" in _run("distill", "--help").stdout


def test_bad_recipe_gives_one_line_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"student": {"name": "mlp"}, "optim": {"lrr": 0.1}}))
    out = _run("train", str(p))
    assert out.returncode == 2
    err = out.stderr.strip()
    assert "optim.lrr" in err and "allowed" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_unknown_model_lists_known(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"student": {"name": "resnet9"}, "output_dir": str(tmp_path), "epochs": 1}))
    out = _run("train", str(p))
    assert out.returncode == 2 and "unknown model 'resnet9'" in out.stderr and "Traceback" not in out.stderr


def test_train_distill_eval_with_overrides(tmp_path):
    common = ["--set", f"output_dir={tmp_path}", "--set", "epochs=1", "--set", "data.train_limit=512", "-q"]
    t = _run("train", "mnist_teacher", *common, "--set", "student.name=cnn_student")
    assert t.returncode == 0, t.stderr
    d = _run("distill", "mnist_kd", *common, "--set", f"teachers.0.checkpoint={tmp_path / 'mnist_teacher'}",
             "--set", "teachers.0.name=cnn_student")
    assert d.returncode == 0, d.stderr
    saved = yaml.safe_load((tmp_path / "mnist_kd" / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["teachers"][0]["name"] == "cnn_student"
    e = _run("eval", str(tmp_path / "mnist_kd"), "--json")  # dataset and split from the checkpoint's recipe
    assert e.returncode == 0, e.stderr
    res = json.loads(e.stdout)
    assert res["n"] == 1000 and 0 <= res["top1"] <= 100
    summary = json.loads((tmp_path / "mnist_kd" / "summary.json").read_text())
    assert res["top1"] == pytest.approx(summary["best"]["top1"], abs=1e-6)  # the run's own figure, re-computed
    again = _run("distill", "mnist_kd", *common, "--set", f"teachers.0.checkpoint={tmp_path / 'mnist_teacher'}",
                 "--set", "teachers.0.name=cnn_student")
    assert again.returncode == 2 and "--resume" in again.stderr
    _check_ensemble_eval(tmp_path / "mnist_teacher", tmp_path / "mnist_kd", res)


def _check_ensemble_eval(teacher: Path, student: Path, student_alone: dict) -> None:
    """`kdkit eval A B`: each member's figures as evaluated alone, and the ensemble's top-1 and loss recomputed in
    float64 from the members' own logits (mean of the probabilities); the ensemble of a model with itself is the
    model; an unknown combine rule is one line."""
    import torch

    from kdkit.api import _collect_logits, _eval_data, _eval_loader
    from kdkit.weights import read_metadata, resolve_checkpoint

    both = _run("eval", str(teacher), str(student), "--json")
    assert both.returncode == 0, both.stderr
    ens = json.loads(both.stdout)
    alone = json.loads(_run("eval", str(teacher), "--json").stdout)
    assert ens["combine"] == "mean_probs" and [m["checkpoint"] for m in ens["members"]] == [str(teacher), str(student)]
    for member, ref in zip(ens["members"], (alone, student_alone), strict=True):
        assert member["top1"] == ref["top1"] and member["n"] == ref["n"] == ens["n"]
        assert member["loss"] == pytest.approx(ref["loss"], rel=1e-6)
    spec = _eval_data(teacher, read_metadata(resolve_checkpoint(str(teacher), "checkpoint")), None, None, "val",
                      None, None)
    logits = []
    for ckpt in (teacher, student):
        model, loader = _eval_loader(ckpt, spec, 512)
        z, y = _collect_logits(model, loader)
        logits.append(z.double())
    p = torch.stack([z.softmax(1) for z in logits]).mean(0)  # float64 ensemble distribution
    assert ens["top1"] == pytest.approx(100.0 * float((p.argmax(1) == y).double().mean()), abs=1e-9)
    # float32 logits combined in float32 (log of the mean probability) against float64: relative error ~1e-6
    assert ens["loss"] == pytest.approx(float(-p.log().gather(1, y[:, None]).mean()), rel=1e-5)
    twice = json.loads(_run("eval", str(student), str(student), "--json").stdout)
    assert twice["top1"] == student_alone["top1"]
    assert twice["loss"] == pytest.approx(student_alone["loss"], rel=1e-5)  # log(mean of equal softmaxes), float32
    logit_mean = json.loads(_run("eval", str(teacher), str(student), "--combine", "mean_logits", "--json").stdout)
    z = torch.stack(logits).mean(0)
    assert logit_mean["combine"] == "mean_logits"
    assert logit_mean["top1"] == pytest.approx(100.0 * float((z.argmax(1) == y).double().mean()), abs=1e-9)
    bad = _run("eval", str(teacher), str(student), "--combine", "weighted")
    assert bad.returncode == 2 and "--combine" in bad.stderr and "Traceback" not in bad.stderr
