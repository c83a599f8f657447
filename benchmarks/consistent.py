"""Patient and consistent teaching on mnist_5k: function matching with mixup vs plain KD, at two budgets. Prints JSON.

    .venv/bin/python benchmarks/consistent.py --epochs 10 40 --seeds 0 1 --teacher-epochs 15

Teacher: recipes/mnist_teacher.yaml (cnn_teacher, trained once). Students (MLP 784-64-10, the quickstart pair), per
budget and seed, each distilled online (the teacher sees the student's exact batch):

- ``kd``: recipes/mnist_kd.yaml as shipped (0.5 CE + 0.5 KD at T=8, no augmentation);
- ``kd_crop``: the same with random crops (padding 2) -- separates the effect of augmentation from that of mixup;
- ``consistent``: recipes/consistent/mnist_consistent.yaml (KD at T=1 only, crops + mixup α=1, cosine schedule).

Reports the last and best validation top-1 (mean ± sample std over seeds) per variant and budget. Patience is the
claim that the consistent recipe gains more from a longer budget than plain KD does (Beyer et al. 2022).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import kdkit  # noqa: E402
from kdkit.deploy.measure import cpu_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "kd": ("recipes/mnist_kd.yaml", []),
    "kd_crop": ("recipes/mnist_kd.yaml", ["data.augment.crop_padding=2"]),
    "consistent": ("recipes/consistent/mnist_consistent.yaml", []),
}


def _stat(xs: list[float]) -> dict:
    return {"mean": round(statistics.mean(xs), 2), "std": round(statistics.stdev(xs), 2) if len(xs) > 1 else 0.0,
            "runs": [round(x, 2) for x in xs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, nargs="+", default=[10, 40])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--teacher-epochs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-dir", default=None, help="keep the runs here (default: a temp dir)")
    args = ap.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out_dir or tmp)
        common = [f"output_dir={out}", f"threads={args.threads}"]
        teacher = kdkit.train(str(ROOT / "recipes/mnist_teacher.yaml"),
                              overrides=common + [f"epochs={args.teacher_epochs}"], quiet=True)
        rows: dict[str, dict] = {}
        for epochs in args.epochs:
            for name, (recipe, extra) in VARIANTS.items():
                last, best = [], []
                for seed in args.seeds:
                    res = kdkit.distill(str(ROOT / recipe), overrides=common + extra + [
                        f"epochs={epochs}", f"seed={seed}", f"name={name}-e{epochs}-s{seed}",
                        f"teachers.0.checkpoint={teacher.run_dir}"], quiet=True)
                    last.append(float(res.last["val_top1"]))
                    best.append(float(res.best["top1"]))
                rows[f"{name}@{epochs}"] = {"variant": name, "epochs": epochs, "last_top1": _stat(last),
                                            "best_top1": _stat(best)}
        out_json = {"benchmark": "consistent", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "cpu": cpu_info(), "teacher_top1": teacher.best.get("top1"), "seeds": args.seeds,
                    "minutes": round((time.time() - t0) / 60, 1), "results": rows}
    print(json.dumps(out_json, indent=1))


if __name__ == "__main__":
    main()
