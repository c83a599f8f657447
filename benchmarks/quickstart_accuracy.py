"""Accuracy of the quickstart student on mnist_5k: scratch vs label smoothing 0.1 vs Hinton KD, mean ± std over seeds.

One teacher (recipes/mnist_teacher.yaml, seed 0) is trained once; each student variant is trained from the same
recipe (recipes/mnist_scratch.yaml / mnist_kd.yaml: MLP 784-64-10, AdamW one-cycle, 50 epochs, 4,000/1,000
stratified split) for every seed. Prints JSON.

    .venv/bin/python benchmarks/quickstart_accuracy.py --seeds 0 1 2 --out runs/bench_quickstart

The ``cnn_*`` variants train cnn_student with recipes/methods/at.yaml (scratch: CE only; ``cnn_at``: attention
transfer from the same teacher, fp32 or in the mode its auto policy picks); each result lists what the auto policies
chose per seed (``policy``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import kdkit  # noqa: E402
from kdkit.deploy.measure import cpu_info  # noqa: E402
from kdkit.recipe import load_recipe  # noqa: E402

VARIANTS = {
    "scratch": ("mnist_scratch", []),
    "label_smoothing_0.1": ("mnist_scratch", ["terms.0.params.label_smoothing=0.1"]),
    "kd_T8_w0.5": ("mnist_kd", []),
    "kd_T4_w0.5": ("mnist_kd", ["terms.1.params.temperature=4.0"]),
    "kd_T8_w0.9": ("mnist_kd", ["terms.0.weight=0.1", "terms.1.weight=0.9"]),
    # issue 15: the teacher in the mode its auto policy picks, and the student in bf16 autocast beside it
    "kd_T8_w0.5_teacher_auto": ("mnist_kd", ["teacher_policy.precision=auto", "teacher_policy.channels_last=auto"]),
    "kd_T8_w0.5_teacher_auto_student_bf16": ("mnist_kd", ["teacher_policy.precision=auto",
                                                          "teacher_policy.channels_last=auto", "precision=bf16"]),
    "scratch_bf16": ("mnist_scratch", ["precision=bf16"]),
    # issue 15 on cnn_student (recipes/methods/at.yaml: 30 epochs, AdamW one-cycle): a bf16 student from scratch, and
    # a feature method (attention transfer, which reads the teacher's tapped features) with the auto teacher
    "cnn_scratch": ("methods/at", ["teachers=[]", "terms=[{name: ce}]"]),
    "cnn_scratch_bf16": ("methods/at", ["teachers=[]", "terms=[{name: ce}]", "precision=bf16"]),
    "cnn_scratch_auto": ("methods/at", ["teachers=[]", "terms=[{name: ce}]", "precision=auto", "channels_last=auto"]),
    "cnn_at": ("methods/at", []),
    "cnn_at_teacher_auto": ("methods/at", ["teacher_policy.precision=auto", "teacher_policy.channels_last=auto"]),
    # the teacher forced to bf16 + channels-last: what the mode auto refused (on the tapped features) does to accuracy
    "cnn_at_teacher_bf16": ("methods/at", ["teacher_policy.precision=bf16", "teacher_policy.channels_last=true"]),
}


def _choices(run_dir: Path) -> dict:
    """What the auto policies picked in a run (student_policy.json / teacher_policy.json), when they ran."""
    picked = {}
    for who in ("student", "teacher"):
        f = run_dir / f"{who}_policy.json"
        if f.is_file():
            d = json.loads(f.read_text())
            entries = d.get("teachers", [d]) if isinstance(d, dict) else d
            picked[who] = [{"chosen": e.get("chosen"), "reason": e.get("reason")} for e in entries]
    return picked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/bench_quickstart")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--teacher-epochs", type=int, default=None)
    ap.add_argument("--student-epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (1 is best on a busy machine)")
    args = ap.parse_args()
    out = Path(args.out)
    common = [f"output_dir={out}"] + ([f"threads={args.threads}"] if args.threads else [])
    t0 = time.perf_counter()
    t_over = common + ([f"epochs={args.teacher_epochs}"] if args.teacher_epochs else [])
    teacher_dir = out / "mnist_teacher"
    teacher = kdkit.train("mnist_teacher", t_over, resume=(teacher_dir / "checkpoints" / "latest.json").is_file(),
                          quiet=True)
    results: dict[str, dict] = {"teacher": {"top1": teacher.best["top1"], "seconds": time.perf_counter() - t0}}
    s_over = common + ([f"epochs={args.student_epochs}"] if args.student_epochs else [])
    for name in args.variants:
        recipe, extra = VARIANTS[name]
        best, last, secs, ips, picks = [], [], [], [], []
        distil = bool(load_recipe(recipe, extra).teachers)
        for seed in args.seeds:
            ov = s_over + extra + [f"seed={seed}", f"name={name}_s{seed}"]
            if distil:
                ov.append(f"teachers.0.checkpoint={teacher_dir}")
            run_dir = out / f"{name}_s{seed}"
            t1 = time.perf_counter()
            fn = kdkit.distill if distil else kdkit.train
            res = fn(recipe, ov, resume=(run_dir / "checkpoints" / "latest.json").is_file(), quiet=True)
            picks.append(_choices(run_dir))
            secs.append(time.perf_counter() - t1)
            best.append(res.best["top1"])
            last.append(res.last["val_top1"])
            ips.append(statistics.median(h["images_per_s"] for h in res.history))
        results[name] = {
            "best_mean": statistics.mean(best), "best_std": statistics.stdev(best) if len(best) > 1 else 0.0,
            "last_mean": statistics.mean(last), "last_std": statistics.stdev(last) if len(last) > 1 else 0.0,
            "best": best, "last": last, "seconds_per_run": statistics.mean(secs),
            "images_per_s": statistics.median(ips), "policy": picks,
        }
    print(json.dumps({"benchmark": "quickstart_accuracy", "seeds": args.seeds, "cpu": cpu_info(), "results": results,
                      "wall_seconds": time.perf_counter() - t0}, indent=2))


if __name__ == "__main__":
    main()
