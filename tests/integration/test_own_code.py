"""Your own code in a recipe, without a wrapper: ``py:module:attr`` models, datasets, loss terms and schemes,
``--plugin MODULE`` anywhere on the command line, the ``kdkit.plugins`` entry-point group, and the safety rule for
``py:`` names read back from a checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import kdkit
from kdkit.errors import ConfigError
from kdkit.models.factory import load_model
from kdkit.weights import read_metadata, write_weights

SRC = str(Path(__file__).resolve().parents[2] / "src")

USER_CODE = '''
import numpy as np
import torch
from torch import nn

from kdkit.schemes.offline import OfflineScheme
from kdkit.terms.base import LossTerm


class Net(nn.Module):
    """A 1-D conv net over (B, 2, 24) signals; built with the data's num_classes."""

    def __init__(self, num_classes, width=8):
        super().__init__()
        self.conv = nn.Conv1d(2, width, 3, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(-1))


def signals(n=240, seed=0):
    """Two-channel signals whose class is the amplitude of a sine; float, in volts around 5 V (not 0-1)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    t = np.linspace(0, 1, 24)
    x = np.stack([np.sin(2 * np.pi * 3 * t), np.cos(2 * np.pi * 3 * t)])[None] * (y[:, None, None] + 1)
    return (x + 5 + rng.normal(0, 0.3, x.shape)).astype(np.float32), y


class LogitL2(LossTerm):
    """A user's term: mean squared logit (needs no teacher)."""

    needs_teacher = False
    calls = 0

    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale

    def compute(self, inp):
        type(self).calls += 1
        return self.scale * inp.student.logits.square().mean()


class CountingScheme(OfflineScheme):
    """The offline scheme, counting its steps."""

    steps = 0

    def step(self, model, batch, state):
        type(self).steps += 1
        return super().step(model, batch, state)
