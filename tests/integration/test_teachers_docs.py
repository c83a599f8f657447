"""docs/teachers.md's examples run as written: the ONNX teacher built in Python (its path pointed at a real export),
and the logits-table sketch whose file the bundled recipe then imports with the documented command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")

from kdkit.cli import app  # noqa: E402
from kdkit.deploy.export import export_onnx  # noqa: E402
from kdkit.models.factory import create_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "teachers.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", DOC, flags=re.S)


def test_the_onnx_python_example_runs(tmp_path):
    onnx = tmp_path / "model.onnx"
    export_onnx(create_model("cnn_student", 10, 1, 28), torch.zeros(2, 1, 28, 28), onnx)
    block = next(b for b in BLOCKS if "onnx:" in b)
    scope: dict = {}
    exec(compile(block.replace("runs/mnist_teacher/export/model.onnx", str(onnx)), "teachers.md", "exec"), scope)
    assert scope["logits"].shape == (8, 10) and scope["logits"].dtype == torch.float32


def test_the_logits_table_example_and_the_documented_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    block = next(b for b in BLOCKS if "np.save(" in b)
    exec(compile(block, "teachers.md", "exec"), {})
    assert (tmp_path / "teacher_logits.npy").is_file()
    # `kdkit cache recipes/teachers/mnist_kd_logits.yaml --from-logits teacher_logits.npy --topk 10`, as documented
    assert "kdkit cache recipes/teachers/mnist_kd_logits.yaml --from-logits teacher_logits.npy" in DOC
    cli = CliRunner().invoke(app, ["cache", str(ROOT / "recipes/teachers/mnist_kd_logits.yaml"), "--from-logits",
                                   "teacher_logits.npy", "--topk", "10", "--set", f"output_dir={tmp_path}",
                                   "--set", f"soft_labels={tmp_path / 'store'}"])
    assert cli.exit_code == 0, cli.output
    # random stand-in logits: the documented warning about chance-level agreement appears
    assert "near chance" in cli.output and (tmp_path / "store" / "manifest.json").is_file()
