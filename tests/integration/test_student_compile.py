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


def test_compile_failure_with_precision_auto_measures_eagerly_and_records_the_choice(tmp_path, monkeypatch, capsys):
    """``compile: true`` with ``precision: auto``: the policy measures the eager student (compiling every candidate
    mode would cost one compilation each), compilation happens after the choice, and when it fails the run says so in
    one line, trains eagerly in the chosen mode, and student_policy.json holds the measurements and the error."""
    calls = []

    def lazy_broken(fn, *a, **k):
        def call(*args, **kwargs):
            calls.append(1)
            raise RuntimeError("no C compiler found")
        return call

    monkeypatch.setattr(torch, "compile", lazy_broken)
    rec = dict(_recipe(tmp_path, "fallback_auto"), precision="auto", channels_last="auto")
    res = kdkit.train(rec, quiet=True)
    err = capsys.readouterr().err
    assert err.count("torch.compile failed (RuntimeError: no C compiler found); training eagerly") == 1
    assert len(calls) == 1  # the compiled call ran once (the first training step), never inside the measurement
    policy = json.loads((res.run_dir / "student_policy.json").read_text())
    ran = [m for m in policy["measurements"] if m["error"] is None]
    assert len(ran) == len(policy["measurements"]) == 4  # fp32, bf16, each contiguous and channels-last: all ran
    assert all("grad_cos" in m for m in ran)  # every mode was compared with fp32
    assert policy["compile_error"] == "RuntimeError: no C compiler found"
    assert policy["chosen"] in {m["mode"] for m in ran}
    hist = _metrics(res.run_dir)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] and res.best["top1"] > 20.0


def test_checkpoint_of_a_compiled_student_evaluates_in_the_plain_model(tmp_path, monkeypatch):
    """``kdkit eval`` / ``kdkit.evaluate`` of a compiled student's run: the checkpoint, written from the compiled
    module, loads into the plain model and reproduces the accuracy the run recorded. The compilation is real dynamo
    tracing with the ``eager`` backend (no Inductor code generation: seconds, not the minutes of the slow test)."""
    import functools

    from torch._dynamo.utils import counters
    from typer.testing import CliRunner

    from kdkit.cli import app

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    counters.clear()
    res = kdkit.train(dict(_recipe(tmp_path, "compiled_eager"), epochs=1), quiet=True)
    assert counters["stats"]["unique_graphs"] >= 1  # the student really ran compiled
    model, meta = kdkit.load_student(res.best_path)
    assert type(model).__name__ == "SmallCNN" and model._compiled_call_impl is None  # the plain, uncompiled model
    assert not any("_orig_mod" in k for k in model.state_dict())
    best = res.best["top1"]
    # the same weights on the same split in fp32: the same top-1 to the sample (1 of 1,000 digits = 0.1 point)
    assert kdkit.evaluate(res.run_dir)["top1"] == pytest.approx(best, abs=0.11)
    out = CliRunner().invoke(app, ["eval", str(res.run_dir), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout[out.stdout.index("{"):])["top1"] == pytest.approx(best, abs=0.11)
