"""Every loss term under one budget: accuracy (mean ± std over seeds, best and last epoch), images/s, peak memory.

Same teacher (cnn_teacher, trained once per dataset), same students (the quickstart MLP for logit terms; cnn_student
for every term, feature terms included), same optimiser and epochs. Epoch-based term schedules (DKD's warm-up, the
FitNets hint stage) are scaled from the recipe's 30 epochs to the budget. Each run is its own process so its peak RSS
can be read. Recipes come from recipes/methods/ (one per term) with the student, data and budget overridden.

    .venv/bin/python benchmarks/methods.py --datasets mnist_5k animal_mnist --seeds 0 1 2 --epochs 8 --train-limit 4000
    .venv/bin/python benchmarks/methods.py --datasets mnist_5k --seeds 0 --epochs 5 --students mlp   # smoke
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdkit.deploy.measure import cpu_info  # noqa: E402

LOGIT = ["scratch", "label_smoothing", "kd", "soft_ce", "logit_mse", "dkd", "noisy_kd", "tf_kd", "confidence_penalty",
         "sobolev"]
FEATURE = ["fitnet", "fitnet_two_stage", "at", "sp", "rkd", "crd", "ie", "kd_at"]
STUDENTS = {"mlp": LOGIT, "cnn_student": LOGIT + FEATURE}

RUN = r"""
import json, resource, sys
import kdkit
from kdkit.recipe import load_recipe
r = load_recipe(sys.argv[1], json.loads(sys.argv[2]))
res = (kdkit.distill if r.teachers else kdkit.train)(r, quiet=True, resume=sys.argv[3] == "1")
ips = sorted(h["images_per_s"] for h in res.history)
print(json.dumps({"best": res.best["top1"], "last": res.last["val_top1"], "images_per_s": ips[len(ips) // 2],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_one(recipe: Path, overrides: list[str], run_dir: Path) -> dict:
    # An interrupted benchmark picks up where it stopped: finished runs are read back, interrupted ones resume.
    done = run_dir / "bench.json"
    if done.is_file():
        return json.loads(done.read_text())
    resume = "1" if (run_dir / "checkpoints" / "latest.json").is_file() else "0"
    if resume == "0" and run_dir.exists():  # stopped before its first checkpoint: start it again
        shutil.rmtree(run_dir)
    p = subprocess.run([sys.executable, "-c", RUN, str(recipe), json.dumps(overrides), resume],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{recipe.name} {overrides}: {p.stderr[-1500:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    done.write_text(json.dumps(res))
    return res


def _scaled_windows(recipe: Path, epochs: int) -> list[str]:
    """Overrides that scale the recipe's epoch-based term schedule (warm-ups, start/stop epochs) to ``epochs``: a
    5-epoch DKD warm-up or FitNets hint stage of a 30-epoch recipe takes the same share of a shorter budget."""
    d = yaml.safe_load(recipe.read_text())
    scale = epochs / float(d.get("epochs", epochs))
    out = []
    for i, t in enumerate(d.get("terms") or []):
        for key in ("warmup_epochs", "start_epoch", "stop_epoch"):
            if t.get(key):
                out.append(f"terms.{i}.{key}={round(float(t[key]) * scale, 4)}")
    return out


def _store(ds_dir: Path, teacher: Path, ds: str, limit: list[str], threads: int) -> Path:
    """The dataset's soft-label store for the logit recipes of recipes/methods/ (built once; kdkit cache)."""
    from kdkit.recipe import load_recipe
    from kdkit.softlabels.cache import build_cache

    path = ds_dir / "softlabels"
    recipe = load_recipe(ROOT / "recipes" / "methods" / "kd.yaml",
                         [f"data.name={ds}", f"teachers.0.checkpoint={teacher}", f"soft_labels={path}",
                          f"threads={threads}", *limit])
    build_cache(recipe, views=1, topk=recipe_classes(recipe), quiet=True)
    return path


def recipe_classes(recipe) -> int:
    from kdkit.data import load_source

    return load_source(recipe.data.name, **recipe.data.params).num_classes


def _logits_only(recipe: Path, overrides: list[str]) -> bool:
    """Whether every term of the recipe can read stored logits (no features, no input gradients of the teacher)."""
    from kdkit.errors import ConfigError
    from kdkit.recipe import load_recipe
    from kdkit.teachers.store import check_recipe_can_use_store

    r = load_recipe(recipe, [*overrides, "soft_labels=unused"])
    try:
        check_recipe_can_use_store(r)
    except ConfigError:
        return False
    return not any(t.name == "sobolev" for t in r.terms)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--datasets", nargs="+", default=["mnist_5k", "animal_mnist"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--teacher-epochs", type=int, default=15)
    ap.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (1 is fastest on a shared CPU)")
    ap.add_argument("--out", default="runs/bench_methods")
    ap.add_argument("--markdown", action="store_true", help="also print Markdown tables")
    ap.add_argument("--soft-labels", action="store_true",
                    help="runs whose terms need only the teacher's logits read them from a soft-label store (built "
                         "once per dataset: k = K, 1 view, no augmentation, so the targets are the teacher's logits "
                         "in fp16) instead of running the teacher; feature and Sobolev terms still run it")
    ap.add_argument("--tag", default="", help="suffix of the run names (keeps runs of another budget apart)")
    ap.add_argument("--train-limit", type=int, default=None,
                    help="train every run on a stratified subset of N training samples (data.train_limit)")
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    for ds in args.datasets:
        tdir = out / ds / "teacher"
        limit = [f"data.train_limit={args.train_limit}"] if args.train_limit else []
        teacher = run_one(ROOT / "recipes" / "mnist_teacher.yaml",
                          [f"output_dir={out / ds}", "name=teacher", f"data.name={ds}", f"epochs={args.teacher_epochs}",
                           f"threads={args.threads}", *limit],
                          tdir)
        store = _store(out / ds, tdir, ds, limit, args.threads) if args.soft_labels else None
        rows.append({"dataset": ds, "student": "cnn_teacher", "method": "teacher", "best_mean": teacher["best"],
                     "best_std": 0.0, "last_mean": teacher["last"], "last_std": 0.0,
                     "images_per_s": teacher["images_per_s"], "peak_rss_mb": teacher["peak_rss_mb"], "seeds": 1})
        for student in args.students:
            for method in STUDENTS[student]:
                if args.methods and method not in args.methods:
                    continue
                recipe = ROOT / "recipes" / ("mnist_scratch.yaml" if method == "scratch" else f"methods/{method}.yaml")
                results = []
                for seed in args.seeds:
                    name = f"{student}_{method}{args.tag}_s{seed}"
                    ov = [f"output_dir={out / ds}", f"name={name}", f"seed={seed}", f"data.name={ds}",
                          f"epochs={args.epochs}", f"threads={args.threads}", f"student.name={student}",
                          "student.params={hidden: [64]}" if student == "mlp" else "student.params={}", *limit,
                          *_scaled_windows(recipe, args.epochs)]
                    signal = "none"
                    if yaml.safe_load(recipe.read_text()).get("teachers"):
                        ov.append(f"teachers.0.checkpoint={tdir}")
                        signal = "online"
                        if store is not None and _logits_only(recipe, ov):
                            ov.append(f"soft_labels={store}")
                            signal = "store"
                    results.append(run_one(recipe, ov, out / ds / name))
                    print(f"{ds} {student} {method} seed {seed}: {results[-1]}", file=sys.stderr, flush=True)

                def ms(key: str, results: list[dict] = results) -> tuple[float, float]:
                    v = [r[key] for r in results]
                    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)

                (bm, bs), (lm, ls) = ms("best"), ms("last")
                rows.append({"dataset": ds, "student": student, "method": method, "best_mean": bm, "best_std": bs,
                             "last_mean": lm, "last_std": ls,
                             "images_per_s": statistics.median(r["images_per_s"] for r in results),
                             "peak_rss_mb": max(r["peak_rss_mb"] for r in results), "seeds": len(results),
                             "teacher_signal": signal})
    res = {"benchmark": "methods", "epochs": args.epochs, "teacher_epochs": args.teacher_epochs, "seeds": args.seeds,
           "threads": args.threads, "train_limit": args.train_limit, "cpu": cpu_info(), "rows": rows}
    print(json.dumps(res, indent=1))
    if args.markdown:
        print(markdown(res))


def markdown(res: dict) -> str:
    """One table per dataset: accuracy at the best and the last epoch (mean ± std over seeds), images/s, peak RSS."""
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in res["rows"]):
        out += [f"\n**{ds}** ({res['epochs']} epochs, seeds {', '.join(map(str, res['seeds']))}; teacher "
                f"{res['teacher_epochs']} epochs, 1 seed)\n",
                "| student | method | best epoch top-1 % | last epoch top-1 % | train images/s | peak RSS MB |",
                "|---|---|---|---|---|---|"]
        for r in (r for r in res["rows"] if r["dataset"] == ds):
            def pm(m: float, s: float, r: dict = r) -> str:
                return f"{m:.2f}" if r["seeds"] == 1 else f"{m:.2f} ± {s:.2f}"

            out.append(f"| {r['student']} | {r['method']} | {pm(r['best_mean'], r['best_std'])} | "
                       f"{pm(r['last_mean'], r['last_std'])} | {r['images_per_s']:,.0f} | {r['peak_rss_mb']:,.0f} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
