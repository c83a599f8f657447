"""What a shared soft-label store saves in ``kdkit tune``: the same KD search with and without it. Prints JSON.

    .venv/bin/python benchmarks/tune_store.py --trials 4 --epochs 20 --rounds 2

The quickstart pair (recipes/mnist_teacher.yaml's CNN teacher, trained once here; recipes/mnist_kd.yaml's MLP 784-64
student) with a search over the KD temperature and weight. Per round, two fresh studies of ``--trials`` trials each
(TPE with the same sampler seed, no pruning, so both run the same number of epochs): one whose trials share one store
(its fill included in its time), one with ``--no-store`` (every trial runs the teacher every step). The two kinds
alternate inside one process, so machine load hits both alike; the ratio of the per-round times is reported (median
over rounds). Absolute times on a shared machine are noise; the ratio is the result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdkit.deploy.measure import cpu_info  # noqa: E402
from kdkit.recipe import load_recipe  # noqa: E402
from kdkit.runs import run  # noqa: E402
from kdkit.study.tune import run_tune  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEARCH = {"terms.1.params.temperature": {"log_uniform": [1, 16]}, "terms.1.weight": {"uniform": [0.1, 1.0]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=4, help="trials per study")
    ap.add_argument("--epochs", type=int, default=20, help="epochs per trial")
    ap.add_argument("--teacher-epochs", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=2, help="store/no-store pairs, alternating")
    ap.add_argument("--train-limit", type=int, default=None, help="training digits (default: all 4,000)")
    ap.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="kdkit-tune-store-"))
    limit = [f"data.train_limit={args.train_limit}"] if args.train_limit else []
    teacher = load_recipe(ROOT / "recipes/mnist_teacher.yaml",
                          [f"output_dir={out}", f"epochs={args.teacher_epochs}", "threads=1", *limit])
    t0 = time.perf_counter()
    run(teacher, quiet=True)
    teacher_s = time.perf_counter() - t0
    rows = []
    for rnd in range(args.rounds):
        for store in (True, False):
            name = f"r{rnd}_{'store' if store else 'nostore'}"
            r = load_recipe(ROOT / "recipes/mnist_kd.yaml",
                            [f"output_dir={out}", f"name={name}", f"epochs={args.epochs}", "threads=1",
                             f"teachers.0.checkpoint={out / 'mnist_teacher'}", *limit])
            r = r.model_copy(update={"search": SEARCH})
            t = time.perf_counter()
            res = run_tune(r, trials=args.trials, pruner="none", seed=7, quiet=True, store=store)
            rows.append({"round": rnd, "store": store, "seconds": time.perf_counter() - t,
                         "best_value": res.best_value, "load": os.getloadavg()[0]})
    per_round = [next(x["seconds"] for x in rows if x["round"] == k and not x["store"])
                 / next(x["seconds"] for x in rows if x["round"] == k and x["store"]) for k in range(args.rounds)]
    print(json.dumps({"benchmark": "tune_store", "trials": args.trials, "epochs": args.epochs,
                      "train_limit": args.train_limit, "teacher_train_seconds": teacher_s, "runs": rows,
                      "nostore_over_store": per_round, "median_ratio": statistics.median(per_round),
                      "cpu": cpu_info(),
                      "threads": 1, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, indent=1))


if __name__ == "__main__":
    main()
