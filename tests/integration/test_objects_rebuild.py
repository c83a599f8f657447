"""Models handed to kdkit.train/distill as Python objects, evaluated and exported later by name: a class of an
importable module whose constructor kdkit can call (no arguments beyond num_classes/input_shape) is recorded as
``py:module:Class`` and ``kdkit eval``/``export`` rebuild it; any other object gets one line naming the fix.
Real digits (scikit-learn's 8x8 set, bundled)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import kdkit
from kdkit.cli import app
from kdkit.data import load_source
from kdkit.errors import ConfigError
from kdkit.weights import read_metadata

CODE = textwrap.dedent('''
    import math
    from torch import nn

    class DigitNet(nn.Module):
        """Its constructor takes what kdkit passes (num_classes, input_shape) and defaults for the rest."""
        def __init__(self, num_classes=10, input_shape=(1, 8, 8), hidden=32):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
                                     nn.Linear(hidden, num_classes))

        def forward(self, x):
            return self.net(x)
''')


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_nets_rebuild.py").write_text(CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield __import__("user_nets_rebuild")
    sys.modules.pop("user_nets_rebuild", None)


def _digits():
    d = load_source("digits")
    return (d.images[:1400], d.targets[:1400]), (d.images[1400:], d.targets[1400:])


def test_an_importable_object_is_rebuilt_by_name_for_eval_and_export(user_module, tmp_path):
    train, val = _digits()
    net = user_module.DigitNet()
    res = kdkit.train(student=net, train=train, val=val, epochs=3, output_dir=str(tmp_path), name="obj",
                      optim={"name": "adamw", "lr": 0.01}, quiet=True)
    meta = read_metadata(res.best_path)
    assert meta["model"]["name"].startswith("object:student:")
    assert meta["model"]["rebuild"] == {"name": "py:user_nets_rebuild:DigitNet", "params": {}}
    model, _ = kdkit.load_student(res.run_dir)
    x = val[0][:16].float()
    with torch.no_grad():
        assert torch.equal(model(x), net.eval()(x))  # the very weights, in a model rebuilt from its name
    assert kdkit.evaluate(res.run_dir)["top1"] == pytest.approx(res.best["top1"], abs=1e-9)
    assert res.best["top1"] > 70  # real digits (chance 10 %)
    cli = CliRunner().invoke(app, ["export", str(res.run_dir)])
    assert cli.exit_code == 0, cli.output
    assert (Path(res.run_dir) / "export" / "model.onnx").is_file()


def test_an_object_with_unknown_constructor_arguments_gets_one_line(user_module, tmp_path):
    train, val = _digits()
    net = user_module.DigitNet(hidden=16)  # a default construction would have 32 hidden units: the weights won't fit
    res = kdkit.train(student=net, train=train, val=val, epochs=1, output_dir=str(tmp_path), name="obj16",
                      quiet=True)
    assert "rebuild" not in read_metadata(res.best_path)["model"]
    with pytest.raises(ConfigError, match="cannot rebuild by name .*load_weights\\(model, .*py:module:Class") as err:
        kdkit.load_student(res.run_dir)
    assert "\n" not in str(err.value)
    cli = CliRunner().invoke(app, ["eval", str(res.run_dir)])
    assert cli.exit_code != 0 and "cannot rebuild by name" in str(cli.exception)
