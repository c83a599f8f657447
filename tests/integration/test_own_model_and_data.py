"""Issue 12's "done when": a user's own models module and float (N, 40) data with their own test split, in a folder
outside the repository, through every command -- teacher, scratch, KD, KD from a store, export --int8 (checked
against PyTorch here), bench, report -- using only what docs/own-models-and-data.md says. Each command runs in its own
process, as a user runs them, with kdkit importable (PYTHONPATH=src stands in for `pip install`) and nothing else."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "own-models-and-data.md"


def _doc_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def _signals(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Three classes of noisy sines (frequency 1, 2, 3 per window) on a 7-unit offset: float32, far from [0, 1]."""
    y = rng.integers(0, 3, n)
    t = np.linspace(0, 1, 40)
    x = 2.5 * np.sin(2 * np.pi * (y[:, None] + 1) * t[None] + rng.uniform(0, 0.5, (n, 1))) + 7
    return (x + rng.normal(0, 1.0, (n, 40))).astype(np.float32), y


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("myproject")
    assert ROOT not in d.parents
    (d / "mymodels.py").write_text(_doc_blocks("python")[0])  # the page's model, as written
    rng = np.random.default_rng(0)
    (xtr, ytr), (xte, yte) = _signals(600, rng), _signals(240, rng)
    np.savez(d / "signals.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    yamls = _doc_blocks("yaml")
    (d / "teacher.yaml").write_text(yamls[0])
    (d / "scratch.yaml").write_text(yamls[0].replace("name: teacher", "name: scratch").replace("width: 32", "width: 8"))
    (d / "kd.yaml").write_text(yamls[1])
    return d


def kdkit(project: Path, *args: str, timeout: int = 300) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-m", "kdkit.cli", *args], cwd=project, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, f"kdkit {' '.join(args)}: {out.stderr[-2000:]}"
    return out.stdout


@pytest.mark.slow  # nine processes, ~75 s on 2 cores
def test_the_documented_walk_through_runs_outside_the_repository(project: Path):
    commands = [line.split("#")[0].split() for line in _doc_blocks("bash")[0].splitlines() if line.strip()]
    assert [c[1] for c in commands] == ["train", "train", "distill", "cache", "distill", "eval", "export", "bench",
                                        "report"]
    short = {"train": ["--set", "epochs=6", "-q"], "distill": ["--set", "epochs=6", "-q"]}
    outputs = {}
    for cmd in commands:
        args = cmd[1:] + short.get(cmd[1], [])
        if cmd[1] == "bench":
            args += ["--repeats", "5"]
        outputs[" ".join(cmd[1:3])] = kdkit(project, *args)
    runs = project / "runs"
    best = {r: json.loads((runs / r / "summary.json").read_text())["best"]["top1"]
            for r in ("teacher", "scratch", "kd", "kd_store")}
    assert best["teacher"] > 70, best  # a 1-D CNN learns the sine frequency (chance 33%)
    assert min(best.values()) > 40, best
    meta = json.loads(json.dumps(__import__("kdkit").weights.read_metadata(runs / "kd/checkpoints/best.safetensors")))
    assert meta["input_shape"] == [40] and meta["input_dtype"] == "float32" and meta["model"]["name"] == \
        "py:mymodels:ConvNet"
    z = np.load(project / "signals.npz")
    # per-feature statistics of the training split in the data's own units (not 0-1); float64 accumulation
    assert np.allclose(meta["mean"], z["x_train"].astype(np.float64).mean(0), rtol=1e-9, atol=0)
    assert np.allclose(meta["std"], z["x_train"].astype(np.float64).std(0), rtol=1e-6, atol=0)
    split = json.loads((runs / "kd" / "split.json").read_text())
    assert split["n_train"] == 600 and split["n_val"] == 240  # the user's own test split is the validation set
    assert "n=240" in outputs["eval runs/kd"]

    # export --int8: ONNX Runtime on the exported files against PyTorch on the same normalised test inputs
    exp = json.loads((runs / "kd" / "export" / "export.json").read_text())
    assert exp["onnx"]["max_abs_diff"] < 1e-4 and exp["int8"] is not None
    import onnxruntime as ort
    import torch

    from kdkit.models.factory import load_model

    sys.path.insert(0, str(project))
    try:
        model, meta = load_model(runs / "kd")
        x = (torch.from_numpy(z["x_test"]) - torch.tensor(meta["mean"])) / torch.tensor(meta["std"])
        with torch.no_grad():
            ref = model(x).numpy()
        for f, tol in (("model.onnx", 1e-4), ("model.int8.onnx", None)):
            sess = ort.InferenceSession(str(runs / "kd" / "export" / f), providers=["CPUExecutionProvider"])
            got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
            assert got.shape == ref.shape == (240, 3)
            if tol is not None:  # float32 graph vs eager: same ops, reassociated sums, O(1) logits
                assert np.abs(got - ref).max() < tol
            else:  # int8 weights and activations: predictions agree on nearly every sample
                assert (got.argmax(1) == ref.argmax(1)).mean() > 0.9
    finally:
        sys.path.remove(str(project))
        sys.modules.pop("mymodels", None)

    bench = json.loads((runs / "bench" / "bench.json").read_text())
    assert {r["name"] for r in bench} == {"teacher", "scratch", "kd"}
    assert {r["runtime"] for r in bench} == {"pytorch", "ort-fp32", "ort-int8"}
    assert all(r["accuracy"] is not None and r["p50_ms_b64"] > 0 for r in bench)
    assert (runs / "report" / "report.html").is_file()
    assert "kd_store" in (runs / "report" / "summary.md").read_text()


@pytest.mark.slow
def test_a_command_away_from_the_code_names_the_folder(project: Path, tmp_path: Path):
    if not (project / "runs" / "kd").is_dir():
        pytest.skip("needs the walk-through's runs")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-m", "kdkit.cli", "eval", str(project / "runs" / "kd")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert f"imported from '{project.resolve()}'" in out.stderr
