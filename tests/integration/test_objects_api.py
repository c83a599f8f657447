"""Python objects, no YAML: plain nn.Modules and a DataLoader through kdkit.train / kdkit.distill, on real data
(the README's example, executed as written), with resume and one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import kdkit
from kdkit.errors import ConfigError
from kdkit.weights import read_metadata

ROOT = Path(__file__).resolve().parents[2]


def _readme_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    (block,) = [b for b in blocks if "kdkit.distill(student=" in b]
    return block


def test_readme_object_example_distils_plain_modules_from_a_dataloader(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_readme_block(), "README.md", "exec"), scope)
    result, student, teacher = scope["result"], scope["student"], scope["teacher"]
    assert result.student is student and result.run_dir == Path("runs/objects/kd")
    assert len(result.metrics) == 15 and result.best["top1"] > 80  # 16-unit MLP on real 8x8 digits (chance 10%)
    assert {"train_ce", "train_kd"} <= set(result.metrics[-1])
    meta = read_metadata(result.best_path)
    assert meta["input_shape"] == [64] and meta["input_dtype"] == "float32"
    assert meta["model"]["name"] == "object:student:torch.nn.modules.container.Sequential"
    # the returned module holds the best epoch's weights and scores what the run measured on val
    val_x, val_y = scope["val"]
    mean, std = torch.tensor(meta["mean"]), torch.tensor(meta["std"])
    with torch.no_grad():
        acc = (student.eval()((val_x - mean) / std).argmax(1) == val_y).float().mean().item() * 100
    assert abs(acc - result.best["top1"]) < 1e-3  # float32 normalisation reproduced: argmax unchanged
    # resume: two more epochs continue the same run from its checkpoint
    more = kdkit.distill(student=student, teachers=[teacher], terms="kd", epochs=17, train=scope["train"],
                         val=scope["val"], optim={"name": "adamw", "lr": 0.003}, output_dir="runs/objects",
                         name="kd", quiet=True, resume=True)
    assert [m["epoch"] for m in more.metrics] == list(range(1, 18))
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        kdkit.distill(student=student, teachers=[teacher], train=scope["train"], output_dir="runs/objects",
                      name="kd", quiet=True)


def test_object_api_errors_are_one_line(tmp_path: Path):
    x, y = torch.randn(20, 5), torch.arange(20) % 2
    net = nn.Linear(5, 2)
    cases = [
        (dict(student="resnet8", teachers=[net], train=(x, y)), "student: expected a torch.nn.Module, got str"),
        (dict(student=net, train=(x, y)), r"teachers=\[...\] is empty"),
        (dict(student=net, teachers=[net], train=(x, y), val=(torch.randn(4, 6), y[:4])),
         r"val: samples of shape \(6,\) but train has \(5,\)"),
        (dict(student=net, teachers=[net], train=(x, y), terms=3), "terms: expected a preset"),
        (dict(student=net, teachers=[net], train=(x, y), optim={"name": "lbfgs"}), "recipe field 'optim.name'"),
        (dict(student=net, teachers=[object()], train=(x, y)), "teachers.0: expected an nn.Module"),
    ]
    for i, (kw, msg) in enumerate(cases):
        with pytest.raises(ConfigError, match=msg) as err:
            kdkit.distill(output_dir=str(tmp_path), name=f"e{i}", quiet=True, **kw)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="holds a model passed as a Python object"):
        res = kdkit.train(student=net, train=(x, y), epochs=1, output_dir=str(tmp_path), name="t", quiet=True)
        kdkit.load_student(res.run_dir)


def test_a_teacher_given_as_a_run_directory_and_uint8_images_stay_images(tmp_path: Path):
    """teachers=[RUN_DIR] rebuilds the teacher from its checkpoint; uint8 (N, 1, 8, 8) tensors are images (crop
    augmentation allowed), and a Dataset of (x, y) pairs is read once."""
    from torch.utils.data import TensorDataset

    from kdkit.data import load_source

    t = kdkit.train({"name": "t", "output_dir": str(tmp_path), "data": {"name": "digits", "batch_size": 256},
                     "student": {"name": "mlp", "params": {"hidden": [64]}}, "epochs": 3,
                     "optim": {"name": "adamw", "lr": 0.01}}, quiet=True)
    d = load_source("digits")
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    res = kdkit.distill(student=student, teachers=[t.run_dir], train=TensorDataset(d.images[:1400], d.targets[:1400]),
                        val=(d.images[1400:], d.targets[1400:]), epochs=6, output_dir=str(tmp_path), name="s",
                        data={"augment": {"crop_padding": 1}}, optim={"name": "adamw", "lr": 0.01}, quiet=True)
    meta = read_metadata(res.best_path)
    assert meta["input_dtype"] == "uint8" and meta["input_shape"] == [1, 8, 8]
    assert res.best["top1"] > 70 and t.best["top1"] > 70, (res.best, t.best)  # real digits (chance 10%)


def test_object_teachers_and_students_see_the_data_as_given(tmp_path: Path):
    """A teacher trained elsewhere on raw inputs must get raw inputs (normalising them would silently corrupt its
    predictions); data={"mean", "std"} normalises on request."""
    seen: list[float] = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            seen.append(float(x.mean()))
            return self.fc(x)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(90, 6, generator=g) + 100.0  # raw units far from 0
    y = torch.arange(90) % 3
    kdkit.distill(student=nn.Linear(6, 3), teachers=[Spy()], train=(x, y), val=(x[:30], y[:30]), epochs=1,
                  output_dir=tmp_path, name="raw", quiet=True)
    assert seen and all(abs(m - 100.0) < 1.0 for m in seen), seen[:5]
    seen.clear()
    res = kdkit.distill(student=nn.Linear(6, 3), teachers=[Spy()], train=(x, y), val=(x[:30], y[:30]), epochs=1,
                        data={"mean": [100.0] * 6, "std": [1.0] * 6}, output_dir=tmp_path, name="norm", quiet=True)
    assert seen and all(abs(m) < 1.0 for m in seen), seen[:5]
    assert read_metadata(res.best_path)["mean"] == [100.0] * 6
