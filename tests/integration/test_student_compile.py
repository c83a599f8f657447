"""``compile: true``: the student networks are torch.compiled in place, so the optimizer trains the very parameters the
checkpoints hold; a compilation failure falls back to eager with one line."""

from __future__ import annotations

import json

import pytest
import torch

import kdkit


def _recipe(out, name: str) -> dict:
    return {"name": name, "output_dir": str(out), "epochs": 2, "seed": 0, "compile": True,
            "data": {"name": "mnist_5k", "val_fraction": 0.2, "batch_size": 64, "train_limit": 384},
            "student": {"name": "cnn_student"}, "optim": {"name": "adamw", "lr": 0.003}}


def _metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_compile_failure_trains_eagerly_and_says_so(tmp_path, monkeypatch, capsys):
    def lazy_broken(fn, *a, **k):  # torch.compile fails where it really does: at the first call
        def call(*args, **kwargs):
            raise RuntimeError("no C compiler found")
        return call

    monkeypatch.setattr(torch, "compile", lazy_broken)
    res = kdkit.train(_recipe(tmp_path, "fallback"), quiet=True)
    err = capsys.readouterr().err
    assert err.count("torch.compile failed (RuntimeError: no C compiler found); training eagerly") == 1
    hist = _metrics(res.run_dir)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] and res.best["top1"] > 20.0  # 2 epochs, 384 digits


@pytest.mark.slow
def test_compiled_student_learns_and_its_checkpoint_loads_uncompiled(tmp_path, capsys):
    """Inductor compiles forward and backward at the first step: tens of seconds on the shared CPU, hence slow."""
    from torch._dynamo.utils import counters

    counters.clear()
    res = kdkit.train(_recipe(tmp_path, "compiled"), quiet=True)
    assert "torch.compile failed" not in capsys.readouterr().err
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo really captured the student
    hist = _metrics(res.run_dir)
    # gradients reach the optimizer's parameters: the loss falls and the student is far above chance (10%)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] and res.best["top1"] > 20.0
    model, _ = kdkit.load_student(res.best_path)  # plain keys, an eager module
    assert not any("_orig_mod" in k for k in model.state_dict())
    assert kdkit.evaluate(res.run_dir)["top1"] == pytest.approx(res.best["top1"], abs=0.11)  # 1 of 1,000 digits