'''


@pytest.fixture
def user_dir(tmp_path: Path):
    (tmp_path / "userkd.py").write_text(USER_CODE)
    yield tmp_path
    sys.modules.pop("userkd", None)
    for p in list(sys.path):
        if p == str(tmp_path.resolve()):
            sys.path.remove(p)


def test_recipe_names_user_model_dataset_term_and_scheme_from_its_own_folder(user_dir: Path, monkeypatch):
    monkeypatch.chdir(user_dir.parent)  # the module is found because it sits beside the recipe, not in the cwd
    (user_dir / "r.yaml").write_text(textwrap.dedent("""
        name: own
        output_dir: OUT
        data: {name: "py:userkd:signals", params: {n: 240}, batch_size: 32, val_fraction: 0.25}
        student: {name: "py:userkd:Net", params: {width: 6}}
        terms: [{name: ce}, {name: "py:userkd:LogitL2", weight: 0.01, params: {scale: 2.0}}]
        scheme: {name: "py:userkd:CountingScheme"}
        optim: {name: adamw, lr: 0.03}
        schedule: {name: constant}
        epochs: 8
        """).replace("OUT", str(user_dir / "runs")))
    result = kdkit.train(str(user_dir / "r.yaml"), quiet=True)
    import userkd

    assert userkd.CountingScheme.steps == 8 * 6 and userkd.LogitL2.calls == 8 * 6  # 180 train samples / 32
    assert {"train_ce", "train_LogitL2"} <= set(result.history[-1])  # a py: term logs under its class name
    meta = read_metadata(result.best_path)
    assert meta["model"]["name"] == "py:userkd:Net" and meta["model"]["code_dir"] == str(user_dir.resolve())
    assert meta["input_shape"] == [2, 24] and meta["input_dtype"] == "float32"
    assert result.best["top1"] > 60  # three amplitudes: learnt in 8 epochs (chance 33%)
    model, _ = load_model(result.run_dir)
    assert isinstance(model, userkd.Net) and model.conv.out_channels == 6
    ev = kdkit.evaluate(result.run_dir)
    assert ev["n"] == 60 and abs(ev["top1"] - result.best["top1"]) < 1e-6


def test_a_student_that_cannot_take_the_data_fails_before_training_in_one_line(user_dir: Path):
    from kdkit.errors import ShapeError

    base = {"name": "bad", "output_dir": str(user_dir / "runs"), "epochs": 1,
            "data": {"name": "py:userkd:signals", "params": {"n": 60}}}
    sys.path.insert(0, str(user_dir.resolve()))
    with pytest.raises(ShapeError, match=r"student 'py:torch.nn:Linear' cannot take the data's input: a batch of "
                                         r"shape \(4, 2, 24\) float32 raised RuntimeError: .*accept \(B, 2, 24\)") as e:
        kdkit.train(dict(base, student={"name": "py:torch.nn:Linear", "params": {"in_features": 5,
                                                                                "out_features": 3}}), quiet=True)
    assert "\n" not in str(e.value)
    with pytest.raises(ShapeError, match=r"returns logits of shape \(4, 2, 7\) .* expected \(4, 3\)"):
        kdkit.train(dict(base, name="bad2", student={"name": "py:torch.nn:Linear", "params": {
            "in_features": 24, "out_features": 7}}), quiet=True)


def test_wrong_user_names_give_one_line(user_dir: Path):
    with pytest.raises(ConfigError, match=r"module 'nosuchmod' not found; put its folder on PYTHONPATH"):
        kdkit.registry.LOSSES.get("py:nosuchmod:X")
    sys.path.insert(0, str(user_dir.resolve()))
    with pytest.raises(ConfigError, match=r"module 'userkd' has no attribute 'Nope'"):
        kdkit.registry.SCHEMES.get("py:userkd:Nope")
    from kdkit.recipe import TermSpec
    from kdkit.terms.base import build_term

    with pytest.raises(ConfigError, match=r"terms.1: loss term 'py:userkd:signals' \(signals\) is not a subclass of "
                                          r"kdkit.terms.base.LossTerm"):
        build_term(TermSpec(name="py:userkd:signals"), "terms.1")


def test_a_checkpoint_never_makes_kdkit_call_an_arbitrary_function(tmp_path: Path):
    """A weights file is data: its ``py:`` name is honoured only for an nn.Module class or the user's own function."""
    m = torch.nn.Linear(2, 2)
    for ref, params in [("py:shutil:rmtree", {"path": str(tmp_path / "victim")}), ("py:os:getcwd", {})]:
        (tmp_path / "victim").mkdir(exist_ok=True)
        f = write_weights(m, tmp_path / "evil.safetensors", {"model": {"name": ref, "params": params},
                                                              "num_classes": 2, "in_channels": 2, "image_size": 1})
        with pytest.raises(ConfigError, match="kdkit will not call it"):
            load_model(f)
        assert (tmp_path / "victim").is_dir()
    f = write_weights(m, tmp_path / "gone.safetensors", {"model": {"name": "py:gone_mod:Net", "code_dir": "/x/y"},
                                                         "num_classes": 2, "in_channels": 2, "image_size": 1})
    with pytest.raises(ConfigError, match=r"module 'gone_mod' not found.*imported from '/x/y'"):
        load_model(f)


def _kdkit(args: list[str], cwd: Path, env_path: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, env_path]))
    return subprocess.run([sys.executable, "-m", "kdkit.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_plugin_after_the_command_and_the_entry_point_group(tmp_path: Path):
    """``--plugin`` works on any command, after its arguments too; an installed package plugs in through the
    ``kdkit.plugins`` entry points (a dist-info folder on the path, as pip writes it)."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "myterms.py").write_text(
        "from kdkit.terms.base import LossTerm, register_term\n"
        "@register_term('zero_by_plugin', description='registered by a --plugin module')\n"
        "class Zero(LossTerm):\n    needs_teacher = False\n"
        "    def compute(self, inp):\n        return inp.student.logits.sum() * 0\n")
    (code / "epterms.py").write_text(
        "from kdkit.terms.base import LossTerm, register_term\n"
        "@register_term('zero_by_entry_point', description='registered through kdkit.plugins')\n"
        "class Zero(LossTerm):\n    needs_teacher = False\n"
        "    def compute(self, inp):\n        return inp.student.logits.sum() * 0\n")
    dist = code / "epterms-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: epterms\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[kdkit.plugins]\nepterms = epterms\n")
    out = _kdkit(["losses", "--plugin", "myterms"], tmp_path, str(code))
    assert out.returncode == 0, out.stderr
    assert "zero_by_plugin" in out.stdout and "zero_by_entry_point" in out.stdout
    bad = _kdkit(["losses", "--plugin", "no_such_module_x"], tmp_path, str(code))
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "plug-in module 'no_such_module_x' not found" in bad.stderr
    # The plug-in's term used in a recipe, with --plugin after the recipe argument.
    (tmp_path / "r.yaml").write_text(json.dumps({
        "name": "p", "output_dir": str(tmp_path / "runs"), "data": {"name": "digits", "batch_size": 256},
        "student": {"name": "mlp", "params": {"hidden": [16]}}, "epochs": 1,
        "terms": [{"name": "ce"}, {"name": "zero_by_plugin"}]}))
    run = _kdkit(["train", "r.yaml", "-q", "--plugin", "myterms"], tmp_path, str(code))
    assert run.returncode == 0, run.stderr
    rec = json.loads((tmp_path / "runs" / "p" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "train_zero_by_plugin" in json.dumps(rec)
