"""`kdkit export` and `kdkit bench` on a real (tiny) run directory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import kdkit


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    res = kdkit.train({"name": "mlp", "output_dir": str(out), "epochs": 3,
                       "data": {"name": "mnist_5k", "train_limit": 1024, "batch_size": 64},
                       "student": {"name": "mlp", "params": {"hidden": [64]}},
                       "optim": {"name": "adamw", "lr": 0.003}}, quiet=True)
    return res.run_dir


def _kdkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdkit.cli", *args], capture_output=True, text=True, timeout=600)


def test_export_onnx_int8_from_run_dir(run_dir):
    p = _kdkit("export", str(run_dir), "--int8")
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads((run_dir / "export" / "export.json").read_text())
    assert (run_dir / "export" / "model.onnx").is_file() and (run_dir / "export" / "model.int8.onnx").is_file()
    acc = summary["accuracy"]
    best = json.loads((run_dir / "summary.json").read_text())["best"]["top1"]
    assert acc["pytorch"] == pytest.approx(best, abs=1e-6)  # the same held-out split the run evaluated
    assert acc["ort-fp32"] == pytest.approx(acc["pytorch"], abs=0.11)
    assert abs(acc["ort-int8"] - acc["ort-fp32"]) < 3.0
    assert "max |ONNX − PyTorch|" in p.stdout and "int8" in p.stdout


def test_bench_table_from_run_dir(run_dir, tmp_path):
    p = _kdkit("bench", str(run_dir), "--out", str(tmp_path), "--repeats", "5")
    assert p.returncode == 0, p.stderr[-2000:]
    rows = json.loads((tmp_path / "bench.json").read_text())
    runtimes = {r["runtime"] for r in rows}
    assert {"pytorch", "ort-fp32", "ort-int8"} <= runtimes
    assert all(r["params"] > 0 for r in rows)
    # every row says which CPU measured it (the kernels, hence the timings, depend on AVX2 / AVX-512 / VNNI / AMX)
    assert all(r["cpu"]["model"] and isinstance(r["cpu"]["simd"], list) for r in rows)
    assert (tmp_path / "bench.md").read_text().count("|") > 10


def test_export_missing_run_is_one_line(tmp_path):
    p = _kdkit("export", str(tmp_path / "nope"))
    assert p.returncode == 2 and "nope" in p.stderr and "Traceback" not in p.stderr
