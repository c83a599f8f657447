"""The README's Python example runs as written (with its output directory moved to a temporary one)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    code = blocks[0].replace("runs/demo", str(tmp_path / "demo"))
    monkeypatch.chdir(ROOT)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'top1'" in out
    assert (tmp_path / "demo" / "mnist_kd" / "checkpoints" / "best.safetensors").is_file()
